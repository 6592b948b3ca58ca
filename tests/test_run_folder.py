"""The run folder's facts: installed versions against the Colab pins."""


def test_version_mismatches_reads_the_colab_pins(monkeypatch):
    from importlib import metadata

    from gemmate_lib import run_folder
    from gemmate_lib.colab import pins
    from gemmate_lib.files import repo_root

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
    from gemmate_lib import colab, run_folder
    from gemmate_lib.files import repo_root

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
