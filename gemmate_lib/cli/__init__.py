"""The `gemmate` command (main) and the features only the command line uses.

train (`gemmate train`), checkpoints (keep the last and best, resume), storage (checkpoints to s3://, gs://,
hf:// or a folder), tasks (the Gemma 1.1 experiment's SST-2 and SQuAD v2), hpo (an Optuna search) and serve
(the fine-tuned model behind an OpenAI-compatible endpoint). Taught in docs/command-line.md.
"""
