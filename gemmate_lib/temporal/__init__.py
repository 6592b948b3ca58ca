"""GemmaTE, Gemma with a time signal (07_temporal_encoding, `gemmate train-te`)."""
