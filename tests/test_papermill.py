"""Papermill runs, tried as a practitioner would: a wrong parameter type must fail early and clearly, and the
commands docs/batch-runs.md gives run as written from a fresh clone."""
import json
import os
import re
import shlex
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import papermill as pm
import pytest

ROOT = Path(__file__).resolve().parents[1]
BATCH_RUNS = ROOT / "docs" / "batch-runs.md"


def _bash_blocks(page: Path) -> list[list[str]]:
    """The ```bash blocks of `page`, each as its list of commands (a line that ends in a backslash joined to
    the next; comments and blank lines left out)."""
    blocks = re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S)
    return [[line.strip() for line in re.sub(r"\\\n\s*", " ", block).splitlines()
             if line.strip() and not line.strip().startswith("#")] for block in blocks]


def _papermill_command(words: list[str]) -> tuple[list[str], dict, dict]:
    """(notebook and output, options, parameters) of a papermill command line split into words."""
    positional, options, params = [], {}, {}
    i = 1
    while i < len(words):
        if words[i] == "-p":
            params[words[i + 1]] = words[i + 2]
            i += 3
        elif words[i].startswith("-"):
            options[words[i]] = words[i + 1]
            i += 2
        else:
            positional.append(words[i])
            i += 1
    return positional, options, params


@pytest.mark.slow
def test_wrong_parameter_type_stops_the_notebook_with_a_clear_message(tmp_path):
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(ROOT / "notebooks" / "03_lora_sft.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters={"max_steps": "ten", "run_dir": str(tmp_path)},
                            cwd=str(ROOT / "notebooks"), kernel_name="python3", progress_bar=False)
    assert err.value.ename == "ParameterError"
    assert "max_steps='ten'" in err.value.evalue and "must be int" in err.value.evalue
    assert err.value.exec_count <= 4  # the config cell, before any model is loaded
    assert not (tmp_path / "adapter").exists()


@pytest.mark.slow
def test_missing_data_file_names_the_path(tmp_path):
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(ROOT / "notebooks" / "03_lora_sft.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters={"dataset": "my_quotes.jsonl", "run_dir": str(tmp_path)},
                            cwd=str(ROOT / "notebooks"), kernel_name="python3", progress_bar=False)
    assert err.value.ename == "ParameterError" and "my_quotes.jsonl" in err.value.evalue
    assert err.value.exec_count <= 4  # the config cell, before any model is loaded


def test_params_file_reaches_exactly_the_notebooks_that_declare_each_key(tmp_path):
    from gemmate_lib.guard_rails.errors import ParameterError
    from tools.runners.course import course_notebooks, notebook_parameters

    root = Path(__file__).resolve().parents[1]
    notebooks = course_notebooks(root)  # 00-07 and the one-page recipe, as make course runs them
    declared = pm.inspect_notebook(str(root / "notebooks" / "03_lora_sft.ipynb"))
    assert {"seed", "data_seed"} <= set(declared)  # the training seed and the split seed, separately
    per = notebook_parameters(notebooks, str(root / "params" / "cpu-quick.yaml"))
    assert per["03_lora_sft.ipynb"] == {"max_steps": 10, "compare": False}  # its own section too
    assert per["06_compare_methods.ipynb"]["steps"] == 2  # a key only 06 declares
    assert per["07_temporal_encoding.ipynb"]["num_epochs"] == 1.0  # a section of 07's own
    assert per["00_setup.ipynb"] == {}  # learning_checks is the runner's option, no notebook's parameter
    assert notebook_parameters(notebooks, str(root / "params" / "gpu.yaml"))["04_evaluation.ipynb"] == {
        "model_name": "google/gemma-2b", "dataset": "Abirate/english_quotes"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_step: 10\n")
    with pytest.raises(ParameterError, match="no notebook has a parameter named max_step") as info:
        notebook_parameters(notebooks, str(bad))
    assert "max_steps" in info.value.fix
    with pytest.raises(ParameterError, match="does not exist"):
        notebook_parameters(notebooks, str(tmp_path / "missing.yaml"))


def test_the_batch_run_commands_in_the_docs_make_their_folder_and_land_where_the_page_says(monkeypatch):
    """docs/batch-runs.md's papermill commands stopped at once in a fresh clone: papermill does not create
    the folder of the executed notebook ("output folder runs/my-run doesn't exist"). Each block now makes it
    first; every parameter is one the notebook declares; and the run folder (a relative `run_dir` lies in the
    course folder, whatever `--cwd` says) is the folder the executed notebook goes to."""
    from gemmate_lib.guard_rails.run_folder import get_run_dir

    monkeypatch.delenv("GEMMATE_RUN_DIR", raising=False)
    blocks = [block for block in _bash_blocks(BATCH_RUNS) if any("papermill" in c for c in block)]
    assert len(blocks) >= 2  # the parameters example and the exercise's
    for block in blocks:
        made = set()
        for command in block:
            words = shlex.split(command)
            if words[:2] == ["mkdir", "-p"]:
                made.update(Path(w) for w in words[2:])
                continue
            assert words[0] == ".venv/bin/papermill", command
            (notebook, output), options, params = _papermill_command(words)
            assert Path(output).parent in made, f"papermill needs {Path(output).parent}/ to exist: {command}"
            assert set(params) <= set(pm.inspect_notebook(str(ROOT / notebook))), command
            monkeypatch.chdir(ROOT / options.get("--cwd", "."))  # where papermill starts the kernel
            assert get_run_dir(params["run_dir"], create=False) == ROOT / Path(output).parent, command


@pytest.mark.slow
@pytest.mark.long  # make rehearse-learner; in make test, the test above holds the docs' commands
def test_the_documented_batch_run_runs_as_written_in_a_fresh_copy_of_the_course(tmp_path):
    """docs/batch-runs.md's first command block, run by bash in a copy of the course (its files without
    runs/, this .venv linked in) as a learner types it, with 2 steps, part 2 off and the smoke run's learning
    checks (2 steps learn nothing measurable), plus the page's own-data flag on a 200-row my_quotes.jsonl at
    the course root: the executed notebook and the adapter land in the course's runs/my-run, none in
    notebooks/."""
    text = BATCH_RUNS.read_text()
    block = next(block for block in _bash_blocks(BATCH_RUNS) if any("papermill" in c for c in block))
    own_data = re.search(r"add `(-p dataset [^`]+)`", text)[1]
    course = tmp_path / "course"
    shutil.copytree(ROOT, course, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "runs", "__pycache__", ".gpu-*", ".whl", "*.egg-info", ".ipynb_checkpoints",
        ".ruff_cache"))
    (course / ".venv").symlink_to(ROOT / ".venv")
    quotes = resources.files("inspirational_quotes").joinpath("quotes.json").read_text("utf-8")
    rows = json.loads(quotes)[:200]  # the embedded quotes' columns renamed to the ones a learner's file has
    (course / "my_quotes.jsonl").write_text(
        "".join(json.dumps({"quote": r["text"], "author": r["from"]}) + "\n" for r in rows))
    env = {k: v for k, v in os.environ.items() if k not in ("GEMMATE_RUN_DIR", "GEMMATE_PROFILE", "HF_TOKEN")}
    env.update(GEMMATE_SMOKE="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    for command in block:
        if "papermill" in command:
            command = re.sub(r"-p max_steps \d+", "-p max_steps 2", command) + f" -p compare False {own_data}"
        proc = subprocess.run(["bash", "-c", command], cwd=course, env=env, capture_output=True, text=True,
                              timeout=1800)
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-3000:]}"
    run = course / "runs" / "my-run"
    assert (run / "03_lora_sft.ipynb").is_file() and (run / "adapter" / "adapter_config.json").is_file()
    assert not (course / "notebooks" / "runs").exists()
    cells = json.loads((run / "03_lora_sft.ipynb").read_text())["cells"]
    outputs = "".join("".join(out.get("text", "")) for cell in cells for out in cell.get("outputs", []))
    assert f"of {len(rows)} rows" in outputs  # the data cell read my_quotes.jsonl, not the embedded quotes
