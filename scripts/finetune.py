"""The GemmaTE fine-tuning guide's script, with the guide's options: `gemmate train-te` underneath.

    python scripts/finetune.py --output_dir ./fine_tuned_model
    --num_epochs 3 --batch_size 4 --learning_rate 5e-5

Taught in 07_temporal_encoding (section 8). `--data_file` is a JSONL of {"text", "timestamp"}
rows; without it the script trains on the course's dated notes (07's task) and says so in one
line. Every other option keeps the guide's name and maps to the course's one config;
`--save_format pt` also writes `model.pt`, a PyTorch state dict with LoRA merged in (safetensors
stay the default and are always written). The guide's imports work from the repository
root: `from scripts.finetune import TextDataset, collate_fn`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/finetune.py` from anywhere

# noqa: E402 - the guide imports these from here
from gemmate_lib.temporal.data import TextDataset, collate_fn

__all__ = ["TextDataset", "collate_fn", "main"]

GUIDE_OPTIONS = {  # the guide's option -> the course's setting (the same name unless noted)
    "data_file": "dataset", "output_dir": "output_dir", "model_name": "model_name",
    "num_epochs": "num_epochs",
    "batch_size": "batch_size", "learning_rate": "learning_rate", "weight_decay": "weight_decay",
    "warmup_steps": "warmup_steps", "max_length": "max_length", "seed": "seed",
    "gradient_accumulation_steps": "gradient_accumulation_steps", "temporal_encoding_scale": "temporal_scale",
    "temporal_scale": "temporal_scale",
    "temporal_encoding_dim": "temporal_dim", "save_format": "save_format", "prompt_end": "prompt_end",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for option in GUIDE_OPTIONS:
        parser.add_argument(f"--{option}", default=None, help=f"the course's `{GUIDE_OPTIONS[option]}`")
    parser.add_argument("--fp16", action="store_true", help="fp16 mixed precision (needs a CUDA GPU)")
    return parser


def save_jsonl(path: str | Path, texts, timestamps) -> Path:
    """Write rows of {"text", "timestamp"} (ms), the format `gemmate train-te` reads (07 writes it too)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": text, "timestamp": int(ms)}, ensure_ascii=False) + "\n"
                            for text, ms in zip(texts, timestamps)), encoding="utf-8")
    return path


def default_data(output_dir: str) -> Path:
    """Write the course's dated notes (07's training set:
    600 notes over 2007-2020) as JSONL; return the file."""
    from gemmate_lib.data import load_quotes
    from gemmate_lib.temporal.data import make_dated_notes

    quotes = load_quotes()
    notes = make_dated_notes([r["quote"] for r in quotes.train + quotes.held_out])
    return save_jsonl(Path(output_dir) / "dated_notes_train.jsonl", notes.train_texts, notes.train_timestamps)


def main(argv: list[str] | None = None) -> int:
    from gemmate_cli import main as cli

    args = build_parser().parse_args(argv)
    output_dir = args.output_dir or "./fine_tuned_model"
    if args.data_file is None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        args.data_file = str(default_data(output_dir))
        print(f"no --data_file: training on the course's dated notes "
              f"(notebook 07's task), written to {args.data_file}",
              flush=True)
    forwarded = ["train-te", "--output_dir", output_dir]
    for option, key in GUIDE_OPTIONS.items():
        value = getattr(args, option)
        if value is not None and option != "output_dir":
            forwarded += [f"--{key}", str(value)]
    if args.save_format == "pt":  # the guide's model.pt: LoRA merged into a 16/32-bit base, not a 4-bit one
        forwarded += ["--quantization", "none"]
    if args.fp16:
        forwarded.append("--fp16")
    return cli.main(forwarded)


if __name__ == "__main__":
    from gemmate_cli.errors import run_cli

    sys.exit(run_cli(main))
