"""The planner's predictions against what was measured at the real shapes (docs/full-shape.json, written by
`make rehearse`), its verdict on a free Colab T4, and the GPU memory line the notebooks print."""
import json

import pytest
import torch

from gemmate_lib import fit
from tools import full_shape, rehearse

COMMITTED = json.loads((rehearse.DOCS / "full-shape.json").read_text())
T4_BYTES = {"gemma-2b": 2, "gemma-3-1b-pt": 4, "gemma-4-E2B": 4}  # fp16 for Gemma 1, fp32 for Gemma 3 and 4


@pytest.fixture(scope="module")
def shapes():
    return {name: fit.shape_of(full_shape.config_of(name)) for name in full_shape.CONFIGS}


def test_the_shapes_are_the_model_cards(shapes):
    # the published parameter counts (GUIDE.md section 9, from the model cards' configs), a tied head once
    millions = {name: (round(s.parameters / 1e6), round(s.quantized / 1e6)) for name, s in shapes.items()}
    assert millions == {"gemma-2b": (2506, 1982), "gemma-3-1b-pt": (1000, 698), "gemma-4-E2B": (5104, 2334)}
    assert shapes["gemma-4-E2B"].largest == 262_144 * 35 * 256  # the per-layer embedding table


@pytest.mark.parametrize("row", COMMITTED["rows"], ids=lambda r: f"{r['model']}-{r['phase']}")
def test_host_predictions_are_within_15_percent_of_the_rehearsal(shapes, row):
    plan = fit.predict(shapes[row["model"]], T4_BYTES[row["model"]])
    need = plan[row["phase"]]
    assert need["ram"] == pytest.approx(row["peak_ram"], rel=0.15), "RAM"
    assert need["disk"] == pytest.approx(row["peak_disk"], rel=0.15), "disk"


def test_every_committed_phase_fits_a_free_colab_runtime():
    assert all(row["fits"] for row in COMMITTED["rows"]) and COMMITTED["colab_ram_bytes"] == fit.FREE_COLAB[
        "ram_bytes"]


def test_gemma_4_on_a_free_t4_stops_before_the_download_with_what_it_needs(shapes):
    plan = fit.predict(shapes["gemma-4-E2B"], 4)
    with pytest.raises(fit.FitError) as err:
        fit.check(plan)
    assert "load" in err.value.problem and "GPU" in err.value.problem and "L4" in err.value.fix
    # 4-bit training fits a T4 by the estimate: the course offers it, and skips what does not fit
    fit.check({"nf4": plan["nf4"]})
    assert fit.problems(plan) == ["load GPU"]


def test_gemma_2b_fits_a_free_t4_in_every_phase(shapes):
    fit.check(fit.predict(shapes["gemma-2b"], 2))


def test_a_cpu_runtime_checks_ram_and_disk_only(shapes):
    small = {"gpu": None, "gpu_bytes": None, "ram_bytes": 2e9, "disk_bytes": 1e12}
    plan = fit.predict(shapes["gemma-2b"], 4)
    assert "GPU" not in " ".join(fit.problems(plan, small)) and "load RAM" in fit.problems(plan, small)


def test_the_notebooks_plan_for_the_embedded_model_reads_its_config_only():
    from gemmate_lib.models import prepare_embedded

    plan = fit.plan_for(str(prepare_embedded(verbose=False)), 4)
    assert set(plan) == {"load", "nf4", "merge", "convert", "quantize", "verify"}
    assert 0.25e9 < plan["load"]["disk"] < 0.6e9  # 268 M weights in bf16
    assert "fits" in fit.report(plan, fit.runtime_here())


def test_gpu_memory_reports_what_the_process_holds_not_only_the_tensors(fake_gpu, monkeypatch):
    from gemmate_lib.hardware import gpu_memory

    fake_gpu((7, 5))
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (int(4 * gib), int(15 * gib)))  # 11 GiB in use
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda *a: int(10 * gib))
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda *a: int(10.5 * gib))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: int(8 * gib))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: None)
    line = gpu_memory("training")
    assert line.startswith("peak GPU memory training: 11.5 GiB of 15.0 GiB")  # reserved 10.5 + context 1.0
    assert "tensors 8.0" in line and "CUDA context 1.0" in line


def test_06_refuses_what_will_not_fit_before_any_weight_loads(tmp_path, fake_gpu):
    import dataclasses

    from gemmate_lib.config import course_config
    from gemmate_lib.errors import HardwareError
    from gemmate_lib.hardware import Precision
    from gemmate_lib.methods import build_methods

    for name in ("gemma-2b", "gemma-4-E2B"):
        full_shape.config_of(name).save_pretrained(tmp_path / name)  # the config alone: no weights to load
    cfg = course_config("methods")
    with pytest.raises(HardwareError, match="full fine-tuning of 2.5 B weights"):
        build_methods(cfg, str(tmp_path / "gemma-2b"), ["full"])
    fake_gpu((7, 5))
    t4 = dataclasses.replace(cfg, precision=Precision("cuda", torch.float32, "a T4: fp32 for Gemma 4"))
    with pytest.raises(fit.FitError, match="load phase needs about 19") as err:
        build_methods(t4, str(tmp_path / "gemma-4-E2B"), ["lora_r8", "qlora"])
    assert 'methods=["qlora"] alone' in err.value.fix  # the choice that fits, since NF4 training does
    assert list(build_methods(t4, str(tmp_path / "gemma-4-E2B"), ["qlora"])) == ["qlora"]  # NF4 alone fits
