"""The notebooks' config: profile, one name per setting, one type checker, one validator (the command
line's YAML and flags: tests/cli/test_cli_settings.py)."""
import json

import pytest
import torch

from gemmate_lib.config import EMBEDDED, config_summary, course_config
from gemmate_lib.guard_rails.errors import ParameterError

# the seed config's seven projections, the default of lora_target_modules
SEED_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_cpu_profile_uses_embedded_default_and_tuned_settings():
    cfg = course_config(device="cpu")
    assert cfg.profile == "cpu-embedded"
    assert cfg.model.model_name == EMBEDDED and cfg.data.dataset == EMBEDDED
    assert cfg.model.quantization == "none" and cfg.lora.lora_dropout == 0.0
    assert cfg.train.gradient_accumulation_steps == 1 and cfg.train.batch_size == 8
    assert cfg.train.gradient_checkpointing is False and cfg.train.fast_loss is True
    assert cfg.lora.lora_r == 8 and cfg.lora.lora_target_modules == SEED_TARGET_MODULES


def test_parameters_override_the_profile_and_none_keeps_it(tmp_path):
    quotes = tmp_path / "quotes.jsonl"
    quotes.write_text('{"quote": "A", "author": "B"}\n')
    cfg = course_config(device="cpu", max_steps=3, learning_rate=1e-3, dataset=str(quotes), model_name=None)
    assert cfg.train.max_steps == 3 and cfg.train.learning_rate == 1e-3
    assert cfg.data.dataset == str(quotes) and cfg.model.model_name == EMBEDDED


def test_paths_are_checked_before_anything_loads(tmp_path):
    with pytest.raises(ParameterError, match="dataset='nowhere/q.jsonl': no such file"):
        course_config(dataset="nowhere/q.jsonl")
    (tmp_path / "x.jsonl").mkdir()
    with pytest.raises(ParameterError, match="it is a folder"):
        course_config(dataset=str(tmp_path / "x.jsonl"))


def test_the_notebooks_config_has_none_of_the_commands_own_settings():
    """output_dir, the checkpoint policy, W&B, ...: gemmate_cli/settings.py (tests/cli/test_cli_settings)."""
    with pytest.raises(ParameterError, match="unknown parameter 'output_dir'"):
        course_config(output_dir="runs/x")
    assert not {"output_dir", "use_wandb", "temporal_task", "prompts"} & set(course_config().flat())


def test_the_temporal_task_has_its_own_defaults_from_the_same_family():
    cfg = course_config("temporal", device="cpu", lora_r=4)
    assert (cfg.train.num_epochs, cfg.train.max_steps, cfg.train.max_length) == (3.0, -1, 64)
    assert cfg.lora.lora_r == 4 and cfg.lora.lora_alpha == 16  # alpha is its own setting, not 2r
    assert cfg.temporal.temporal_scale == 1.0 and cfg.temporal.temporal_dim == 64


def test_training_seed_and_data_seed_are_separate():
    cfg = course_config(device="cpu", seed=7)
    assert cfg.train.seed == 7 and cfg.data.data_seed == 42
    cfg = course_config(device="cpu", data_seed=3)
    assert cfg.train.seed == 42 and cfg.data.data_seed == 3


def test_the_training_seed_decides_the_lora_initialization(tiny_tokenizer):
    from tiny import make_tiny_gemma

    from gemmate_lib.training import attach_lora

    def lora_a(seed):
        model = attach_lora(make_tiny_gemma(tiny_tokenizer),
                            course_config(device="cpu", dtype="fp32", seed=seed))
        return torch.cat([p.detach().flatten() for n, p in sorted(model.named_parameters()) if "lora_A" in n])

    assert torch.equal(lora_a(7), lora_a(7))
    assert not torch.equal(lora_a(7), lora_a(42))


def test_wrong_type_names_the_parameter_and_the_fix():
    with pytest.raises(ParameterError) as err:
        course_config(max_steps="ten")
    text = str(err.value)
    assert "max_steps='ten'" in text and "must be int" in text
    assert "Fix:" in text and "max_steps=40" in text  # the default, as an example


@pytest.mark.parametrize("name,value", [("batch_size", True), ("learning_rate", "2e-4"), ("fast_loss", 1),
                                        ("lora_target_modules", 5)])
def test_other_wrong_types_are_rejected(name, value):
    with pytest.raises(ParameterError, match=name):
        course_config(**{name: value})


def test_unknown_parameter_lists_the_valid_ones():
    with pytest.raises(ParameterError) as err:
        course_config(max_step=10)
    assert "'max_step'" in str(err.value) and "max_steps" in str(err.value)


@pytest.mark.parametrize("params", [{"max_steps": 0}, {"batch_size": -1}, {"eval_fraction": 1.5},
                                    {"quantization": "int3"}, {"learning_rate": 0.0}, {"learning_rate": 5.0},
                                    {"learning_rate": float("nan")}, {"warmup_steps": -1}, {"steps_freq": 0},
                                    {"lora_alpha": 0}, {"lora_dropout": 1.0}, {"optim": "adamw_magic"},
                                    {"seed": -1}, {"max_steps": -1,
                                                   "num_epochs": float("inf")}, {"temporal_dim": 7}])
def test_values_that_cannot_work_are_rejected_before_anything_loads(params):
    with pytest.raises(ParameterError) as err:
        course_config(device="cpu", **params)
    assert next(iter(params)) in str(err.value) or "num_epochs" in str(err.value)
    assert err.value.fix


def test_summary_is_json_ready():
    summary = config_summary(course_config(device="cpu"))
    assert json.loads(json.dumps(summary))["lora"]["lora_target_modules"] == SEED_TARGET_MODULES


def test_part_two_of_03_is_on_under_the_cpu_profile_and_off_under_the_gpu_profile(monkeypatch):
    from gemmate_lib.config import compare_default

    assert compare_default(course_config(device="cpu")) is True
    monkeypatch.setenv("GEMMATE_PROFILE", "gpu")  # the GPU profile on this CPU, as the smoke run does
    gpu = course_config()
    assert gpu.profile.startswith("gpu") and compare_default(gpu) is False


def test_a_numpy_float_is_a_float_setting():
    """An optimizer's sampled learning rate is often a numpy float (a float subclass): it stays accepted."""
    import numpy as np

    assert course_config(device="cpu", learning_rate=np.float64(1e-4)).train.learning_rate == 1e-4
    with pytest.raises(ParameterError, match="batch_size=True has type bool"):
        course_config(device="cpu", batch_size=True)
