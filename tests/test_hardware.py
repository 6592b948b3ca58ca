"""The machine (gemmate_lib/hardware.py): the device and precision chosen for each GPU's compute capability
and each CPU's flags, with the sentence 00_setup prints for it; the errors that stop a wrong choice; the
machine's facts; the memory lines 03-05 print and the peak every manifest entry records; freed memory handed
back.
Faked only where the course reads the machine: torch.cuda's answers (fake_gpu), /proc/cpuinfo (fake_cpuinfo),
os.sysconf (fake_host), getrusage, libc."""
import ctypes
import os
import platform
import resource
import types
from pathlib import Path

import pytest
import torch

from gemmate_lib import hardware
from gemmate_lib.guard_rails.errors import HardwareError

GIB = 2**30
BF16_CPU = ("this CPU has native bf16 matrix instructions (AVX512_BF16/AMX): bf16 matmuls run faster than "
            "fp32")
FP32_CPU = "this CPU has no native bf16 instructions: bf16 would be emulated, many times slower than fp32"


@pytest.fixture()
def fake_cpuinfo(monkeypatch):
    """`fake_cpuinfo("fpu avx512_bf16")`: /proc/cpuinfo as a CPU with these flags shows it; None: there is no
    /proc/cpuinfo (macOS, Windows). Every other file reads as it is."""
    read_text = Path.read_text

    def fake(flags: str | None):
        def read(path, *args, **kwargs):
            if str(path) != "/proc/cpuinfo":
                return read_text(path, *args, **kwargs)
            if flags is None:
                raise FileNotFoundError(2, "No such file or directory", str(path))
            return f"processor\t: 0\nflags\t\t: {flags}\n"

        monkeypatch.setattr(Path, "read_text", read)

    return fake


@pytest.fixture()
def one_process(monkeypatch):
    """A notebook's or the command's own process (not one of `accelerate launch`'s)."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)


@pytest.mark.parametrize("flags, native, units", [("fpu avx2 avx512f", False, ""),
                                                  ("fpu avx512f avx512_bf16", True, "AVX512_BF16"),
                                                  ("fpu avx512_bf16 amx_bf16 amx_tile", True, "AMX"),
                                                  (None, False, "")])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, fake_cpuinfo, flags, native, units):
    cpuinfo = tmp_path / "cpuinfo"
    if flags is not None:  # None: no /proc/cpuinfo (macOS, Windows)
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert hardware.cpu_has_native_bf16(cpuinfo) is native
    assert hardware.cpu_bf16_units(cpuinfo) == units
    fake_cpuinfo(flags)  # the same flags where the course reads them by default
    assert (hardware.cpu_has_native_bf16(), hardware.cpu_bf16_units()) == (native, units)


CHOICES = [  # (GPU capability or None, CPU flags, device asked for, device, dtype, the sentence 00 prints)
    ((8, 0), "fpu avx2", None, "cuda", torch.bfloat16,
     "NVIDIA A100 (compute capability 8.0) has native bf16: fp32's range, half the memory"),
    ((9, 0), "fpu avx2", "cuda", "cuda", torch.bfloat16,
     "NVIDIA A100 (compute capability 9.0) has native bf16: fp32's range, half the memory"),
    ((7, 5), "fpu avx2", None, "cuda", torch.float16,  # is_bf16_supported() says True here: emulation
     "Tesla T4 (compute capability 7.5, before Ampere's 8.0, e.g. a T4) has no native bf16: fp16 with loss "
     "scaling"),
    ((7, 5), "fpu amx_bf16", "cuda", "cuda", torch.float16,
     "Tesla T4 (compute capability 7.5, before Ampere's 8.0, e.g. a T4) has no native bf16: fp16 with loss "
     "scaling"),
    (None, "fpu avx512f avx512_bf16", None, "cpu", torch.bfloat16, BF16_CPU),
    (None, "fpu avx512_bf16 amx_bf16", "cpu", "cpu", torch.bfloat16, BF16_CPU),
    (None, "fpu avx2 avx512f", None, "cpu", torch.float32, FP32_CPU),
    (None, None, None, "cpu", torch.float32, FP32_CPU),  # no /proc/cpuinfo: cannot tell, so fp32
    ((8, 0), "fpu avx2", "cpu", "cpu", torch.float32, FP32_CPU),  # the CPU asked for beside a GPU
    ((7, 5), "fpu amx_bf16", "cpu", "cpu", torch.bfloat16, BF16_CPU),
]


@pytest.mark.parametrize("capability, flags, asked, device, dtype, reason", CHOICES,
                         ids=[f"{c or 'no-gpu'}-{f}-{a}" for c, f, a, *_ in CHOICES])
def test_the_precision_follows_compute_capability_and_cpu_flags_with_its_reason(
        fake_gpu, fake_cpuinfo, one_process, capability, flags, asked, device, dtype, reason):
    """Compute capability 8.0+: bf16; a T4 (7.5): fp16, though torch.cuda.is_bf16_supported() says True there
    (emulated); a CPU: bf16 with AVX512_BF16 or AMX, else fp32."""
    fake_gpu(capability)
    fake_cpuinfo(flags)
    precision = hardware.pick_precision(asked)
    assert precision == hardware.Precision(device, dtype, reason)
    assert precision.name == {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]


@pytest.mark.parametrize("capability, flags, asked, dtype, device, automatic", [
    ((8, 0), "fpu amx_bf16", "cpu", "fp16", "cpu", "bf16"),  # the CPU's own choice, not the GPU's
    ((8, 0), "fpu avx2", "cpu", "bf16", "cpu", "fp32"),
    ((7, 5), "fpu amx_bf16", None, "fp32", "cuda", "fp16"),
    (None, "fpu avx2", None, "bf16", "cpu", "fp32"),
])
def test_a_dtype_asked_for_keeps_the_device_and_names_the_automatic_choice(
        fake_gpu, fake_cpuinfo, one_process, capability, flags, asked, dtype, device, automatic):
    fake_gpu(capability)
    fake_cpuinfo(flags)
    assert hardware.pick_precision(asked, dtype) == hardware.Precision(
        device, hardware.DTYPES[dtype], f"{dtype} was asked for (automatic choice: {automatic})")


def problem_and_fix(call) -> tuple[str, str]:
    with pytest.raises(HardwareError) as err:
        call()
    return err.value.problem, err.value.fix


@pytest.mark.parametrize("device", ["tpu", "CPU", "gpu"])
def test_an_unknown_dtype_or_device_stops_with_the_values_to_use(fake_gpu, device):
    fake_gpu(None)
    assert problem_and_fix(lambda: hardware.pick_precision("cpu", "fp8")) == (
        "unknown dtype 'fp8'", 'use dtype="bf16", "fp16", "fp32" or None (automatic)')
    assert problem_and_fix(lambda: hardware.pick_precision(device)) == (
        f"unknown device {device!r}", 'use device="cpu", "cuda" or None (automatic)')


@pytest.mark.parametrize("dtype", [None, "fp16"])
def test_asking_for_cuda_without_gpu_explains_the_fix(fake_gpu, dtype):
    fake_gpu(None)
    assert problem_and_fix(lambda: hardware.pick_precision("cuda", dtype)) == (
        "device='cuda' was asked for, but no CUDA GPU is visible to PyTorch",
        "in Colab choose Runtime > Change runtime type > T4 GPU; elsewhere pass device=None to run on the "
        "CPU")


def test_describe_hardware_reports_the_gpu_it_sees_and_none_without_one(fake_gpu, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    fake_gpu((7, 5), name="Tesla T4", memory_gib=14.7)
    info = hardware.describe_hardware()
    assert (info["cuda"], info["gpu"], info["gpu_memory_gib"], info["cpu_native_bf16"]) == (True, "Tesla T4",
                                                                                          14.7, True)
    fake_gpu(None)
    info = hardware.describe_hardware()
    assert info["cuda"] is False and "gpu" not in info and "gpu_memory_gib" not in info


def test_describe_hardware_gives_each_fact_with_memory_in_gib_to_one_decimal(fake_gpu, fake_cpuinfo,
                                                                             fake_host):
    """00_setup prints these facts and every manifest records them: a free Colab runtime's 12.7 GB of RAM is
    11.8 GiB, a T4's 15,095 MiB 14.7 GiB."""
    fake_gpu((7, 5), name="Tesla T4", memory_gib=15095 / 1024)
    fake_cpuinfo("fpu avx512_bf16")
    fake_host()
    assert hardware.describe_hardware() == {
        "platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "cpu_native_bf16": True, "cuda": True, "memory_gib": 11.8,
        "gpu": "Tesla T4", "gpu_memory_gib": 14.7}
    fake_cpuinfo("fpu avx2")
    assert hardware.describe_hardware()["cpu_native_bf16"] is False


@pytest.mark.parametrize("failure", [ValueError("unrecognized configuration name"), OSError(22, "Invalid"),
                                     None])
def test_describe_hardware_leaves_out_the_ram_where_the_system_does_not_tell_it(fake_gpu, monkeypatch,
                                                                                failure):
    """os.sysconf may not know the name (ValueError), fail (OSError), or not exist (Windows): the other facts
    remain."""
    def sysconf(name):
        raise failure

    fake_gpu(None)
    if failure is None:
        monkeypatch.delattr(os, "sysconf")
    else:
        monkeypatch.setattr(os, "sysconf", sysconf)
    info = hardware.describe_hardware()
    assert set(info) == {"platform", "python", "cpu_count", "torch_threads", "cpu_native_bf16", "cuda"}


@pytest.mark.parametrize("capability, dtype", [((7, 5), torch.float16), ((8, 0), torch.bfloat16),
                                               ((9, 0), torch.bfloat16)])
def test_gpu_precision_follows_compute_capability_not_is_bf16_supported(fake_gpu, capability, dtype):
    """A T4 (7.5) gets fp16 even though torch.cuda.is_bf16_supported() says True there (emulation)."""
    fake_gpu(capability)  # is_bf16_supported() answers True, as on a T4
    p = hardware.pick_precision()
    assert (p.device, p.dtype) == ("cuda", dtype)
    assert f"{capability[0]}.{capability[1]}" in p.reason


def test_two_visible_gpus_stop_in_one_line_that_names_cuda_visible_devices(monkeypatch, fake_gpu):
    """The model sits on GPU 0, but the Trainer counts every visible GPU: TRL stops with a ValueError and a
    plain Trainer wraps the model in DataParallel. One GPU, or one process per GPU (DDP), is fine."""
    from gemmate_lib.guard_rails.errors import one_line

    fake_gpu((8, 0), count=2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(HardwareError) as err:
        hardware.pick_precision()
    assert "CUDA_VISIBLE_DEVICES=0" in one_line(err.value) and "\n" not in one_line(err.value)
    assert (err.value.problem, err.value.fix) == (
        "2 CUDA GPUs are visible to this process, but the course trains on one",
        "start Jupyter or the command with CUDA_VISIBLE_DEVICES=0 (one GPU), or run one process per GPU with "
        "`accelerate launch` (docs/command-line.md)")
    fake_gpu((8, 0), count=3)
    monkeypatch.setenv("WORLD_SIZE", "1")  # a launcher's single process: one process all the same
    with pytest.raises(HardwareError, match="^3 CUDA GPUs are visible"):
        hardware.pick_precision()
    monkeypatch.setenv("WORLD_SIZE", "2")  # accelerate launch / torchrun: each process uses its own GPU
    assert hardware.pick_precision().device == "cuda"
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert hardware.pick_precision().dtype == torch.bfloat16
    assert hardware.pick_precision("cpu").device == "cpu"  # the CPU asked for: the GPUs do not matter


@pytest.fixture()
def fake_rss(monkeypatch):
    """`fake_rss(kib)`: this process's peak resident memory as getrusage reports it on Linux (kB); its
    children's differ, so a figure read from the wrong one shows."""
    def fake(kib: int):
        usage = {resource.RUSAGE_SELF: kib, resource.RUSAGE_CHILDREN: 7 * kib}
        monkeypatch.setattr(resource, "getrusage", lambda who: types.SimpleNamespace(ru_maxrss=usage[who]))

    return fake


def test_the_memory_line_says_something_on_a_cpu_too(fake_gpu):
    """03, 04 and 05 print gpu_memory(...) where their prose promises a peak: on a CPU it is the process's."""
    fake_gpu(None)
    line = hardware.gpu_memory("while training")
    assert line.startswith("no GPU") and "GiB so far" in line and float(line.split()[-4]) > 0


def test_without_a_gpu_the_peak_is_the_processes_resident_peak(fake_gpu, fake_rss):
    fake_gpu(None)
    fake_rss(int(2.5 * 2**20))  # 2.5 GiB in kB
    assert hardware.gpu_memory("while training") == ("no GPU: the model is in RAM; this process's resident "
                                                     "peak 2.5 GiB so far")
    assert hardware.peak_memory_gib() == 2.5
    fake_rss(3 * 2**20 + 100 * 2**10)  # 3 GiB and 100 MiB
    assert hardware.peak_memory_gib() == (3 * 2**30 + 100 * 2**20) / GIB
    assert hardware.gpu_memory("after loading").endswith("resident peak 3.1 GiB so far")


@pytest.fixture()
def fake_allocator(monkeypatch):
    """torch's CUDA memory counters and the driver's free memory, in bytes; `reset_peak_memory_stats` sets the
    peaks back to what is held now, as torch does."""
    state = {}

    def fake(**now):
        state.update(now)

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (state["free"], state["total"]))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda *a: state["reserved"])
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda *a: state["peak_reserved"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: state["peak_allocated"])

    def reset(*a):
        state.update(peak_reserved=state["reserved"], peak_allocated=state["allocated"])

    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset)
    return fake


def test_the_gpu_memory_line_splits_what_the_process_holds(fake_gpu, fake_allocator, monkeypatch):
    """A T4 (15 GiB): the allocator reserved 10 GiB now, 10.5 at its peak, of which 8 in tensors; the driver
    says 11 GiB are in use, so the CUDA context holds 1. The line's peak is what the process held: 11.5."""
    monkeypatch.setattr(hardware, "_GPU_PEAK", [0])  # no line printed yet
    fake_gpu((7, 5))
    fake_allocator(total=15 * GIB, free=4 * GIB, reserved=10 * GIB, peak_reserved=int(10.5 * GIB),
                   allocated=6 * GIB, peak_allocated=8 * GIB)
    assert hardware.peak_memory_gib() == 11.5
    assert hardware.gpu_memory("training") == ("peak GPU memory training: 11.5 GiB of 15.0 GiB (tensors 8.0, "
                                               "allocator's reserve 2.5, CUDA context 1.0)")
    # the line reset torch's peaks (the next line is the next cell's); the model freed: 4 GiB reserved now
    fake_allocator(free=10 * GIB, reserved=4 * GIB, allocated=GIB)
    assert hardware.peak_memory_gib() == 11.5  # the manifest's peak is still the run's highest
    assert hardware.gpu_memory("after del model") == (
        "peak GPU memory after del model: 11.0 GiB of 15.0 GiB (tensors 6.0, allocator's reserve 4.0, "
        "CUDA context 1.0)")  # the peak since the last line: the reserve before it was freed
    assert hardware.gpu_memory("later") == ("peak GPU memory later: 5.0 GiB of 15.0 GiB (tensors 1.0, "
                                            "allocator's reserve 3.0, CUDA context 1.0)")
    assert hardware.peak_memory_gib() == 11.5


def test_the_peak_never_counts_less_than_the_allocators_reserve(fake_gpu, fake_allocator, monkeypatch):
    """The driver's free memory read a moment after the allocator's: used minus reserved can come out below
    zero, which counts as no CUDA context, never as a negative one."""
    monkeypatch.setattr(hardware, "_GPU_PEAK", [0])  # no line printed yet
    fake_gpu((8, 0), memory_gib=40)
    fake_allocator(total=40 * GIB, free=31 * GIB, reserved=10 * GIB, peak_reserved=12 * GIB, allocated=0,
                   peak_allocated=9 * GIB)
    assert hardware.peak_memory_gib() == 12.0
    line = hardware.gpu_memory("training")
    assert line.endswith("(tensors 9.0, allocator's reserve 3.0, CUDA context 0.0)")
    assert hardware.peak_memory_gib() == 12.0


@pytest.fixture()
def fake_libc(monkeypatch):
    """`fake_libc(kind)`: libc as ctypes opens it: "glibc" (malloc_trim), "musl" (no malloc_trim), None (no
    libc.so.6: macOS, Windows). Returns the calls made: (library, function, argument)."""
    calls = []

    def fake(kind):
        def cdll(name, *args, **kwargs):
            if kind is None:
                raise OSError(f"{name}: cannot open shared object file")
            library = types.SimpleNamespace()
            if kind == "glibc":
                library.malloc_trim = lambda pad: calls.append((name, "malloc_trim", pad)) or 1
            return library

        monkeypatch.setattr(ctypes, "CDLL", cdll)
        return calls

    return fake


@pytest.mark.parametrize("libc, trimmed", [("glibc", [("libc.so.6", "malloc_trim", 0)]), ("musl", []),
                                           (None, [])])
def test_free_memory_hands_the_heap_back_where_glibc_can(fake_gpu, fake_libc, monkeypatch, libc, trimmed):
    """After `del model`: glibc trims the whole freed heap (malloc_trim(0)), elsewhere nothing fails; with a
    GPU, CUDA's cache is emptied too."""
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    fake_gpu(None)
    calls = fake_libc(libc)
    assert hardware.free_memory() is None
    assert calls == trimmed and emptied == []
    fake_gpu((7, 5))
    hardware.free_memory()
    assert calls == trimmed * 2 and emptied == [True]


def test_the_manifest_records_the_machine_as_course_config_noted_it(tmp_path, monkeypatch):
    """The run folder (a guard rail, which imports no lesson module) records the machine's facts and this
    process's peak memory through the readers course_config hands it."""
    from gemmate_lib.config import course_config
    from gemmate_lib.guard_rails import run_folder

    monkeypatch.setattr(run_folder, "_KERNEL", {})
    assert "hardware" not in run_folder.update_manifest(tmp_path, "00_setup")
    course_config(device="cpu", dtype="fp32")
    manifest = run_folder.update_manifest(tmp_path, "00_setup")
    assert manifest["hardware"] == hardware.describe_hardware()
    assert manifest["notebooks"]["00_setup"]["peak_memory_gib"] > 0


@pytest.mark.parametrize("dtype, expected", [(None, "fp32"), ("auto", "fp32"), ("fp16", "fp16")])
def test_a_gemma_3_on_a_t4_computes_in_fp32_unless_a_dtype_is_named(fake_gpu, one_process, tiny_folder,
                                                                     dtype, expected):
    """Gemma 3 and 4 overflow fp16 (docs/gemma-generations.md): on a T4 the course computes them in fp32. A
    config that says `dtype: auto` (configs/gpu-qlora.yaml, `gemmate hpo`'s best_config.yaml) names no dtype:
    it trained Gemma 3 in fp16 on a T4."""
    from gemmate_lib.config import course_config

    fake_gpu((7, 5))
    cfg = course_config(model_name=str(tiny_folder), **({"dtype": dtype} if dtype else {}))
    assert (cfg.precision.device, cfg.precision.name) == ("cuda", expected)
