"""Tracking that works offline: report_to="tensorboard" writes event files into the run's folder, off by
default; the Gemma 1.1 table's use_wandb maps to the trainer, or says how to install wandb."""
import json
from pathlib import Path

import pytest

from gemmate_lib.config import load_config
from gemmate_lib.errors import ParameterError

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--max_length", "48", "--batch_size", "4", "--steps_freq", "1", "--val_steps_freq", "0",
         "--keep_best_n", "0", "--save_strategy", "no", "--eval_fraction", "0.03", "--max_steps", "3",
         "--dtype", "fp32"]


@pytest.mark.parametrize("report_to", ["none", "tensorboard"])
def test_the_command_logs_training_curves_to_tensorboard_in_the_run_folder(report_to, tmp_path, tiny_folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gemmate_lib.cli.main import main
    from gemmate_lib.errors import run_cli

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


def test_the_training_notebooks_take_report_to_as_a_papermill_parameter_off_by_default():
    import papermill as pm

    for name in ("03_lora_sft", "06_compare_methods", "07_temporal_encoding"):
        path = ROOT / "notebooks" / f"{name}.ipynb"
        assert pm.inspect_notebook(str(path))["report_to"]["default"] == '"none"'  # off unless asked


def test_06_passes_report_to_into_every_methods_trainer(tmp_path, tiny_folder, tiny_tokenizer, cpu_cfg):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gemmate_lib.methods import build_methods, train_arm

    rows = [{"quote": "Be yourself.", "author": "Oscar Wilde",
             "text": "Quote: Be yourself.\nAuthor: Oscar Wilde"}] * 4
    cfg = cpu_cfg.replace(model_name=str(tiny_folder), max_steps=2, batch_size=2, steps_freq=1,
                          report_to="tensorboard")
    method = build_methods(cfg, str(tiny_folder), ["prefix"])["prefix"]
    train_arm(method.name, cfg.replace(**method.settings), tiny_tokenizer, rows, rows[:1],
              tmp_path / "prefix",
              adapter=method.peft_config)
    events = list((tmp_path / "prefix").rglob("events.out.tfevents.*"))
    assert len(events) == 1
    assert len(EventAccumulator(str(events[0].parent)).Reload().Scalars("train/loss")) == 2


def test_use_wandb_says_how_to_install_it_and_maps_to_the_trainer(monkeypatch, tmp_path):
    import importlib.util

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
    kwargs = training_kwargs(cfg, tmp_path, has_eval=True)
    assert kwargs["report_to"] == "wandb" and kwargs["run_name"] == "r1" and kwargs["save_only_model"] is True
