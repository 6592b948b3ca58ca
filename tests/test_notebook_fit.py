"""What each notebook holds at once, against a free Colab T4: the committed measurement
(gemmate_lib/notebook_copies.json, from the smoke run's ledgers), the table generated from it in
docs/full-shape.md and the README, and the fit line every notebook prints before its download. The smoke run
itself (tests/test_learner_path.py) measures the copies again and fails where they grew past what the table
says."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from gemmate_lib import fit
from gemmate_lib.housekeeping.hardware import Precision
from tools import notebook_fit

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
LOADS = ("load_model(", "AutoModelForCausalLM.from_pretrained(", "GemmaTEForCausalLM.from_pretrained(")


def test_the_docs_and_the_readme_hold_the_table_of_the_committed_measurement():
    docs, readme = (ROOT / "docs" / "full-shape.md").read_text(), (ROOT / "README.md").read_text()
    assert notebook_fit.table() in docs
    assert notebook_fit.readme_line() in " ".join(readme.split())


def test_every_notebook_was_measured():
    assert set(fit.measured()["notebooks"]) == {nb.stem for nb in NOTEBOOKS}
    assert 0.2e9 < fit.measured()["kernel_bytes"] < 3e9  # a kernel with torch, transformers, a tokenizer


def _cfg(folder, name):
    """What notebook_fit reads of a course config: the model and a T4's compute dtype for it."""
    dtype = torch.float16 if name == "gemma-2b" else torch.float32
    return SimpleNamespace(model=SimpleNamespace(model_name=str(folder)),
                           precision=Precision("cuda", dtype, "a T4"))


@pytest.mark.parametrize("model", list(notebook_fit.MODELS))
def test_each_notebooks_fit_line_says_what_the_table_says(model, tmp_path):
    """The line a notebook prints before its download, for each offered model at its real shape on a free T4,
    agrees with the generated table: fits, fits without its 16/32-bit part, or stops with the fix."""
    from tools.full_shape import config_of

    config_of(model).save_pretrained(tmp_path)  # the config alone, as the notebook reads it before a download
    for row in (r for r in notebook_fit.rows() if r["model"] == model):
        notebook = row["notebook"]
        if row["fits"] == "no":
            with pytest.raises(fit.FitError) as err:
                fit.notebook_fit(notebook, _cfg(tmp_path, model), fit.FREE_COLAB)
            assert "L4" in err.value.fix, notebook
            continue
        answer = fit.notebook_fit(notebook, _cfg(tmp_path, model), fit.FREE_COLAB)
        assert answer.whole_copies == (row["fits"] == "yes"), notebook
        expected = ": fits" if row["fits"] == "yes" else f": fits {row['fits']}"
        assert expected in answer.line, answer.line


def test_gemma_4_e2b_runs_every_notebooks_4_bit_path_on_a_free_t4():
    """The issue this table answers: no notebook's 4-bit path holds more than a T4 has with E2B."""
    found = [r for r in notebook_fit.rows() if r["model"] == "gemma-4-E2B"]
    assert not [r["notebook"] for r in found if r["fits"] == "no" and r["notebook"] != "01_load_4bit"]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_notebook_says_whether_it_fits_before_its_first_load(nb):
    """00 plans every phase (fit.report); the others print their own line (fit.notebook_fit), or, in the
    library-free page, its own arithmetic (gpu_need), in a cell before the first that loads weights."""
    cells = [("".join(c["source"]), c.get("id")) for c in json.loads(nb.read_text())["cells"]
             if c["cell_type"] == "code"]
    marker = {"00_setup": "fit.report(", "qlora_one_runtime": "gpu_need"}.get(nb.stem, "fit.notebook_fit(")
    said = next((i for i, (source, _) in enumerate(cells) if marker in source), None)
    loads = [i for i, (source, cid) in enumerate(cells) if any(load in source for load in LOADS)
             and not (cid or "").startswith("ex")]
    assert said is not None, f"{nb.name} prints no fit line"
    if nb.stem != "00_setup":
        assert loads and said <= loads[0], f"{nb.name} loads weights in code cell {loads[0]}, before its line"
        source = cells[loads[0]][0]
        if said == loads[0]:  # the same cell: the line comes first
            assert source.index(marker) < min(source.index(x) for x in LOADS if x in source)


def test_a_notebook_that_holds_one_more_copy_is_caught(monkeypatch):
    """The smoke run's check (check_measured): a moment with one more 4-bit copy than committed is a fail."""
    committed = fit.measured()
    grown = json.loads(json.dumps(committed))
    moments = grown["notebooks"]["04_evaluation"]["moments"]
    moments.append({"copies": ["nf4", "nf4"], "loading": 0, "training": False, "cells": ["e28bd195"]})
    problems = notebook_fit.compare(committed, grown)
    assert any("04_evaluation" in p for p in problems)
    assert notebook_fit.compare(committed, committed) == []
