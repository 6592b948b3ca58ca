"""LoRA supervised fine-tuning with TRL's SFTTrainer.

Taught in 03_lora_sft; its CPU defaults are measured in benchmarks/sft_throughput.py.
`attach_lora` is safe to run twice (the seed notebook warned that re-running its
training cell wrapped the model with PEFT a second time); `train_lora` runs the
trainer with a held-out evaluation and returns the loss log for plotting.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import CourseConfig, LoraSettings, TrainSettings
from .fast_loss import causal_lm_loss
from .hardware import Precision


def attach_lora(model, lora: LoraSettings, quantized: bool = False, gradient_checkpointing: bool = False):
    """Wrap `model` with a fresh LoRA adapter, or return it unchanged if it already has one."""
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    if isinstance(model, PeftModel) or getattr(model, "peft_config", None):
        print("model already has a LoRA adapter: reusing it (not wrapping twice)")
        return model
    if quantized:  # norms and embeddings to fp32, input grads on: the QLoRA recipe
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.target_modules if isinstance(lora.target_modules, str)
                        else list(lora.target_modules), bias="none", task_type="CAUSAL_LM")  # or "all-linear"
    return get_peft_model(model, config)


def _trainer_class():
    from trl import SFTTrainer

    class CourseSFTTrainer(SFTTrainer):
        """SFTTrainer whose loss runs the LM head on labelled tokens only (see fast_loss.py)."""

        def __init__(self, *args, fast_loss: bool = True, **kwargs):
            super().__init__(*args, **kwargs)
            softcap = getattr(self.model.config, "final_logit_softcapping", None)
            self.fast_loss = fast_loss and softcap is None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not self.fast_loss or return_outputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss = causal_lm_loss(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"],
                                  num_items_in_batch)
            if model.training:
                self._total_train_tokens += int(inputs["attention_mask"].sum())
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return loss

    return CourseSFTTrainer


def sft_config(train: TrainSettings, output_dir: str | Path, precision: Precision, eval_rows: int = 0):
    """TRL SFTConfig from the course's TrainSettings (names follow TrainingArguments)."""
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(output_dir),
        max_steps=train.max_steps,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=max(train.batch_size, 8),
        gradient_accumulation_steps=train.grad_accum,
        learning_rate=train.learning_rate,
        warmup_steps=train.warmup_steps,
        lr_scheduler_type="linear",
        optim=train.optim,
        max_length=train.max_length,
        activation_checkpointing=train.gradient_checkpointing,  # the new name of gradient_checkpointing
        train_sampling_strategy="group_by_length" if train.group_by_length else "random",
        bf16=precision.name == "bf16",
        fp16=precision.name == "fp16",
        use_cpu=precision.device == "cpu",
        logging_steps=train.logging_steps,
        eval_strategy="steps" if eval_rows else "no",
        eval_steps=train.eval_steps,
        save_strategy="no",  # the notebook saves the adapter itself (06 teaches saving)
        report_to="none",
        seed=train.seed,
        data_seed=train.seed,
        dataset_text_field="text",
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


@dataclass
class TrainResult:
    model: object  # the PEFT model after training
    log: object  # pandas DataFrame: step, loss, eval_loss, learning_rate
    seconds: float  # wall time of trainer.train()
    samples_per_second: float  # training examples processed per second
    trainer: object  # the SFTTrainer, for a look inside


def loss_log(trainer):
    """The trainer's log history as a DataFrame with one row per logged step."""
    import pandas as pd

    rows = [{k: v for k, v in entry.items() if k in ("step", "loss", "eval_loss", "learning_rate")}
            for entry in trainer.state.log_history if "loss" in entry or "eval_loss" in entry]
    df = pd.DataFrame(rows)
    return df.groupby("step", as_index=False).first() if len(df) else df


def train_lora(model, tokenizer, train_rows: list[dict], eval_rows: list[dict], cfg: CourseConfig,
               output_dir: str | Path) -> TrainResult:
    """Attach LoRA (once) and run SFTTrainer; returns the model, the loss log and the speed."""
    import datasets
    from transformers import set_seed

    from .data import to_dataset

    datasets.disable_progress_bars()  # tokenizing a few hundred quotes is instant; keep the notebook readable
    set_seed(cfg.train.seed)
    model = attach_lora(model, cfg.lora, quantized=cfg.model.quantization == "nf4",
                        gradient_checkpointing=cfg.train.gradient_checkpointing)
    trainer = _trainer_class()(
        model=model,
        args=sft_config(cfg.train, output_dir, cfg.precision, len(eval_rows)),
        train_dataset=to_dataset(train_rows),
        eval_dataset=to_dataset(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        fast_loss=cfg.train.fast_loss,
    )
    start = time.time()
    trainer.train()
    seconds = time.time() - start
    examples = cfg.train.max_steps * cfg.train.batch_size * cfg.train.grad_accum
    model.eval()
    return TrainResult(model=trainer.model, log=loss_log(trainer), seconds=seconds,
                       samples_per_second=examples / seconds, trainer=trainer)


@torch.no_grad()
def held_out_loss(model, tokenizer, rows: list[dict], max_length: int = 128, batch_size: int = 16) -> float:
    """Mean next-token loss on `rows` (texts end with EOS, as in training)."""
    model.eval()
    device = next(model.parameters()).device
    total = count = 0.0
    for i in range(0, len(rows), batch_size):
        texts = [r["text"] + tokenizer.eos_token for r in rows[i:i + batch_size]]
        enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length).to(device)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        n = int((labels[:, 1:] != -100).sum())
        total += float(causal_lm_loss(model, enc["input_ids"], enc["attention_mask"], labels)) * n
        count += n
    return total / count
