"""`make lab-check` (tools/environments/lab_check.py): the pure parts, with no browser and no JupyterLab. A
saved notebook's verdict (the self-check's line, every cell's error, the cell a time limit stopped), the
cleared copy, the learner's environment, and selenium kept out of requirements.txt."""
import nbformat
from make_dry_run import make_commands, pip_installs
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from tools.environments.lab_check import (
    ROOT,
    copy_cleared,
    learner_env,
    outcome_of,
    read_verdict,
    running_cell,
)


def _stdout(text, count):
    return new_code_cell("print(...)", execution_count=count, outputs=[new_output("stream", name="stdout",
                                                                                      text=text)])


def _saved(*cells):
    return new_notebook(cells=[new_markdown_cell("# a notebook"), *cells])


def test_a_passed_self_check_is_pass():
    nb = _saved(_stdout("ready\n", 1),
                _stdout("PASS the model is ready to load\nPASS the run folder has its manifest\n"
                        "self-check: all 2 passed\n", 2),
                _stdout("exercise 00-1: NOT RUN YET (run solution 1 above)\n", 3))
    result = outcome_of(nb)
    assert result.passed and result.detail == "self-check: all 2 passed" and result.errors == []


def test_a_stop_before_the_self_check_is_fail_with_its_message(tmp_path):
    """The one-page recipe with no token and no GPU: its third code cell raises the page's Stop (one line in
    Jupyter: its traceback is that line), Run All stops there (the cells below keep no execution count), and
    the saved file says why."""
    gated = new_code_cell("import os\nraise Stop(...)", execution_count=3, outputs=[new_output(
        "error", ename="Stop", evalue="google/gemma-2b is gated and no Hugging Face token was found. "
        "Fix: accept its licence\nsecond line", traceback=["Stop: google/gemma-2b is gated ..."])])
    never = new_code_cell("checks = {}\nprint('self-check: all 5 passed')", execution_count=None)
    path = tmp_path / "qlora_one_runtime.ipynb"
    nbformat.write(_saved(_stdout("packages: ...\n", 1), _stdout("GPU: none\n", 2), gated, never), str(path))
    result = read_verdict(path)  # from the saved file, as the tool reads it
    assert not result.passed
    assert result.detail == ("cell 4 (import os): Stop: google/gemma-2b is gated and no Hugging Face "
                             "token was found. Fix: accept its licence")
    assert result.errors == [result.detail]


def test_a_failed_self_check_and_every_error_are_reported():
    failed = new_code_cell("passed = self_check(...)", execution_count=2, outputs=[
        new_output("stream", name="stdout", text="FAIL the held-out loss went down: train longer\n"),
        new_output("error", ename="SelfCheckError", evalue="\x1b[0mself-check failed: the held-out loss went "
                   "down\n  Fix: train longer", traceback=[])])
    result = outcome_of(_saved(_stdout("self-check: all 3 passed\n", 1), failed))
    assert not result.passed  # a passed line does not hide an error elsewhere
    assert result.detail == "cell 3 (passed = self_check(...)): SelfCheckError: self-check failed: the " \
                            "held-out loss went down"


def test_no_verdict_names_the_cell_that_never_finished():
    nb = _saved(_stdout("ready\n", 1), new_code_cell("", execution_count=None),
                new_code_cell("trainer.train()", execution_count=None), new_code_cell("self_check()"))
    assert running_cell(nb) == "cell 4 (trainer.train())"  # an empty cell is never run, so never counts
    result = outcome_of(nb)
    assert not result.passed
    assert result.detail == ("no self-check verdict in the saved notebook: cell 4 (trainer.train()) "
                             "never finished")
    nb.cells[3].execution_count, nb.cells[4].execution_count = 2, 3
    assert running_cell(nb) is None and outcome_of(nb).detail == "no self-check verdict in the saved notebook"


def test_the_copy_is_cleared_and_the_committed_notebook_untouched(tmp_path):
    source, target = tmp_path / "00_setup.ipynb", tmp_path / "copy" / "00_setup.ipynb"
    target.parent.mkdir()
    nbformat.write(_saved(_stdout("self-check: all 5 passed\n", 7)), str(source))
    before = source.read_bytes()
    copy_cleared(source, target)
    copy = nbformat.read(str(target), as_version=4)
    assert [(c.outputs, c.execution_count) for c in copy.cells if c.cell_type == "code"] == [([], None)]
    assert not outcome_of(copy).passed and source.read_bytes() == before


def test_the_learner_has_no_token_and_no_course_setting(tmp_path):
    base = {"PATH": "/usr/bin", "HF_TOKEN": "hf_x", "HUGGING_FACE_HUB_TOKEN": "hf_y", "GEMMATE_PROFILE": "t4",
            "GEMMATE_SMOKE": "1", "GEMMATE_RUN_DIR": "runs/elsewhere", "GEMMATE_CACHE": "/cache",
            "JUPYTER_TOKEN": "theirs"}
    env = learner_env(base, tmp_path, "ours")
    assert "HF_TOKEN" not in env and "HUGGING_FACE_HUB_TOKEN" not in env
    assert not (tmp_path / "no-hf-token").exists() and env["HF_TOKEN_PATH"] == str(tmp_path / "no-hf-token")
    assert env["HF_HUB_OFFLINE"] == env["HF_DATASETS_OFFLINE"] == "1"
    assert {k for k in env if k.startswith("GEMMATE_")} == {"GEMMATE_CACHE", "GEMMATE_RUN_DIR"}
    assert env["GEMMATE_RUN_DIR"] == str(tmp_path / "run") and env["JUPYTER_TOKEN"] == "ours"
    assert env["PATH"] == "/usr/bin" and base["HF_TOKEN"] == "hf_x"


def test_make_lab_check_installs_selenium_from_its_own_file_only():
    installs = pip_installs(make_commands("lab-check"))
    assert ["-q", "-r", "requirements-lab-check.txt"] in installs
    assert "selenium" not in (ROOT / "requirements.txt").read_text()
    assert (ROOT / "requirements-lab-check.txt").read_text().startswith("selenium==")
