"""The `gemmate` command (main, docs/command-line.md) and what only it uses: its settings, train and train-te,
checkpoints, storage (s3://, gs://, hf://), tasks (SST-2, SQuAD v2), hpo (Optuna), serve (OpenAI-compatible),
evaluate / generate / export (commands; its files: gguf_export, gguf_file), the export's llama.cpp check
(gguf_verify) and certificate, llama.cpp's server (llama_server), the adapter as GGUF (adapter_gguf). It
imports gemmate_lib; nothing in gemmate_lib imports it."""
