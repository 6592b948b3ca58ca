"""The adapter alone as a llama.cpp LoRA GGUF (gemmate_cli/adapter_gguf.py): what it writes, and one line for
each input it cannot use. Its behaviour on the real embedded fine-tune (base + adapter held to the merged
model's certificate) is tests/test_certificate.py's (long); llama.cpp applying a tiny one is the CLI
export test's (tests/cli/test_cli_export.py)."""
from __future__ import annotations

import json
import math

import pytest

from gemmate_cli import adapter_gguf
from gemmate_lib.guard_rails.errors import ModelLoadError, SaveError


def _base_gguf(path, arch="gemma3", blocks=2, kind=None):
    """A GGUF header as a base model's (architecture and block count; no tensors: enough for the writer)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(blocks)
    if kind:
        writer.add_type(kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_adapter(generation_folder, tmp_path_factory):
    """A LoRA adapter (r=4, alpha 8, every linear layer) on the tiny random Gemma 3, saved by PEFT."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(generation_folder("gemma3"))
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_()
    folder = tmp_path_factory.mktemp("adapter") / "adapter"
    peft.save_pretrained(folder)
    return folder


def test_each_lora_pair_is_written_under_llamas_tensor_name_with_peft_scale(tiny_adapter, tmp_path):
    import gguf
    from safetensors.torch import load_file

    out = tmp_path / adapter_gguf.ADAPTER_FILE
    info = adapter_gguf.write_adapter_gguf(tiny_adapter, _base_gguf(tmp_path / "base.gguf"), out)
    weights = load_file(tiny_adapter / "adapter_model.safetensors")
    reader = gguf.GGUFReader(out)
    tensors = {t.name: t for t in reader.tensors}
    assert info["pairs"] * 2 == len(tensors) == len(weights) and info["architecture"] == "gemma3"
    a = weights["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"]
    b = weights["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"]
    assert (tensors["blk.1.attn_q.weight.lora_a"].data == a.numpy()).all()  # as PEFT holds them: [r, in]
    assert (tensors["blk.1.attn_q.weight.lora_b"].data == b.numpy()).all()  # and [out, r]
    assert "blk.0.ffn_down.weight.lora_a" in tensors

    def field(key):
        f = reader.fields[key]
        part = f.parts[f.data[0]]
        return bytes(part).decode() if f.types[0].name == "STRING" else float(part[0])

    kinds = (field("general.type"), field("adapter.type"), field("adapter.lora.alpha"))
    assert kinds == ("adapter", "lora", 8)
    # rsLoRA scales by alpha / sqrt(r), llama.cpp by alpha / r: the file's alpha makes them equal
    config = json.loads((tiny_adapter / "adapter_config.json").read_text())
    rs = tmp_path / "rs"
    rs.mkdir()
    (rs / "adapter_model.safetensors").write_bytes((tiny_adapter / "adapter_model.safetensors").read_bytes())
    (rs / "adapter_config.json").write_text(json.dumps({**config, "use_rslora": True}))
    alpha = adapter_gguf.write_adapter_gguf(rs, tmp_path / "base.gguf", tmp_path / "rs.gguf")["alpha"]
    assert alpha / 4 == pytest.approx(8 / math.sqrt(4))


@pytest.mark.parametrize("setting, said", [
    ({"use_dora": True}, "DoRA's magnitude vectors"),
    ({"modules_to_save": ["lm_head"]}, "fully trained modules"),
    ({"rank_pattern": {"q_proj": 8}}, "a rank per layer"),
    ({"peft_type": "IA3"}, "is a IA3 adapter"),
])
def test_what_a_llama_lora_cannot_carry_is_one_line_before_any_work(tiny_adapter, tmp_path, setting, said):
    config = json.loads((tiny_adapter / "adapter_config.json").read_text())
    weights = (tiny_adapter / "adapter_model.safetensors").read_bytes()
    (tmp_path / "adapter_model.safetensors").write_bytes(weights)
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, **setting}))
    with pytest.raises(SaveError) as err:
        adapter_gguf.lora_pairs(tmp_path)
    assert said in err.value.problem and "merged model" in err.value.fix


def test_a_missing_foreign_or_adapter_base_is_one_line(tiny_adapter, tmp_path):
    with pytest.raises(ModelLoadError, match="no GGUF file at"):
        adapter_gguf.write_adapter_gguf(tiny_adapter, tmp_path / "nowhere.gguf", tmp_path / "out.gguf")
    (tmp_path / "weights.bin").write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ModelLoadError, match="is not a GGUF file"):
        adapter_gguf.base_gguf_of("embedded", tmp_path, tmp_path / "weights.bin")
    import gguf

    other = _base_gguf(tmp_path / "lora.gguf", kind=gguf.GGUFType.ADAPTER)
    with pytest.raises(ModelLoadError) as err:
        adapter_gguf.base_architecture(other)
    assert "is not a base model's GGUF" in err.value.problem and "type adapter" in err.value.problem
    assert not (tmp_path / "out.gguf").exists()


def test_a_module_the_architectures_names_do_not_know_is_one_line(tiny_adapter, tmp_path):
    """A Gemma 3 adapter against a base of another architecture: its modules have no tensor there."""
    with pytest.raises(SaveError) as err:
        adapter_gguf.write_adapter_gguf(tiny_adapter, _base_gguf(tmp_path / "b.gguf", arch="mamba"),
                                        tmp_path / "out.gguf")
    assert "llama.cpp's mamba GGUF has no tensor for the adapted module" in err.value.problem
