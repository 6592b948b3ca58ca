"""GemmaTE: Gemma with a time signal (07_temporal_encoding, `gemmate train-te`). timestamps (parse and check
any timestamp, signed log-days), model (encoder, GemmaTEForCausalLM), data (timestamped text, JSONL, the
dated-notes task), tasks (Python releases) and training (LoRA + the projection, accuracy, baselines)."""
