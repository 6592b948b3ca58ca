"""`gemmate train`'s checkpoints (cli/checkpoints.py): the keep policy, resume, early stopping, and a killed
run resumed."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from processes import QUICK, ROOT

from gemmate_cli.checkpoints import CheckpointPolicy, resume_checkpoint, select_kept
from gemmate_lib.guard_rails.errors import ParameterError
from gemmate_lib.resume import complete_checkpoints


def _fake_checkpoint(folder: Path, step: int, loss: float | None):
    folder.mkdir(parents=True)
    history = [{"step": step,
                "loss": 1.0}] + ([{"step": step, "eval_loss": loss}] if loss is not None else [])
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": history}))


LOSSES = {2: 3.0, 4: 2.0, 6: 2.5, 8: 1.5, 10: 2.2, 12: 2.4}


@pytest.fixture()
def checkpoints(tmp_path):
    for step, loss in LOSSES.items():
        _fake_checkpoint(tmp_path / f"checkpoint-{step}", step, loss)
    (tmp_path / "checkpoint-14").mkdir()  # killed mid-save: no trainer_state.json
    return tmp_path


def test_keep_last_and_best_select_exactly_the_right_checkpoints(checkpoints):
    found = complete_checkpoints(checkpoints)
    assert list(found) == [2, 4, 6, 8, 10, 12]
    assert select_kept(found, 2, 2, "eval_loss", "min") == {10, 12, 8, 4}
    assert select_kept(found, 1, 1, "eval_loss", "max") == {12, 2}
    assert select_kept(found, 0, 3, "eval_loss", "min") == {8, 4, 10}


def test_the_policy_deletes_what_it_does_not_keep_after_a_save(checkpoints):
    policy = CheckpointPolicy(checkpoints, keep_last_n=2, keep_best_n=1, metric="eval_loss")
    policy.on_save(None, SimpleNamespace(is_world_process_zero=True), None)
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-12",
                                                                        "checkpoint-14", "checkpoint-8"]
    policy.on_save(None, SimpleNamespace(is_world_process_zero=False), None)  # other DDP ranks never delete


def test_resume_picks_the_last_complete_the_best_or_the_given_checkpoint(checkpoints):
    assert resume_checkpoint(checkpoints, "last").name == "checkpoint-12"  # not the half-written 14
    assert resume_checkpoint(checkpoints, "best", metric="eval_loss", mode="min").name == "checkpoint-8"
    assert resume_checkpoint(checkpoints, "path",
                             path=str(checkpoints / "checkpoint-4")).name == "checkpoint-4"
    with pytest.raises(ParameterError, match="not a complete checkpoint"):
        resume_checkpoint(checkpoints, "path", path=str(checkpoints / "checkpoint-14"))
    with pytest.raises(ParameterError, match="holds no complete checkpoint"):
        resume_checkpoint(checkpoints / "empty", "last")


@pytest.mark.parametrize("mode, steps", [("min", 6), ("max", 12)])
def test_early_stopping_stops_gemmate_train_when_the_checkpoint_metric_stops_improving(
        mode, steps, tiny_folder, tmp_path, monkeypatch):
    """`gemmate train --early_stopping_patience 2` on the tiny Gemma, an evaluation every 2 of 12 steps whose
    eval_loss rises (2.0, 2.1, 2.2, ...; the evaluation loop faked, training real): ranked by eval_loss
    'min', the third evaluation is the second without improvement and the run stops at step 6; ranked 'max',
    every evaluation improves and the run goes on to step 12."""
    from transformers import Trainer
    from transformers.trainer_utils import EvalLoopOutput

    from gemmate_cli.errors import run_cli
    from gemmate_cli.main import main

    losses = iter([2.0, 2.1, 2.2, 2.3, 2.4, 2.5])

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        return EvalLoopOutput(predictions=None, label_ids=None, num_samples=1,
                              metrics={f"{metric_key_prefix}_loss": next(losses)})

    monkeypatch.setattr(Trainer, "evaluation_loop", evaluation_loop)
    out = tmp_path / "run"
    assert run_cli(main, ["train", *QUICK, "--model_name", str(tiny_folder), "--max_steps", "12",
                          "--early_stopping_patience", "2", "--checkpoint_metric", "eval_loss",
                          "--checkpoint_metric_mode", mode, "--keep_last_n", "1", "--keep_best_n", "0",
                          "--output_dir", str(out)]) == 0
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["steps"] == steps and metrics["final_eval_loss"] == [2.2, 2.5][mode == "max"]


@pytest.fixture()
def in_process_determinism():
    """--deterministic in this process: transformers' full determinism sets environment variables and torch's
    deterministic algorithms for the rest of the process; both go back as they were after the test."""
    import torch

    environ, algorithms = dict(os.environ), torch.are_deterministic_algorithms_enabled()
    cudnn = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    yield
    os.environ.clear()
    os.environ.update(environ)
    torch.use_deterministic_algorithms(algorithms)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


@pytest.mark.slow
def test_sigkill_then_resume_last_gives_the_same_adapter_bitwise(tmp_path, tiny_folder,
                                                                  in_process_determinism):
    """Plumbing (checkpoints, RNG and data position), so the
    tiny random Gemma: 24 steps, a checkpoint every 2. The killed run is `python -m gemmate_cli`, the
    uninterrupted and the resumed runs are the same command in this process (two more children took 12 s)."""
    from gemmate_cli.errors import run_cli
    from gemmate_cli.main import main

    args = [*QUICK, "--max_length", "128", "--model_name", str(tiny_folder), "--max_steps", "24",
            "--deterministic",
            "true", "--keep_last_n", "2", "--keep_best_n", "0"]
    assert run_cli(main, ["train", *args, "--output_dir", str(tmp_path / "straight")]) == 0
    straight = json.loads((tmp_path / "straight" / "train_metrics.json").read_text())

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "gemmate_cli", "train", *args, "--output_dir", str(out)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not complete_checkpoints(out) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (out / "train_metrics.json").exists()
    last = max(complete_checkpoints(out))
    assert last < 24
    assert run_cli(main, ["train", *args, "--output_dir", str(out), "--resume_from_checkpoint", "true",
                          "--resume_option", "last"]) == 0
    resumed = json.loads((out / "train_metrics.json").read_text())
    print(f"killed after checkpoint-{last} of 24 steps; resumed run digest "
          f"{resumed['trainable_digest'][:12]}, "
          f"uninterrupted {straight['trainable_digest'][:12]}")
    assert resumed["resumed_from"] == f"checkpoint-{last}" and resumed["steps"] == 24
    assert resumed["trainable_digest"] == straight["trainable_digest"]
    from safetensors.torch import load_file

    a = load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    b = load_file(out / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_a_resume_continues_only_the_run_that_wrote_the_checkpoint(tiny_folder, tmp_path):
    """`gemmate train` with resume_from_checkpoint resumed any checkpoint: with another learning rate it
    trained on at the checkpoint's (its optimizer and schedule) and recorded the new one; with a smaller
    max_steps it trained nothing and saved the longer run's adapter as the shorter one's; a fresh run beside a
    killed run's checkpoints kept and ranked them, and a later resume took the other run's. Each is refused
    now, naming what differs, before any model loads; a longer max_steps still continues the run."""
    from gemmate_cli.parser import load_config
    from gemmate_cli.train import train_from_config

    out = tmp_path / "run"
    common = {"model_name": str(tiny_folder), "max_length": "128", "max_steps": "4", "batch_size": "2",
              "steps_freq": "2", "val_steps_freq": "2", "keep_last_n": "2", "keep_best_n": "0",
              "device": "cpu", "dtype": "fp32", "output_dir": str(out), "eval_fraction": "0.05"}
    train_from_config(load_config(None, common))
    resume = {**common, "resume_from_checkpoint": "true"}
    with pytest.raises(ParameterError, match="other settings .learning_rate differ"):
        train_from_config(load_config(None, {**resume, "learning_rate": "0.1"}))
    with pytest.raises(ParameterError, match=r"past this run's end \(step 4, max_steps 2\)"):
        train_from_config(load_config(None, {**resume, "max_steps": "2"}))
    longer = train_from_config(load_config(None, {**resume, "max_steps": "6", "steps_freq": "1"}))
    assert longer["resumed_from"] == "checkpoint-4" and longer["steps"] == 6  # logged more often: same run
    killed = tmp_path / "killed"  # a run that left checkpoints and no train_metrics.json
    killed.mkdir()
    (out / "checkpoint-6").rename(killed / "checkpoint-6")
    with pytest.raises(ParameterError, match="holds checkpoints of an earlier run .checkpoint-6."):
        train_from_config(load_config(None, {**common, "output_dir": str(killed), "learning_rate": "0.1"}))
    (killed / "checkpoint-6" / "trainer_state.json").unlink()  # only a save cut short: nothing to resume
    assert train_from_config(load_config(None, {**common, "output_dir": str(killed)}))["steps"] == 4
