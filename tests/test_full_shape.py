"""The full-shape rehearsal's parts, cheap: the streaming merge against PEFT's, the memory watcher under a
cap, and the rehearsal's phases on a tiny model under a small cap (one made to exceed it). `make rehearse`
runs the same code at the real shapes (docs/full-shape.md)."""
import json
import sys

import pytest
import torch

from tools.fit import rehearse


@pytest.mark.parametrize("key,dtype", [("gemma", None), ("gemma4", None), ("gemma3", torch.float16)])
def test_streaming_merge_equals_peft_merge(generation_folder, tmp_path, key, dtype):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from gemmate_lib.generations import lora_targets
    from tools.fit.merge_shards import merge_shards

    base = generation_folder(key)
    auto = AutoModelForImageTextToText if key == "gemma4" else AutoModelForCausalLM
    model = auto.from_pretrained(base, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=lora_targets(model)))
    torch.manual_seed(0)
    for name, param in peft.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)  # B starts at zero: give the update a size
    peft.save_pretrained(tmp_path / "adapter")
    (tmp_path / "adapter" / "gemmate.json").write_text("{}")

    merge_shards(base, tmp_path / "adapter", tmp_path / "merged", dtype=dtype)

    expected = PeftModel.from_pretrained(auto.from_pretrained(base, dtype=torch.float32),
                                         tmp_path / "adapter").merge_and_unload().state_dict()
    got = auto.from_pretrained(tmp_path / "merged", dtype="auto").state_dict()
    plain = auto.from_pretrained(base, dtype=got[next(iter(got))].dtype).state_dict()
    assert {v.dtype for v in got.values()} == {dtype or torch.float32}
    changed = [k for k in got if not torch.equal(got[k], plain[k])]
    assert changed and all(any(t in k for t in ("q_proj", "v_proj", "down_proj", "up_proj", "gate_proj",
                                                "k_proj", "o_proj")) for k in changed)
    assert not any("vision" in k or "audio" in k for k in changed)  # Gemma 4's towers are never adapted
    for k in got:
        tolerance = {} if dtype else dict(rtol=1e-5, atol=1e-5)  # fp16: torch's fp16 tolerances
        torch.testing.assert_close(got[k], expected[k].to(got[k].dtype), **tolerance)


def test_merge_refuses_an_adapter_of_another_base(generation_folder, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from gemmate_lib.guard_rails.errors import ModelLoadError
    from tools.fit.merge_shards import merge_shards

    other = AutoModelForCausalLM.from_pretrained(generation_folder("gemma3"))
    get_peft_model(other, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "adapter")
    (tmp_path / "adapter" / "gemmate.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="LoRA layers but"):
        merge_shards(generation_folder("gemma4"), tmp_path / "adapter", tmp_path / "merged")
    assert not (tmp_path / "merged").exists()  # nothing half-written is left


def _allocate(mb: int) -> list[str]:
    touch = "b[::4096] = b'x' * len(b[::4096])"  # every page resident
    return [sys.executable, "-c", f"import time; b = bytearray({mb} * 2**20); {touch}; time.sleep(0.5)"]


def test_the_watcher_measures_resident_memory_and_stops_a_process_over_its_cap():
    fits = rehearse.watch(_allocate(60), limit=500e6)
    assert fits["returncode"] == 0 and not fits["stopped"]
    assert 60 * 2**20 <= fits["peak_ram"] < 500e6
    over = rehearse.watch(_allocate(300), limit=150e6)
    assert over["stopped"] and over["returncode"] != 0


def test_the_watcher_counts_the_whole_process_tree():
    # a child that starts a grandchild: the grandchild's memory counts (the GGUF converter runs as one)
    cmd = [sys.executable, "-c", "import subprocess, sys; subprocess.run(" + repr(_allocate(120)) + ")"]
    assert rehearse.watch(cmd, limit=2e9)["peak_ram"] >= 120 * 2**20


@pytest.mark.slow
@pytest.mark.maintainer  # make test-tools; make test keeps a cheaper test of it (CONTRIBUTING.md)
def test_the_rehearsal_phases_at_a_small_shape_and_one_over_its_cap(tmp_path):
    """make rehearse's phases but the copy (the next test's) on a tiny Gemma 1 with the embedded vocabulary
    (llama.cpp's converter reads its sentencepiece model), each in its child: all fit, the merge writes a
    second copy, and the last phase generates from the 4-bit GGUF with llama.cpp's logits (its export
    phases run nowhere else between two `make rehearse` runs: one called an export function by a name it no
    longer had). Under a cap below the model, the first phase is stopped and nothing after it runs."""
    from learner_path import tiny_gemma

    base = tiny_gemma(tmp_path / "tiny-gemma-1")
    phases = ("load", "nf4", "merge", "convert", "quantize", "verify")
    rows = rehearse.rehearse(["tiny"], phases, limit=3e9, work_root=tmp_path, builder=lambda name: base)
    assert [r["phase"] for r in rows] == list(phases) and all(r["fits"] for r in rows), rows[-1]["tail"]
    assert all(r["peak_disk"] >= r["checkpoint_bytes"] > 0 for r in rows)
    assert rows[2]["peak_disk"] > rows[0]["peak_disk"]  # the merge wrote a second copy
    generated = json.loads(rows[-1]["tail"].split("generated ", 1)[1].splitlines()[0])
    assert 0 < len(generated["tokens"]) <= 8 and generated["logit_range"] > 0  # llama.cpp's logits, not zeros
    over = rehearse.rehearse(["tiny"], phases, limit=20e6, work_root=tmp_path, builder=lambda name: base)
    assert len(over) == 1 and over[0]["stopped"] and not over[0]["fits"]  # stopped, and nothing after it ran
    assert "**no**" in rehearse.table(over)


@pytest.mark.slow  # over 3 s: make test runs it, make test-fast does not
def test_the_copy_phase_counts_a_gemma_4_table_on_the_cpu_and_trains(tmp_path):
    """make rehearse's "copy" phase on a tiny Gemma 4 whose per-layer table holds bf16 values (as the Hub's
    checkpoints): the 4-bit copy's bytes on the GPU and the table's on the CPU, as fit.predicted_copy_bytes
    counts them, and a few LoRA steps."""
    from tiny import make_generation_tokenizer, make_tiny_generation
    from transformers import AutoConfig

    from gemmate_lib import fit

    base, tokenizer = tmp_path / "gemma4", make_generation_tokenizer("gemma4")
    model = make_tiny_generation("gemma4", tokenizer)
    for name, module in model.named_modules():
        if name.endswith("embed_tokens_per_layer"):
            module.weight.data = module.weight.data.to(torch.bfloat16).float()
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    rows = rehearse.rehearse(["tiny"], ("copy",), limit=3e9, work_root=tmp_path, builder=lambda name: base)
    copy = rows[0]["copy"]
    need = fit.predicted_copy_bytes(fit.shape_of(AutoConfig.from_pretrained(base)), "nf4-fp32", 4)
    # the per-layer table, bf16 on the CPU, and its module's fp32 embed_scale buffer (4 bytes), counted as the
    # ledger counts a live copy
    assert need["host"] > 0 and copy["host"] - need["host"] == 4
    # the tiny model's few hundred 4-bit values carry their scales' overhead: within 10% at this size
    assert copy["gpu"] == pytest.approx(need["gpu"], rel=0.1)
    assert len(copy["step_seconds"]) == 3 and copy["final_loss"] > 0


def test_the_committed_table_covers_every_model_and_phase():
    from tools.fit.full_shape import MODELS

    committed = json.loads((rehearse.DOCS / "full-shape.json").read_text())
    seen = {(r["model"], r["phase"]) for r in committed["rows"]}
    assert seen == {(m, p) for m in MODELS for p in rehearse.PHASES}


TEXT = "Quote: Imagination is more important than knowledge.\nAuthor: Albert Einstein (日本語, ∑, 🌍)"


def test_the_cut_tokenizer_keeps_every_id_below_the_cut_and_decodes_the_same_text(tiny_folder):
    """tokenizer_for's cut on the tiny tokenizer (320 entries, cut to 280: its later merges go); the cut of
    the embedded one to gemma-2b's 256,000 is the test below (make test-tools)."""
    from transformers import AutoTokenizer

    from tools.fit.full_shape import tokenizer_for

    tokenizer, _ = tokenizer_for(280, source=tiny_folder)
    ids, whole = tokenizer(TEXT)["input_ids"], AutoTokenizer.from_pretrained(tiny_folder)(TEXT)["input_ids"]
    assert max(ids) < 280 <= max(whole) and len(ids) > len(whole)
    assert tokenizer.decode(ids, skip_special_tokens=True).strip() == TEXT


@pytest.mark.slow
@pytest.mark.maintainer  # make test-tools; make test keeps the cut on the tiny tokenizer (above)
def test_the_full_shape_tokenizer_keeps_every_id_inside_gemma_2bs_vocabulary():
    """gemma-2b has 256,000 rows of embeddings; an id past them would crash the load, merge and export phases
    (the embedded Gemma 3 tokenizer it is cut from has 262,144)."""
    from tools.fit.full_shape import tokenizer_for

    tokenizer, _ = tokenizer_for(256_000)
    ids = tokenizer(TEXT)["input_ids"]
    assert len(tokenizer) <= 256_000 and max(ids) < 256_000
    assert tokenizer.decode(ids, skip_special_tokens=True).strip() == TEXT
