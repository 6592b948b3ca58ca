"""Hygiene of the committed notebooks: what nbval does not check."""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
EXPECTED = ["00_setup", "01_load_4bit", "02_baseline_generation", "03_lora_sft", "04_evaluation",
            "05_save_and_push",
            "06_compare_methods", "07_temporal_encoding"]  # the core path, then the two deeper dives


def test_the_course_notebooks_are_there_in_order():
    names = [nb.stem for nb in NOTEBOOKS]
    assert names[: len(EXPECTED)] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_hygiene(path):
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert cells[0]["cell_type"] == "markdown" and cells[0]["source"][0].startswith("# ")
    assert "**Runtime**" in "".join(cells[0]["source"])
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters' (papermill)"
    assert any("gemmate_lib" in "".join(c["source"]) for c in code)
    counts = [c["execution_count"] for c in code if c["execution_count"] is not None]
    assert counts == sorted(counts) and counts, "committed with the outputs of one top-to-bottom run"
    text = path.read_text()
    assert not re.search(r"hf_[A-Za-z0-9]{30,}", text), "something that looks like a token"
    assert not re.search(r"(/root/|/tmp/|/work/|/home/[a-z]+/)", text), "a machine path in the outputs"
    for c in code:
        assert "NBVAL" not in "".join(c["source"]), "nbval's markers are cell tags, not code learners read"
        for out in c.get("outputs", []):
            assert out["output_type"] != "error", f"stored error output: {out.get('ename')}"
            shown = "".join(out.get("text", ""))
            assert "Loading weights" not in shown, "a model-loading progress bar in the outputs"
    assert set(nb["metadata"]) <= {"kernelspec", "language_info", "papermill", "colab", "accelerator"}


def test_runtimes_come_from_course_timings_json():
    from tools.runners import timings

    data = timings.load()
    assert sorted(data["cpu_seconds"]) == sorted(data["t4_estimate"]) == [p.stem for p in NOTEBOOKS]
    readme = (ROOT / "README.md").read_text()
    for path in NOTEBOOKS:
        intro = "".join(json.loads(path.read_text())["cells"][0]["source"])
        assert timings.runtime_line(data,
                                    path.stem) in intro.splitlines(), f"{path.name}: run --sync-runtimes"
        assert f"| `{path.stem}` |" in readme and timings.readme_cells(data, path.stem) in readme
    assert timings.cpu_times_line(data) in readme.splitlines()  # which CPU measured them, fp32 or bf16


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_ends_with_a_checked_self_check_and_exercises(path):
    cells = json.loads(path.read_text())["cells"]
    checks = [c for c in cells if c["cell_type"] == "code" and "self_check(" in "".join(c["source"])]
    assert len(checks) == 1 and "nbval-check-output" in checks[0]["metadata"].get("tags", [])
    printed = "".join("".join(o.get("text", "")) for o in checks[0]["outputs"])
    assert "self-check: all" in printed and "FAIL" not in printed  # the committed run passed
    assert printed.rstrip().endswith("passed")  # nothing stray after the verdict ...
    assert all(o["output_type"] == "stream" for o in checks[0]["outputs"])  # ... such as a returned False
    heading = [i for i, c in enumerate(cells)
               if c["cell_type"] == "markdown" and "## Exercises" in "".join(c["source"])]
    assert len(heading) == 1
    # after them, optionally, up to 3 faults to make on purpose, numbered on from the exercises
    faults = [i for i, c in enumerate(cells)
              if c["cell_type"] == "markdown" and "## Break it on purpose" in "".join(c["source"])]
    assert len(faults) <= 1 and all(i > heading[0] for i in faults)
    end, prefix = faults[0] if faults else len(cells), path.stem[:2]
    numbers = []
    for section, fewest, most in ((cells[heading[0]:end], 2, 3), (cells[end:], 0, 3)):
        items = [int(k) for c in section if c["cell_type"] == "markdown"
                 for k in re.findall(r"^(\d)\. \*\*", "".join(c["source"]), re.M)]
        checks = [c for c in section if c["cell_type"] == "code" and "check(" in "".join(c["source"])]
        named = [f"{prefix}-{k}" for k in items]
        called = [n for c in checks for n in re.findall(r'check\("(\d\d-\d)"\)', "".join(c["source"]))]
        assert fewest <= len(items) <= most and len(checks) == len(items)  # a check cell of its own each
        assert called == named, (called, named)  # each below its own text, in the order of the texts
        numbers += items
    assert numbers == list(range(1, len(numbers) + 1))  # 03-4 follows 03-3
    from gemmate_lib.exercises.judging import EXERCISES

    assert [n for n in EXERCISES if n.startswith(prefix + "-")] == [f"{prefix}-{k}" for k in numbers]


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_every_notebook_opens_on_a_t4_gpu_runtime_in_colab(path):
    """Colab reads the runtime from the metadata: without it every badge opened a CPU runtime."""
    metadata = json.loads(path.read_text())["metadata"]
    assert metadata.get("accelerator") == "GPU" and metadata.get("colab", {}).get("gpuType") == "T4"


def test_re_executing_a_notebook_keeps_its_colab_runtime(tmp_path):
    """`make notebooks` writes every notebook back with only the metadata worth committing: the T4 runtime
    must survive it."""
    import nbformat

    from tools.runners.course import execute_in_place
    from tools.runners.timings import RUNTIME_METADATA

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1 + 1)")])
    nb.metadata.update(RUNTIME_METADATA, papermill={"duration": 1.0},
                       kernelspec={"name": "python3", "display_name": "Python 3", "language": "python"})
    nbformat.write(nb, tmp_path / "nb.ipynb")
    execute_in_place(tmp_path / "nb.ipynb", tmp_path / "run")
    written = json.loads((tmp_path / "nb.ipynb").read_text())
    assert "".join(written["cells"][0]["outputs"][0]["text"]) == "2\n"  # it ran
    assert {k: written["metadata"].get(k) for k in RUNTIME_METADATA} == RUNTIME_METADATA
    assert "papermill" not in written["metadata"]
