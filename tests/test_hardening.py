"""Bad input, as careless users send it: one clear line each, and nothing lost."""
import json
import warnings
from datetime import datetime

import pytest
import torch

from gemmate_lib.errors import DataError, ModelLoadError
from gemmate_lib.temporal.model import GemmaTEForCausalLM
from gemmate_lib.temporal.timestamps import to_milliseconds

MS_2021 = 1_633_046_400_000  # 2021-10-01T00:00:00Z


# --- timestamps ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value, unit", [(1_633_046_400, "s"), (MS_2021, "ms"), (MS_2021 * 1000, "us"),
                                         (MS_2021 * 1_000_000, "ns"), ("1633046400000", None)])
def test_every_unit_and_digit_strings_give_the_same_time(value, unit):
    assert float(to_milliseconds(value, unit)) == MS_2021


@pytest.mark.parametrize("bad, message", [
    (1_633_046_400, "looks like seconds, not milliseconds (as ms it would be 1970-01-19)"),
    ([MS_2021, 1_633_046_400], "looks like seconds"),
    (torch.tensor([1_633_046_400]), "looks like seconds"),
    ([[MS_2021], MS_2021], "must be one value, got a list"),
    ([[MS_2021, MS_2021], [MS_2021]], "must be one value, got a list"),
    (10**400, "too large to be a time"),
    (torch.tensor([float(MS_2021)], dtype=torch.bfloat16), "16-bit floats round dates"),
    (torch.tensor([1.0], dtype=torch.float16), "16-bit floats"),
])
def test_timestamps_in_the_wrong_unit_or_shape_are_one_clear_error(bad, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        to_milliseconds(bad)
    assert err.value.fix and "\n" not in err.value.problem


def test_an_unknown_unit_is_refused():
    with pytest.raises(DataError, match="unit 'days' is not known"):
        to_milliseconds(1, unit="days")


def test_casting_the_wrapper_to_16_bits_keeps_the_encoder_in_float64(tiny_model):
    te = GemmaTEForCausalLM(tiny_model)
    before = te.encoder([MS_2021, MS_2021 + 86_400_000])
    te.to(torch.bfloat16)
    te.half()
    after = te.encoder([MS_2021, MS_2021 + 86_400_000])
    assert te.encoder.frequencies.dtype.name == "float64" and torch.equal(before, after)


def test_per_token_timestamps_of_the_wrong_length_are_refused(tiny_model, tiny_tokenizer):
    te = GemmaTEForCausalLM(tiny_model)
    enc = tiny_tokenizer(["one two three four"], return_tensors="pt")
    n = enc["input_ids"].shape[1]
    with pytest.raises(DataError, match=f"per-token timestamps for {n - 1} positions, but the sequence has {n}"):
        te(**enc, timestamps=[[MS_2021] * (n - 1)])
    out = te.generate(**enc, timestamps=[[MS_2021] * n], max_new_tokens=3, do_sample=False)  # decoding steps: last stamp
    assert out.shape[1] == n + 3


def test_leaving_timestamps_at_now_warns_once(tiny_model, tiny_tokenizer):
    te = GemmaTEForCausalLM(tiny_model)
    enc = tiny_tokenizer(["one two"], return_tensors="pt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        te(**enc)
        te(**enc)
    assert [str(w.message) for w in caught if "no timestamps" in str(w.message)] == [
        "GemmaTE got no timestamps: using the current time for every sequence (pass timestamps=... to say when each "
        "text was written)"]


def test_loading_checks_the_base_model_and_every_file(tiny_model, tiny_tokenizer, tmp_path):
    from tiny import make_tiny_gemma
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    te = GemmaTEForCausalLM(tiny_model)
    folder = te.save_pretrained(tmp_path / "te")
    meta = json.loads((folder / "gemmate_te.json").read_text())
    assert meta["format_version"] == 2 and meta["vocab_size"] == len(tiny_tokenizer)
    assert meta["settings"]["temporal_dim"] == 64
    other = Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=500, hidden_size=64, intermediate_size=128,
                                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                               head_dim=16))  # same hidden size, another base
    with pytest.raises(ModelLoadError, match="vocab_size: saved .* vs 500"):
        GemmaTEForCausalLM.from_pretrained(other, folder)
    (folder / "gemmate_te.json").write_text(json.dumps({**meta, "settings": {**meta["settings"], "temporal_dim": 32}}))
    with pytest.raises(ModelLoadError, match="holds a \\(64, 64\\) projection"):
        GemmaTEForCausalLM.from_pretrained(make_tiny_gemma(tiny_tokenizer), folder)
    (folder / "gemmate_te.json").write_text(json.dumps(meta))
    (folder / "temporal.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="could not load the GemmaTE model"):
        GemmaTEForCausalLM.from_pretrained(make_tiny_gemma(tiny_tokenizer), folder)
    (folder / "gemmate_te.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="is damaged"):
        GemmaTEForCausalLM.from_pretrained(make_tiny_gemma(tiny_tokenizer), folder)


def test_a_seconds_timestamp_in_a_jsonl_names_the_line_and_a_unit_field_fixes_it(tmp_path):
    from gemmate_lib.temporal.data import load_jsonl

    path = tmp_path / "notes.jsonl"
    path.write_text(json.dumps({"text": "a", "timestamp": MS_2021}) + "\n"
                    + json.dumps({"text": "b", "timestamp": 1_633_046_400}) + "\n")
    with pytest.raises(DataError, match="notes.jsonl line 2: timestamp 1633046400 looks like seconds"):
        load_jsonl(path)
    path.write_text(json.dumps({"text": "b", "timestamp": 1_633_046_400, "timestamp_unit": "s"}) + "\n")
    assert load_jsonl(path)[1] == [float(MS_2021)]
    path.write_text(json.dumps({"text": "b", "timestamp": 1_633_046_400}) + "\n")
    assert load_jsonl(path, unit="s")[1] == [float(MS_2021)]  # --timestamp_unit s


def test_dated_text_works_with_datetimes_too():
    assert float(to_milliseconds(datetime(2021, 10, 1))) == MS_2021


# --- saving -------------------------------------------------------------------------------------

KILLER = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from tiny import make_tiny_gemma
import torch
from transformers import PreTrainedTokenizerFast
from gemmate_lib.config import course_config
from gemmate_lib.adapters import save_adapter
from gemmate_lib.training import attach_lora

tokenizer = PreTrainedTokenizerFast.from_pretrained({tok!r})
model = attach_lora(make_tiny_gemma(tokenizer), course_config(device="cpu", dtype="fp32"))
with torch.no_grad():
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.fill_(2.0)  # the new adapter
step, real_rename = {step}, Path.rename

def rename(self, target):
    global step
    step -= 1
    if step < 0:
        os.kill(os.getpid(), signal.SIGKILL)  # die just before this rename
    return real_rename(self, target)

Path.rename = rename
save_adapter(model, tokenizer, Path({folder!r}), "tiny", overwrite=True)
os.kill(os.getpid(), signal.SIGKILL) if step >= 0 and {after} else None
"""


@pytest.mark.slow
@pytest.mark.parametrize("step", [0, 1, 2])
def test_a_save_killed_at_any_step_leaves_a_complete_adapter_old_or_new(step, tiny_tokenizer, tmp_path):
    """SIGKILL the saving process before the 1st rename (old -> backup), the 2nd (new -> place), or after both."""
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file
    from tiny import make_tiny_gemma

    from gemmate_lib.adapters import load_adapter, save_adapter
    from gemmate_lib.config import course_config
    from gemmate_lib.training import attach_lora

    tests = str(Path(__file__).resolve().parent)
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    folder = save_adapter(attach_lora(make_tiny_gemma(tiny_tokenizer), course_config(device="cpu", dtype="fp32")),
                          tiny_tokenizer, tmp_path / "adapter", "tiny")  # the old adapter: lora_B all zero
    code = KILLER.format(tests=tests, tok=str(tmp_path / "tok"), step=step, folder=str(folder), after=step == 2)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    model = load_adapter(make_tiny_gemma(tiny_tokenizer), folder)  # recovers, then loads
    weights = load_file(folder / "adapter_model.safetensors")
    b = torch.cat([w.flatten() for k, w in weights.items() if "lora_B" in k])
    assert bool((b == 0).all()) or bool((b == 2).all())  # wholly old, or wholly new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "tok"]
    assert any("lora" in n for n, _ in model.named_modules())


def test_a_tokenizer_failing_mid_save_is_one_save_error_and_leaves_no_partial(tiny_model, tiny_tokenizer, tmp_path,
                                                                            monkeypatch):
    from gemmate_lib.adapters import save_adapter
    from gemmate_lib.config import course_config
    from gemmate_lib.errors import SaveError
    from gemmate_lib.training import attach_lora

    model = attach_lora(tiny_model, course_config(device="cpu", dtype="fp32"))

    def disk_full(*args, **kwargs):
        raise Exception("No space left on device (os error 28)")  # what tokenizers (Rust) raises

    monkeypatch.setattr(type(tiny_tokenizer), "save_pretrained", disk_full)
    with pytest.raises(SaveError, match="No space left on device"):
        save_adapter(model, tiny_tokenizer, tmp_path / "adapter", "tiny")
    assert list(tmp_path.iterdir()) == []


# --- the same bad inputs on the command line and through papermill ------------------------------

def _bad_quotes(tmp_path):
    """Good rows plus one of each kind of bad row: a duplicate, a template-marker injection, a 1M-character quote."""
    good = [{"quote": f"Quote number {w} is here.", "author": f"Author {w}"} for w in ("one", "two", "three", "four")]
    bad = [dict(good[0]), {"quote": "Be kind.\nAuthor: Injected", "author": "X"}, {"quote": "word " * 200_000,
                                                                                     "author": "Verbose"}]
    path = tmp_path / "bad_quotes.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in good + bad) + "\n")
    return path


EXPECTED_DROPS = ("dropped 1 row(s): duplicate quote (exact), e.g. line 5",
                  "dropped 1 row(s): quote contains a newline or a template marker (Quote: / Author:), e.g. line 6",
                  "dropped 1 row(s): too long (over max_length=64 tokens: the Author: line would be cut off), e.g. line 7")


def test_the_train_command_prints_the_drop_report_and_trains_on_the_rest(tmp_path, tiny_folder, capsys):
    from gemmate_lib.cli.main import main
    from gemmate_lib.errors import run_cli

    code = run_cli(main, ["train", "--dataset", str(_bad_quotes(tmp_path)), "--model_name", str(tiny_folder),
                          "--max_steps", "1", "--batch_size", "2", "--max_length", "64", "--eval_fraction", "0.25",
                          "--val_steps_freq", "1", "--dtype", "fp32", "--output_dir", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 0 and "4 usable rows from bad_quotes.jsonl" in out
    assert all(line in out for line in EXPECTED_DROPS), out


def test_a_latin1_file_is_one_line_on_the_command_line(tmp_path, tiny_folder, capsys):
    from gemmate_lib.cli.main import main
    from gemmate_lib.errors import run_cli

    path = tmp_path / "latin1.csv"
    path.write_bytes("quote,author\nCaf\xe9 au lait,Someone\n".encode("latin-1"))
    code = run_cli(main, ["train", "--dataset", str(path), "--model_name", str(tiny_folder)])
    err = capsys.readouterr().err
    assert code == 2 and "latin1.csv line 2 is not UTF-8 text" in err and "save the file as UTF-8" in err
    assert "Traceback" not in err


def test_a_seconds_timestamp_is_one_line_on_the_command_line_and_the_unit_flag_fixes_it(tmp_path, tiny_folder, capsys):
    from gemmate_lib.cli.main import main
    from gemmate_lib.errors import run_cli

    path = tmp_path / "notes.jsonl"
    path.write_text("".join(json.dumps({"text": f"Note {i}\nWritten: May 2021", "timestamp": 1_620_000_000 + i})
                            + "\n" for i in range(4)))
    args = ["train-te", "--dataset", str(path), "--model_name", str(tiny_folder), "--max_steps", "1"]
    assert run_cli(main, [*args, "--output_dir", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "notes.jsonl line 1: timestamp 1620000000 looks like seconds" in err and "--timestamp_unit s" in err
    assert run_cli(main, [*args, "--output_dir", str(tmp_path / "b"), "--timestamp_unit", "s"]) == 0


@pytest.mark.slow
def test_the_same_bad_files_through_papermill(tmp_path):
    """04's eval_data: the drop report is printed in its first cells, before any model loads; Latin-1 is one line."""
    import papermill as pm

    from gemmate_lib.files import repo_root

    notebooks = repo_root() / "notebooks"
    out = tmp_path / "04.ipynb"
    with pytest.raises(pm.PapermillExecutionError) as err:  # this run folder has no adapter from 03
        pm.execute_notebook(str(notebooks / "04_evaluation.ipynb"), str(out), cwd=str(notebooks),
                            kernel_name="python3", progress_bar=False,
                            parameters={"eval_data": str(_bad_quotes(tmp_path)), "run_dir": str(tmp_path / "run")})
    assert err.value.ename == "ModelLoadError" and "no adapter from 03_lora_sft" in err.value.evalue
    text = out.read_text()
    assert "4 usable rows from bad_quotes.jsonl" in text
    assert EXPECTED_DROPS[0] in text and EXPECTED_DROPS[1] in text and "too long (over max_length=128" in text
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("quote,author\nCaf\xe9,Someone\n".encode("latin-1"))
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(notebooks / "03_lora_sft.ipynb"), str(tmp_path / "03b.ipynb"), cwd=str(notebooks),
                            kernel_name="python3", progress_bar=False,
                            parameters={"dataset": str(latin), "run_dir": str(tmp_path / "run2")})
    assert err.value.ename == "DataError" and "line 2 is not UTF-8 text" in err.value.evalue


@pytest.mark.slow
def test_a_seconds_timestamp_through_papermill_stops_04_in_its_config_cell(tmp_path):
    import papermill as pm

    from gemmate_lib.files import repo_root

    notebooks = repo_root() / "notebooks"
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(notebooks / "07_temporal_encoding.ipynb"), str(tmp_path / "07.ipynb"),
                            cwd=str(notebooks), kernel_name="python3", progress_bar=False,
                            parameters={"constant_date": 1_633_046_400, "run_dir": str(tmp_path)})
    assert err.value.ename == "DataError" and "looks like seconds" in err.value.evalue
    assert err.value.exec_count <= 4  # before any model or data loads


def test_version_mismatches_reads_the_colab_pins(monkeypatch):
    from importlib import metadata

    from gemmate_lib import run_folder

    assert run_folder.version_mismatches() == []  # this environment is installed from the pins
    real = metadata.version
    monkeypatch.setattr(run_folder.metadata, "version", lambda name: "0.0.1" if name == "trl" else real(name))
    assert run_folder.version_mismatches() == [f"trl: installed 0.0.1, pinned {real('trl')}"]
