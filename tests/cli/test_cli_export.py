"""`gemmate export RUN_DIR` (gemmate_cli/commands.py, gguf_export.py over gemmate_lib.export): a damaged
adapter is one line before the model loads; the whole export of a tiny fine-tune generates in llama.cpp as
base + adapter, and its certificate (gemmate_cli/certificate.py) passes the files as exported and fails a
damaged file or scale."""
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


def few_quotes(path):
    """A quotes file of 20 rows: 2 held out, so the certificate reads 2 prompts and 2 texts (the embedded
    quotes' 12 prompts and 32 texts took 100 of this test's 140 s, on a vocabulary of 262,144 logits)."""
    words = "imagination courage patience kindness wisdom honesty curiosity humour silence effort".split()
    rows = [{"quote": f"A little {words[n % 10]} each day is worth more than gold, says number {n}.",
             "author": f"Author {n % 7}"} for n in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_gemmate_export_merges_the_adapter_and_llama_cpp_generates_as_base_plus_adapter(tmp_path, capsys):
    """`gemmate export RUN_DIR` end to end (export_and_verify: the adapter merged into a fresh base,
    llama.cpp's converter and quantizer, verification.json, the certificate) on a tiny random Gemma 1 with the
    embedded Gemma vocabulary and a quotes file of 20 rows, in seconds: llama.cpp's 16-bit file generates as
    base + adapter does, not as the base, and every level passes the certificate. The certificate catches
    what greedy tokens can miss: the 16-bit file with two layers' MLP weights swapped, and the adapter GGUF
    written with 8 times its alpha (a wrong scale), fail it. The same certificate on the embedded fine-tune
    is make rehearse-learner's (tests/test_certificate.py, marker long); docs/export.md's table its record.
    05's written-out export (its cell d7c65ecd), run on the same merged model, writes the command's files byte
    for byte, and its written-out llama.cpp check (its cell gguf-check) reports on them what the command wrote
    to verification.json."""
    import shutil

    import torch
    from learner_path import tiny_gemma
    from test_certificate import swap_tensors
    from test_notebook_recipes import run_cell

    from gemmate_cli import adapter_gguf, certificate, gguf_verify
    from gemmate_cli.errors import run_cli
    from gemmate_cli.main import main
    from gemmate_lib.adapters import load_adapter, save_adapter
    from gemmate_lib.config import course_config
    from gemmate_lib.guard_rails import files
    from gemmate_lib.hardware import pick_precision
    from gemmate_lib.models import load_model, load_tokenizer
    from gemmate_lib.text_generation import STANDARD_PROMPTS
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
    quotes = few_quotes(tmp_path / "quotes.jsonl")
    assert run_cli(main, ["export", str(run), "--model_name", str(folder), "--quantize", "q8_0",
                          "--max_new_tokens", "8", "--adapter_gguf", "--dataset", str(quotes)]) == 0
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
    plain = gguf_verify.hf_greedy(base, tokenizer, prompt, 8)[0]
    adapted_model = load_adapter(base, run / "adapter")
    adapted = gguf_verify.hf_greedy(adapted_model, tokenizer, prompt, 8)[0]
    assert gguf_verify.llama_greedy(llm, prompt, 8)[0] == adapted != plain
    llm.close()
    # the check against another model: a fresh base's transformers logits against the fine-tune's 16-bit
    # file, whose tokens differ (above). A differing token passes as a near-tie only within the rounding
    # measured where the two runtimes agree, never within the difference at that very token (which always
    # covers its own gap).
    other = tmp_path / "other-model"
    other.mkdir()
    (other / "model-f16.gguf").symlink_to(run / "gguf" / "model-f16.gguf")
    wrong = gguf_verify.verify_gguf(other, load_model(str(folder), fp32), tokenizer, [prompt], [], 8)
    assert not wrong["all_match_or_near_tie"], wrong["token_match"]
    pair = export.load_llama(run / "gguf" / "base-f16.gguf", lora_path=run / "gguf" / "adapter-lora.gguf")
    assert gguf_verify.llama_greedy(pair, prompt, 8)[0] == adapted  # llama.cpp applies the LoRA as PEFT does
    pair.close()
    cert = json.loads((run / "gguf" / "certificate.json").read_text())
    assert cert["passed"] and len(cert["prompts"]) == 2 and set(cert["levels"]) == {"f16", "q8_0", "f16+lora"}
    assert cert["levels"]["f16+lora"]["failed"] == [], cert["levels"]["f16+lora"]

    merged = adapted_model.merge_and_unload().eval()
    # 05's export written out, on the same merged model: the command's files, byte for byte, and its Modelfile
    cfg = course_config(model_name=str(folder), dataset=str(quotes), max_new_tokens=8)
    ns = run_cell("05_save_and_push.ipynb", "d7c65ecd", export_gguf=True, merged=merged, tokenizer=tokenizer,
                  cfg=cfg, out=tmp_path / "nb", gguf_types=["Q8_0"], gguf_keep=None)
    exported = ns["exported"]
    assert "half" not in ns  # the 16-bit copy of the weights (on a T4: the merged weights) is not kept alive
    ours = tmp_path / "nb" / "gguf"
    assert exported["folder"] == str(ours) and exported["kept"] == "model-q8_0.gguf"
    for name in ("model-f16.gguf", "model-q8_0.gguf"):
        assert (ours / name).read_bytes() == (run / "gguf" / name).read_bytes(), name
    commands = [ln for ln in (run / "gguf" / "Modelfile").read_text().splitlines() if not ln.startswith("#")]
    assert (ours / "Modelfile").read_text().splitlines() == commands  # the command's adds how to run it
    # 05's check written out, on those files and the merged model: what the command wrote to verification.json
    written_out = run_cell("05_save_and_push.ipynb", "gguf-check", exported=exported, merged=merged,
                           tokenizer=tokenizer, cfg=cfg, STANDARD_PROMPTS=STANDARD_PROMPTS, export=export,
                           files=files, out=tmp_path / "nb")["gguf_report"]
    for file in (*report["files"].values(), *written_out["files"].values()):
        file.pop("tokens_per_s")  # timed
    checked = ("max_logit_diff_f16", "token_match", "files", "tolerance", "all_match_or_near_tie")
    assert {k: written_out[k] for k in checked} == {k: report[k] for k in checked}
    # the faults greedy tokens on four prompts can miss, each failing the certificate that the export passed
    prompts, texts = cert["prompts"], ["Quote: A little courage each day is worth more than gold.\nAuthor: X"]
    bad = tmp_path / "swapped" / "model-f16.gguf"
    bad.parent.mkdir()
    shutil.copyfile(run / "gguf" / "model-f16.gguf", bad)
    swap_tensors(bad, "blk.0.ffn_down.weight", "blk.1.ffn_down.weight")
    broken = certificate.certify(bad.parent, merged, tokenizer, prompts, texts, n_tokens=16, max_new_tokens=8)
    assert not broken["passed"] and broken["levels"]["f16"]["failed"], broken["levels"]["f16"]
    assert "FAIL" in certificate.table(broken)
    wrong = tmp_path / "wrong-scale"
    shutil.copytree(run / "adapter", wrong)
    config = json.loads((wrong / "adapter_config.json").read_text())
    (wrong / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 8 * config["lora_alpha"]}))
    scaled = tmp_path / "scaled" / adapter_gguf.ADAPTER_FILE
    adapter_gguf.write_adapter_gguf(wrong, run / "gguf" / "base-f16.gguf", scaled)
    result = certificate.certify(scaled.parent, merged, tokenizer, prompts, texts, n_tokens=16,
                                 max_new_tokens=8, files=[], adapter=(run / "gguf" / "base-f16.gguf", scaled))
    assert result["levels"]["f16+lora"]["failed"], result["levels"]["f16+lora"]


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
