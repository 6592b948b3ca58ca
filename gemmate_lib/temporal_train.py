"""Train GemmaTE (LoRA + the temporal projection) with transformers' Trainer, and measure its use of time.

Taught in 04_temporal_encoding; `gemmate train-te` (alias `gemmate-te`) runs the same from
a JSONL file. The settings are the course's one config with the "temporal" task's
defaults (config.TASK_DEFAULTS); the TrainingArguments come from the one builder
(training.training_args), with GemmaTE's extras only. The projection learns with its
own, larger learning rate: it starts at zero and has to grow to the size of the token
embeddings, while LoRA only nudges existing weights.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import CourseConfig
from .temporal import GemmaTEForCausalLM
from .temporal_data import TextDataset, collate_fn, parse_date


def attach_temporal_lora(te: GemmaTEForCausalLM, cfg: CourseConfig) -> GemmaTEForCausalLM:
    """LoRA on the wrapped model (once; the QLoRA recipe when quantized); the projection trains too."""
    from .training import attach_lora

    te.model = attach_lora(te.model, cfg, quiet=True)
    te.temporal_projection.weight.requires_grad_(True)
    return te


def two_rate_optimizer(te: GemmaTEForCausalLM, cfg: CourseConfig):
    """AdamW with two groups: LoRA at learning_rate, the zero-started projection at projection_learning_rate (04)."""
    proj = [te.temporal_projection.weight]
    rest = [p for n, p in te.named_parameters() if p.requires_grad and not n.startswith("temporal_projection")]
    return torch.optim.AdamW([{"params": rest, "lr": cfg.train.learning_rate, "weight_decay": cfg.train.weight_decay},
                              {"params": proj, "lr": cfg.temporal.projection_learning_rate, "weight_decay": 0.0}])


@dataclass
class TemporalTrainResult:
    model: GemmaTEForCausalLM  # the trained wrapper (LoRA + projection)
    log: object  # pandas DataFrame: step, loss, learning_rate
    seconds: float  # wall time of trainer.train()
    steps: int  # optimizer steps taken


def train_temporal(te: GemmaTEForCausalLM, dataset: TextDataset, cfg: CourseConfig, output_dir: str | Path,
                   pad_token_id: int = 0) -> TemporalTrainResult:
    """Train with transformers.Trainer: timestamps flow from the dataset through collate_fn into forward."""
    from transformers import Trainer, set_seed

    from .training import loss_log, training_args

    set_seed(cfg.train.seed)
    te.fast_loss = cfg.train.fast_loss
    args = training_args(cfg, output_dir, has_eval=False, save=False, sft=False, remove_unused_columns=False)
    trainer = Trainer(model=te, args=args, train_dataset=dataset, data_collator=lambda b: collate_fn(b, pad_token_id),
                      optimizers=(two_rate_optimizer(te, cfg), None))
    start = time.time()
    trainer.train()
    seconds = time.time() - start
    # Trainer wrapped forward in a mixed-precision autocast; take it off so that the trained model
    # computes exactly like one loaded from disk.
    te = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    te.eval()
    return TemporalTrainResult(te, loss_log(trainer), seconds, trainer.state.global_step)


def date_accuracy(te: GemmaTEForCausalLM, tokenizer, prompts, timestamps, dates, batch_size: int = 20,
                  max_new_tokens: int = 6):
    """Greedy completions of the dated-notes prompts; returns (DataFrame per prompt, exact-year accuracy)."""
    import pandas as pd

    from .generation import generate

    out = generate(te, tokenizer, list(prompts), max_new_tokens=max_new_tokens, batch_size=batch_size,
                   timestamps=list(timestamps))
    rows = []
    for text, (true_year, true_month) in zip(out.completion, dates):
        year, month = parse_date(text)
        rows.append({"completion": text.strip(), "year": year, "month": month, "true_year": true_year,
                     "true_month": true_month, "year_ok": year == true_year,
                     "month_ok": (year, month) == (true_year, true_month)})
    table = pd.DataFrame(rows)
    return table, float(table["year_ok"].mean())


def baselines(notes) -> dict:
    """What needs no GemmaTE (04): chance, and the date of the nearest training timestamp, on the test notes.

    The nearest-neighbour rule looks up the training note whose timestamp is closest to
    each test timestamp and answers with that note's date: if it scores as well as the
    model, the task shows that the model reads time, not that it generalizes beyond it.
    """
    import bisect
    import statistics

    from .temporal_data import date_of

    stamps = sorted(notes.train_timestamps)
    hits_year = hits_month = 0
    gaps = []
    for ms, (year, month) in zip(notes.test_timestamps, notes.test_dates):
        i = bisect.bisect_left(stamps, ms)
        near = min((j for j in (i - 1, i) if 0 <= j < len(stamps)), key=lambda j: abs(stamps[j] - ms))
        gaps.append(abs(stamps[near] - ms) / 86_400_000)
        guess = date_of(stamps[near])
        hits_year += guess[0] == year
        hits_month += guess == (year, month)
    n, years = len(notes.test_timestamps), len({y for y, _ in notes.test_dates})
    return {"chance_year": 1 / years, "chance_month_year": 1 / (12 * years), "nearest_year": hits_year / n,
            "nearest_month_year": hits_month / n, "median_gap_days": statistics.median(gaps)}


def train_temporal_from_config(cfg: CourseConfig, overwrite: bool = False) -> dict:
    """`gemmate train-te`: GemmaTE on a JSONL of {"text", "timestamp"}; saves output_dir/model and train_metrics.json."""
    from .errors import ParameterError
    from .fsio import save_json
    from .models import load_model, load_tokenizer
    from .temporal_data import load_jsonl

    out = Path(cfg.checkpoints.output_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ParameterError(f"output_dir {out} exists and is not empty", "pick a new folder or pass --overwrite")
    texts, stamps = load_jsonl(cfg.data.dataset, cfg.temporal.timestamp_unit)
    tokenizer = load_tokenizer(cfg.model.model_name)
    dataset = TextDataset(texts, tokenizer, stamps, max_length=cfg.train.max_length, prompt_end=cfg.temporal.prompt_end)
    model = load_model(cfg.model.model_name, cfg.precision, cfg.model.quantization, cfg.model.attn_implementation)
    te = attach_temporal_lora(GemmaTEForCausalLM(model, cfg.temporal), cfg)
    print(f"training on {len(dataset)} rows from {cfg.data.dataset} ({cfg.precision.device}, {cfg.precision.name})",
          flush=True)
    result = train_temporal(te, dataset, cfg, out / "trainer", tokenizer.pad_token_id)
    result.model.save_pretrained(out / "model")  # safetensors, always
    if cfg.checkpoints.save_format == "pt":  # the guide's torch.save(model.state_dict(), ...), LoRA merged in
        torch.save(result.model.merged_state_dict(), out / "model.pt")
    metrics = {"rows": len(dataset), "steps": result.steps, "seconds": round(result.seconds, 1),
               "final_loss": float(result.log["loss"].iloc[-1]) if len(result.log) else None, "config": cfg.flat()}
    save_json(out / "train_metrics.json", metrics)
    return metrics
