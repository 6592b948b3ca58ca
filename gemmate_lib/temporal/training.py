"""Train GemmaTE (LoRA + the temporal projection, through training.train) and measure its use of time against
chance and a nearest-timestamp baseline (07_temporal_encoding; `gemmate train-te`)."""
from __future__ import annotations

import statistics
from dataclasses import asdict
from functools import partial
from pathlib import Path

import pandas as pd
import torch
from peft import set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import Trainer

from gemmate_lib.config import CourseConfig
from gemmate_lib.resume import resume_point, run_settings
from gemmate_lib.temporal.data import TextDataset, collate_fn, date_of, parse_date
from gemmate_lib.temporal.model import GemmaTEForCausalLM
from gemmate_lib.temporal.timestamps import DAY_MS, nearest
from gemmate_lib.text_generation import generate
from gemmate_lib.training import TrainResult, attach_lora, train, training_kwargs


class GemmaTETrainer(Trainer):
    """transformers' Trainer for GemmaTE (07 writes it out; training.train uses it): checkpoints hold only
    what trains (LoRA and the projection, a few MB, and the optimizer's and Trainer's state), not the base.
    `_save` and `_load_from_checkpoint` are the Trainer's hooks for a model it does not know: private API of
    transformers 5.23, the course's pin (`make drift` runs them on the newest release)."""

    def _save(self, output_dir=None, state_dict=None):
        self.model.save_pretrained(Path(output_dir or self.args.output_dir), overwrite=True)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        te, folder = model or self.model, Path(resume_from_checkpoint)
        if (folder / "adapter_model.safetensors").is_file():  # copied into the weights: their own dtype
            set_peft_model_state_dict(te.model, load_file(folder / "adapter_model.safetensors"))
        weight = te.temporal_projection.weight
        with torch.no_grad():
            state = load_file(folder / "temporal.safetensors")["temporal_projection.weight"]
            weight.copy_(state.to(weight.device, weight.dtype))


def attach_temporal_lora(te: GemmaTEForCausalLM, cfg: CourseConfig) -> GemmaTEForCausalLM:
    """LoRA on the wrapped model (once; the QLoRA recipe when quantized); the projection trains too."""
    te.model = attach_lora(te.model, cfg, quiet=True)
    te.temporal_projection.weight.requires_grad_(True)
    return te


def two_rate_optimizer(te, cfg: CourseConfig):
    """GemmaTE's AdamW in two groups: LoRA at learning_rate, the zero-started projection at
    projection_learning_rate (it must grow to the embeddings' size; LoRA only nudges existing weights)."""
    rest = [p for n, p in te.named_parameters() if p.requires_grad and n != "temporal_projection.weight"]
    return torch.optim.AdamW([
        {"params": rest, "lr": cfg.train.learning_rate, "weight_decay": cfg.train.weight_decay},
        {"params": [te.temporal_projection.weight], "lr": cfg.temporal.projection_learning_rate,
         "weight_decay": 0.0}])


def train_temporal(te: GemmaTEForCausalLM, dataset: TextDataset, cfg: CourseConfig, output_dir: str | Path,
                   pad_token_id: int = 0, callbacks=None) -> TrainResult:
    """`training.train` on GemmaTE: timestamps flow from the dataset through collate_fn into forward. With
    `save_steps`, it checkpoints, and a rerun of the same run resumes from its last checkpoint."""
    resume = None
    if cfg.train.save_steps:
        args = training_kwargs(cfg, output_dir, has_eval=False, sft=False)
        times = None if dataset.timestamps is None else dataset.timestamps.tolist()  # every one, to the ms
        settings = run_settings(args, getattr(te.config, "_name_or_path", ""), [*map(str, dataset.items),
                                str(times)], model=te, temporal=asdict(cfg.temporal))
        resume = resume_point(output_dir, settings)
    te.fast_loss = cfg.train.fast_loss  # the LM head on the date tokens only
    return train(te, None, dataset, None, cfg, output_dir, callbacks=callbacks, resume_from_checkpoint=resume,
                 trainer_class=GemmaTETrainer, optimizer=two_rate_optimizer(te, cfg),
                 data_collator=partial(collate_fn, pad_token_id=pad_token_id))


def date_accuracy(te: GemmaTEForCausalLM, tokenizer, prompts, timestamps, dates, batch_size: int = 100,
                  max_new_tokens: int = 6):
    """Greedy completions of the dated-notes prompts; returns (DataFrame per prompt, exact-year accuracy). The
    table also says whether each year is within one of the truth (`year_within_1`, the extrapolation goal)."""
    out = generate(te, tokenizer, list(prompts), max_new_tokens=max_new_tokens, batch_size=batch_size,
                   timestamps=list(timestamps))
    rows = []
    for text, (true_year, true_month) in zip(out.completion, dates):
        year, month = parse_date(text)
        rows.append({"completion": text.strip(), "year": year, "month": month, "true_year": true_year,
                     "true_month": true_month, "year_ok": year == true_year,
                     "year_within_1": year is not None and abs(year - true_year) <= 1,
                     "month_ok": (year, month) == (true_year, true_month)})
    table = pd.DataFrame(rows)
    return table, float(table["year_ok"].mean())


def baselines(notes, split: str = "test") -> dict:
    """What needs no GemmaTE (07) on the held-out `split` ("test", "val" or "far"): chance (one of the split's
    years) and the date of the nearest training timestamp (docs/gemmate-temporal.md says what it shows)."""
    _, timestamps, dates = notes.split(split)
    stamps = sorted(notes.train_timestamps)
    near = [nearest(stamps, ms) for ms in timestamps]
    pairs = [(date_of(guess), tuple(truth)) for guess, truth in zip(near, dates)]  # (year, month) each
    n, years = len(timestamps), len({y for y, _ in dates})
    return {"chance_year": 1 / years, "chance_month_year": 1 / (12 * years),
            "nearest_year": sum(guess[0] == truth[0] for guess, truth in pairs) / n,
            "nearest_year_within_1": sum(abs(guess[0] - truth[0]) <= 1 for guess, truth in pairs) / n,
            "nearest_month_year": sum(guess == truth for guess, truth in pairs) / n,
            "median_gap_days": statistics.median(abs(a - ms) / DAY_MS for a, ms in zip(near, timestamps))}
