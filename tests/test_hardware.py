import pytest
import torch

from gemmate_lib import hardware
from gemmate_lib.housekeeping import machine
from gemmate_lib.housekeeping.errors import HardwareError


def test_cpu_precision_follows_native_bf16(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    p = hardware.pick_precision("cpu")
    assert (p.device, p.dtype, p.name) == ("cpu", torch.float32, "fp32")
    assert "slower" in p.reason
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    assert hardware.pick_precision("cpu").dtype == torch.bfloat16


@pytest.mark.parametrize("flags, native", [("fpu avx2 avx512f", False), ("fpu avx512f avx512_bf16", True),
                                           ("fpu amx_bf16 amx_tile", True), (None, False)])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    if flags is not None:  # None: no /proc/cpuinfo (macOS, Windows)
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert machine.cpu_has_native_bf16(cpuinfo) is native


def test_dtype_override_and_unknown_dtype():
    assert hardware.pick_precision("cpu", "fp32").dtype == torch.float32
    with pytest.raises(HardwareError, match="fp8"):
        hardware.pick_precision("cpu", "fp8")


def test_asking_for_cuda_without_gpu_explains_the_fix(fake_gpu):
    fake_gpu(None)
    with pytest.raises(HardwareError) as err:
        hardware.pick_precision("cuda")
    assert "no CUDA GPU" in str(err.value) and "T4" in str(err.value)


def test_describe_hardware_reports_the_gpu_it_sees_and_none_without_one(fake_gpu, monkeypatch):
    monkeypatch.setattr(machine, "cpu_has_native_bf16", lambda: True)
    fake_gpu((7, 5), name="Tesla T4", memory_gib=14.7)
    info = machine.describe_hardware()
    assert (info["cuda"], info["gpu"], info["gpu_memory_gib"], info["cpu_native_bf16"]) == (True, "Tesla T4",
                                                                                          14.7, True)
    fake_gpu(None)
    info = machine.describe_hardware()
    assert info["cuda"] is False and "gpu" not in info and "gpu_memory_gib" not in info


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
    from gemmate_lib.housekeeping.errors import one_line

    fake_gpu((8, 0), count=2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(HardwareError) as err:
        hardware.pick_precision()
    assert "CUDA_VISIBLE_DEVICES=0" in one_line(err.value) and "\n" not in one_line(err.value)
    monkeypatch.setenv("WORLD_SIZE", "2")  # accelerate launch / torchrun: each process uses its own GPU
    assert hardware.pick_precision().device == "cuda"
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert hardware.pick_precision().dtype == torch.bfloat16
    assert hardware.pick_precision("cpu").device == "cpu"  # the CPU asked for: the GPUs do not matter


def test_the_memory_line_says_something_on_a_cpu_too(fake_gpu):
    """03, 04 and 05 print gpu_memory(...) where their prose promises a peak: on a CPU it is the process's."""
    from gemmate_lib.housekeeping.machine import gpu_memory

    fake_gpu(None)
    line = gpu_memory("while training")
    assert line.startswith("no GPU") and "GiB so far" in line and float(line.split()[-4]) > 0
