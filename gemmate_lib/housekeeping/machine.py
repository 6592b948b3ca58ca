"""The machine, as the course reads it (housekeeping: no lesson teaches it): its CPU's bf16 units, the facts
a run's manifest and 00_setup print (`describe_hardware`), and memory: the peak lines 03-05 print, and freed
memory handed back between one model copy and the next. hardware.py's precision choice reads the CPU flags."""
from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
from pathlib import Path

import torch


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True when the CPU has AVX512_BF16 or AMX (fast bf16 matmuls); False where it cannot tell."""
    try:
        flags = Path(cpuinfo).read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_bf16_units(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's bf16 matrix units: "AMX", "AVX512_BF16", or "" (none, or cannot tell). Both count as native
    bf16, but AMX multiplies several times faster: a timing measured on one is no reference for the other."""
    try:
        flags = Path(cpuinfo).read_text()
    except OSError:
        return ""
    return "AMX" if "amx_bf16" in flags else "AVX512_BF16" if "avx512_bf16" in flags else ""


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), or the platform's word for it: a timing names its CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_hardware() -> dict:
    """Facts about this machine for the run manifest and 00_setup's printout."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "cpu_native_bf16": cpu_has_native_bf16(),
            "cuda": torch.cuda.is_available()}
    with contextlib.suppress(ValueError, OSError, AttributeError):
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages / 2**30, 1)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


_GPU_PEAK = [0]  # bytes: the highest peak gpu_memory read before it reset torch's peak counters


def peak_memory_gib() -> float:
    """This process's peak memory so far, in GiB, as gpu_memory counts it: on CUDA what the process held at
    its peak (the allocator's reserve plus the CUDA context), also across gpu_memory's resets; without CUDA
    the resident peak (the model lives in RAM). Every notebook's manifest entry records it (run_folder)."""
    if not torch.cuda.is_available():
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # Linux reports kB
    free, total = torch.cuda.mem_get_info()
    outside = max(0, total - free - torch.cuda.memory_reserved())
    return max(_GPU_PEAK[0], torch.cuda.max_memory_reserved() + outside) / 2**30


def gpu_memory(label: str) -> str:
    """One line with the peak GPU memory since the last call (then reset): 03, 04 and 05 print it, so a
    learner sees how close a T4 (15 GB) is to its limit. The figure is what the process holds at its peak:
    what the allocator reserved (more than the tensors: it keeps freed blocks for reuse) plus what the CUDA
    context and libraries hold outside it, read from the driver (torch.cuda.mem_get_info). Without CUDA, the
    process's peak resident memory so far, where the model lives on a CPU."""
    if not torch.cuda.is_available():
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports kB
        return f"no GPU: the model is in RAM; this process's resident peak {peak / 2**30:.1f} GiB so far"
    free, total = torch.cuda.mem_get_info()
    outside = max(0, total - free - torch.cuda.memory_reserved())  # CUDA context, cuBLAS workspaces
    tensors, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    _GPU_PEAK[0] = max(_GPU_PEAK[0], reserved + outside)  # kept across the reset: peak_memory_gib reads it
    torch.cuda.reset_peak_memory_stats()
    gib = 2**30
    return (f"peak GPU memory {label}: {(reserved + outside) / gib:.1f} GiB of {total / gib:.1f} GiB "
            f"(tensors {tensors / gib:.1f}, allocator's reserve {(reserved - tensors) / gib:.1f}, "
            f"CUDA context {outside / gib:.1f})")


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

