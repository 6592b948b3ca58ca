"""The run folder's facts: installed versions against the Colab pins."""
import sys
from pathlib import Path

import pytest


def test_version_mismatches_reads_the_colab_pins(monkeypatch):
    from importlib import metadata

    from gemmate_lib.guard_rails import run_folder
    from gemmate_lib.guard_rails.colab import pins
    from gemmate_lib.guard_rails.files import repo_root

    pinned = pins(repo_root() / "requirements-colab.txt")  # an environment installed from the pins...
    monkeypatch.setattr(metadata, "version", lambda name: pinned[name])
    assert run_folder.version_mismatches() == []
    # ... but for one package (not the real environment: `make drift` runs this on the newest releases)
    monkeypatch.setattr(metadata, "version", lambda name: "0.0.1" if name == "trl" else pinned[name])
    assert run_folder.version_mismatches() == [f"trl: installed 0.0.1, pinned {pinned['trl']}"]
    assert run_folder.version_mismatches(newer=True) == []
    # a newer release of the same major passes, and is listed as newer; another major does not pass
    major = int(pinned["trl"].split(".")[0])
    for version, breaks in ((f"{major}.999.0", False), (f"{major + 1}.0.0", True)):
        monkeypatch.setattr(metadata, "version", lambda name, v=version: v if name == "trl" else pinned[name])
        assert bool(run_folder.version_mismatches()) is breaks
        assert bool(run_folder.version_mismatches(newer=True)) is not breaks


def test_an_exercise_run_folder_lies_on_drive_in_colab_and_in_the_course_elsewhere(monkeypatch, tmp_path,
                                                                                    fake_colab):
    from gemmate_lib.guard_rails import colab, run_folder
    from gemmate_lib.guard_rails.files import repo_root

    monkeypatch.delenv("GEMMATE_RUN_DIR", raising=False)
    fake_colab.leave()
    assert not colab.in_colab()
    local = run_folder.get_run_dir("runs/ex_test_folder")
    assert local == repo_root() / "runs" / "ex_test_folder"
    local.rmdir()
    assert run_folder.get_run_dir("runs/ex_test_folder", create=False) == local and not local.exists()
    # Colab with Drive mounted: the same relative name lies in the course's folder on Drive, which the next
    # runtime sees, not on the runtime's own disk, which vanishes with it
    fake_colab.enter()
    monkeypatch.setattr(colab, "DRIVE", tmp_path)
    monkeypatch.setattr(colab, "DRIVE_RUNS", tmp_path / "MyDrive" / "gemmate" / "runs")
    (tmp_path / "MyDrive").mkdir()
    assert run_folder.get_run_dir("runs/ex04_1") == tmp_path / "MyDrive" / "gemmate" / "runs" / "ex04_1"
    assert (tmp_path / "MyDrive" / "gemmate" / "runs" / "ex04_1").is_dir()
    assert fake_colab.mounted == []  # Drive was mounted already: not mounted again


def test_relative_run_folders_lie_under_gemmate_runs_root_when_it_is_set(monkeypatch, tmp_path):
    """`make exercises` runs the lesson and every exercise in a scratch folder, not in the course's runs/."""
    from gemmate_lib.guard_rails import run_folder

    monkeypatch.delenv("GEMMATE_RUN_DIR", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setenv(run_folder.RUNS_ROOT, str(tmp_path))
    assert run_folder.get_run_dir("runs/ex03_1") == tmp_path / "runs" / "ex03_1"
    assert run_folder.get_run_dir(create=False) == tmp_path / "runs" / "interactive"  # the lesson's
    assert (tmp_path / "runs" / "ex03_1").is_dir() and not (tmp_path / "runs" / "interactive").exists()
    assert run_folder.get_run_dir(tmp_path / "elsewhere") == tmp_path / "elsewhere"  # an absolute one stays


def _colab_drive(monkeypatch, tmp_path, fake_colab):
    """Colab's Drive as tests/colab_runtime fakes it for `make exercises`: mounting shows the files kept in
    $COLAB_SIM_DRIVE, flush_and_unmount takes them away until the next mount."""
    import importlib.util
    import sys

    from gemmate_lib.guard_rails import colab

    spec = importlib.util.spec_from_file_location(
        "colab_sim_drive", Path(__file__).parent / "colab_runtime" / "google" / "colab" / "drive.py")
    sim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sim)
    monkeypatch.setenv("COLAB_SIM_DRIVE", str(tmp_path / "google-drive"))
    drive = sys.modules["google.colab.drive"]
    mounted = []
    monkeypatch.setattr(drive, "mount", lambda path, **kw: (mounted.append(path), sim.mount(path, **kw)))
    monkeypatch.setattr(drive, "flush_and_unmount", sim.flush_and_unmount)
    monkeypatch.setattr(colab, "DRIVE", tmp_path / "drive")
    monkeypatch.setattr(colab, "DRIVE_RUNS", tmp_path / "drive" / "MyDrive" / "gemmate" / "runs")
    monkeypatch.delenv("GEMMATE_RUN_DIR", raising=False)
    return mounted


@pytest.mark.xdist_group("content")  # the Drive stand-in's unmount looks at /content
def test_after_the_last_cell_unmounted_drive_a_solution_starting_with_get_run_dir_reads_it_again(
        monkeypatch, tmp_path, fake_colab):
    """05-1 and 05-3 read `adapter_dir` on Drive after Run all, whose last cell (flush_drive) unmounted it."""
    from gemmate_lib.guard_rails import colab, run_folder

    mounted = _colab_drive(monkeypatch, tmp_path, fake_colab)
    out = run_folder.get_run_dir()  # the lesson's run folder on Drive: mounts it
    adapter_dir = out / "adapter"
    adapter_dir.mkdir()
    (adapter_dir / "adapter_config.json").write_text("{}")
    assert colab.flush_drive() is True  # the notebook's last cell
    assert not adapter_dir.exists()  # unmounted: as on Colab, the path cannot be read
    ex = run_folder.get_run_dir("runs/ex05_1")  # the solution's first line
    assert (adapter_dir / "adapter_config.json").read_text() == "{}"  # Drive is back, with the lesson's files
    assert ex == colab.DRIVE_RUNS / "ex05_1" and len(mounted) == 2
    assert (tmp_path / "google-drive" / "gemmate" / "runs" / "ex05_1").is_dir()  # kept on "Drive"
    assert run_folder.get_run_dir("runs/ex05_3") and len(mounted) == 2  # still mounted: not mounted again


@pytest.mark.xdist_group("content")  # the Drive stand-in's unmount looks at /content
def test_a_run_folder_named_by_its_drive_path_mounts_drive_instead_of_making_a_plain_folder(
        monkeypatch, tmp_path, fake_colab):
    """An exercise rerun given run_dir as the Drive path a notebook printed, after the last cell unmounted
    Drive: the folder was made where Drive mounts, and every later mount failed (make exercises' 06 and 07).
    """
    from gemmate_lib.guard_rails import colab, run_folder

    mounted = _colab_drive(monkeypatch, tmp_path, fake_colab)
    run_folder.get_run_dir()  # the lesson mounts Drive ...
    colab.flush_drive()  # ... and its last cell unmounts it
    ex = run_folder.get_run_dir(str(colab.DRIVE_RUNS / "ex04_1"))
    assert (colab.DRIVE / "MyDrive").is_symlink() and len(mounted) == 2  # mounted again, not a plain folder
    assert (tmp_path / "google-drive" / "gemmate" / "runs" / "ex04_1").is_dir() and ex.is_dir()
