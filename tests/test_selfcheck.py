"""Self-checks (selfcheck.py): a failed one stops the notebook in one line, so a headless run sees it."""
import pytest


def test_a_failed_self_check_stops_the_notebook_in_one_line(capsys):
    """A failed check that only printed would let papermill, make course and make gpu-check pass the
    notebook."""
    from gemmate_lib.guard_rails.selfcheck import SelfCheckError, self_check

    assert self_check((True, "the loss went down", "train longer"))
    with pytest.raises(SelfCheckError) as err:
        self_check((True, "a", "-"), (False, "the adapter exists", "run 03 first"), (False, "b", "-"))
    assert err.value.problem == "self-check failed: the adapter exists (and 1 more above)"
    assert err.value.fix == "run 03 first"
    assert "FAIL the adapter exists: run 03 first" in capsys.readouterr().out


def test_a_failed_self_check_fails_the_papermill_run(tmp_path):
    import nbformat
    import papermill as pm

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import gemmate_lib\ngemmate_lib.quiet()"),
        nbformat.v4.new_code_cell("from gemmate_lib.guard_rails.selfcheck import self_check\n"
                                  "self_check((1 > 2, 'one is more than two', 'count again'))"),
        nbformat.v4.new_code_cell("print('after the check')")])
    nbformat.write(nb, tmp_path / "check.ipynb")
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(tmp_path / "check.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3",
                            progress_bar=False, cwd=str(tmp_path))
    assert err.value.ename == "SelfCheckError" and "one is more than two" in err.value.evalue
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    shown = [o for c in out.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert len(shown[0].traceback) == 1  # one line naming the check and its fix, no library traceback
    assert "Fix: count again" in shown[0].traceback[0]


def test_a_failed_self_check_still_flushes_google_drive(tmp_path, monkeypatch, capsys, fake_colab):
    """Every notebook's last cell flushes Drive after its self-check, so a failed check (which stops the
    notebook) skipped the flush: what the runtime wrote could miss the next notebook's runtime."""
    from gemmate_lib.guard_rails import colab
    from gemmate_lib.guard_rails.selfcheck import SelfCheckError, self_check

    flushed = fake_colab.flushed
    monkeypatch.setattr(colab, "DRIVE", tmp_path / "drive")
    (tmp_path / "drive" / "MyDrive").mkdir(parents=True)
    assert self_check((True, "the adapter exists", "-")) and flushed == []  # passed: the notebook flushes
    with pytest.raises(SelfCheckError):
        self_check((False, "the loss went down", "train longer"))
    assert flushed == ["flushed"]
    assert "Google Drive flushed" in capsys.readouterr().out


def test_a_quick_pass_reports_a_missed_learning_goal_and_still_stops_on_anything_else(monkeypatch, capsys):
    """make course PARAMS=params/cpu-quick.yaml (learning_checks: report, via tools/runners/course.py's
    run_options): a learning goal its fewer steps miss is reported; a check that is not about learning still
    stops."""
    import pytest

    from gemmate_lib.guard_rails.selfcheck import SelfCheckError, learned, self_check
    from tools.runners.course import run_options

    monkeypatch.delenv("GEMMATE_SMOKE", raising=False)
    monkeypatch.setattr("os.environ", {**__import__("os").environ,
                                       **run_options("params/cpu-quick.yaml")})
    assert self_check((learned(False, True), "the loss went down", "train longer")) is False
    assert "quick pass: 1 learning check(s) not met" in capsys.readouterr().out
    with pytest.raises(SelfCheckError):
        self_check((False, "the adapter is saved", "rerun the save cell"))
    monkeypatch.setattr("os.environ", {k: v for k, v in __import__("os").environ.items()
                                       if k != "GEMMATE_LEARNING_CHECKS"})
    with pytest.raises(SelfCheckError):  # the full course: a missed learning goal stops
        self_check((learned(False, True), "the loss went down", "train longer"))
