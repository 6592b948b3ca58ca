"""The command line's config (gemmate_cli/settings.py): configs/*.yaml and flags, YAML in and out, one clear
error for a bad file or key."""
from pathlib import Path

import pytest

from gemmate_cli.parser import load_config
from gemmate_cli.settings import ORDER, dump_config
from gemmate_lib.guard_rails.errors import ParameterError

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_configs_load():
    assert load_config(ROOT / "configs" / "cpu-quick.yaml").course.train.max_steps == 40
    assert load_config(ROOT / "configs" / "gpu-qlora.yaml",
                       {"device": "cpu"}).course.lora.lora_target_modules == "all-linear"


@pytest.mark.parametrize("values, message", [
    ({"learning_rat": 1e-4}, "unknown config key 'learning_rat'"),
    ({"batch_size": "eight"}, "batch_size='eight' has type str"),
    ({"deterministic": "maybe"}, "deterministic='maybe' has type str"),
    ({"keep_best_n": 2, "checkpoint_metric": None},
     "keep_best_n ranks checkpoints, but checkpoint_metric is not set"),
    ({"resume_from_checkpoint": True, "resume_option": "path",
      "checkpoint_path": "runs/nowhere/checkpoint-4"},
     "checkpoint_path='runs/nowhere/checkpoint-4' does not exist"),
    ({"save_strategy": "sometimes"}, "save_strategy='sometimes' is not one of"),
])
def test_bad_config_file_names_the_key(values, message, tmp_path):
    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(ParameterError, match=message.replace("(", r"\(")) as info:
        load_config(path)
    assert info.value.fix
    if "unknown" in message:
        assert all(key in info.value.fix for key in ORDER)  # the notebooks' settings and the commands' own


def test_flags_override_the_file_and_are_parsed_from_text(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 1.0e-4\nlora_r: 4\n")
    cfg = load_config(path, {"lora_r": "16", "deterministic": "true", "lora_target_modules": "q_proj,v_proj"})
    cfg = cfg.course
    assert (cfg.train.learning_rate, cfg.lora.lora_r, cfg.train.deterministic) == (1e-4, 16, True)
    assert cfg.lora.lora_target_modules == ["q_proj", "v_proj"]


def test_a_dumped_config_loads_back_equal(tmp_path):
    cfg = load_config(None, {"device": "cpu", "lora_r": "16", "learning_rate": "5e-4", "seed": "3",
                             "keep_best_n": "0", "wandb_tags": "a,b"})
    again = load_config(dump_config(cfg, tmp_path / "best.yaml"))
    assert again.flat() == cfg.flat()


def test_a_seed_style_yaml_with_the_experiment_names_loads(tmp_path):
    path = tmp_path / "seed.yaml"
    path.write_text("model_name: embedded\nmax_length: 32\nlearning_rate: 6.0e-5\nbatch_size: 4\nlora_r: 4\n"
                    "lora_alpha: 8\nlora_target_modules: all-linear\nseed: 23\nval_steps_freq: "
                    "50\nsteps_freq: 10\n"
                    "keep_last_n: 2\nkeep_best_n: 1\ngradient_accumulation_steps: 1\n")
    cfg = load_config(path, {"device": "cpu"}).course
    got = (cfg.train.max_length, cfg.lora.lora_alpha, cfg.train.seed, cfg.train.val_steps_freq)
    assert got == (32, 8, 23, 50)


def test_a_non_utf8_or_malformed_yaml_is_one_clear_error(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("dataset: caf\xe9.jsonl\n".encode("latin-1"))
    with pytest.raises(ParameterError, match="not UTF-8"):
        load_config(bad)
    bad.write_text("lora_r: [unclosed\n")
    with pytest.raises(ParameterError, match="not valid YAML"):
        load_config(bad)


def test_a_seed_yaml_with_the_one_peft_task_type_loads_and_another_is_refused(tmp_path):
    path = tmp_path / "seed.yaml"
    path.write_text("lora_task_type: CAUSAL_LM\nlora_r: 4\n")
    assert load_config(path).course.lora.lora_r == 4
    path.write_text("lora_task_type: SEQ_CLS\n")
    with pytest.raises(ParameterError, match="lora_task_type in seed.yaml can only be 'CAUSAL_LM'"):
        load_config(path)


def test_an_output_dir_that_cannot_be_written_is_refused_before_anything_loads(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ParameterError, match="output_dir=.* cannot be written"):
        load_config(None, {"output_dir": str(blocker / "run")})


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_with_the_values_it_writes(path, tmp_path):
    import yaml

    from gemmate_cli.settings import ALIASES, FIXED, SETTINGS

    cfg = load_config(path, {"device": "cpu", "output_dir": str(tmp_path / "run")})
    for key, value in yaml.safe_load(path.read_text()).items():
        name = ALIASES.get(key, key)
        if key in FIXED or name in ("device", "output_dir"):
            continue
        expected = float(value) if isinstance(value, str) and SETTINGS.hints[name] is float else value  # 1e-4
        assert cfg.get(name) == expected, (path.name, name)


@pytest.mark.parametrize("path", sorted((ROOT / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_every_params_file_gives_each_setting_a_value_of_its_type(path):
    """A params file's keys are notebook parameters; those that are settings reach course_config, which
    takes them as typed (a string "10" for max_steps would stop the notebook)."""
    import yaml

    from gemmate_lib.config import SETTINGS

    values = yaml.safe_load(path.read_text())
    flat = [(k, v) for k, v in values.items() if not isinstance(v, dict)]
    flat += [(k, v) for section in values.values() if isinstance(section, dict) for k, v in section.items()]
    settings = [(k, v) for k, v in flat if k in SETTINGS.fields]
    assert settings
    for name, value in settings:
        SETTINGS.coerce(name, value)  # raises ParameterError naming it
