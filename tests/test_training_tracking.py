"""Tracking that works offline in the notebooks: report_to is a papermill parameter, off by default, and 06
passes it into every method's trainer (the command's tracking: tests/cli/test_cli_train.py)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_training_notebooks_take_report_to_as_a_papermill_parameter_off_by_default():
    import papermill as pm

    for name in ("03_lora_sft", "06_compare_methods", "07_temporal_encoding"):
        path = ROOT / "notebooks" / f"{name}.ipynb"
        assert pm.inspect_notebook(str(path))["report_to"]["default"] == '"none"'  # off unless asked


def test_06_passes_report_to_into_every_methods_trainer(tmp_path, tiny_folder, tiny_tokenizer, cpu_cfg):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from test_notebook_recipes import build_06

    from gemmate_lib.methods import train_arm

    rows = [{"quote": "Be yourself.", "author": "Oscar Wilde",
             "text": "Quote: Be yourself.\nAuthor: Oscar Wilde"}] * 4
    cfg = cpu_cfg.replace(model_name=str(tiny_folder), max_steps=2, batch_size=2, steps_freq=1,
                          report_to="tensorboard")
    method = build_06(cfg, str(tiny_folder), ["prefix"])["prefix"]
    train_arm(method.name, cfg.replace(**method.settings), tiny_tokenizer, rows, rows[:1],
              tmp_path / "prefix",
              adapter=method.peft_config)
    events = list((tmp_path / "prefix").rglob("events.out.tfevents.*"))
    assert len(events) == 1
    assert len(EventAccumulator(str(events[0].parent)).Reload().Scalars("train/loss")) == 2
