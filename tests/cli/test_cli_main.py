"""`gemmate` (cli/main.py): one command with subcommands, errors in one line, every setting in --help."""
import json
import sys

import pytest

from gemmate_cli.errors import run_cli


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert run_cli(__import__("gemmate_cli.main", fromlist=["main"]).main,
                   ["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err and err.count("\n") == 2  # problem + fix
    with pytest.raises(SystemExit) as stop:
        run_cli(__import__("gemmate_cli.main", fromlist=["main"]).main, ["train", "--lora_rank", "8"])
    assert stop.value.code == 2 and "unrecognized arguments: --lora_rank" in capsys.readouterr().err


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(capsys):
    def broken(argv):
        raise KeyError("boom")

    assert run_cli(broken, []) == 1
    err = capsys.readouterr().err
    assert err.startswith("unexpected error: KeyError") and "--debug" in err and "Traceback" not in err
    assert run_cli(broken, ["--debug"]) == 1 and "Traceback" in capsys.readouterr().err


def test_gemmate_te_is_an_alias_of_train_te(monkeypatch, tmp_path, capsys):
    from gemmate_cli import main as cli

    monkeypatch.setattr(sys, "argv",
                        ["gemmate-te", "--dataset", str(tmp_path / "none.jsonl"), "--batch_size", "0"])
    assert cli.run_te() == 2 and "batch_size=0 must be at least 1" in capsys.readouterr().err


def test_help_lists_every_setting_with_its_help_text_and_default(capsys):
    from gemmate_cli.main import main
    from gemmate_cli.settings import SETTINGS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for name, f in SETTINGS.fields.items():  # the notebooks' settings and the commands' own
        assert f"--{name}" in shown and " ".join(f.metadata["help"].split()) in shown, name
    assert "--lora_r R, --lora-r R rank of the low-rank update" in shown and "[default: 8]" in shown
    assert "--fast_loss [{true,false}]" in shown and "--no_fast_loss" in shown  # HfArgumentParser's switch


@pytest.mark.parametrize("argv, message", [
    (["train", "--learning_rate", "-1e-4"], "learning_rate=-0.0001 must be a finite number in (0, 1)"),
    (["train", "--learning_rate", "-inf"], "learning_rate=-inf must be a finite number in (0, 1)"),
    (["train", "--learning-rate", "-1e-4"], "learning_rate=-0.0001 must be a finite number in (0, 1)"),
    (["train-te", "--projection_learning_rate", "-3E-3"], "projection_learning_rate=-0.003 must be"),
    (["train", "--weight_decay", "-1e-2"], "weight_decay=-0.01 must be a finite number >= 0"),
    (["train", "--lora_dropout", "-5e-2"], "lora_dropout=-0.05 must lie in [0, 1)"),
    (["train", "--batch_size", "-8"], "batch_size=-8 must be at least 1"),
    (["train-te", "--temporal_min_period", "-2e-2"], "temporal_min_period=-0.02 must be a positive"),
    (["train-te", "--temporal_max_period", "0"], "temporal_max_period=0.0 must be a positive"),
    (["train-te", "--temporal_min_period", "60"], "temporal_min_period=60.0 must be shorter than"),
    (["hpo", "--timeout", "-1e3"], "timeout=-1000.0 must be a positive number of seconds"),
    (["serve", "runs/x", "--port", "-1"], "port=-1 must lie in 1-65535"),
    (["serve", "runs/x", "--max_tokens_limit", "0"], "max_tokens_limit=0 must be at least 1"),
])
def test_a_negative_or_zero_number_to_a_numeric_option_is_one_line_naming_it_and_the_fix(tmp_path, capsys,
                                                                                         argv, message):
    """`--learning_rate -1e-4` printed argparse's whole usage (42 lines): argparse read -1e-4 as an option."""
    from gemmate_cli.main import main

    assert run_cli(main, [*argv, "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "usage" not in err and err.count("\n") == 2, err  # problem + fix
    assert err.splitlines()[1].startswith("  Fix: ")


def test_a_yaml_config_gets_the_same_message_as_the_flag(tmp_path, capsys):
    """PyYAML reads `1e-4` (no dot) as a string: a number in a YAML file is a number."""
    from gemmate_cli.main import main
    from gemmate_cli.parser import load_config

    (tmp_path / "run.yaml").write_text("learning_rate: -1e-4\n")
    assert run_cli(main, ["train", "--config", str(tmp_path / "run.yaml"),
                          "--output_dir", str(tmp_path)]) == 2
    assert "learning_rate=-0.0001 must be a finite number in (0, 1)" in capsys.readouterr().err
    (tmp_path / "run.yaml").write_text("learning_rate: 1e-4\nlora_dropout: 5e-2\n")
    cfg = load_config(tmp_path / "run.yaml", {"device": "cpu"}).course
    assert (cfg.train.learning_rate, cfg.lora.lora_dropout) == (1e-4, 0.05)


def test_any_other_usage_error_is_one_line_with_the_fix(capsys):
    from gemmate_cli.main import main

    with pytest.raises(SystemExit) as stop:
        run_cli(main, ["train", "--learning_rate"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 2 and "usage" not in err
    assert "--learning_rate/--learning-rate: expected one argument" in err and "--help" in err
    with pytest.raises(SystemExit):
        run_cli(main, ["train", "--lora_rank", "8"])
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "unrecognized arguments: --lora_rank" in err
    assert "did you mean --lora_r?" in err


def test_a_list_flag_takes_one_word_and_leaves_the_run_folder_to_the_command():
    """HfArgumentParser gives a list setting nargs="+": `--wandb_tags a runs/x` swallowed RUN_DIR."""
    from gemmate_cli.parser import build_parser, config_from_args

    args = build_parser().parse_args(["export", "--device", "cpu", "--wandb_tags", "a,b", "runs/x"])
    assert args.run_dir == "runs/x" and config_from_args(args).command.wandb_tags == ["a", "b"]
    args = build_parser().parse_args(["generate", "--device", "cpu", "--prompts", "Quote: A, b", "Quote: C"])
    assert config_from_args(args).command.prompts == ["Quote: A, b", "Quote: C"]  # each word one prompt


def test_evaluate_reports_a_metric_with_nothing_to_count_as_none(monkeypatch, capsys):
    """`gemmate evaluate` on data whose held-out authors never appear in training: the seen-author accuracy
    has no quote to count (its value None), which stopped the command with a TypeError after evaluating."""
    from gemmate_cli import commands
    from gemmate_cli.main import main

    scores = {"perplexity": {"value": 12.345678}, "author_accuracy_seen": {"value": None}}
    monkeypatch.setattr(commands, "evaluate_from_config", lambda cfg: {"models": {"fine-tuned": scores}})
    assert run_cli(main, ["evaluate"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == {"perplexity": 12.3457, "author_accuracy_seen": None}
