import json

import pytest

from gemmate_lib import ModelLoadError, course_config
from gemmate_lib.hub import load_adapter, save_adapter
from gemmate_lib.training import attach_lora


def test_missing_adapter_folder_says_which_notebook_to_run(base_model, tmp_path):
    with pytest.raises(ModelLoadError, match="run 03_lora_sft first"):
        load_adapter(base_model, tmp_path / "adapter")


def test_save_is_safetensors_refuses_overwrite_and_rejects_another_base(fresh_model, tokenizer, tmp_path):
    model = attach_lora(fresh_model, course_config(device="cpu").lora)
    folder = save_adapter(model, tokenizer, tmp_path / "adapter", "embedded")
    assert (folder / "adapter_model.safetensors").exists() and not list(folder.glob("*.bin"))
    assert json.loads((folder / "gemmate.json").read_text())["hidden_size"] == 640
    with pytest.raises(ModelLoadError, match="already exists"):
        save_adapter(model, tokenizer, folder, "embedded")
    meta = json.loads((folder / "gemmate.json").read_text())
    meta.update(base_model="google/gemma-2b", hidden_size=2048)
    (folder / "gemmate.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="trained on 'google/gemma-2b'"):
        load_adapter(model.get_base_model(), folder)
