import pytest
import torch

from gemmate_lib import HardwareError
from gemmate_lib import hardware


def test_cpu_precision_follows_native_bf16(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    p = hardware.pick_precision("cpu")
    assert (p.device, p.dtype, p.name) == ("cpu", torch.float32, "fp32")
    assert "slower" in p.reason
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    assert hardware.pick_precision("cpu").dtype == torch.bfloat16


def test_native_bf16_detection_reads_cpu_flags():
    flags = open("/proc/cpuinfo").read()
    assert hardware.cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_dtype_override_and_unknown_dtype():
    assert hardware.pick_precision("cpu", "fp32").dtype == torch.float32
    with pytest.raises(HardwareError, match="fp8"):
        hardware.pick_precision("cpu", "fp8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_asking_for_cuda_without_gpu_explains_the_fix():
    with pytest.raises(HardwareError) as err:
        hardware.pick_precision("cuda")
    assert "no CUDA GPU" in str(err.value) and "T4" in str(err.value)


def test_describe_hardware_has_the_manifest_facts():
    info = hardware.describe_hardware()
    assert info["cpu_count"] >= 1 and info["cuda"] == torch.cuda.is_available()
