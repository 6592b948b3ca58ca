"""Runs that survive a disconnect (gemmate_lib.resume): which checkpoint a rerun resumes from, on hand-made
checkpoint folders. The learner's-path test kills 03's kernel mid-training and holds the resumed adapter to an
uninterrupted run's, bitwise (tests/test_learner_path.py)."""
import json
import re

import pytest

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


# --- "the same run" on a real adapter: every setting that changes the result -------------------------------

def _peft(model, r=4, alpha=8, dropout=0.0, targets=("q_proj", "v_proj")):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                                            target_modules=list(targets)))


BASE = dict(learning_rate=2e-4, seed=42, max_length=64, max_steps=6)


def _settings(model, *, texts=("Quote: x\nAuthor: y",), name="embedded", temporal=None, **args):
    from trl import SFTConfig

    config = SFTConfig(output_dir="unused", use_cpu=True, report_to="none", **{**BASE, **args})
    extra = {"temporal": temporal} if temporal else {}
    return run_settings(config, name, list(texts), model=model, **extra)


CHANGES = {  # setting -> (how the rerun differs, the name its message must give)
    "model": (dict(name="google/gemma-2b"), "the model"),
    "data": (dict(texts=("Quote: z\nAuthor: y",)), "the data"),
    "learning_rate": (dict(learning_rate=1e-4), "learning_rate"),
    "seed": (dict(seed=1), "seed"),
    "max_length": (dict(max_length=128), "max_length"),
    "max_steps": (dict(max_steps=8), "max_steps"),
    "lora_r": (dict(peft=dict(r=8)), "r"),
    "lora_alpha": (dict(peft=dict(alpha=16)), "lora_alpha"),
    "lora_dropout": (dict(peft=dict(dropout=0.05)), "lora_dropout"),
    "target_modules": (dict(peft=dict(targets=("q_proj", "k_proj", "v_proj"))), "target_modules"),
    "temporal": (dict(temporal={"temporal_scale": 2.0}), "temporal_scale"),
}


@pytest.mark.parametrize("setting", sorted(CHANGES))
def test_a_killed_run_rerun_with_one_setting_changed_starts_at_step_0_and_names_it(setting, tiny_model,
                                                                                    tmp_path, capsys):
    import copy

    change, name = CHANGES[setting]
    change = dict(change)
    first = _settings(_peft(copy.deepcopy(tiny_model)), temporal={"temporal_scale": 1.0})
    assert resume_point(tmp_path, first) is None
    killed = _checkpoint(tmp_path, 2, max_steps=6)  # killed after its checkpoint of step 2
    peft = change.pop("peft", {})
    temporal = change.pop("temporal", {"temporal_scale": 1.0})
    rerun = _settings(_peft(copy.deepcopy(tiny_model), **peft), temporal=temporal, **change)
    capsys.readouterr()
    assert resume_point(tmp_path, rerun) is None
    said = capsys.readouterr().out
    assert name in re.search(r"another run \(([^)]*) differ\)", said).group(1).split(", "), said
    assert (tmp_path / "previous-run" / killed.name / "trainer_state.json").is_file()  # moved, not deleted
    # the unchanged settings resume
    assert resume_point(tmp_path, rerun) is None  # nothing left to resume: its checkpoints were moved
    _checkpoint(tmp_path, 2)
    assert resume_point(tmp_path, rerun) == str(tmp_path / "checkpoint-2")


def test_quantization_makes_another_run(tiny_folder, cpu_cfg, tmp_path, capsys):
    """The same model, adapter and arguments on an NF4 base against a 16/32-bit one: another run."""
    from gemmate_lib.models import load_model

    plain = _settings(_peft(load_model(str(tiny_folder), cpu_cfg.precision, quantization="none")))
    nf4 = _settings(_peft(load_model(str(tiny_folder), cpu_cfg.precision, quantization="nf4")))
    resume_point(tmp_path, plain)
    _checkpoint(tmp_path, 2)
    assert resume_point(tmp_path, nf4) is None
    assert "(quantization differ)" in capsys.readouterr().out


def test_runs_moved_aside_are_never_deleted(tmp_path, capsys):
    """Three runs in a row that each leave a checkpoint: every earlier one is kept in its own folder."""
    for n, lr in enumerate((1e-4, 2e-4, 3e-4)):
        resume_point(tmp_path, run_settings({"learning_rate": lr}, "embedded", ["x"]))
        _checkpoint(tmp_path, 10 + n)
    resume_point(tmp_path, run_settings({"learning_rate": 4e-4}, "embedded", ["x"]))
    kept = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.glob("previous-run*/checkpoint-*"))
    assert kept == ["previous-run-2/checkpoint-11", "previous-run-3/checkpoint-12",
                    "previous-run/checkpoint-10"]


def test_the_settings_record_the_adapter_the_quantization_and_a_callers_own(tiny_model, tiny_folder, cpu_cfg):
    """What run_settings keeps, read back: every LoRA setting (not where the base lies), "none" or the NF4
    config, the data's SHA-1, and GemmaTE's settings; a GemmaTE wrapper's adapter is found inside it."""
    import hashlib

    from gemmate_lib.models import load_model
    from gemmate_lib.temporal.model import GemmaTEForCausalLM

    settings = run_settings({"seed": 1}, "embedded", ["a", "b"], model=_peft(tiny_model, r=4),
                            temporal={"temporal_scale": 0.5})
    assert settings["data"] == hashlib.sha1(b"a\n\x00b").hexdigest()
    assert settings["adapter"]["default"]["r"] == 4 and settings["adapter"]["default"]["lora_alpha"] == 8
    assert sorted(settings["adapter"]["default"]["target_modules"]) == ["q_proj", "v_proj"]
    assert "base_model_name_or_path" not in settings["adapter"]["default"]
    assert settings["quantization"] == "none" and settings["extra"] == {"temporal": {"temporal_scale": 0.5}}
    assert settings["args"] == {"seed": "1"}
    nf4 = run_settings({}, "x", [], model=_peft(load_model(str(tiny_folder), cpu_cfg.precision,
                                                           quantization="nf4")))
    assert nf4["quantization"]["bnb_4bit_quant_type"] == "nf4" and nf4["quantization"]["load_in_4bit"]
    wrapped = run_settings({}, "x", [], model=GemmaTEForCausalLM(_peft(copy_of(tiny_model), r=2)))
    assert wrapped["adapter"]["default"]["r"] == 2
    assert "adapter" not in run_settings({}, "x", [])


def copy_of(model):
    import copy

    return copy.deepcopy(model)


def test_the_message_names_the_data_and_the_model_first(tmp_path, capsys):
    resume_point(tmp_path, run_settings({"a_rate": 1, "z": 1}, "m1", ["x"]))
    _checkpoint(tmp_path, 2)
    resume_point(tmp_path, run_settings({"a_rate": 2, "z": 2}, "m2", ["y"]))
    assert "(the data, the model, a_rate, z differ)" in capsys.readouterr().out


def test_a_trainer_given_to_resume_point_gets_one_clock_and_keeps_its_weights_dtypes(tiny_model, tmp_path):
    """03 hands its trainer to resume_point: a TrainingClock is added once (a second call adds none), and a
    resume puts back each trainable weight's dtype after the checkpoint's load widened it (peft's
    load_adapter widens bf16 to fp32)."""
    import types

    import torch

    from gemmate_lib.resume import TrainingClock

    model = _peft(tiny_model)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.to(torch.bfloat16)

    def widen(*args, **kwargs):  # what peft's load_adapter does to a bf16 adapter
        assert kwargs == {"strict": False}
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()

    handler = types.SimpleNamespace(callbacks=[])
    trainer = types.SimpleNamespace(model=model, callback_handler=handler, _load_from_checkpoint=widen,
                                    add_callback=handler.callbacks.append)
    assert resume_point(tmp_path / "a" / "b", SETTINGS, trainer) is None  # a new, nested folder
    assert [type(c) for c in handler.callbacks] == [TrainingClock]
    _checkpoint(tmp_path / "a" / "b", 2)
    assert resume_point(tmp_path / "a" / "b", SETTINGS, trainer).endswith("checkpoint-2")
    assert len(handler.callbacks) == 1
    trainer._load_from_checkpoint("checkpoint-2", strict=False)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.float32}


def test_the_clock_counts_a_resumed_runs_earlier_seconds_and_takes_an_older_checkpoint_without_one():
    from transformers import TrainerState

    from gemmate_lib.resume import TrainingClock

    resumed = TrainerState(global_step=2, stateful_callbacks={
        "TrainingClock": {"args": {}, "attributes": {"seconds": 7.5}}})
    clock = TrainingClock()
    clock.on_train_begin(None, resumed, None)
    assert clock.before == 7.5 and 7.5 <= clock.state()["attributes"]["seconds"] < 8.5
    clock.on_train_end(None, resumed, None)
    assert 7.5 <= clock.seconds < 8.5
    older = TrainerState(global_step=2)  # written before the clock existed
    clock = TrainingClock()
    clock.on_train_begin(None, older, None)
    assert clock.before == 0.0 and older.stateful_callbacks["TrainingClock"]["attributes"]["seconds"] < 1
    fresh = TrainerState(global_step=0, stateful_callbacks={
        "TrainingClock": {"args": {}, "attributes": {"seconds": 3.0}}})
    clock.on_train_begin(None, fresh, None)
    assert clock.before == 0.0  # a run from step 0 counts from zero
