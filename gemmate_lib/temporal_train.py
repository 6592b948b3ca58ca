"""Train GemmaTE (LoRA + the temporal projection) with transformers' Trainer, and measure its use of time.

Taught in 04_temporal_encoding; `python -m gemmate_lib.temporal_cli` runs the same from a JSONL file.
The projection learns with its own, larger learning rate: it starts at zero and has
to grow to the size of the token embeddings, while LoRA only nudges existing weights.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import LoraSettings
from .errors import ParameterError
from .hardware import Precision
from .temporal import GemmaTEForCausalLM
from .temporal_data import TextDataset, collate_fn, parse_date


@dataclass
class TemporalTrainSettings:
    num_epochs: float = 3.0  # passes over the training set
    max_steps: int = -1  # stop after this many optimizer steps (-1: use num_epochs)
    batch_size: int = 8  # examples per micro-batch
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    learning_rate: float = 3e-4  # peak learning rate of the LoRA weights
    projection_learning_rate: float = 3e-3  # peak learning rate of the temporal projection (starts at zero)
    weight_decay: float = 0.0  # AdamW weight decay (not applied to the projection)
    warmup_steps: int = 10  # linear warm-up steps
    max_length: int = 64  # tokens per example after truncation
    seed: int = 42  # LoRA init and data order
    logging_steps: int = 10  # log the training loss every this many steps
    fast_loss: bool = True  # LM head on labelled tokens only (fast_loss.py)

    def check(self) -> None:
        """Raise ParameterError on values that cannot train."""
        for name in ("batch_size", "gradient_accumulation_steps", "max_length", "logging_steps"):
            if getattr(self, name) < 1:
                raise ParameterError(f"{name}={getattr(self, name)} must be at least 1", f"pass a positive {name}")
        for name in ("learning_rate", "projection_learning_rate"):
            if not 0 < getattr(self, name) < 1:
                raise ParameterError(f"{name}={getattr(self, name)} must lie in (0, 1)", "typical values: 1e-4 to 3e-3")
        if self.num_epochs <= 0 and self.max_steps < 1:
            raise ParameterError(f"num_epochs={self.num_epochs} trains nothing", "pass num_epochs > 0 or max_steps >= 1")
        if self.weight_decay < 0 or self.warmup_steps < 0:
            raise ParameterError("weight_decay and warmup_steps must not be negative", "pass 0 or a positive value")


def attach_temporal_lora(te: GemmaTEForCausalLM, lora: LoraSettings, quantized: bool = False) -> GemmaTEForCausalLM:
    """LoRA on the wrapped model (once, the QLoRA recipe when `quantized`); the projection trains too."""
    from .training import attach_lora

    te.model = attach_lora(te.model, lora, quantized=quantized)
    te.temporal_projection.weight.requires_grad_(True)
    return te


def _optimizer(te: GemmaTEForCausalLM, s: TemporalTrainSettings):
    proj = [te.temporal_projection.weight]
    rest = [p for n, p in te.named_parameters() if p.requires_grad and not n.startswith("temporal_projection")]
    return torch.optim.AdamW([{"params": rest, "lr": s.learning_rate, "weight_decay": s.weight_decay},
                              {"params": proj, "lr": s.projection_learning_rate, "weight_decay": 0.0}])


@dataclass
class TemporalTrainResult:
    model: GemmaTEForCausalLM  # the trained wrapper (LoRA + projection)
    log: object  # pandas DataFrame: step, loss, learning_rate
    seconds: float  # wall time of trainer.train()
    steps: int  # optimizer steps taken


def train_temporal(te: GemmaTEForCausalLM, dataset: TextDataset, settings: TemporalTrainSettings,
                   output_dir: str | Path, precision: Precision, pad_token_id: int = 0) -> TemporalTrainResult:
    """Train with transformers.Trainer: timestamps flow from the dataset through collate_fn into forward."""
    from transformers import Trainer, TrainingArguments, set_seed

    from .training import loss_log

    settings.check()
    set_seed(settings.seed)
    te.fast_loss = settings.fast_loss
    args = TrainingArguments(
        output_dir=str(output_dir), num_train_epochs=settings.num_epochs, max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps, learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_steps, lr_scheduler_type="linear", logging_steps=settings.logging_steps,
        save_strategy="no", report_to="none", seed=settings.seed, data_seed=settings.seed,
        bf16=precision.name == "bf16", fp16=precision.name == "fp16", use_cpu=precision.device == "cpu",
        dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=False,
    )
    trainer = Trainer(model=te, args=args, train_dataset=dataset,
                      data_collator=lambda b: collate_fn(b, pad_token_id), optimizers=(_optimizer(te, settings), None))
    start = time.time()
    trainer.train()
    seconds = time.time() - start
    # Trainer wrapped forward in a mixed-precision autocast; take it off so that the trained model
    # computes exactly like one loaded from disk.
    te = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    te.eval()
    return TemporalTrainResult(te, loss_log(trainer), seconds, trainer.state.global_step)


@torch.no_grad()
def date_accuracy(te: GemmaTEForCausalLM, tokenizer, prompts, timestamps, dates, batch_size: int = 20,
                  max_new_tokens: int = 6):
    """Greedy completions of the dated-notes prompts; returns (DataFrame per prompt, exact-year accuracy)."""
    import pandas as pd

    from .generation import unfrozen_for_cpu

    te.eval()
    device = te.temporal_projection.weight.device
    old_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    rows = []
    try:
        for i in range(0, len(prompts), batch_size):
            batch = list(prompts[i:i + batch_size])
            stamps = list(timestamps[i:i + batch_size])
            enc = tokenizer(batch, return_tensors="pt", padding=True).to(device)
            with unfrozen_for_cpu(te):  # 12x faster on a CPU (generation.py)
                out = te.generate(**enc, timestamps=stamps, max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=tokenizer.pad_token_id)
            for j, ids in enumerate(out[:, enc["input_ids"].shape[1]:]):
                text = tokenizer.decode(ids, skip_special_tokens=True)
                year, month = parse_date(text)
                true_year, true_month = dates[i + j]
                rows.append({"completion": text.strip(), "year": year, "month": month, "true_year": true_year,
                             "true_month": true_month, "year_ok": year == true_year,
                             "month_ok": (year, month) == (true_year, true_month)})
    finally:
        tokenizer.padding_side = old_side
    table = pd.DataFrame(rows)
    return table, float(table["year_ok"].mean())
