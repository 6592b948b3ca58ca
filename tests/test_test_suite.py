"""How `make test` runs and what it keeps: nbval's parameterized copies of the notebooks (params/nbval.yaml),
the tests that read nbval's run folder in its session (marker after_nbval), and the time of every test and
cell (tools/runners/timings.py, tools/runners/course.py). None of these needs a model."""
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBVAL_PARAMS = ROOT / "params" / "nbval.yaml"


def _tagged(cells, tag):
    return [c for c in cells if tag in c["metadata"].get("tags", [])]


def test_nbval_runs_each_notebook_as_a_copy_with_the_values_it_declares_and_its_committed_outputs(tmp_path):
    """make nbval runs copies (nbval cannot pass parameters): every notebook of the course once, each with the
    values of params/nbval.yaml meant for it (a key it declares, or its own section) in an injected cell after
    its `parameters` cell, and every committed cell, outputs included, as committed (what nbval compares
    against)."""
    from tools.runners.course import (
        INJECTED,
        ONE_PAGE,
        course_notebooks,
        nbval_copies,
        notebook_parameters,
        one_page_parameters,
    )

    copies = nbval_copies(tmp_path / "nbval", tmp_path / "model", str(NBVAL_PARAMS))
    notebooks = course_notebooks(ROOT)
    meant = notebook_parameters(notebooks, str(NBVAL_PARAMS))
    assert [c.name for c in copies] == [nb.name for nb in notebooks]
    given = {}
    for notebook, copy in zip(notebooks, copies):
        committed = json.loads(notebook.read_text())["cells"]
        cells = json.loads(copy.read_text())["cells"]
        injected = [i for i, c in enumerate(cells) if INJECTED in c["metadata"].get("tags", [])]
        rest = [c for c in cells if INJECTED not in c["metadata"].get("tags", [])]
        assert [(c["source"], c.get("outputs")) for c in rest] == [(c["source"], c.get("outputs"))
                                                                   for c in committed]
        if injected:
            assert injected == [committed.index(_tagged(committed, "parameters")[0]) + 1]
            namespace = {}
            exec("".join(cells[injected[0]]["source"]), namespace)
            given[notebook.name] = {k: v for k, v in namespace.items() if k != "__builtins__"}
    offline = one_page_parameters(tmp_path / "model", tmp_path / "nbval", offline=True)
    expected = {name: {**(offline if name == ONE_PAGE else {}), **values} for name, values in meant.items()}
    assert given == {name: values for name, values in expected.items() if values}
    assert meant["03_lora_sft.ipynb"] == {"compare": False, "chat_steps": 0}  # part 2: the smoke run's
    assert meant["06_compare_methods.ipynb"] == {"steps": 2, "format_quotes": 2, "start_losses": False}
    assert meant["qlora_one_runtime.ipynb"]["max_steps"] < 10  # its own section: not 03's max_steps
    assert "max_steps" not in meant["03_lora_sft.ipynb"]


def test_a_notebooks_own_section_goes_to_it_alone_and_a_wrong_name_stops_in_one_line(tmp_path):
    import pytest

    from gemmate_lib.guard_rails.errors import ParameterError
    from tools.runners.course import course_notebooks, notebook_parameters

    notebooks = course_notebooks(ROOT)
    params = tmp_path / "params.yaml"
    params.write_text("qlora_one_runtime:\n  max_steps: 3\nmasking_steps: 1\n")
    meant = notebook_parameters(notebooks, str(params))
    assert meant["qlora_one_runtime.ipynb"] == {"max_steps": 3}
    assert meant["03_lora_sft.ipynb"] == {"masking_steps": 1}
    params.write_text("06_compare_methods:\n  max_stepz: 3\n")
    with pytest.raises(ParameterError, match="06_compare_methods has no parameter named max_stepz"):
        notebook_parameters(notebooks, str(params))


def test_no_checked_output_reads_a_value_that_nbval_shrinks():
    """A value of params/nbval.yaml that a checked cell names would move that cell's output, and nbval would
    fail on it (max_steps in 03's self-check hint, max_new_tokens in 02's prompts cell, n_train in 07's):
    nbval.yaml may shrink only what no checked cell of the notebook it goes to names as a variable. (Indirect
    reads, through another variable, still fail nbval itself.)"""
    import ast

    from tools.runners.course import course_notebooks, notebook_parameters

    notebooks = course_notebooks(ROOT)
    meant = notebook_parameters(notebooks, str(NBVAL_PARAMS))
    named = set()
    for nb in notebooks:
        for cell in _tagged(json.loads(nb.read_text())["cells"], "nbval-check-output"):
            tree = ast.parse("".join(cell["source"]))  # f-strings included: their fields are nodes too
            names = {getattr(n, "id", None) or getattr(n, "attr", None) or getattr(n, "arg", None)
                     for n in ast.walk(tree)}
            named |= {(nb.stem, key) for key in names & set(meant[nb.name])}
    assert named == set()
    assert any(meant.values()), "params/nbval.yaml shrinks nothing: then make nbval needs no --params"


def test_a_reader_of_nbvals_run_waits_for_the_notebooks_it_reads_to_end(tmp_path, monkeypatch):
    """In nbval's session the tests that read its run folder run beside the notebooks (tests/nbval_groups.py):
    a notebook is marked ended only after its last cell, once its file's teardown (the kernel's shutdown) is
    done, and a reader waits for the notebooks it names (none named: every copy in the run folder)."""
    import threading
    import time
    from types import SimpleNamespace

    import nbval_groups
    import nbval_run

    done, run = tmp_path / "ended", tmp_path / "run"
    run.mkdir()
    for stem in ("03_lora_sft", "07_temporal_encoding"):
        (run / f"{stem}.ipynb").write_text("{}")
    monkeypatch.setenv("GEMMATE_NBVAL_DONE", str(done))
    monkeypatch.setenv("GEMMATE_RUN_DIR", str(run))
    cell = lambda nb, n: SimpleNamespace(path=run / f"{nb}.ipynb", name=f"Cell {n}")  # noqa: E731
    steps = []
    for item, nextitem in [(cell("03_lora_sft", 0), cell("03_lora_sft", 1)),
                           (cell("03_lora_sft", 1), cell("07_temporal_encoding", 0))]:
        hook = nbval_groups.pytest_runtest_teardown(item, nextitem)
        next(hook)  # the teardown itself runs here: not ended yet
        steps.append(sorted(p.name for p in done.glob("*")) if done.exists() else [])
        with contextlib.suppress(StopIteration):
            hook.send(None)
        steps.append(sorted(p.name for p in done.glob("*")))
    assert steps == [[], [], [], ["03_lora_sft"]]  # after 03's last cell's teardown, and only then
    nbval_run.wait_for("03_lora_sft")  # at once
    threading.Timer(1.5, lambda: (done / "07_temporal_encoding").touch()).start()
    start = time.time()
    nbval_run.wait_for()  # every copy in the run folder: 07 too
    assert time.time() - start >= 1.4
    monkeypatch.delenv("GEMMATE_NBVAL_DONE")
    start = time.time()
    nbval_run.wait_for("never_run")  # outside nbval's session: nothing to wait for
    assert time.time() - start < 0.5


def test_the_timings_name_the_slowest_tests_and_an_empty_tier(tmp_path):
    """`make test` keeps pytest's JUnit files in runs/test; tools.runners.timings prints each step's time and
    the slowest tests from them, and names a step whose pytest selected no test (its exit code 5, which make
    reports as a plain failure: .ci/run says which tier was empty)."""
    from tools.runners import timings

    (tmp_path / "test_two.py").write_text("import time\n\n\ndef test_quick():\n    pass\n\n\n"
                                          "def test_slow():\n    time.sleep(0.3)\n")
    def pytest(xml, *args):
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               f"--junitxml={xml}", "--rootdir", str(tmp_path), "-c", "/dev/null", *args,
                               str(tmp_path / "test_two.py")],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})  # a quick start

    assert pytest(tmp_path / "unit.xml").returncode == 0
    assert pytest(tmp_path / "after_nbval.xml", "-m", "after_nbval").returncode == 5
    total, cases = timings.junit_times(tmp_path / "unit.xml")
    assert (total["step"], total["tests"]) == ("unit", 2) and total["seconds"] >= 0.3
    slowest = max(cases, key=lambda c: c["seconds"])
    assert slowest["test"].endswith("test_two.py::test_slow") and slowest["seconds"] >= 0.3
    table = timings.slowest([tmp_path / "unit.xml"], n=1).splitlines()
    assert table[2].startswith("| unit | 2 | 0 |") and "test_two.py::test_slow" in table[-1]
    assert timings.empty_steps([tmp_path / "unit.xml", tmp_path / "after_nbval.xml"]) == [
        str(tmp_path / "after_nbval.xml")]


def test_an_nbval_cell_is_named_as_nbval_names_it_with_its_first_line(tmp_path, monkeypatch):
    """nbval's items are `NOTEBOOK::Cell N`, N counting code cells; the table adds the cell's first line."""
    from tools.runners import timings

    monkeypatch.setattr(timings, "repo_root", lambda: tmp_path)
    (tmp_path / "runs" / "nbval").mkdir(parents=True)
    (tmp_path / "runs" / "nbval" / "03_lora_sft.ipynb").write_text(json.dumps({"cells": [
        {"cell_type": "markdown", "source": ["# 03"]}, {"cell_type": "code", "source": ["x = 1\n"]},
        {"cell_type": "code", "source": ["\n", "trainer.train()\n"]}]}))
    (tmp_path / "nbval.xml").write_text(
        '<testsuites><testsuite name="pytest" tests="1" skipped="0" time="12.5">'
        '<testcase classname="runs.nbval.03_lora_sft.ipynb" name="Cell 1" time="11.0"/>'
        '</testsuite></testsuites>')
    total, [cell] = timings.junit_times(tmp_path / "nbval.xml")
    assert cell == {"test": "runs/nbval/03_lora_sft.ipynb::Cell 1 (`trainer.train()`)", "seconds": 11.0}
    assert total == {"step": "nbval", "tests": 1, "skipped": 0, "seconds": 12.5}


def test_a_notebook_run_in_place_reports_each_cells_time(tmp_path):
    """make notebooks (and make course, from papermill's metadata) prints the ten slowest cells."""
    import nbformat

    from tools.runners.course import execute_in_place, slowest_cells

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# a"),
                                         nbformat.v4.new_code_cell("x = 1"),
                                         nbformat.v4.new_code_cell("import time\ntime.sleep(0.5)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "nb.ipynb")
    seconds = execute_in_place(tmp_path / "nb.ipynb", tmp_path / "run")
    assert [(number, first) for _, number, first in seconds] == [(0, "x = 1"), (1, "import time")]
    assert seconds[1][0] >= 0.5 > seconds[0][0]
    [slowest] = slowest_cells({"nb": seconds}, n=1)
    assert slowest["cell"] == 1 and slowest["seconds"] >= 0.5
    assert "execution" not in json.loads((tmp_path / "nb.ipynb").read_text())["cells"][1]["metadata"]
