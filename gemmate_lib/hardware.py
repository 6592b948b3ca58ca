"""Hardware and precision (taught in 00_setup), the course's first choice: one function decides device and
compute dtype. bf16 where it is native (compute capability 8.0+, some CPUs), fp16 on a T4, fp32 on other CPUs
(emulated bf16 is far slower; 00 measures it). The machine's facts and memory lines it reads are plumbing
(housekeeping/machine.py)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from gemmate_lib.housekeeping.errors import HardwareError
from gemmate_lib.housekeeping.machine import cpu_has_native_bf16

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Precision:
    device: str  # "cuda" or "cpu": where the model runs
    dtype: torch.dtype  # compute dtype for weights and activations
    reason: str  # one sentence a learner can read: why this choice

    @property
    def name(self) -> str:
        """Short dtype name, "bf16" / "fp16" / "fp32", as TrainingArguments want it."""
        return {dtype: name for name, dtype in DTYPES.items()}[self.dtype]


def check_one_gpu() -> None:
    """HardwareError when one process sees two or more CUDA GPUs: the model sits on GPU 0, but the Trainer
    counts every visible GPU (TRL's SFTTrainer then stops with a ValueError, a plain Trainer wraps the model
    in DataParallel). Processes that `accelerate launch` / torchrun start (WORLD_SIZE > 1) use a GPU each."""
    count = torch.cuda.device_count()
    if count >= 2 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        raise HardwareError(f"{count} CUDA GPUs are visible to this process, but the course trains on one",
                            "start Jupyter or the command with CUDA_VISIBLE_DEVICES=0 (one GPU), or run one "
                            "process per GPU with `accelerate launch` (docs/command-line.md)")


def pick_precision(device: str | None = None, dtype: str | None = None) -> Precision:
    """Choose device and compute dtype for this machine; `device` or `dtype` given force that choice."""
    if dtype is not None:
        if dtype not in DTYPES:
            raise HardwareError(f"unknown dtype {dtype!r}",
                                'use dtype="bf16", "fp16", "fp32" or None (automatic)')
        chosen = pick_precision(device)
        return Precision(chosen.device, DTYPES[dtype],
                         f"{dtype} was asked for (automatic choice: {chosen.name})")
    if device not in (None, "cpu", "cuda"):
        raise HardwareError(f"unknown device {device!r}", 'use device="cpu", "cuda" or None (automatic)')
    if device == "cuda" and not torch.cuda.is_available():
        raise HardwareError("device='cuda' was asked for, but no CUDA GPU is visible to PyTorch",
                            "in Colab choose Runtime > Change runtime type > T4 "
                            "GPU; elsewhere pass device=None to run on the CPU")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        check_one_gpu()
        name = torch.cuda.get_device_name(0)
        # Not torch.cuda.is_bf16_supported(): in torch 2.13 it is True on a T4 too, counting emulation.
        major, minor = torch.cuda.get_device_capability(0)
        if major >= 8:
            return Precision("cuda", torch.bfloat16, f"{name} (compute capability {major}.{minor}) "
                                                     f"has native bf16: fp32's range, half the memory")
        return Precision("cuda", torch.float16,
                         f"{name} (compute capability {major}.{minor}, before Ampere's 8.0, "
                         "e.g. a T4) has no native bf16: fp16 with loss scaling")
    if cpu_has_native_bf16():
        return Precision("cpu", torch.bfloat16, "this CPU has native bf16 matrix instructions "
                                                "(AVX512_BF16/AMX): bf16 matmuls run faster than fp32")
    return Precision("cpu", torch.float32, "this CPU has no native bf16 instructions: bf16 "
                                           "would be emulated, many times slower than fp32")
