"""`gemmate train` (gemmate_cli/train.py): two DDP processes match one; the policy's checkpoints are kept,
then `generate` and `evaluate` read the adapter; report_to="tensorboard" writes event files into the run's
folder, off by default; the Gemma 1.1 table's use_wandb maps to the trainer, or says how to install wandb."""
import json
import subprocess
import sys

import pytest
from metrics_schema import validate_metrics
from processes import QUICK, ROOT

from gemmate_cli.errors import run_cli
from gemmate_cli.parser import load_config
from gemmate_lib.guard_rails.errors import ParameterError

TRAIN = ["train", "--max_length", "48", "--batch_size", "4", "--steps_freq", "1", "--val_steps_freq", "0",
         "--keep_best_n", "0", "--save_strategy", "no", "--eval_fraction", "0.03", "--max_steps", "3",
         "--dtype", "fp32"]  # the tracking tests' short run


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
                           "-m", "gemmate_cli", "train", *common, "--output_dir", str(ddp)],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((ddp / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and ranks[0]["digest"] == ranks[1]["digest"]
    single = tmp_path / "single"  # in this process: a third interpreter would only import the stack again
    from gemmate_cli.main import main

    assert run_cli(main, ["train", *common, "--gradient_accumulation_steps", "2",
                          "--output_dir", str(single)]) == 0
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
def test_train_keeps_the_policys_checkpoints_then_generate_and_evaluate_read_the_adapter(tiny_folder,
                                                                                         tmp_path, capsys):
    """One `gemmate train` (10 steps, an evaluation and a checkpoint every 2, the last and the best kept),
    then `generate` and `evaluate` on its output folder. Plumbing, so the tiny random Gemma: the embedded
    model's own evaluation is test_evaluation's and nbval's 04 (this test once trained the real model)."""
    from gemmate_cli.main import main

    out = tmp_path / "run"
    tiny = ["--model_name", str(tiny_folder), "--dtype", "fp32"]
    assert run_cli(main, ["train", *QUICK, *tiny, "--max_steps", "10", "--output_dir", str(out),
                          "--keep_last_n", "1", "--keep_best_n", "1"]) == 0
    metrics = json.loads((out / "train_metrics.json").read_text())
    state = json.loads((out / "checkpoint-10" / "trainer_state.json").read_text())
    evals = {e["step"]: e["eval_loss"] for e in state["log_history"] if "eval_loss" in e}
    assert sorted(evals) == [2, 4, 6, 8, 10]
    expected = sorted({10, min(evals, key=evals.get)})
    assert sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")) == expected
    assert metrics["checkpoints_kept"] == [f"checkpoint-{s}" for s in expected]
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    capsys.readouterr()
    assert run_cli(main, ["generate", *tiny, "--output_dir", str(out), "--prompts",
                          "Quote: Imagination is more", "--max_new_tokens", "6"]) == 0
    assert capsys.readouterr().out.startswith("--- Quote: Imagination is more")
    assert run_cli(main, ["evaluate", *QUICK, *tiny, "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    doc = json.loads((out / "metrics.json").read_text())
    validate_metrics(doc)
    from gemmate_lib.data import load_quotes
    from gemmate_lib.models import load_tokenizer

    held = load_quotes("embedded", 0.03, 42, load_tokenizer(str(tiny_folder)), 48).held_out
    assert doc["n_examples"] == len(held) and doc["models"]["fine-tuned"]["perplexity"]["value"] > 1
    assert "usable rows from inspirational-quotes" in printed  # the drop report, before the model loads
    assert json.loads(printed[printed.index("{\n"):])["perplexity"] == pytest.approx(
        doc["models"]["fine-tuned"]["perplexity"]["value"], abs=1e-4)


@pytest.mark.parametrize("targets", ["q_proj,qkv_proj", "attn"])
def test_an_unknown_target_module_lists_the_models_linear_layers(tmp_path, tiny_folder, capsys, targets):
    """peft said only "Target modules {'attn'} not found", and dropped a misspelt name beside a good one."""
    from gemmate_cli.main import main

    assert run_cli(main, ["train", "--model_name", str(tiny_folder), "--dtype", "fp32", "--max_length", "48",
                          "--lora_target_modules", targets, "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    unknown = targets.split(",")[-1]
    assert f"lora_target_modules names {unknown!r}, which this model does not have" in err, err
    assert "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head" in err
    assert err.count("\n") == 2 and "unexpected error" not in err


@pytest.mark.parametrize("report_to", ["none", "tensorboard"])
def test_the_command_logs_training_curves_to_tensorboard_in_the_run_folder(report_to, tmp_path, tiny_folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gemmate_cli.errors import run_cli
    from gemmate_cli.main import main

    out = tmp_path / "run"
    assert run_cli(main,
                   [*TRAIN, "--model_name", str(tiny_folder), "--output_dir", str(out), "--report_to",
                    report_to]) == 0
    events = list(out.rglob("events.out.tfevents.*"))
    if report_to == "none":
        assert events == []  # off by default: nothing written
        return
    assert len(events) == 1 and out in events[0].parents
    curves = EventAccumulator(str(events[0].parent)).Reload()
    losses = [e.value for e in curves.Scalars("train/loss")]
    final = json.loads((out / "train_metrics.json").read_text())["final_loss"]
    assert len(losses) == 3 and losses[-1] == pytest.approx(final, rel=1e-5)  # one a step, the trainer's own
    assert "train/learning_rate" in curves.Tags()["scalars"]


def test_use_wandb_says_how_to_install_it_and_maps_to_the_trainer(monkeypatch, tmp_path):
    import importlib.util

    from gemmate_cli.train import checkpoint_kwargs
    from gemmate_lib.training import training_kwargs

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name,
                        *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ParameterError, match="pip install wandb"):
        load_config(None, {"use_wandb": "true", "output_dir": str(tmp_path)})
    monkeypatch.setattr(importlib.util, "find_spec", lambda name,
                        *a: object() if name == "wandb" else real(name, *a))
    cfg = load_config(None, {"use_wandb": "true", "wandb_run_name": "r1", "save_optim": "false",
                             "output_dir": str(tmp_path)})
    kwargs = training_kwargs(cfg.course, tmp_path, has_eval=True) | checkpoint_kwargs(cfg, has_eval=True)
    assert kwargs["report_to"] == "wandb" and kwargs["run_name"] == "r1" and kwargs["save_only_model"] is True


class _Loaded(Exception):
    """Raised by a stand-in load_model: the command got past the output_dir rule."""


@pytest.mark.parametrize("command", ["train", "train-te", "hpo"])
def test_a_training_command_refuses_an_output_dir_with_a_finished_run_unless_resuming(
        command, tmp_path, tiny_folder, capsys, monkeypatch):
    """The one output_dir rule of train, train-te and hpo (train.check_output_dir), before any model loads: a
    folder without a finished run is written into, one with a finished run is refused with the fix in one
    line; only `gemmate train` resumes, and then it may (train-te's --overwrite changes nothing)."""
    from gemmate_cli.main import main
    from gemmate_lib import models

    def loaded(*args, **kwargs):
        raise _Loaded

    monkeypatch.setattr(models, "load_model", loaded)
    args = {"train": ["train"], "train-te": ["train-te", "--temporal_task", "python_releases"],
            "hpo": ["hpo", "--n_trials", "1"]}[command]
    args += ["--model_name", str(tiny_folder), "--dtype", "fp32", "--max_length", "48", "--output_dir"]
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("a file of one's own")  # not empty, but no finished run: written into
    with pytest.raises(_Loaded):
        main([*args, str(out)])
    capsys.readouterr()
    marker = "hpo_results.csv" if command == "hpo" else "train_metrics.json"
    (out / marker).write_text("{}")
    extra = ["--overwrite"] if command == "train-te" else []
    assert run_cli(main, [*args, str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert f"output_dir {out} already holds a finished run ({marker})" in err
    assert "Fix: pick another output_dir, or delete this one" in err and err.count("\n") == 2
    if command == "train":  # resuming from the finished run is allowed
        (out / "checkpoint-2").mkdir()
        (out / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2, "log_history": []}')
        with pytest.raises(_Loaded):
            main([*args, str(out), "--resume_from_checkpoint", "true"])


def test_final_loss_is_the_last_logged_training_loss():
    """One rule for final_loss (and final_eval_loss) in both commands: the last value logged in the column;
    evaluation rows carry no training loss."""
    import pandas as pd

    from gemmate_cli.train import last_logged

    log = pd.DataFrame({"step": [2, 4, 4], "loss": [2.5, 2.1, float("nan")],
                        "eval_loss": [float("nan"), float("nan"), 2.3]})
    assert last_logged(log, "loss") == 2.1 and last_logged(log, "eval_loss") == 2.3
    assert last_logged(log.iloc[:0], "loss") is None and last_logged(log[["step"]], "eval_loss") is None


def test_checkpoint_kwargs_add_the_policy_wandb_and_ddp(monkeypatch, tmp_path):
    """What the command line adds on top of the library's SFTConfig keywords (which keep the last checkpoint
    only, every save_steps: the command's policy keeps its own, so it lifts that limit)."""
    from gemmate_cli.train import checkpoint_kwargs

    cfg = load_config(None, {"device": "cpu", "output_dir": str(tmp_path), "save_optim": "false"})
    assert checkpoint_kwargs(cfg, has_eval=True) == {
        "save_strategy": "steps", "save_steps": 10, "metric_for_best_model": "eval_loss",
        "greater_is_better": False, "save_only_model": True, "save_total_limit": None}
    no_save = {"save_strategy": "no", "save_total_limit": None}
    assert checkpoint_kwargs(cfg, has_eval=True, save=False) == no_save  # hpo's trials
    epoch = cfg.replace(save_strategy="epoch", checkpoint_metric_mode="max")
    assert checkpoint_kwargs(epoch, has_eval=True) == {
        "save_strategy": "epoch", "eval_strategy": "epoch", "metric_for_best_model": "eval_loss",
        "greater_is_better": True, "save_only_model": True, "save_total_limit": None}
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert checkpoint_kwargs(cfg, has_eval=False) == {
        "save_strategy": "steps", "save_steps": 10, "save_only_model": True, "save_total_limit": None,
        "ddp_find_unused_parameters": False, "ddp_backend": "gloo"}
