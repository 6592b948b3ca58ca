"""`make exercises` (tools/runners/exercises.py) without running a notebook: which exercises run how, the cell
that runs a printed solution after *Run all*, the verdict read back from an executed notebook, and the table
it writes into docs/exercises.md. The runner itself takes about two hours: `make exercises`, not `make
test`."""
import json

import nbformat
import pytest

from gemmate_lib.exercises.judging import EXERCISES
from tools.markers import block
from tools.runners import exercises as runner


def test_every_exercise_runs_either_after_the_lesson_or_as_reruns():
    solutions = [n for n, e in EXERCISES.items() if not e.parameters]
    reruns = [n for n, e in EXERCISES.items() if e.parameters]
    assert len(solutions) + len(reruns) == 28
    assert reruns == ["03-1", "03-2", "03-3", "04-1", "06-1", "06-2", "06-3", "07-1", "07-2", "07-3"]
    assert [n for n in reruns if runner.prepares(n)] == ["03-2"]  # its solution writes the rerun's file
    for name in reruns:  # the last run is the notebook whose check cell judges the exercise
        assert EXERCISES[name].parameters[-1][0].startswith(name[:2])
    assert runner.needed_lessons(["04-2"]) == ["00", "03", "04"]
    assert runner.needed_lessons(["07-3"]) == ["00", "07"]


def test_the_faults_to_break_on_purpose_run_after_their_lesson_with_their_printed_solutions():
    """03-4 to 03-6 and 05-4 sit under "## Break it on purpose", numbered on from the exercises: the runner
    finds each one's solution by its number ("Solution to 4") and runs it after *Run all* of its notebook."""
    faults = ["03-4", "03-5", "03-6", "05-4"]
    assert all(not EXERCISES[n].parameters for n in faults)
    codes = {n: runner.solution_code(n) for n in faults}
    assert all(f'get_run_dir("runs/ex{n.replace("-", "_")}")' in code for n, code in codes.items())
    assert len(set(codes.values())) == len(faults)  # each its own, none another exercise's
    assert runner.needed_lessons(["03-5", "05-4"]) == ["00", "03", "05"]


def test_a_solution_that_raises_is_reported_and_the_check_still_runs(capsys):
    namespace = {}
    exec(runner.SOLUTION_CELL.format(name="05-1", code="x = 1\ndef f():\n    return x\ny = f()\n"), namespace)
    assert namespace["y"] == 1  # bound in the kernel's namespace, as the learner's own cell binds them
    exec(runner.SOLUTION_CELL.format(name="05-1", code="adapter_dir.read_text()\n"), {})
    assert capsys.readouterr().out.startswith("exercise 05-1: SOLUTION RAISED NameError")


FIT = "exercise 06-2: fits this CPU with embedded (peak about 1.8 GB of RAM, estimates)\n"


def executed(tmp_path, check_output: str, solution_output: str = "", fit_output: str = FIT):
    node = nbformat.v4.new_notebook()
    node.cells = [nbformat.v4.new_code_cell('print(fit_lines("06", cfg))'),  # above the exercises
                  nbformat.v4.new_code_cell(runner.SOLUTION_CELL.format(name="06-2", code="pass")),
                  nbformat.v4.new_code_cell('verdict = exercise_check("06-2")')]
    outputs = (fit_output, solution_output, check_output)
    for cell, text, seconds in zip(node.cells, outputs, (0.0, 30.0, 0.5)):
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)] if text else []
        cell.metadata["papermill"] = {"duration": seconds}
    path = tmp_path / "executed.ipynb"
    nbformat.write(node, path)
    return path


def test_the_verdict_and_its_margins_are_read_from_the_executed_notebook(tmp_path):
    line = ("exercise 06-2: PASS, expected: the loss falls; found: 3.9 / 3.6; margin: +0.4 nats "
            "(rank 2's loss over rank 128's 4.0, needs > 0)\n")
    row = runner.row_of(executed(tmp_path, line), "06-2")
    assert row["verdict"] == "PASS" and row["seconds"] == pytest.approx(30.5)
    assert row["margins"] == [(0.4, "nats", "rank 2's loss over rank 128's 4.0, needs > 0")]
    error = "exercise 06-2: SOLUTION RAISED KeyError: 'x'\n"
    raised = runner.row_of(executed(tmp_path, line, error), "06-2")
    assert raised["verdict"] == "ERROR" and "SOLUTION RAISED" in raised["line"]
    assert runner.row_of(executed(tmp_path, ""), "06-2")["verdict"] == "ERROR"
    assert row["fit"] == FIT.strip()  # the fit line printed before it, kept
    unfit = runner.row_of(executed(tmp_path, line, fit_output=""), "06-2")  # no fit line: not a PASS
    assert unfit["verdict"] == "ERROR" and "no fit line" in unfit["line"]


def test_the_table_goes_between_the_markers_of_docs_exercises_md(tmp_path, monkeypatch):
    doc = tmp_path / "exercises.md"
    doc.write_text(f"# Exercises\n\nintro\n\n{runner.BEGIN}\nOLD TABLE\n{runner.END}\n\nafter\n")
    monkeypatch.setattr(runner, "DOC", doc)
    monkeypatch.setattr(runner, "RESULTS", tmp_path / "exercises.json")
    rows = [{"name": "00-1", "verdict": "PASS", "margins": [], "seconds": 6.0},
            {"name": "06-2", "verdict": "FAIL", "margins": [(-0.1, "nats", "fall")], "seconds": 180.0,
             "line": "exercise 06-2: FAIL, expected: ..."}]
    runner.write_doc(rows, 186.0, only=True)
    text = doc.read_text()
    assert text.startswith("# Exercises\n\nintro\n\n") and text.endswith("\n\nafter\n")
    assert "OLD TABLE" not in text
    assert "| 00-1 | PASS | exact | 0.1 min |" in text and "| 06-2 | FAIL: exercise 06-2: FAIL" in text
    assert "-0.1 nats (fall)" in text and "1 of 2 PASS" in text
    # a run of some exercises replaces their rows and keeps the others'
    again = {"name": "06-2", "verdict": "PASS", "margins": [(0.2, "nats", "fall")], "seconds": 9.0}
    runner.write_doc([again], 9.0, only=True)
    text = doc.read_text()
    assert "| 00-1 | PASS | exact | 0.1 min |" in text and "| 06-2 | PASS | +0.2 nats (fall) |" in text
    assert "2 of 2 PASS" in text and "redid 06-2" in text
    assert block(text, runner.BLOCK) == runner.section(json.loads(runner.RESULTS.read_text()))  # regenerable


def test_docs_exercises_md_has_the_markers():
    text = runner.DOC.read_text()
    assert text.index(runner.BEGIN) < text.index(runner.END)
