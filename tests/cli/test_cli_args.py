"""The command line's one parse (gemmate_cli/parser.py, TRL's TrlParser pattern): the YAML file of --config
sets the options' defaults, then the flags are parsed over them in one HfArgumentParser pass; a bad value gets
the same one line from a flag and from a YAML key; a setting given neither way is the profile's."""
from pathlib import Path

import pytest

from gemmate_cli.errors import run_cli
from gemmate_cli.parser import load_config
from gemmate_lib.guard_rails.errors import ParameterError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("flags, yaml_text, message", [
    ({"batch_size": "eight"}, "batch_size: eight\n",
     "parameter batch_size='eight' has type str, but batch_size must be int"),
    ({"deterministic": "maybe"}, "deterministic: maybe\n",
     "parameter deterministic='maybe' has type str, but deterministic must be bool"),
    ({"save_strategy": "sometimes"}, "save_strategy: sometimes\n",
     "parameter save_strategy='sometimes' is not one of step, epoch, no"),
    ({"learning_rate": "-1e-4"}, "learning_rate: -1e-4\n",
     "parameter learning_rate=-0.0001 must be a finite number in (0, 1)"),
    ({"checkpoint_metric": "none", "keep_best_n": "2"}, "checkpoint_metric: null\nkeep_best_n: 2\n",
     "keep_best_n ranks checkpoints, but checkpoint_metric is not set"),
])
def test_a_flag_and_a_yaml_key_get_the_same_line(flags, yaml_text, message, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml_text)
    errors = []
    for args in ((None, flags), (path, None)):
        with pytest.raises(ParameterError) as info:
            load_config(*args)
        errors.append(str(info.value))
    assert errors[0] == errors[1] and errors[0].startswith(message), errors


def test_a_yaml_string_is_read_as_the_same_flag_would_be(tmp_path):
    """TrlParser sets the file's values as argparse defaults, and argparse reads a string default through the
    option's type: a quoted number or `a,b` in the file is what it is on the command line."""
    path = tmp_path / "run.yaml"
    text = {"lora_r": "16", "deterministic": "true", "wandb_tags": "a,b",
            "lora_target_modules": "q_proj,v_proj", "prompt_end": "none"}
    path.write_text("lora_r: '16'\ndeterministic: 'true'\nwandb_tags: a,b\n"
                    "lora_target_modules: q_proj,v_proj\nprompt_end: none\n")
    from_file, from_flags = load_config(path).flat(), load_config(None, text).flat()
    assert from_file == from_flags
    assert [from_file[k] for k in text] == [16, True, ["a", "b"], ["q_proj", "v_proj"], None]


def test_a_setting_given_neither_way_is_the_profiles_and_a_flag_overrides_the_file(tmp_path):
    """The options' defaults are left out of the namespace: the dataclasses' defaults (lora_dropout 0.05) and
    HfArgumentParser's --no_fast_loss switch (default False) must not overrule the CPU profile."""
    from gemmate_lib.config import course_config

    profile = course_config(device="cpu").flat()
    flat = load_config(None, {"device": "cpu"}).flat()
    assert {k: flat[k] for k in profile} == profile
    assert (flat["lora_dropout"], flat["fast_loss"], flat["group_by_length"], flat["save_optim"]) == \
        (0.0, True, True, True)
    path = tmp_path / "run.yaml"
    path.write_text("lora_r: 4\nfast_loss: false\nlearning_rate: 1e-4\n")
    cfg = load_config(path, {"lora_r": "16", "device": "cpu"}).course
    assert (cfg.lora.lora_r, cfg.train.fast_loss, cfg.train.learning_rate) == (16, False, 1e-4)
    assert load_config(path, {"fast_loss": "true"}).course.train.fast_loss is True


def test_the_config_file_is_read_in_either_spelling_and_never_missed(tmp_path, capsys):
    from gemmate_cli.main import main

    path = tmp_path / "run.yaml"
    path.write_text("max_steps: 0\n")  # an error after the parse: nothing trains
    out = ["--output_dir", str(tmp_path / "run")]
    assert run_cli(main, ["train", f"--config={path}", *out]) == 2
    assert "max_steps=0 must be at least 1" in capsys.readouterr().err
    assert run_cli(main, ["train", "--conf", str(path), *out]) == 2  # argparse's abbreviation
    err = capsys.readouterr().err
    assert f"--config is abbreviated, so {path} was not read" in err
    assert f"Fix: write it out: --config {path}" in err


def test_one_parser_types_the_text_and_the_library_takes_typed_values_only():
    """The library's one check names a string where a number belongs; no other HfArgumentParser reads text."""
    from gemmate_lib.config import SETTINGS

    with pytest.raises(ParameterError, match="lora_r='16' has type str, but lora_r must be int"):
        SETTINGS.coerce("lora_r", "16")
    users = sorted(str(p.relative_to(ROOT)) for folder in ("gemmate_lib", "gemmate_cli", "scripts")
                   for p in (ROOT / folder).rglob("*.py") if "import HfArgumentParser" in p.read_text())
    assert users == ["gemmate_cli/parser.py"]
