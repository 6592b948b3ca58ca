import json

import pytest

from gemmate_lib import ModelLoadError, course_config
from gemmate_lib.hub import SaveError, load_adapter, save_adapter
from gemmate_lib.training import attach_lora


def test_missing_adapter_folder_says_which_notebook_to_run(base_model, tmp_path):
    with pytest.raises(ModelLoadError, match="run 03_lora_sft first"):
        load_adapter(base_model, tmp_path / "adapter")


def test_save_is_safetensors_refuses_overwrite_and_rejects_another_base(fresh_model, tokenizer, tmp_path):
    model = attach_lora(fresh_model, course_config(device="cpu").lora)
    folder = save_adapter(model, tokenizer, tmp_path / "adapter", "embedded")
    assert (folder / "adapter_model.safetensors").exists() and not list(folder.glob("*.bin"))
    assert json.loads((folder / "gemmate.json").read_text())["hidden_size"] == 640
    with pytest.raises(SaveError, match="already exists"):
        save_adapter(model, tokenizer, folder, "embedded")
    meta = json.loads((folder / "gemmate.json").read_text())
    meta.update(base_model="google/gemma-2b", hidden_size=2048)
    (folder / "gemmate.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="trained on 'google/gemma-2b'"):
        load_adapter(model.get_base_model(), folder)


@pytest.fixture()
def trained_adapter(fresh_model, tokenizer, tmp_path):
    """A LoRA adapter with non-zero weights (B starts at zero, so perturb it) saved to disk."""
    import torch

    model = attach_lora(fresh_model, course_config(device="cpu").lora)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(0))
    return model, save_adapter(model, tokenizer, tmp_path / "adapter", "embedded")


def test_round_trip_in_a_fresh_process_gives_identical_generations(trained_adapter, tokenizer, base_model):
    from gemmate_lib.generation import STANDARD_PROMPTS, generate
    from gemmate_lib.hub import reload_generations

    model, folder = trained_adapter
    here = generate(model, tokenizer, STANDARD_PROMPTS[:2], max_new_tokens=12).completion.tolist()
    there = reload_generations(folder, "embedded", STANDARD_PROMPTS[:2], 12, "fp32")
    assert there == here
    plain = generate(base_model, tokenizer, STANDARD_PROMPTS[:2], max_new_tokens=12).completion.tolist()
    assert here != plain  # the adapter changes something, so equality above means something


def test_merge_matches_the_adapter_model(trained_adapter, tokenizer):
    from gemmate_lib.generation import STANDARD_PROMPTS
    from gemmate_lib.hub import merge_and_check

    model, _ = trained_adapter
    merged, diff = merge_and_check(model, tokenizer, STANDARD_PROMPTS, tolerance=5e-3)
    assert diff < 5e-3 and not any("lora" in n for n, _ in merged.named_modules())
    assert any("lora" in n for n, _ in model.named_modules())  # the adapter model is left as it was


def test_push_without_token_or_repo_is_skipped_with_how_to(monkeypatch, tmp_path):
    from gemmate_lib.hub import push_adapter

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    assert "set the parameter repo_id" in push_adapter(tmp_path, None)
    assert "no HF_TOKEN" in push_adapter(tmp_path, "someone/quotes-lora")


@pytest.mark.parametrize("bad", ["no-namespace", "a/b/c", "some one/x", "x/y--z"])
def test_invalid_repo_id_is_a_clear_error(bad, tmp_path):
    from gemmate_lib.hub import SaveError, push_adapter

    with pytest.raises(SaveError, match="not a valid Hub repository id"):
        push_adapter(tmp_path, bad)


def test_unwritable_output_folder_leaves_nothing_half_written(fresh_model, tokenizer, tmp_path):
    import os

    from gemmate_lib.hub import SaveError

    if os.geteuid() == 0:  # root can write anywhere: use a path under a file instead
        blocked = tmp_path / "a_file"
        blocked.write_text("not a folder")
        target = blocked / "adapter"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "adapter"
    model = attach_lora(fresh_model, course_config(device="cpu").lora)
    with pytest.raises(SaveError, match="could not write the adapter"):
        save_adapter(model, tokenizer, target, "embedded")
    assert not target.exists() and not target.with_name("adapter.partial").exists()
