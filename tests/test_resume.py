"""Runs that survive a disconnect (gemmate_lib.resume): which checkpoint a rerun resumes from, on hand-made
checkpoint folders. The learner's-path test kills 03's kernel mid-training and holds the resumed adapter to an
uninterrupted run's, bitwise (tests/test_learner_path.py)."""
import json

from gemmate_lib.resume import RUN_FILE, complete_checkpoints, resume_point, run_settings

SETTINGS = run_settings({"learning_rate": 2e-4, "max_steps": 40, "output_dir": "a"}, "embedded", ["Quote: x"])


def _checkpoint(folder, step, max_steps=40, complete=True):
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if complete:  # the Trainer writes trainer_state.json last: killed mid-save, a folder is left without it
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": max_steps}))
    return path


def test_a_rerun_of_the_same_run_resumes_from_its_last_complete_checkpoint(tmp_path, capsys):
    assert resume_point(tmp_path, SETTINGS) is None  # the first run: nothing to resume, its settings recorded
    assert json.loads((tmp_path / RUN_FILE).read_text()) == SETTINGS
    _checkpoint(tmp_path, 20)
    _checkpoint(tmp_path, 30, complete=False)  # killed while saving step 30
    assert resume_point(tmp_path, SETTINGS) == str(tmp_path / "checkpoint-20")
    assert "resuming from step 20" in capsys.readouterr().out
    assert list(complete_checkpoints(tmp_path)) == [20]


def test_a_rerun_with_other_settings_starts_over_and_keeps_the_old_checkpoints(tmp_path, capsys):
    resume_point(tmp_path, SETTINGS)
    _checkpoint(tmp_path, 20)
    other = run_settings({"learning_rate": 1e-4, "max_steps": 40, "output_dir": "b"}, "embedded",
                         ["Quote: x"])
    assert other["args"] != SETTINGS["args"]
    assert resume_point(tmp_path, other) is None
    said = capsys.readouterr().out
    assert "learning_rate differ" in said and "output_dir" not in said  # where it writes is not the run
    assert (tmp_path / "previous-run" / "checkpoint-20").is_dir() and not list(tmp_path.glob("checkpoint-*"))
    data = run_settings({"learning_rate": 1e-4, "max_steps": 40, "output_dir": "b"}, "embedded", ["Quote: y"])
    _checkpoint(tmp_path, 10)
    assert resume_point(tmp_path, data) is None and "the data differ" in capsys.readouterr().out


def test_a_finished_run_trains_again_and_a_folder_without_its_settings_is_not_resumed(tmp_path, capsys):
    resume_point(tmp_path, SETTINGS)
    _checkpoint(tmp_path, 40)
    assert resume_point(tmp_path, SETTINGS) is None and "finished" in capsys.readouterr().out
    (tmp_path / RUN_FILE).unlink()  # checkpoints of a run that recorded nothing: unknown, not resumed
    _checkpoint(tmp_path, 20)
    assert resume_point(tmp_path, SETTINGS) is None and "unknown settings" in capsys.readouterr().out
