"""`gemmate export RUN_DIR` (gemmate_cli/commands.py, over gemmate_lib.export): a damaged adapter is one line
before the model loads; the whole export of a tiny fine-tune generates in llama.cpp as base + adapter."""
from __future__ import annotations

import json

import pytest

from gemmate_lib import export

llama_cpp = pytest.importorskip("llama_cpp")

def _run_with_adapter(tmp_path):
    """A run folder whose adapter files are whole (what the checks before the model load look at)."""
    import torch
    from safetensors.torch import save_file

    (tmp_path / "adapter").mkdir(parents=True)
    (tmp_path / "adapter" / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    save_file({"lora_A.weight": torch.zeros(2, 2)}, tmp_path / "adapter" / "adapter_model.safetensors")
    return tmp_path


def test_an_adapter_export_with_a_missing_base_gguf_is_one_line_before_the_model_loads(tmp_path, tiny_folder,
                                                                                      capsys):
    import torch
    from safetensors.torch import save_file

    from gemmate_cli.errors import run_cli
    from gemmate_cli.main import main

    run = _run_with_adapter(tmp_path / "run")
    (run / "adapter" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2, "lora_alpha": 4}')
    module = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{module}.lora_A.weight": torch.zeros(2, 64), f"{module}.lora_B.weight": torch.zeros(64, 2)},
              run / "adapter" / "adapter_model.safetensors")
    assert run_cli(main, ["export", str(run), "--model_name", str(tiny_folder), "--adapter_gguf",
                          "--base_gguf", str(tmp_path / "base-f16.gguf")]) == 2
    err = capsys.readouterr().err
    assert "no GGUF file at" in err and "base-f16.gguf" in err and "unexpected error" not in err
    assert not (run / "gguf").exists()


@pytest.mark.parametrize("name, damage, what", [
    ("adapter_model.safetensors", lambda b: b[:len(b) // 2], "is cut short or damaged"),
    ("adapter_config.json", lambda b: b[:len(b) // 2], "is damaged: not valid JSON"),
])
def test_export_of_a_damaged_adapter_names_the_file_and_the_fix_before_the_model_loads(
        tmp_path, tiny_folder, capsys, name, damage, what):
    from gemmate_cli.errors import run_cli
    from gemmate_cli.main import main

    run = _run_with_adapter(tmp_path / "run")
    path = run / "adapter" / name
    path.write_bytes(damage(path.read_bytes()))
    assert run_cli(main, ["export", str(run), "--model_name", str(tiny_folder),
                          "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{name} {what}" in err and "download it again" in err and "unexpected error" not in err


@pytest.mark.slow
def test_gemmate_export_merges_the_adapter_and_llama_cpp_generates_as_base_plus_adapter(tmp_path, capsys):
    """`gemmate export RUN_DIR` end to end (export_and_verify: the adapter merged into a fresh base,
    llama.cpp's converter and quantizer, verification.json) on a tiny random Gemma 1 with the embedded Gemma
    vocabulary, in seconds: llama.cpp's 16-bit file generates as base + adapter does, not as the base. The
    embedded fine-tune's export and its quality bounds are 05's, which nbval runs (the after_nbval test below
    reads them); this test once trained the embedded model 15 steps and exported it a second time (~100 s)."""
    import torch
    from learner_path import tiny_gemma

    from gemmate_cli.errors import run_cli
    from gemmate_cli.main import main
    from gemmate_lib.adapters import load_adapter, save_adapter
    from gemmate_lib.config import course_config
    from gemmate_lib.hardware import pick_precision
    from gemmate_lib.models import load_model, load_tokenizer
    from gemmate_lib.training import attach_lora

    folder = tiny_gemma(tmp_path / "tiny-gemma-1")
    tokenizer, fp32 = load_tokenizer(str(folder)), pick_precision("cpu", "fp32")
    trained = attach_lora(load_model(str(folder), fp32), course_config(model_name=str(folder), device="cpu",
                                                                        dtype="fp32"), quiet=True)
    with torch.no_grad():  # a LoRA B that is not zero, so the adapter changes the generations
        for name, param in trained.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    run = tmp_path / "run"
    save_adapter(trained, tokenizer, run / "adapter", str(folder))
    assert run_cli(main, ["export", str(run), "--model_name", str(folder), "--quantize", "q8_0",
                          "--max_new_tokens", "8", "--adapter_gguf"]) == 0
    out = capsys.readouterr().out
    assert "model-q8_0.gguf" in out and "| q8_0 |" in out  # the summary and what each level cost
    assert "| f16+lora |" in out  # the base's 16-bit file with the adapter GGUF, certified like the others
    assert sorted(p.name for p in (run / "gguf").iterdir()) == [
        "Modelfile", "adapter-lora.gguf", "base-f16.gguf", "certificate.json", "model-f16.gguf",
        "model-q8_0.gguf", "verification.json"]
    report = json.loads((run / "gguf" / "verification.json").read_text())
    assert set(report["files"]) == {"model-f16.gguf", "model-q8_0.gguf"}
    assert all(f["keeps_eos"] for f in report["files"].values())  # each file stops at the tokenizer's <eos>
    assert report["all_match_or_near_tie"], report["token_match"]
    llm = export.load_llama(run / "gguf" / "model-f16.gguf", logits_all=True)
    base = load_model(str(folder), fp32)
    prompt = "Quote: Imagination is more"
    plain = export.hf_greedy(base, tokenizer, prompt, 8)[0]
    adapted = export.hf_greedy(load_adapter(base, run / "adapter"), tokenizer, prompt, 8)[0]
    assert export.llama_greedy(llm, prompt, 8)[0] == adapted != plain
    llm.close()
    pair = export.load_llama(run / "gguf" / "base-f16.gguf", lora_path=run / "gguf" / "adapter-lora.gguf")
    assert export.llama_greedy(pair, prompt, 8)[0] == adapted  # llama.cpp applies the LoRA file as PEFT does
    pair.close()
    cert = json.loads((run / "gguf" / "certificate.json").read_text())
    assert cert["levels"]["f16+lora"]["failed"] == [], cert["levels"]["f16+lora"]


def test_a_base_gguf_inside_the_folder_the_export_replaces_is_refused_and_kept(tmp_path, tiny_folder, capsys):
    """A base GGUF left in the run's own gguf/ (a previous export's base-f16.gguf): the export replaces that
    folder, so it stops with one line before any work, and the file is still there."""
    import gguf
    import torch
    from safetensors.torch import save_file

    from gemmate_cli.errors import run_cli
    from gemmate_cli.main import main

    run = _run_with_adapter(tmp_path / "run")
    (run / "adapter" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2, "lora_alpha": 4}')
    module = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{module}.lora_A.weight": torch.zeros(2, 64), f"{module}.lora_B.weight": torch.zeros(64, 2)},
              run / "adapter" / "adapter_model.safetensors")
    (run / "gguf").mkdir()
    base = run / "gguf" / "base-f16.gguf"
    writer = gguf.GGUFWriter(str(base), "gemma3")
    writer.add_block_count(2)
    for write in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file):
        write()
    writer.close()
    before = base.read_bytes()
    assert run_cli(main, ["export", str(run), "--model_name", str(tiny_folder), "--adapter_gguf",
                          "--base_gguf", str(base)]) == 2
    err = capsys.readouterr().err
    assert "the folder this export replaces" in err and "move it out first" in err
    assert "unexpected error" not in err
    assert base.read_bytes() == before
    assert sorted(p.name for p in (run / "gguf").iterdir()) == ["base-f16.gguf"]
