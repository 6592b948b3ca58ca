"""`gemmate`: one command with subcommands; checkpoint policy, resume, early stopping, hpo, DDP."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from gemmate_lib.cli.checkpoints import CheckpointPolicy, complete_checkpoints, resume_checkpoint, select_kept
from gemmate_lib.errors import ParameterError, run_cli

ROOT = Path(__file__).resolve().parents[1]
# Small and quick on the embedded default: short quotes, batch 4.
QUICK = ["--max_length", "48", "--batch_size", "4", "--steps_freq", "2", "--val_steps_freq", "2",
         "--eval_fraction", "0.03"]


def gemmate(*args, check=True, **kwargs):
    proc = subprocess.run([sys.executable, "-m", "gemmate_lib", *args], capture_output=True, text=True,
                          cwd=ROOT,
                          timeout=900, **kwargs)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


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


def test_early_stopping_is_transformers_callback_wired_to_the_checkpoint_metric(cpu_cfg, tmp_path):
    from transformers import EarlyStoppingCallback, TrainerControl, TrainerState

    from gemmate_lib.training import training_args

    cfg = cpu_cfg.replace(early_stopping_patience=2, checkpoint_metric="eval_loss")
    args = training_args(cfg, tmp_path, has_eval=True)
    assert args.metric_for_best_model == "eval_loss" and args.greater_is_better is False
    assert args.eval_strategy == "steps" and args.save_steps == args.eval_steps == cfg.train.val_steps_freq
    stop, state, control = EarlyStoppingCallback(early_stopping_patience=2), TrainerState(), TrainerControl()
    for loss in (2.0, 2.1, 2.2):  # the Trainer updates best_metric after each evaluation
        stop.on_evaluate(args, state, control, metrics={"eval_loss": loss})
        state.best_metric = min(loss, state.best_metric or loss)
    assert control.should_training_stop


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert run_cli(__import__("gemmate_lib.cli.main", fromlist=["main"]).main,
                   ["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err and err.count("\n") == 2  # problem + fix
    with pytest.raises(SystemExit) as stop:
        run_cli(__import__("gemmate_lib.cli.main", fromlist=["main"]).main, ["train", "--lora_rank", "8"])
    assert stop.value.code == 2 and "unrecognized arguments: --lora_rank" in capsys.readouterr().err


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(capsys):
    def broken(argv):
        raise KeyError("boom")

    assert run_cli(broken, []) == 1
    err = capsys.readouterr().err
    assert err.startswith("unexpected error: KeyError") and "--debug" in err and "Traceback" not in err
    assert run_cli(broken, ["--debug"]) == 1 and "Traceback" in capsys.readouterr().err


def test_gemmate_te_is_an_alias_of_train_te(monkeypatch, tmp_path, capsys):
    from gemmate_lib.cli import main as cli

    monkeypatch.setattr(sys, "argv",
                        ["gemmate-te", "--dataset", str(tmp_path / "none.jsonl"), "--batch_size", "0"])
    assert cli.run_te() == 2 and "batch_size=0 must be at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_sigkill_then_resume_last_gives_the_same_adapter_bitwise(tmp_path, tiny_folder):
    """Plumbing (checkpoints, RNG and data position), so the
    tiny random Gemma: 24 steps, a checkpoint every 2."""
    args = [*QUICK, "--max_length", "128", "--model_name", str(tiny_folder), "--max_steps", "24",
            "--deterministic",
            "true", "--keep_last_n", "2", "--keep_best_n", "0"]
    gemmate("train", *args, "--output_dir", str(tmp_path / "straight"))
    straight = json.loads((tmp_path / "straight" / "train_metrics.json").read_text())

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "gemmate_lib", "train", *args, "--output_dir", str(out)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not complete_checkpoints(out) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (out / "train_metrics.json").exists()
    last = max(complete_checkpoints(out))
    assert last < 24
    gemmate("train", *args, "--output_dir", str(out), "--resume_from_checkpoint", "true", "--resume_option",
            "last")
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


@pytest.mark.slow
def test_tiny_hpo_writes_a_table_and_a_best_config(tmp_path, tiny_folder):
    """Optuna's wiring (trials, table, best config) is plumbing: the tiny random Gemma."""
    import pandas as pd

    from gemmate_lib.cli.hpo import search
    from gemmate_lib.config import load_config

    out = tmp_path / "hpo"
    cfg = load_config(None, {k.lstrip("-"): v for k, v in zip(QUICK[::2], QUICK[1::2])} | {
        "max_steps": "2", "output_dir": str(out), "device": "cpu", "model_name": str(tiny_folder),
        "max_length": "128"})
    search(cfg, n_trials=2)
    table = pd.read_csv(out / "hpo_results.csv")
    assert len(table) == 2 and table.eval_loss.notna().all()
    best = load_config(out / "best_config.yaml")
    winner = table.sort_values("eval_loss").iloc[0]
    assert best.train.learning_rate == pytest.approx(winner["params_learning_rate"])


@pytest.mark.slow
def test_two_process_ddp_on_cpu_matches_one_process(tmp_path, tiny_folder):
    """accelerate launch, 2 processes, gloo: the ranks
    agree, and equal one process that accumulates 2 batches.

    Gradient synchronisation is plumbing, so the tiny random
    Gemma (as in `make test-fast`'s other plumbing tests).
    """
    from safetensors.torch import load_file

    common = [*QUICK, "--max_length", "128", "--model_name", str(tiny_folder), "--batch_size", "2",
              "--max_steps", "4",
              "--dtype", "fp32", "--group_by_length", "false",
              "--fast_loss", "false", "--keep_best_n", "0", "--keep_last_n", "1"]
    ddp = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                           "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "-m", "gemmate_lib", "train", *common, "--output_dir", str(ddp)],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((ddp / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and ranks[0]["digest"] == ranks[1]["digest"]
    single = tmp_path / "single"
    gemmate("train", *common, "--gradient_accumulation_steps", "2", "--output_dir", str(single))
    a = load_file(ddp / "adapter" / "adapter_model.safetensors")
    b = load_file(single / "adapter" / "adapter_model.safetensors")
    import torch

    assert a.keys() == b.keys()
    diff = (torch.cat([(a[k] - b[k]).flatten() for k in a]).norm()
            / torch.cat([b[k].flatten() for k in b]).norm())
    loss_ddp = json.loads((ddp / "train_metrics.json").read_text())["final_loss"]
    loss_one = json.loads((single / "train_metrics.json").read_text())["final_loss"]
    print(f"DDP vs one process: relative L2 difference of the adapters {float(diff):.2e}; "
          f"final loss {loss_ddp:.5f} vs {loss_one:.5f}")
    # Only the summation order differs (gloo all-reduce vs
    # accumulation): 0 on the tiny model, 3.7e-7 on the real one.
    assert float(diff) < 1e-4 and loss_ddp == pytest.approx(loss_one, rel=1e-3)
    assert all(a[k].abs().sum() > 0 for k in a if "lora_B" in k)  # it trained: B starts at zero


@pytest.mark.slow
def test_train_keeps_the_policys_checkpoints_then_generate_and_evaluate_read_the_adapter(tmp_path, capsys):
    """One real `gemmate train` (in this process), then `generate` and `evaluate` on its output folder."""
    from gemmate_lib.cli.main import main

    out = tmp_path / "run"
    assert run_cli(main, ["train", *QUICK, "--max_steps", "6", "--output_dir", str(out), "--keep_last_n", "1",
                          "--keep_best_n", "1"]) == 0
    metrics = json.loads((out / "train_metrics.json").read_text())
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    evals = {e["step"]: e["eval_loss"] for e in state["log_history"] if "eval_loss" in e}
    assert sorted(evals) == [2, 4, 6]
    expected = sorted({6, min(evals, key=evals.get)})
    assert sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")) == expected
    assert metrics["checkpoints_kept"] == [f"checkpoint-{s}" for s in expected]
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    capsys.readouterr()
    assert run_cli(main, ["generate", "--output_dir", str(out), "--prompts", "Quote: Imagination is more",
                          "--max_new_tokens", "6"]) == 0
    assert capsys.readouterr().out.startswith("--- Quote: Imagination is more")
    assert run_cli(main, ["evaluate", *QUICK, "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    doc = json.loads((out / "metrics.json").read_text())
    from gemmate_lib.data import load_quotes
    from gemmate_lib.models import load_tokenizer

    held = load_quotes("embedded", 0.03, 42, load_tokenizer("embedded"), 48).held_out
    assert doc["n_examples"] == len(held) and doc["models"]["fine-tuned"]["perplexity"]["value"] > 1
    assert "usable rows from inspirational-quotes" in printed  # the drop report, before the model loads
    assert json.loads(printed[printed.index("{\n"):])["perplexity"] == pytest.approx(
        doc["models"]["fine-tuned"]["perplexity"]["value"], abs=1e-4)


def test_help_lists_every_setting_with_its_help_text_and_default(capsys):
    from gemmate_lib.cli.main import main
    from gemmate_lib.config import FIELDS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for name, f in FIELDS.items():
        assert f"--{name}" in shown and " ".join(f.metadata["help"].split()) in shown, name
    assert "--lora_r R rank of the low-rank update" in shown and "[default: 8]" in shown
