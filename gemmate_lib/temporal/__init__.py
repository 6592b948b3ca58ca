"""GemmaTE: Gemma with a time signal (07_temporal_encoding, `gemmate train-te`). timestamps (parse and check
any timestamp, the signed log-days), model (the encoder and GemmaTEForCausalLM), data (timestamped text,
JSONL, the dated-notes task), tasks (the Python releases task and its scoring) and training (LoRA + the
projection, accuracy, baselines)."""
