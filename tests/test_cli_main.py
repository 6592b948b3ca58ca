"""`gemmate` (cli/main.py): one command with subcommands, errors in one line, every setting in --help."""
import sys

import pytest

from gemmate_lib.errors import run_cli


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


def test_help_lists_every_setting_with_its_help_text_and_default(capsys):
    from gemmate_lib.cli.main import main
    from gemmate_lib.config import FIELDS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for name, f in FIELDS.items():
        assert f"--{name}" in shown and " ".join(f.metadata["help"].split()) in shown, name
    assert "--lora_r R rank of the low-rank update" in shown and "[default: 8]" in shown
