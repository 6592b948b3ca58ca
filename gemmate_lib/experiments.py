"""Short training runs side by side on the same data and steps (03_lora_sft, 06_compare_methods): CPU LoRA
against QLoRA, whole-text against completion-only loss, the methods of methods.py. Each arm trains a fresh
model and reports trainable weights, seconds per step, memory, the loss curve and held-out losses."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback

from gemmate_lib.config import CourseConfig
from gemmate_lib.hardware import free_memory


class PeakMemory:
    """Peak memory added inside the `with` block: GPU allocator peak on CUDA, sampled process RSS on a CPU."""

    def __init__(self, device: str = "cpu", interval: float = 0.02):
        self.device, self.interval, self.peak_mib = device, interval, 0.0

    def __enter__(self):
        import psutil
        import torch

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
        import torch

        if self.device == "cuda":
            self.peak_mib = (torch.cuda.max_memory_allocated() - self._start) / 2**20
        else:
            self._stop = True
            self._thread.join()
            self._peak = max(self._peak, self._proc.memory_info().rss)
            self.peak_mib = (self._peak - self._start) / 2**20
        return False


class StepTimer(TrainerCallback):
    """Wall-clock seconds of each optimizer step (`on_step_begin` to `on_step_end`): the work a method
    changes, without the set-up, batch fetching and logging that would blur a comparison of a few steps. On a
    GPU the clock waits for queued kernels."""

    clock = staticmethod(time.perf_counter)  # seconds; tests swap in a clock of their own

    def __init__(self):
        self.seconds: list[float] = []
        self._start = None

    def _now(self) -> float:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        return self.clock()

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


def measure(model, tokenizer, rows: list[dict], max_length: int = 128, format_check: bool = False) -> dict:
    """Held-out loss on the whole text and on the completion (data.char_spans); optionally format compliance.
    """
    from gemmate_lib.evaluation import example_nll_by_part, format_generations

    model.eval()
    out = {}
    for part, nll in example_nll_by_part(model, tokenizer, rows, ("text", "completion"), max_length).items():
        out[f"held_out_loss_{part}"] = round(sum(s for s, _ in nll) / sum(n for _, n in nll), 3)
    if format_check:
        ok = format_generations(model, tokenizer, rows)[2]
        out["format_compliance"] = round(sum(ok) / len(ok), 3)
    return out


def padding_share(lengths: list[int], batch_size: int, grouped: bool, seed: int = 0) -> float:
    """Share of a pass's tokens that are padding, in random batches or grouped (sorted) by length, as
    transformers' length-grouped sampler does when the data fits in one mega-batch of 50 batches (here)."""
    import random

    order = sorted(lengths, reverse=True) if grouped else random.Random(seed).sample(lengths, len(lengths))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    padded = sum(max(b) * len(b) for b in batches)
    return 1 - sum(lengths) / padded


@dataclass
class Arm:
    name: str  # what this arm trains, e.g. "QLoRA (NF4, paged 8-bit AdamW, checkpointing)"
    summary: dict  # the numbers of the comparison table
    log: object  # the trainer's loss log (pandas DataFrame)
    model: object = None  # the trained model, when keep_model=True


LORA = "lora"  # train_arm's default adapter: the course's LoRA, built from the config


def train_arm(name: str, cfg: CourseConfig, tokenizer, train_rows: list[dict], eval_rows: list[dict],
              output_dir, format_check: bool = False, keep_model: bool = False, adapter=LORA, save_dir=None,
              start_loss: bool = False, callbacks=None) -> Arm:
    """Load a fresh model as `cfg` says, add `adapter` (LORA: the course's, any PEFT config, or None for full
    fine-tuning), train `cfg.train.max_steps` steps, measure. `save_dir`: save what trained and report its
    size. `start_loss`: also the held-out loss before training (06: prompt and prefix tuning change it)."""
    from gemmate_lib.errors import HardwareError
    from gemmate_lib.methods import check_full_finetuning, full_finetuning_precision
    from gemmate_lib.models import count_parameters, footprint_mib, load_model
    from gemmate_lib.training import attach_lora, loss_log, sft_trainer

    # full fine-tuning trains fp32 master weights under 16-bit autocast (the trainer's bf16/fp16 stays on)
    precision = cfg.precision if adapter is not None else full_finetuning_precision(cfg.precision)

    def fresh():
        model = load_model(cfg.model.model_name, precision, cfg.model.quantization)
        if adapter is None:
            try:
                # a clear stop before OOM
                check_full_finetuning(count_parameters(model)[1], cfg.precision.device)
            except HardwareError:
                # the error's traceback keeps this frame alive: drop the weights (~5 GB on a T4) first
                del model
                free_memory()
                raise
            return model
        return attach_lora(model, cfg, quiet=True, peft_config=None if adapter == LORA else adapter)  # seeded

    model = fresh()
    trainable, total = count_parameters(model)
    trainer = sft_trainer(model, tokenizer, train_rows, [], cfg, output_dir, callbacks=callbacks)
    timer = StepTimer()
    trainer.add_callback(timer)  # last: it starts after the others' step begins, stops after their step ends
    with PeakMemory(cfg.precision.device) as memory:
        trainer.train()
    model = trainer.model
    weights_mib = round(footprint_mib(model))  # as trained: full fine-tuning's fp32 master weights
    if precision is not cfg.precision:
        model.to(cfg.precision.dtype)  # measured and saved in the compute dtype, as the other methods are
    summary = {"setting": name, "trainable": trainable, "trainable_share": trainable / total,
               "weights_mib": weights_mib, "training_peak_mib": round(memory.peak_mib),
               "seconds_per_step": round(timer.per_step(), 3),
               **measure(model, tokenizer, eval_rows, cfg.train.max_length, format_check)}
    if save_dir is not None:
        model.save_pretrained(save_dir)  # safetensors: the adapter only, or every weight for full fine-tuning
        saved = sum(p.stat().st_size for p in Path(save_dir).rglob("*.safetensors"))
        summary["saved_mib"] = round(saved / 2**20, 2)
    arm = Arm(name, summary, loss_log(trainer), model if keep_model else None)
    del model, trainer
    free_memory()
    # on a second, identically seeded copy, after training: a pass before it would hide ~1 GB of the peak
    if start_loss:
        summary["held_out_loss_start"] = measure(fresh(), tokenizer, eval_rows,
                                                 cfg.train.max_length)["held_out_loss_text"]
        free_memory()
    return arm
