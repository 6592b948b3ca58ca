"""`gemmate train-te` (gemmate_cli/train_te.py): a JSONL of {text, timestamp} (a bad row names its line) or
one of 07's tasks, trained on the tiny random Gemma (plumbing), with one clear line for each bad value."""
import json
from datetime import datetime

import pytest
import torch

from gemmate_lib.guard_rails.errors import DataError
from gemmate_lib.temporal.model import GemmaTEForCausalLM
from gemmate_lib.temporal.timestamps import to_milliseconds

MS_2021 = 1_633_046_400_000  # 2021-10-01T00:00:00Z


@pytest.mark.parametrize("task, keys", [("python_releases", {"test", "constant_timestamp", "baselines"}),
                                        ("dated_notes", {"test", "extrapolation"})])
def test_train_te_runs_04s_tasks_and_evaluates_them(task, keys, tmp_path, tiny_folder):
    from gemmate_cli.main import main

    out = tmp_path / task
    assert main(["train-te", "--temporal_task", task, "--output_dir", str(out), "--max_steps", "2",
                 "--model_name", str(tiny_folder), "--dtype", "fp32"]) == 0
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["steps"] == 2 and set(metrics["evaluation"]) == keys
    if task == "python_releases":
        assert metrics["rows"] == 300 and metrics["evaluation"]["test"]["n"] == 200
        test = metrics["evaluation"]["test"]
        right = test["accuracy"] * test["n"]
        assert right == pytest.approx(round(right))  # k of the n questions right, not some other ratio
        assert metrics["config"]["prompt_end"] == "The newest Python 3 release is Python"
    else:
        far = metrics["evaluation"]["extrapolation"]
        assert metrics["rows"] == 600 and far["n"] == 120 and far["baselines"]["nearest_year"] == 0
        assert metrics["config"]["prompt_end"] == "\nWritten:"
    assert (out / "model" / "temporal.safetensors").exists()


def test_train_te_without_data_says_what_to_pass(tmp_path, capsys):
    """One line before any model or tokenizer loads."""
    from gemmate_cli.errors import run_cli
    from gemmate_cli.main import main

    assert run_cli(main, ["train-te", "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "dataset='embedded' is the quotes, which have no timestamps" in err
    assert "--temporal_task dated_notes" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_the_command_trains_on_a_small_jsonl(tmp_path, tiny_folder, fp32, one_thread):
    """In this process (`python -m gemmate_cli` itself: tests/cli/test_cli_checkpoints.py)."""
    from gemmate_cli.errors import run_cli
    from gemmate_cli.main import main
    from scripts.finetune import save_jsonl

    data = save_jsonl(tmp_path / "notes.jsonl", [f"Note {i}\nWritten: May {2008 + i}" for i in range(12)],
                      [to_milliseconds(datetime(2008 + i, 5, 10)) for i in range(12)])
    out = tmp_path / "te"
    assert run_cli(main, ["train-te", "--dataset", str(data), "--output_dir", str(out), "--max_steps", "2",
                          "--batch_size", "4", "--temporal_scale", "1.5", "--prompt_end", "Written:",
                          "--model_name", str(tiny_folder)]) == 0
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["rows"] == 12
    model = out / "model"
    assert json.loads((model / "gemmate_te.json").read_text())["settings"]["temporal_scale"] == 1.5
    assert (model / "adapter_model.safetensors").exists() and (model / "temporal.safetensors").exists()
    assert not list(out.glob("*.partial")) and not list(out.glob("*.backup"))
    from gemmate_lib.models import load_model

    loaded = GemmaTEForCausalLM.from_pretrained(load_model(str(tiny_folder), fp32), model)
    assert loaded.settings.temporal_scale == 1.5 and loaded.temporal_projection.weight.abs().sum() > 0


@pytest.mark.parametrize("argv, message", [
    (["--batch_size", "0"], "parameter batch_size=0 must be at least 1"),
    (["--learning_rate", "fast"], "parameter learning_rate='fast' has type str"),
    (["--temporal_scale", "-1"], "temporal_scale=-1.0 must be a positive finite number"),
    pytest.param(["--fp16"], "--fp16 needs a CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(),
                                          reason="a GPU is visible: --fp16 is allowed")),
    ([], "dataset='MISSING': no such file"),
])
def test_command_bad_values_get_one_clear_line(argv, message, tmp_path, capsys):
    from gemmate_cli.errors import run_cli
    from gemmate_cli.main import main

    # every case has it: the bad value must be reported before the file
    missing = str(tmp_path / "missing.jsonl")
    code = run_cli(main, ["train-te", "--dataset", missing, "--output_dir", str(tmp_path / "o"), *argv])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "Traceback" not in "\n".join(lines)
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and message.replace("MISSING", missing) in errors[0]
    assert lines[lines.index(errors[0]) + 1].startswith("  Fix: ")  # the line after says what to do
    assert not (tmp_path / "o").exists()  # nothing was created before the check


def test_07s_jsonl_loads_back_in_train_te_and_a_bad_row_names_its_line(tmp_path):
    """07 writes its dated notes itself (cell 49a4957a): the same bytes as the guide's script writes, and what
    `gemmate train-te` reads back."""

    from test_notebook_recipes import run_cell

    from gemmate_cli.train_te import load_jsonl
    from gemmate_lib.config import course_config
    from scripts.finetune import save_jsonl

    sizes = dict(n_train=20, n_test=5, n_val=5, n_far=5, first_year=2007, last_year=2020, extrapolate_to=2026)
    ns = run_cell("07_temporal_encoding.ipynb", "49a4957a", cfg=course_config("temporal"), seed=0,
                  out=tmp_path, **sizes)
    notes, path = ns["notes"], tmp_path / "dated_notes_train.jsonl"
    assert path.read_bytes() == save_jsonl(tmp_path / "script.jsonl", notes.train_texts,
                                           notes.train_timestamps).read_bytes()
    texts, stamps = load_jsonl(path)
    assert texts == notes.train_texts and stamps == [float(s) for s in notes.train_timestamps]
    assert len(load_jsonl(tmp_path / "dated_notes_test.jsonl")[0]) == len(notes.test_prompts)
    path.write_text(path.read_text() + '{"text": "late", "timestamp": "yesterday"}\n')
    with pytest.raises(DataError, match="dated_notes_train.jsonl line 21: timestamp 'yesterday'"):
        load_jsonl(path)
    path.write_text('{"text": "no time"}\n')
    with pytest.raises(DataError, match="has no column timestamp"):
        load_jsonl(path)


@pytest.mark.parametrize("text, why", [("Broken \ud800 half", "is not valid Unicode"),
                                       ("Nul\x00inside", "contains a control character")])
def test_a_dated_note_with_broken_text_names_its_line(tmp_path, text, why):
    """The quotes' rule (data.broken_text): a lone surrogate failed later inside the tokenizer."""
    from gemmate_cli.train_te import load_jsonl

    path = tmp_path / "notes.jsonl"
    path.write_text(json.dumps({"text": "Fine.", "timestamp": 1400000000000}) + "\n"
                    + json.dumps({"text": text, "timestamp": 1400000000000}) + "\n")
    with pytest.raises(DataError, match=f"notes.jsonl line 2: its text {why}"):
        load_jsonl(path)


def test_a_seconds_timestamp_in_a_jsonl_names_the_line_and_a_unit_field_fixes_it(tmp_path):
    from gemmate_cli.train_te import load_jsonl

    path = tmp_path / "notes.jsonl"
    path.write_text(json.dumps({"text": "a", "timestamp": MS_2021}) + "\n"
                    + json.dumps({"text": "b", "timestamp": 1_633_046_400}) + "\n")
    with pytest.raises(DataError, match="notes.jsonl line 2: timestamp 1633046400 looks like seconds"):
        load_jsonl(path)
    path.write_text(json.dumps({"text": "b", "timestamp": 1_633_046_400, "timestamp_unit": "s"}) + "\n")
    assert load_jsonl(path)[1] == [float(MS_2021)]
    path.write_text(json.dumps({"text": "b", "timestamp": 1_633_046_400}) + "\n")
    assert load_jsonl(path, unit="s")[1] == [float(MS_2021)]  # --timestamp_unit s


def test_train_te_does_as_its_checkpoint_and_save_format_settings_say(tmp_path, tiny_folder, capsys):
    """train-te's save_strategy is "no" (its default), yet 07's task settings checkpointed every 50 steps and
    a rerun resumed from them; it saves none now, and refuses the settings only gemmate train uses.
    `--save_format pt` on a 4-bit base merged LoRA into packed 4-bit weights that the guide's
    load_state_dict cannot read: refused before the model loads, naming the fix."""
    from gemmate_cli.errors import run_cli
    from gemmate_cli.main import main

    out, task = tmp_path / "notes", ["--temporal_task", "python_releases", "--model_name", str(tiny_folder)]
    assert main(["train-te", *task, "--output_dir", str(out), "--max_steps", "50", "--batch_size", "2",
                 "--dtype", "fp32"]) == 0
    assert not list((out / "trainer").glob("checkpoint-*"))
    capsys.readouterr()
    assert run_cli(main, ["train-te", *task, "--output_dir", str(tmp_path / "pt"), "--save_format", "pt",
                          "--quantization", "nf4"]) == 2
    err = capsys.readouterr().err
    assert "save_format pt merges LoRA" in err and "--quantization none" in err and "Traceback" not in err
    # settings only gemmate train uses, which train-te accepted and then ignored
    for flag, value in (("resume_from_checkpoint", "true"),):
        argv = ["train-te", *task, "--output_dir", str(tmp_path / "w"), f"--{flag}", value]
        assert run_cli(main, argv) == 2
        assert f"train-te does not use {flag}" in capsys.readouterr().err
