"""The same bad inputs on the command line and through
papermill: one line that names the problem and the fix."""
import json

import pytest

MS_2021 = 1_633_046_400_000  # 2021-10-01T00:00:00Z


def _bad_quotes(tmp_path):
    """Good rows plus one of each kind of bad row: a duplicate,
    a template-marker injection, a 1M-character quote."""
    good = [{"quote": f"Quote number {w} is here.", "author": f"Author {w}"}
            for w in ("one", "two", "three", "four")]
    bad = [dict(good[0]), {"quote": "Be kind.\nAuthor: Injected", "author": "X"},
           {"quote": "word " * 200_000, "author": "Verbose"}]
    path = tmp_path / "bad_quotes.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in good + bad) + "\n")
    return path


EXPECTED_DROPS = ("dropped 1 row(s): duplicate quote (exact), e.g. line 5",
                  "dropped 1 row(s): quote contains a newline or a "
                  "template marker (Quote: / Author:), e.g. line 6",
                  "dropped 1 row(s): too long (over max_length=64 tokens: "
                  "the Author: line would be cut off), e.g. line 7")


def test_the_train_command_prints_the_drop_report_and_trains_on_the_rest(tmp_path, tiny_folder, capsys):
    from gemmate_cli.errors import run_cli
    from gemmate_cli.main import main

    code = run_cli(main, ["train", "--dataset", str(_bad_quotes(tmp_path)), "--model_name", str(tiny_folder),
                          "--max_steps", "1", "--batch_size", "2", "--max_length", "64", "--eval_fraction",
                          "0.25",
                          "--val_steps_freq", "1", "--dtype", "fp32", "--output_dir", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 0 and "4 usable rows from bad_quotes.jsonl" in out
    assert all(line in out for line in EXPECTED_DROPS), out


def test_a_latin1_file_is_one_line_on_the_command_line(tmp_path, tiny_folder, capsys):
    from gemmate_cli.errors import run_cli
    from gemmate_cli.main import main

    path = tmp_path / "latin1.csv"
    path.write_bytes("quote,author\nCaf\xe9 au lait,Someone\n".encode("latin-1"))
    code = run_cli(main, ["train", "--dataset", str(path), "--model_name", str(tiny_folder)])
    err = capsys.readouterr().err
    assert code == 2 and "latin1.csv line 2 is not UTF-8 text" in err and "save the file as UTF-8" in err
    assert "Traceback" not in err


def test_a_seconds_timestamp_is_one_line_on_the_command_line_and_the_unit_flag_fixes_it(tmp_path, tiny_folder,
                                                                                        capsys):
    from gemmate_cli.errors import run_cli
    from gemmate_cli.main import main

    path = tmp_path / "notes.jsonl"
    path.write_text("".join(json.dumps({"text": f"Note {i}\nWritten: May 2021",
                                        "timestamp": 1_620_000_000 + i})
                            + "\n" for i in range(4)))
    args = ["train-te", "--dataset", str(path), "--model_name", str(tiny_folder), "--max_steps", "1"]
    assert run_cli(main, [*args, "--output_dir", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "notes.jsonl line 1: timestamp 1620000000 looks like seconds" in err
    assert "--timestamp_unit s" in err
    assert run_cli(main, [*args, "--output_dir", str(tmp_path / "b"), "--timestamp_unit", "s"]) == 0


@pytest.mark.slow
def test_the_same_bad_files_through_papermill(tmp_path, tiny_folder):
    """04's eval_data: the drop report is printed in its first
    cells, before any model loads; Latin-1 is one line. On the tiny Gemma's tokenizer (the embedded one's
    33 MB took 7 of this test's 20 s)."""
    import papermill as pm

    from gemmate_lib.guard_rails.files import repo_root

    notebooks = repo_root() / "notebooks"
    out = tmp_path / "04.ipynb"
    with pytest.raises(pm.PapermillExecutionError) as err:  # this run folder has no adapter from 03
        pm.execute_notebook(str(notebooks / "04_evaluation.ipynb"), str(out), cwd=str(notebooks),
                            kernel_name="python3", progress_bar=False,
                            parameters={"eval_data": str(_bad_quotes(tmp_path)),
                                        "model_name": str(tiny_folder), "run_dir": str(tmp_path / "run")})
    assert err.value.ename == "ModelLoadError" and "no adapter from 03_lora_sft" in err.value.evalue
    text = out.read_text()
    assert "4 usable rows from bad_quotes.jsonl" in text
    assert EXPECTED_DROPS[0] in text and EXPECTED_DROPS[1] in text and "too long (over max_length=128" in text
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("quote,author\nCaf\xe9,Someone\n".encode("latin-1"))
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(notebooks / "03_lora_sft.ipynb"), str(tmp_path / "03b.ipynb"),
                            cwd=str(notebooks),
                            kernel_name="python3", progress_bar=False,
                            parameters={"dataset": str(latin), "model_name": str(tiny_folder),
                                        "run_dir": str(tmp_path / "run2")})
    assert err.value.ename == "DataError" and "line 2 is not UTF-8 text" in err.value.evalue


@pytest.mark.slow
def test_a_seconds_timestamp_through_papermill_stops_04_in_its_config_cell(tmp_path):
    import papermill as pm

    from gemmate_lib.guard_rails.files import repo_root

    notebooks = repo_root() / "notebooks"
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(notebooks / "07_temporal_encoding.ipynb"), str(tmp_path / "07.ipynb"),
                            cwd=str(notebooks), kernel_name="python3", progress_bar=False,
                            parameters={"constant_date": 1_633_046_400, "run_dir": str(tmp_path)})
    assert err.value.ename == "DataError" and "looks like seconds" in err.value.evalue
    assert err.value.exec_count <= 4  # before any model or data loads


OOM = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 14.58 GiB"


def test_a_cuda_out_of_memory_while_loading_says_which_memory_ran_out_with_the_estimate_and_the_fix(
        tiny_folder, monkeypatch):
    """torch.OutOfMemoryError raised at transformers' boundary (from_pretrained) during load_model is not
    "check the id or path" (the fallback for an unknown load error): it names the GPU's memory, repeats the
    estimate the notebook printed before its download, and the fixes."""
    import transformers

    from gemmate_lib.guard_rails.errors import LAST_FIT, OutOfMemory
    from gemmate_lib.models import load_model

    def run_out(*args, **kwargs):
        try:
            raise torch.OutOfMemoryError(OOM)
        except torch.OutOfMemoryError as err:  # transformers raises from inside its own code
            raise RuntimeError("while loading the weights") from err

    import torch

    monkeypatch.setitem(LAST_FIT, "line", "03_lora_sft, x on T4 (14.0 GiB): peak about 11.4 GiB (estimates)")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", run_out)
    with pytest.raises(OutOfMemory) as err:
        load_model(str(tiny_folder))
    problem = err.value.problem
    assert problem.startswith("the GPU's memory ran out while loading model")
    assert "Tried to allocate 2.00" in problem
    assert "peak about 11.4 GiB" in problem and "check the id" not in str(err.value)
    assert "nf4" in err.value.fix and "gemma-3-1b-pt" in err.value.fix and "L4" in err.value.fix


def test_the_hosts_ram_running_out_says_ram_and_another_load_error_keeps_its_own_message(tiny_folder,
                                                                                          monkeypatch):
    import transformers

    from gemmate_lib.guard_rails.errors import ModelLoadError, OutOfMemory
    from gemmate_lib.models import load_model

    def no_ram(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_ram)
    with pytest.raises(OutOfMemory, match="the host's RAM ran out while loading model"):
        load_model(str(tiny_folder))

    def broken(*args, **kwargs):
        raise ValueError("a broken config")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", broken)
    with pytest.raises(ModelLoadError) as err:
        load_model(str(tiny_folder))
    assert not isinstance(err.value, OutOfMemory) and "a broken config" in err.value.problem


def test_out_of_memory_in_a_step_is_one_line_in_a_notebook_and_on_the_command_line(capsys):
    """A step that runs out (trainer.train() written out in a notebook cell, or a command) shows one line:
    which memory, and the fix; IPython's handler that quiet() installs and run_cli give the same."""
    import torch
    from IPython.core.interactiveshell import InteractiveShell

    from gemmate_cli.errors import run_cli

    def step(argv):
        raise torch.OutOfMemoryError(OOM)

    assert run_cli(step, []) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the GPU's memory ran out while the command ran") and "Fix:" in err
    shell = InteractiveShell.instance()
    try:
        shell.run_cell("import gemmate_lib\ngemmate_lib.quiet()")  # as each notebook's first cells do
        result = shell.run_cell("import torch\nraise torch.OutOfMemoryError(" + repr(OOM) + ")")
        shown = capsys.readouterr().out
    finally:
        shell.set_custom_exc((), None)
        InteractiveShell.clear_instance()
    assert not result.success
    assert "OutOfMemory: the GPU's memory ran out while this cell ran" in shown and "Traceback" not in shown
