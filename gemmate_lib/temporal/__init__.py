"""GemmaTE, Gemma with a time signal (07_temporal_encoding, `gemmate train-te`): timestamps, model, data,
tasks and training."""
