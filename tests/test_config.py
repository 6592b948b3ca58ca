import pytest

from gemmate_lib import EMBEDDED, ParameterError, config_summary, course_config
from gemmate_lib.config import SEED_TARGET_MODULES


def test_cpu_profile_uses_embedded_default_and_tuned_settings():
    cfg = course_config(device="cpu")
    assert cfg.profile == "cpu-embedded"
    assert cfg.model.model_id == EMBEDDED and cfg.data.source == EMBEDDED
    assert cfg.model.quantization == "none"
    assert cfg.train.grad_accum == 1 and cfg.train.batch_size == 8
    assert cfg.train.gradient_checkpointing is False and cfg.train.fast_loss is True
    assert cfg.lora.r == 8 and cfg.lora.target_modules == SEED_TARGET_MODULES


def test_parameters_override_the_profile_and_none_keeps_it():
    cfg = course_config(device="cpu", max_steps=3, learning_rate=1, dataset="quotes.jsonl", model_id=None)
    assert cfg.train.max_steps == 3
    assert cfg.train.learning_rate == 1.0 and isinstance(cfg.train.learning_rate, float)
    assert cfg.data.source == "quotes.jsonl"
    assert cfg.model.model_id == EMBEDDED


def test_wrong_type_names_the_parameter_and_the_fix():
    with pytest.raises(ParameterError) as err:
        course_config(max_steps="ten")
    text = str(err.value)
    assert "max_steps='ten'" in text and "must be int" in text
    assert "Fix:" in text and "-p max_steps" in text


@pytest.mark.parametrize("name,value", [("batch_size", True), ("learning_rate", "2e-4"), ("fast_loss", 1),
                                        ("target_modules", "q_proj")])
def test_other_wrong_types_are_rejected(name, value):
    with pytest.raises(ParameterError, match=name):
        course_config(**{name: value})


def test_unknown_parameter_lists_the_valid_ones():
    with pytest.raises(ParameterError) as err:
        course_config(max_step=10)
    assert "'max_step'" in str(err.value) and "max_steps" in str(err.value)


@pytest.mark.parametrize("params", [{"max_steps": 0}, {"eval_fraction": 1.0}, {"quantization": "int3"}])
def test_bad_values_are_rejected(params):
    with pytest.raises(ParameterError):
        course_config(**params)


def test_summary_is_json_ready():
    import json

    summary = config_summary(course_config(device="cpu"))
    assert json.loads(json.dumps(summary))["lora"]["target_modules"] == list(SEED_TARGET_MODULES)
