"""The `gemmate` command (main) and the features only it uses (docs/command-line.md): train, checkpoints,
storage (s3://, gs://, hf://), tasks (SST-2, SQuAD v2), hpo (Optuna) and serve (OpenAI-compatible)."""
