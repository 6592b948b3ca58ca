"""Command line for GemmaTE training, with the GemmaTE guide's options.

Taught in 04_temporal_encoding (last section). Example, on the embedded default:

    python -m gemmate_lib.temporal_cli --data_file notes.jsonl --output_dir runs/te --num_epochs 3

The JSONL has one {"text": ..., "timestamp": <ms since the epoch or ISO-8601>} per line.
The output folder gets the LoRA adapter and the temporal projection (safetensors),
gemmate_te.json and train_metrics.json. Errors are one message naming the fix, no trace.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from .errors import GemmateError, HardwareError


def _number(kind, minimum, strict=False):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"{text} must be {'>' if strict else '>='} {minimum}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gemmate-te", description="Train GemmaTE (LoRA + temporal projection) on a JSONL.")
    p.add_argument("--data_file", required=True, help='JSONL with one {"text", "timestamp"} per line')
    p.add_argument("--output_dir", required=True, help="where the adapter, projection and metrics go")
    p.add_argument("--model_id", default="embedded", help='"embedded" (offline default), a Hub id or a folder')
    p.add_argument("--num_epochs", type=_number(float, 0, strict=True), default=3.0)
    p.add_argument("--max_steps", type=int, default=-1, help="stop after this many steps (-1: use num_epochs)")
    p.add_argument("--batch_size", type=_number(int, 1), default=8)
    p.add_argument("--learning_rate", type=_number(float, 0, strict=True), default=3e-4)
    p.add_argument("--projection_learning_rate", type=_number(float, 0, strict=True), default=3e-3)
    p.add_argument("--weight_decay", type=_number(float, 0), default=0.0)
    p.add_argument("--warmup_steps", type=_number(int, 0), default=10)
    p.add_argument("--max_length", type=_number(int, 8), default=64)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--gradient_accumulation_steps", type=_number(int, 1), default=1)
    p.add_argument("--fp16", action="store_true", help="fp16 mixed precision (needs a CUDA GPU)")
    p.add_argument("--temporal_scale", type=_number(float, 0, strict=True), default=1.0, help="tau")
    p.add_argument("--temporal_dim", type=_number(int, 4), default=64, help="number of temporal features (even)")
    p.add_argument("--prompt_end", default=None, help="train only on text after this marker, e.g. 'Written:'")
    p.add_argument("--lora_r", type=_number(int, 1), default=8)
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty output_dir")
    return p


def run(args: argparse.Namespace) -> dict:
    """Train and save; returns the metrics written to train_metrics.json."""
    from .config import LoraSettings
    from .hardware import pick_precision
    from .models import load_model, load_tokenizer
    from .run import save_json
    from .temporal import GemmaTEForCausalLM, TemporalSettings
    from .temporal_data import TextDataset, load_jsonl
    from .temporal_train import TemporalTrainSettings, attach_temporal_lora, train_temporal

    out = Path(args.output_dir)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise GemmateError(f"--output_dir {out} exists and is not empty", "pick a new folder or pass --overwrite")
    precision = pick_precision(dtype="fp16" if args.fp16 else None)
    if args.fp16 and precision.device != "cuda":
        raise HardwareError("--fp16 needs a CUDA GPU and none is visible", "drop --fp16 (the CPU picks bf16 or fp32 itself)")
    settings = TemporalTrainSettings(num_epochs=args.num_epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                                     gradient_accumulation_steps=args.gradient_accumulation_steps,
                                     learning_rate=args.learning_rate,
                                     projection_learning_rate=args.projection_learning_rate,
                                     weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
                                     max_length=args.max_length, seed=args.seed)
    settings.check()
    texts, stamps = load_jsonl(args.data_file)
    tokenizer = load_tokenizer(args.model_id)
    dataset = TextDataset(texts, tokenizer, stamps, max_length=args.max_length, prompt_end=args.prompt_end)
    te = GemmaTEForCausalLM(load_model(args.model_id, precision),
                            TemporalSettings(scale=args.temporal_scale, dim=args.temporal_dim))
    attach_temporal_lora(te, LoraSettings(r=args.lora_r, alpha=2 * args.lora_r, dropout=0.0))
    print(f"training on {len(dataset)} rows from {args.data_file} ({precision.device}, {precision.name})", flush=True)
    result = train_temporal(te, dataset, settings, out / "trainer", precision, tokenizer.pad_token_id)
    te.save_pretrained(out)
    metrics = {"rows": len(dataset), "steps": result.steps, "seconds": round(result.seconds, 1),
               "final_loss": float(result.log["loss"].iloc[-1]) if len(result.log) else None,
               "settings": vars(args)}
    save_json(out / "train_metrics.json", metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        metrics = run(args)
    except GemmateError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in metrics.items() if k != "settings"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
