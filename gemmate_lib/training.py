"""Training (03_lora_sft, 06, 07; `gemmate train` and `train-te` through it): the one builder of the Hugging
Face training objects (`lora_config`, `training_args`) and the one training path, `train`, that every way in
calls."""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter

import datasets
import pandas as pd
import psutil
import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import TrainerCallback, TrainingArguments, set_seed
from trl import SFTConfig, SFTTrainer

from gemmate_lib.config import CourseConfig
from gemmate_lib.data import to_dataset
from gemmate_lib.fast_loss import causal_lm_loss
from gemmate_lib.generations import generation_of, lora_targets, stop_token_ids
from gemmate_lib.guard_rails.errors import ParameterError
from gemmate_lib.hardware import free_memory
from gemmate_lib.resume import TrainingClock, keep_trainable_dtypes, train_seconds


def lora_config(cfg: CourseConfig, tokenizer=None):
    """peft.LoraConfig from the course's LoRA settings (03 writes the same call out), on the text model's
    layers only (generations.lora_targets). `lora_trainable_tokens` train their embeddings too: a base model's
    `<end_of_turn>` was never trained, so a chat fine-tune that leaves it learns to stop late or never."""
    value = cfg.lora.lora_target_modules  # PEFT reads one string as a regular expression over module paths
    names = [n.strip() for n in value.split(",") if n.strip()] if isinstance(value, str) else list(value)
    targets = lora_targets(cfg.model.model_name, "all-linear" if names == ["all-linear"] else names)
    tokens = cfg.lora.lora_trainable_tokens
    if tokens and tokenizer is None:
        raise ParameterError("lora_trainable_tokens needs the tokenizer to find the tokens' ids",
                             "pass tokenizer= to lora_config / attach_lora")
    vocab = tokenizer.get_vocab() if tokens else {}
    missing = [t for t in tokens if t not in vocab]
    if missing:
        raise ParameterError(f"lora_trainable_tokens: {', '.join(missing)} not in the tokenizer's vocabulary",
                             "name special tokens exactly as the tokenizer writes them, e.g. <end_of_turn>")
    return LoraConfig(r=cfg.lora.lora_r, lora_alpha=cfg.lora.lora_alpha, lora_dropout=cfg.lora.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM",
                      trainable_token_indices=[vocab[t] for t in tokens] or None)


def prepare_base(model, cfg: CourseConfig):
    """The QLoRA recipe's `prepare_model_for_kbit_training` on a 4-bit base; a 16-bit one comes back as it
    is. A reload check loads its base the same way (07), or compares an fp32 embedding with a 16-bit one."""
    if not getattr(model, "is_loaded_in_4bit", False):
        return model
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)


def attach_lora(model, cfg: CourseConfig, quiet: bool = False, peft_config=None, tokenizer=None):
    """Wrap `model` (after `prepare_base`) with the course's LoRA or `peft_config`'s method (06), seeded with
    `cfg.train.seed`; a model that already has an adapter comes back unchanged."""
    if getattr(peft_config, "peft_type", None) == "PREFIX_TUNING" and cfg.train.gradient_checkpointing:
        # said here: else a size mismatch deep in attention, mid-training
        raise ParameterError("prefix tuning cannot train with gradient_checkpointing=True: its learned "
                             "keys and values live in the attention cache, which checkpointing switches off",
                             "set gradient_checkpointing=False (06 does), or use prompt tuning or LoRA")
    if isinstance(model, PeftModel) or getattr(model, "peft_config", None):
        if not quiet:
            print("this model already has a LoRA adapter (this cell ran before): keeping it, not wrapping "
                  "twice")
        return model
    peft_config = peft_config or lora_config(cfg, tokenizer)
    model = prepare_base(model, cfg)
    set_seed(cfg.train.seed)
    return get_peft_model(model, peft_config)


def training_kwargs(cfg: CourseConfig, output_dir: str | Path, *, has_eval: bool, sft: bool = True,
                    **extras) -> dict:
    """SFTConfig (sft=False: TrainingArguments) kwargs for `cfg` plus `extras`: the recipe 03 writes out, then
    the settings that differ from the defaults. It keeps the last checkpoint only, every `save_steps` steps
    (gemmate_lib.resume: a rerun resumes), none where save_steps is 0."""
    t, precision = cfg.train, cfg.precision
    evaluate = has_eval and t.val_steps_freq > 0
    kwargs = dict(
        output_dir=str(output_dir), max_steps=t.max_steps, per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps, learning_rate=t.learning_rate,
        warmup_steps=t.warmup_steps, optim=t.optim,
        bf16=precision.name == "bf16", fp16=precision.name == "fp16", use_cpu=precision.device == "cpu",
        activation_checkpointing=t.gradient_checkpointing,  # gradient_checkpointing before transformers 5.23
        logging_steps=min(t.steps_freq, t.max_steps) if t.max_steps > 0 else t.steps_freq,  # >= 1 loss logged
        eval_strategy="steps" if evaluate else "no", eval_steps=t.val_steps_freq if evaluate else None,
        save_strategy="steps" if t.save_steps else "no",
        report_to=t.report_to, seed=t.seed, data_seed=t.seed, disable_tqdm=False,
    )
    if sft:
        kwargs.update(max_length=t.max_length, packing=False, completion_only_loss=t.completion_only_loss,
                      train_sampling_strategy="group_by_length" if t.group_by_length else "random")
    optional = dict(
        save_steps=t.save_steps or None, save_total_limit=1 if t.save_steps else None,
        num_train_epochs=t.num_epochs if t.max_steps <= 0 else None, weight_decay=t.weight_decay or None,
        log_level=t.log_level if t.log_level != "warning" else None, full_determinism=t.deterministic or None,
    )
    return {**kwargs, **{k: v for k, v in optional.items() if v is not None}, **extras}


def training_args(cfg: CourseConfig, output_dir: str | Path, *, has_eval: bool, sft: bool = True, **extras):
    """The SFTConfig (or, with sft=False, TrainingArguments) for `cfg`: the course's one builder of them."""
    kwargs = training_kwargs(cfg, output_dir, has_eval=has_eval, sft=sft, **extras)
    return SFTConfig(**kwargs) if sft else TrainingArguments(**kwargs)


class CourseSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss runs the LM head on labelled tokens only (fast_loss.py), counting the non-padding
    tokens it trains (`tokens_trained`). Trainable weights are fp32 wherever compute is not bf16: fp16's grad
    scaler refuses bf16 gradients, and fp32 compute (Gemma 3 on a T4) must not train bf16 weights."""

    def __init__(self, *args, fast_loss: bool = True, preflight: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.preflight = preflight
        # TRL casts a 4-bit model's LoRA weights to bf16 whatever the compute dtype (03's cell undoes it too)
        if not self.args.bf16:
            for param in self.model.parameters():
                if param.requires_grad and param.dtype != torch.float32:
                    param.data = param.data.float()
        self.fast_loss = fast_loss  # a capped model (Gemma 4) takes its own logits there (causal_lm_loss)
        self.tokens_trained = 0

    def train(self, *args, **kwargs):
        """`preflight=True`: the pre-flight check (preflight.py) on the first batch, then training with the
        gradient tripwire after its first optimizer step."""
        if self.preflight:
            from gemmate_lib.preflight import GradientTripwire, preflight

            batch = next(iter(self.get_train_dataloader()))
            preflight(self.model, batch, stop_token_ids(self.processing_class, generation_of(self.model)))
            if not any(isinstance(c, GradientTripwire) for c in self.callback_handler.callbacks):
                self.add_callback(GradientTripwire())
        return super().train(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.tokens_trained += int(inputs["attention_mask"].sum())
        if not self.fast_loss or (return_outputs and self.compute_metrics is not None):  # metrics need logits
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = causal_lm_loss(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"],
                              num_items_in_batch)
        # evaluation asks for outputs; it needs the loss only
        return (loss, {"loss": loss}) if return_outputs else loss


def cpu_speedups(trainer_class, train_dataset, eval_dataset, tokenizer, enabled: bool = True):
    """03's one droppable line: when `enabled` (the CPU profile), CourseSFTTrainer and datasets pre-tokenized
    as SFTTrainer would (data.to_dataset): a text column, or prompt and completion columns (TRL leaves the
    prompt's tokens out of a completion-only loss); else its inputs unchanged. Same loss, only faster."""
    if not enabled:
        return trainer_class, train_dataset, eval_dataset

    def tokenized(d):
        if "prompt" in d.column_names:
            return to_dataset([{"text": p + c, "prompt": p} for p, c in zip(d["prompt"], d["completion"])],
                              tokenizer, completion_only=True)
        return to_dataset([{"text": t} for t in d["text"]], tokenizer)

    return CourseSFTTrainer, *(tokenized(d) if d is not None else None for d in (train_dataset, eval_dataset))


@dataclass
class TrainResult:
    model: object  # the trained model (PEFT model, or GemmaTE's wrapper), in eval mode
    log: object  # pandas DataFrame: step, loss, eval_loss, learning_rate
    seconds: float  # wall time of trainer.train(), start-up included; a resumed run's over every stretch
    steps: int  # optimizer steps taken
    trainer: object = None  # the trainer, for a look inside
    seconds_per_step: float | None = None  # with measure_cost: StepTimer's mean
    peak_mib: float | None = None  # with measure_cost: memory training added at its peak (PeakMemory)


class PeakMemory:
    """Peak memory added inside the `with` block: GPU allocator peak on CUDA, sampled process RSS on a CPU."""

    def __init__(self, device: str = "cpu", interval: float = 0.02):
        self.device, self.interval, self.peak_mib = device, interval, 0.0

    def __enter__(self):
        free_memory()
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
            return self
        self._proc, self._stop = psutil.Process(), False
        self._start = self._peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop:
            self._peak = max(self._peak, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        if self.device == "cuda":
            self.peak_mib = (torch.cuda.max_memory_allocated() - self._start) / 2**20
            return
        self._stop = True
        self._thread.join()
        self._peak = max(self._peak, self._proc.memory_info().rss)
        self.peak_mib = (self._peak - self._start) / 2**20


class StepTimer(TrainerCallback):
    """Wall-clock seconds of each optimizer step (`on_step_begin` to `on_step_end`), without the set-up, batch
    fetching and logging that would blur a comparison of a few steps. On a GPU the clock waits for kernels."""

    def __init__(self):
        self.seconds: list[float] = []
        self._start = None

    def _now(self) -> float:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        return perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = self._now()

    def on_step_end(self, args, state, control, **kwargs):
        if self._start is not None:
            self.seconds.append(self._now() - self._start)
            self._start = None

    def per_step(self) -> float:
        """Mean seconds of a step, without the first (one-off costs) if there are others; NaN before any."""
        timed = self.seconds[1:] or self.seconds
        return sum(timed) / len(timed) if timed else float("nan")


def loss_log(trainer):
    """The trainer's log history as a DataFrame with one row per logged step."""
    columns = ["step", "loss", "eval_loss", "learning_rate"]
    rows = [{k: v for k, v in entry.items() if k in columns}
            for entry in trainer.state.log_history if "loss" in entry or "eval_loss" in entry]
    df = pd.DataFrame(rows, columns=columns)
    return df.groupby("step", as_index=False).first() if len(df) else df


def sft_trainer(model, tokenizer, train_rows: list[dict], eval_rows: list[dict], cfg: CourseConfig,
                output_dir: str | Path, callbacks=None, **extras) -> CourseSFTTrainer:
    """The course's SFTTrainer on `model` (already wrapped with LoRA) and rows with a `text` field; `extras`
    go to the SFTConfig (the benchmark's arms, `gemmate train`'s checkpoint policy)."""
    datasets.disable_progress_bars()  # tokenizing a few hundred quotes is instant; keep the notebook readable
    t = cfg.train
    set_seed(t.seed)
    return CourseSFTTrainer(
        model=model, args=training_args(cfg, output_dir, has_eval=bool(eval_rows), **extras),
        train_dataset=to_dataset(train_rows, tokenizer, t.completion_only_loss),
        eval_dataset=to_dataset(eval_rows, tokenizer, t.completion_only_loss) if eval_rows else None,
        processing_class=tokenizer, fast_loss=t.fast_loss, callbacks=callbacks, preflight=t.preflight)


def train(model, tokenizer, train_data, eval_data, cfg: CourseConfig, output_dir: str | Path, *,
          callbacks=None, resume_from_checkpoint: str | None = None, measure_cost: bool = False,
          unwrap: bool = True, data_collator=None, trainer_class=None, optimizer=None,
          **extras) -> TrainResult:
    """The course's one training path (03, 05, 06, 07, `gemmate train`), on a `model` with its adapter. Rows
    with a `text` field train with CourseSFTTrainer (`extras`: training_args); GemmaTE's data comes with its
    `trainer_class`, `data_collator` and `optimizer`. `measure_cost`: seconds per step and peak memory (06).
    The model comes back in eval mode, off accelerate's mixed-precision forward (it computes unlike the same
    weights loaded from disk); `unwrap=False` keeps it, as the arms trained."""
    set_seed(cfg.train.seed)
    if trainer_class is not None:
        args = training_args(cfg, output_dir, has_eval=False, sft=False,
                             remove_unused_columns=False)  # keep the columns forward() does not name
        trainer = trainer_class(model=model, args=args, train_dataset=train_data, callbacks=callbacks,
                                data_collator=data_collator, optimizers=(optimizer, None))
    else:
        trainer = sft_trainer(model, tokenizer, train_data, eval_data, cfg, output_dir, callbacks, **extras)
    if resume_from_checkpoint:  # the resumed run in the precision it was trained in (gemmate_lib.resume)
        keep_trainable_dtypes(trainer)
    trainer.add_callback(TrainingClock())  # a resumed run's seconds count every stretch
    timer = StepTimer()
    if measure_cost:
        trainer.add_callback(timer)  # last: starts after the others' step begins, stops after their step ends
    with PeakMemory(cfg.precision.device) if measure_cost else contextlib.nullcontext() as memory:
        start = time.time()
        trainer.train(resume_from_checkpoint=resume_from_checkpoint)
        seconds = train_seconds(trainer, time.time() - start)
    model = (trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False) if unwrap
             else trainer.model)
    model.eval()
    return TrainResult(model, loss_log(trainer), seconds, trainer.state.global_step, trainer,
                       timer.per_step() if measure_cost else None, memory.peak_mib if measure_cost else None)


def train_lora(model, tokenizer, train_rows: list[dict], eval_rows: list[dict], cfg: CourseConfig,
               output_dir: str | Path) -> TrainResult:
    """Attach LoRA (once), then `train` (05's second adapter)."""
    model = attach_lora(model, cfg, quiet=True, tokenizer=tokenizer)
    return train(model, tokenizer, train_rows, eval_rows, cfg, output_dir)
