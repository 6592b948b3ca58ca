"""The machine (taught in 00_setup), the course's first choice: one function decides device and compute dtype.
bf16 where it is native (compute capability 8.0+, a CPU with AVX512_BF16 or AMX), fp16 on a T4, fp32 on other
CPUs (emulated bf16 is far slower; 00 measures it). Also what the notebooks read of the machine: its facts
(00 prints them, every run's manifest records them), the peak memory lines 03-05 print, and freed memory
handed back between one model copy and the next."""
from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from gemmate_lib.guard_rails.errors import HardwareError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
GIB = 2**30


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
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
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


def cpu_bf16_units(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's bf16 matrix units: "AMX", "AVX512_BF16", or "" (none, or cannot tell). Both count as native
    bf16, but AMX multiplies several times faster: a timing measured on one is no reference for the other."""
    try:
        flags = Path(cpuinfo).read_text()
    except OSError:
        return ""
    return "AMX" if "amx_bf16" in flags else "AVX512_BF16" if "avx512_bf16" in flags else ""


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True when the CPU has AVX512_BF16 or AMX (fast bf16 matmuls); False where it cannot tell."""
    return bool(cpu_bf16_units(cpuinfo))


def describe_hardware() -> dict:
    """Facts about this machine for the run manifest and 00_setup's printout."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "cpu_native_bf16": cpu_has_native_bf16(),
            "cuda": torch.cuda.is_available()}
    with contextlib.suppress(ValueError, OSError, AttributeError):
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages / GIB, 1)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / GIB, 1)
    return info


_GPU_PEAK = [0]  # bytes: the highest peak gpu_memory read before it reset torch's peak counters


def _resident_peak() -> int:
    """This process's peak resident memory so far, in bytes (where the model lives without CUDA)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports kB


def _outside_allocator() -> tuple[int, int]:
    """(bytes the process holds on the GPU outside torch's allocator: the CUDA context, cuBLAS workspaces,
    read from the driver; the GPU's total bytes)."""
    free, total = torch.cuda.mem_get_info()
    return max(0, total - free - torch.cuda.memory_reserved()), total


def peak_memory_gib() -> float:
    """This process's peak memory so far, in GiB, as gpu_memory counts it, also across gpu_memory's resets.
    Every notebook's manifest entry records it (run_folder)."""
    if not torch.cuda.is_available():
        return _resident_peak() / GIB
    outside, _ = _outside_allocator()
    return max(_GPU_PEAK[0], torch.cuda.max_memory_reserved() + outside) / GIB


def gpu_memory(label: str) -> str:
    """One line with the peak GPU memory since the last call (then reset), so a learner sees how close a T4
    (15 GB) is to its limit: what the process held at its peak, the allocator's reserve (more than the
    tensors: it keeps freed blocks for reuse) plus what the CUDA context and libraries hold outside it.
    Without CUDA, the process's peak resident memory so far, where the model lives on a CPU."""
    if not torch.cuda.is_available():
        peak = _resident_peak() / GIB
        return f"no GPU: the model is in RAM; this process's resident peak {peak:.1f} GiB so far"
    outside, total = _outside_allocator()
    tensors, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    _GPU_PEAK[0] = max(_GPU_PEAK[0], reserved + outside)  # kept across the reset: peak_memory_gib reads it
    torch.cuda.reset_peak_memory_stats()
    return (f"peak GPU memory {label}: {(reserved + outside) / GIB:.1f} GiB of {total / GIB:.1f} GiB "
            f"(tensors {tensors / GIB:.1f}, allocator's reserve {(reserved - tensors) / GIB:.1f}, "
            f"CUDA context {outside / GIB:.1f})")


@contextlib.contextmanager
def freed_memory_returned():
    """Inside the block, glibc hands every freed buffer over 1 MiB straight back to the system. A load
    converts tensor after tensor on the CPU and frees each; with glibc's default (its mmap threshold grows to
    the size of a freed buffer, up to 32 MiB), buffers under that size stay in the process after they are
    freed: a 16/32-bit load of Gemma 3 1B held 2.7 GB at its end instead of 1.5 at its peak (make rehearse).
    Afterwards the threshold stays at 32 MiB (where glibc's own would have grown to) and the heap is trimmed.
    Elsewhere than glibc it changes nothing."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows)
        yield
        return
    M_MMAP_THRESHOLD = -3  # malloc.h
    mallopt(M_MMAP_THRESHOLD, 2**20)
    try:
        yield
    finally:
        mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
        libc.malloc_trim(0)


def free_memory() -> None:
    """Return freed memory to the system and CUDA's cache; call after `del model` before loading the next one.
    glibc's `malloc_trim` hands freed heap pages back, so the RSS that 03 and 06 sample shows what is live."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, Windows): RSS over-counts a little
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
