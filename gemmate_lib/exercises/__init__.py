"""The 28 exercises of notebooks 00-07, as their cells call them: `exercise_check`, every check cell (the
checks: checks_00_03, checks_04_07; judging: how they judge); `fit_lines`, the line each notebook prints above
its exercises."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from gemmate_lib import fit
from gemmate_lib.exercises import checks_00_03, checks_04_07  # noqa: F401 - registers the 28 checks
from gemmate_lib.exercises.judging import EXERCISES, judge_exercise

FIT_TABLE = Path(__file__).with_name("fit_table.json")


def exercise_check(name: str) -> str:
    """The check cell of exercise `name` ("03-2"): PASS, FAIL, NOT RUN YET, or why results from another model
    cannot be judged, with what its run folders (runs/ex03_2) show (judging.judge_exercise)."""
    return judge_exercise(name, EXERCISES[name])


@cache
def fit_table() -> dict:
    """{exercise: {"runs": [[notebook stem, its parts, its LoRA rank], ...], "needs": the 16/32-bit copy its
    check reads, "" for none}} (FIT_TABLE, written by tools/fit/exercise_fit.py)."""
    return json.loads(FIT_TABLE.read_text())


def exercise_fit(name: str, shape, compute_bytes: int, runtime: dict, data: dict | None = None,
                 cpu: bool = False, table: dict | None = None) -> dict:
    """Does exercise `name` run on `runtime` with a model of `shape`? Each of its runs (`table`: the fit
    table unless given) sized by fit.notebook_need: {"fits", "gpu", "ram", "why"}. A run that fits only
    without its 16/32-bit part fits unless the exercise's check reads that part (the table's "needs")."""
    entry = (table or fit_table())[name]
    gpu = ram = 0.0
    for stem, parts, lora_r in entry["runs"]:
        need = fit.notebook_need(stem, shape, compute_bytes, data, cpu, frozenset(parts), lora_r=lora_r)
        answer = fit.fit_answer(need, runtime)
        if answer == "no" or (answer != "yes" and entry["needs"]):
            why = f"{stem[:2]} itself needs" if answer == "no" else f"it needs {entry['needs']}:"
            return {"fits": False, "gpu": need.gpu, "ram": need.ram,
                    "why": f"{why} about {need.gpu / fit.GIB:.1f} GiB"}
        gpu = max(gpu, need.gpu if answer == "yes" else need.gpu_without_whole)
        ram = max(ram, need.ram if answer == "yes" else need.ram_without_whole)
    return {"fits": True, "gpu": gpu, "ram": ram, "why": ""}


def fit_lines(prefix: str, cfg, runtime: dict | None = None) -> str:
    """One line per exercise of notebook `prefix` ("05"): does it run on this runtime with cfg's model? From
    the config alone, before any exercise runs, so that a learner skips what cannot run here."""
    shape, runtime, place = fit.learner_shape(cfg, runtime)
    model, lines = cfg.model.model_name, []
    for name in (n for n in EXERCISES if n.startswith(prefix + "-")):
        answer = exercise_fit(name, shape, cfg.precision.dtype.itemsize, runtime,
                              cpu=cfg.precision.device == "cpu")
        if answer["fits"]:
            lines.append(f"exercise {name}: fits {place} with {model} (peak about "
                         f"{fit.peak_text(answer['gpu'], answer['ram'], runtime, ',')}, estimates)")
        else:
            lines.append(f"exercise {name}: does not fit {place} with {model}: {answer['why']} (an "
                         "estimate). Skip it here, or do it with google/gemma-3-1b-pt as the course's model "
                         f"(00), or on {fit.BIGGER}")
    return "\n".join(lines)
