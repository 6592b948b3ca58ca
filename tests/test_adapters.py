"""Save, reload, merge and push adapters; saves are all or nothing (fsio.atomic_folder)."""
import json
import os
from pathlib import Path

import pytest
import torch

from gemmate_lib.adapters import load_adapter, save_adapter
from gemmate_lib.guard_rails.errors import ModelLoadError, SaveError
from gemmate_lib.training import attach_lora


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """One thread for the tiny model's 64-wide matrices:
    faster, most of all on a busy machine. A fresh process
    (05's reload) inherits OMP_NUM_THREADS, so it computes with one thread as well."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_missing_adapter_folder_says_which_notebook_to_run(tiny_model, tmp_path):
    with pytest.raises(ModelLoadError, match="run 03_lora_sft first"):
        load_adapter(tiny_model, tmp_path / "adapter")


def test_save_is_safetensors_refuses_overwrite_and_rejects_another_base(tiny_model, tiny_tokenizer, cpu_cfg,
                                                                        tmp_path):
    model = attach_lora(tiny_model, cpu_cfg)
    folder = save_adapter(model, tiny_tokenizer, tmp_path / "adapter", "tiny")
    assert (folder / "adapter_model.safetensors").exists() and not list(folder.glob("*.bin"))
    meta = json.loads((folder / "gemmate.json").read_text())
    assert meta["base_model"] == "tiny" and meta["hidden_size"] == 64  # model_name is recorded as given
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no .partial or .backup left
    with pytest.raises(SaveError, match="already exists"):
        save_adapter(model, tiny_tokenizer, folder, "tiny")

    meta = json.loads((folder / "gemmate.json").read_text())
    meta.update(base_model="google/gemma-2b", hidden_size=2048)
    (folder / "gemmate.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="trained on 'google/gemma-2b'"):
        load_adapter(model.get_base_model(), folder)


def _perturbed(model, cfg):
    """A LoRA model with non-zero weights (B starts at zero, so perturb it)."""
    model = attach_lora(model, cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    return model


# 05's reload in a fresh process giving identical generations: tests/test_learner_path.py (NF4, the base
# loaded as the parent did), nbval's 05 (the embedded model) and the smoke run


@pytest.mark.slow
def test_05s_reload_of_a_folder_without_an_adapter_is_one_clear_error(tiny_folder, fp32, tmp_path):
    from test_notebook_recipes import reload_in_05

    with pytest.raises(ModelLoadError, match="^reloading the adapter in a fresh process failed: .+") as err:
        reload_in_05(tmp_path, str(tiny_folder), ["Quote: Be yourself"], 4, fp32)
    assert "\n" not in err.value.problem and "saving the adapter again (03)" in err.value.fix


def test_the_merged_model_is_saved_in_the_training_dtype(tiny_model, tiny_tokenizer, cpu_cfg, tmp_path):
    from safetensors import safe_open

    from gemmate_cli.serve import save_merged

    folder = save_merged(tiny_model, tiny_tokenizer, tmp_path / "merged", torch.bfloat16)
    with safe_open(folder / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}


@pytest.mark.parametrize("stage", ["token check", "upload"])
def test_03s_failed_push_is_one_line_without_the_token(stage, monkeypatch, tmp_path, capsys):
    from huggingface_hub import constants
    from test_notebook_recipes import run_cell

    from gemmate_lib import adapters

    fake = "hf_" + "CANARYcanary" * 3 + "0000"  # built at run time: no token-shaped literal in the repository
    monkeypatch.setenv("HF_TOKEN", fake)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once, at import
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    if stage == "upload":  # the token passes its check, then create_repo / upload_folder fail
        monkeypatch.setattr(adapters, "check_token", lambda need_write=False: "token of someone, role write")
    (tmp_path / "adapter").mkdir()
    run_cell("03_lora_sft.ipynb", "7e1c0a52", adapter_repo="someone/canary-test",
             adapter_dir=tmp_path / "adapter")
    printed = capsys.readouterr()
    status = printed.out.strip()
    assert status.startswith("push failed") and "\n" not in status
    assert ("cannot be reached" in status) == (stage == "token check")
    assert ("Check the token has write access and the network" in status) == (stage == "upload")  # the fix
    assert fake not in status and "CANARY" not in status
    assert fake not in printed.out + printed.err


@pytest.mark.parametrize("bad", ["no-namespace", "a/b/c", "some one/x", "x/y--z"])
def test_invalid_repo_id_is_a_clear_error(bad, tmp_path):
    from gemmate_lib.adapters import push_problem

    with pytest.raises(SaveError, match="not a valid Hub repository id"):
        push_problem(bad)


def test_unwritable_output_folder_leaves_nothing_half_written(tiny_model, tiny_tokenizer, cpu_cfg, tmp_path):
    if os.geteuid() == 0:  # root can write anywhere: use a path under a file instead
        blocked = tmp_path / "a_file"
        blocked.write_text("not a folder")
        target = blocked / "adapter"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "adapter"
    model = attach_lora(tiny_model, cpu_cfg)
    with pytest.raises(SaveError, match="could not write the adapter"):
        save_adapter(model, tiny_tokenizer, target, "tiny")
    assert not target.exists() and not target.with_name("adapter.partial").exists()


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def test_a_failed_final_rename_keeps_the_old_adapter_complete(tiny_model, tiny_tokenizer, cpu_cfg, tmp_path,
                                                              monkeypatch):
    old = _perturbed(tiny_model, cpu_cfg)
    folder = save_adapter(old, tiny_tokenizer, tmp_path / "adapter", "tiny")
    before = _weights(folder)
    with torch.no_grad():
        for name, p in old.named_parameters():
            if "lora_B" in name:
                p.add_(1.0)
    real_rename, failed = Path.rename, []

    # only the last step, .partial -> adapter, fails (the old one is already .backup)
    def failing(self, target):
        if self.name == "adapter.partial" and Path(target).name == "adapter":
            failed.append(self)
            raise OSError(28, "No space left on device")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing)
    with pytest.raises(SaveError, match="No space left"):
        save_adapter(old, tiny_tokenizer, folder, "tiny", overwrite=True)
    monkeypatch.undo()
    assert failed  # the failure happened where intended, after the old adapter had been moved aside
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no .partial, no .backup
    after = _weights(folder)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in after)
    from tiny import make_tiny_gemma

    load_adapter(make_tiny_gemma(tiny_tokenizer), folder)


def test_a_process_killed_between_the_renames_is_recovered_on_load(tiny_model, tiny_tokenizer, cpu_cfg,
                                                                   tmp_path):
    from tiny import make_tiny_gemma

    folder = save_adapter(_perturbed(tiny_model, cpu_cfg), tiny_tokenizer, tmp_path / "adapter", "tiny")
    saved = _weights(folder)
    folder.rename(tmp_path / "adapter.backup")  # the old one moved aside; the new one never arrived
    (tmp_path / "adapter.partial").mkdir()  # and a half-written new one
    model = load_adapter(make_tiny_gemma(tiny_tokenizer), folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert all(torch.equal(_weights(folder)[k], saved[k]) for k in saved)
    assert any("lora" in n for n, _ in model.named_modules())


def test_a_damaged_gemmate_json_is_one_clear_error(tiny_model, tiny_tokenizer, cpu_cfg, tmp_path):
    from tiny import make_tiny_gemma

    folder = save_adapter(attach_lora(tiny_model, cpu_cfg, quiet=True), tiny_tokenizer, tmp_path / "adapter",
                          "tiny")
    for damage in ('{"base_model": ', "[1, 2]"):
        (folder / "gemmate.json").write_text(damage)
        with pytest.raises(ModelLoadError, match="gemmate.json is damaged"):
            load_adapter(make_tiny_gemma(tiny_tokenizer), folder)


WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"
DAMAGES = {  # name -> (file, how it is damaged, what the message must say)
    "weights cut in half": (WEIGHTS, lambda b: b[:len(b) // 2], "cut short or damaged"),
    "weights cut by one byte": (WEIGHTS, lambda b: b[:-1], "cut short or damaged"),
    "weights empty": (WEIGHTS, lambda b: b"", "cut short or damaged"),
    "weights missing": (WEIGHTS, None, "no adapter_model.safetensors"),
    "config not JSON": (CONFIG, lambda b: b[:len(b) // 2], "not valid JSON"),
    "config empty": (CONFIG, lambda b: b"", "not valid JSON"),
    "config a list": (CONFIG, lambda b: b"[1, 2]", "no peft_type"),
    "config not UTF-8": (CONFIG, lambda b: b'{"peft_type": "LORA", "x": "\xe9"}', "not UTF-8"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_adapter_file_names_the_file_what_is_wrong_and_the_fix(tiny_model, tiny_tokenizer, cpu_cfg,
                                                                        tmp_path, damage):
    """A copy cut short, a failed download: one line, not a SafetensorError or JSONDecodeError from peft."""
    from tiny import make_tiny_gemma

    from gemmate_lib.adapters import check_adapter
    from gemmate_lib.guard_rails.errors import one_line

    folder = save_adapter(attach_lora(tiny_model, cpu_cfg, quiet=True), tiny_tokenizer, tmp_path / "adapter",
                          "tiny")
    name, how, what = DAMAGES[damage]
    if how is None:
        (folder / name).unlink()
    else:
        (folder / name).write_bytes(how((folder / name).read_bytes()))
    for load in (load_adapter, check_adapter):  # check_adapter: 04 calls it before PeftModel.from_pretrained
        with pytest.raises(ModelLoadError) as err:
            load(make_tiny_gemma(tiny_tokenizer), folder)
        line = one_line(err.value)
        assert name in line and what in line, line
        assert "03_lora_sft" in err.value.fix and "download it again" in err.value.fix
