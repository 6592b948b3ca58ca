"""An exercise that reruns a notebook with weaker settings on purpose (03-2 on ten quotes, 07-2 on 150 notes)
must reach its own check: there the lesson's learning self-checks report instead of stopping *Run all*. In the
lesson's own run a failed self-check still stops the notebook (headless runs depend on it), and in an
exercise's run so does any check that is not about learning (a broken run)."""
from __future__ import annotations

import json
import types
from pathlib import Path

import pandas as pd
import pytest

from gemmate_lib.guard_rails.selfcheck import SelfCheckError, exercise_run, learned, self_check

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def not_smoke(monkeypatch):
    monkeypatch.delenv("GEMMATE_SMOKE", raising=False)  # the course's conditions, not the smoke run's


@pytest.mark.parametrize("folder, exercise", [("ex03_2", "03-2"), ("ex07_2a", "07-2"), ("ex06_3c", "06-3"),
                                              ("interactive", None), ("20261125-1800", None), ("ex03", None),
                                              ("my_ex03_2", None)])
def test_an_exercise_run_is_known_by_its_run_folder(tmp_path, folder, exercise):
    assert exercise_run(tmp_path / "runs" / folder) == exercise
    assert exercise_run(None) is None


def test_in_an_exercise_run_a_learning_check_not_met_is_reported_and_the_notebook_goes_on(tmp_path, capsys):
    checks = (True, "the adapter is saved", "-"), (learned(False, True), "the loss went down", "train")
    assert self_check(*checks, run_dir=tmp_path / "runs" / "ex03_2") is False
    out = capsys.readouterr().out
    assert "FAIL the loss went down: train" in out and "exercise 03-2's check below" in out


def test_in_the_lessons_run_a_learning_check_not_met_still_stops(tmp_path):
    for run_dir in (tmp_path / "runs" / "interactive", None):
        with pytest.raises(SelfCheckError, match="the loss went down"):
            self_check((learned(False, True), "the loss went down", "train longer"), run_dir=run_dir)


def test_in_an_exercise_run_a_broken_run_still_stops(tmp_path):
    with pytest.raises(SelfCheckError, match="the adapter is saved"):
        self_check((False, "the adapter is saved", "rerun the save cell"),
                   (learned(False, True), "the loss went down", "train"),
                   run_dir=tmp_path / "runs" / "ex03_2")


# ---- the notebooks' own self-check cells, on an exercise's run and on the lesson's ----

def cell(stem: str, cell_id: str) -> str:
    cells = json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text())["cells"]
    return "".join(next(c for c in cells if c.get("id") == cell_id)["source"])


def namespace_03(out: Path) -> dict:
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "adapter_model.safetensors").write_bytes(b"")
    # the adapter's count as part 2 recorded it (no LoRA layer: 0 trained, 0 expected)
    return dict(trained_weights=0, expected=0, held_out_before=2.0,
                first=2.0, last=2.4, eval_part=pd.DataFrame({"eval_loss": [2.0, 2.3]}),
                after=pd.DataFrame({"author_line": [False] * 4}), adapter_dir=out / "adapter")


def namespace_04(out: Path) -> dict:
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps({"schema_version": 2}))
    return dict(diffs={"perplexity": {"ci95": [-0.5, 0.4], "difference": -0.05},
                       "format_compliance": {"ci95": [-0.1, 0.2], "difference": 0.05}}, results={})


def namespace_06(out: Path) -> dict:
    (out / "methods" / "lora_r8" / "adapter").mkdir(parents=True)
    (out / "methods" / "lora_r8" / "adapter" / "adapter_model.safetensors").write_bytes(b"")
    return dict(table=pd.DataFrame({"method": ["lora_r8"], "held_out_loss_text": [4.5]}),
                untrained={"held_out_loss_text": 4.2}, problems={},
                chosen={"lora_r8": types.SimpleNamespace(key="lora_r8")})


def namespace_07(out: Path) -> dict:
    out.mkdir(parents=True)
    same = {"year accuracy": 0.05}
    before = {("before, val", "true timestamps"): same, ("before, val", "constant timestamp"): same}
    return dict(results=before,
                acc_true=0.4, acc_const=0.08, py_test={"accuracy": 0.5}, py_const={"accuracy": 0.4},
                py_reference={"majority_share": 0.4}, same=True)


SELF_CHECKS = {"03": ("03_lora_sft", "42794f6b", namespace_03, "ex03_2"),
               "04": ("04_evaluation", "1a8483f7", namespace_04, "ex04_1"),
               "06": ("06_compare_methods", "716e0773", namespace_06, "ex06_3a"),
               "07": ("07_temporal_encoding", "988526de", namespace_07, "ex07_2a")}


@pytest.mark.parametrize("nb", sorted(SELF_CHECKS))
def test_a_rerun_as_an_exercise_reaches_the_exercise_check_and_the_lesson_run_stops(nb, tmp_path, monkeypatch,
                                                                                    capsys):
    """The notebooks an exercise reruns: the self-check cell itself, with learning that fell short."""
    stem, cell_id, make, exercise = SELF_CHECKS[nb]
    source = cell(stem, cell_id)
    out = tmp_path / "runs" / exercise
    namespace = {"out": out, **make(out)}
    exec(compile(source, stem, "exec"), namespace)  # no SelfCheckError: Run all goes on to the exercises
    printed = capsys.readouterr().out
    assert "FAIL" in printed and f"exercise {exercise[2:4]}-{exercise[5]}'s check below" in printed
    lesson = tmp_path / "lesson" / "runs" / "20261125-1800"
    with pytest.raises(SelfCheckError):
        exec(compile(source, stem, "exec"), {"out": lesson, **make(lesson)})
