"""Scripts named as in the GemmaTE fine-tuning guide (scripts/finetune.py)."""
