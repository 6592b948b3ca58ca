"""gemmate_cli.certificate (`gemmate export`, docs/export.md): what each GGUF level cost against the merged
model. The bounds and the table on figures given here, and the committed record (docs/export-certificate.json,
which `gemmate export` on the embedded fine-tune regenerates) by its own rule. The certificate computed on a
tiny export is tests/cli/test_cli_export.py's (make test); on the embedded fine-tune that make nbval's 05
exported, where a file with one wrong tensor and an adapter with a wrong scale must fail it, the tests marked
long here (make rehearse-learner, after make nbval)."""
from __future__ import annotations

import json
import shutil

import pytest

from gemmate_cli import certificate

ROW = {"mean_gap": 0.01, "worst_gap": 0.2, "top1": 0.99, "top1_decisive": 0.995, "perplexity": 10.05,
       "perplexity_ci95": [9.0, 11.0],
       "author_share": 0.75, "author_share_ci95": [0.47, 0.91], "first_part": [None, 5, None, 0], "parted": 2,
       "size_mib": 286.4}
MERGED = {"perplexity": 10.0, "perplexity_ci95": [9.0, 11.0], "author_share": 0.75,
          "author_share_ci95": [0.47, 0.91]}


@pytest.mark.parametrize("field, value, says", [
    ("mean_gap", 0.09, "mean gap 0.090 > 0.08"), ("worst_gap", 2.0, "worst gap 2.00 > 1.5"),
    ("top1_decisive", 0.96, "top-1 agreement where the merged model was sure 96.0% < 97%"),
    ("perplexity", 10.5, "perplexity 1.050x")])
def test_a_level_fails_each_bound_it_leaves_and_only_those(field, value, says):
    assert certificate.judge("q8_0", ROW, MERGED) == []
    failed = certificate.judge("q8_0", {**ROW, field: value}, MERGED)
    assert len(failed) == 1 and failed[0].startswith(says)
    at_bound = certificate.BOUNDS["q8_0"].get(field.removesuffix("_decisive"), 10.29)  # perplexity: 1.029x
    assert certificate.judge("q8_0", {**ROW, field: at_bound}, MERGED) == []
    assert certificate.judge("q5_k_m", {**ROW, field: value}, MERGED) == []  # no bounds stated: not judged


def test_where_the_merged_model_was_never_sure_top_1_is_not_judged():
    # a random model's distribution is flat: every position a near-tie that rounding alone may flip
    assert certificate.judge("f16", {**ROW, "top1": 0.5, "top1_decisive": None}, MERGED) == []


def test_the_bounds_tighten_with_the_bits():
    names = ["f16", "q8_0", "q4_k_m"]
    for key in ("mean_gap", "worst_gap", "perplexity_ratio"):
        bounds = [certificate.BOUNDS[n][key] for n in names]
        assert bounds == sorted(bounds)
    assert [certificate.BOUNDS[n]["top1"] for n in names] == sorted(
        (certificate.BOUNDS[n]["top1"] for n in names), reverse=True)


def test_the_table_gives_each_levels_figures_and_verdict():
    result = {"merged": MERGED, "levels": {
        "f16": {**ROW, "bounds": certificate.BOUNDS["f16"], "failed": [], "excused": None},
        "q4_k_m": {**ROW, "top1": 0.5, "top1_decisive": 0.6, "bounds": certificate.BOUNDS["q4_k_m"],
                   "failed": ["top-1 agreement 50.0% < 70%"], "excused": "the base arrived as Q4_K_M"},
        "q8_0": {**ROW, "bounds": certificate.BOUNDS["q8_0"], "failed": ["mean gap 0.9 > 0.05"],
                 "excused": None},
        "q6_k": {**ROW, "top1_decisive": None, "bounds": None, "failed": [], "excused": None}}}
    lines = certificate.table(result).splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [c[0] for c in cells] == [certificate.MERGED, "f16", "q4_k_m", "q8_0", "q6_k"]
    assert cells[0][6:] == ["10.00 (9.00-11.00)", "75% (47%-91%)", "reference"]
    assert cells[1][1:6] == ["286", "0.010", "0.20", "99.0% (99.5%)", "token 0 (2 of 4)"]
    assert cells[1][8] == "within bounds"
    assert cells[2][8] == "outside bounds: top-1 agreement 50.0% < 70% (known: the base arrived as Q4_K_M)"
    assert cells[3][8].endswith("FAIL") and "mean gap" in cells[3][8]
    assert cells[4][8].startswith("not judged") and cells[4][4] == "99.0% (-)"
    assert {len(c) for c in cells} == {9}


def test_held_out_prompts_are_the_first_words_of_longer_quotes():
    rows = [{"quote": "Be yourself."}, {"quote": "Imagination is more important than knowledge."},
            {"quote": "Stay hungry, stay foolish, always and forever."}]
    assert certificate.held_out_prompts(rows, n=5, words=4) == ["Quote: Imagination is more important",
                                                                "Quote: Stay hungry, stay foolish,"]
    assert certificate.held_out_prompts(rows, n=1, words=2) == ["Quote: Imagination is"]


def test_only_the_embedded_bases_q4_k_m_loss_is_known():
    assert set(certificate.known_losses("embedded")) == {"q4_k_m"}
    assert certificate.known_losses("google/gemma-2b") == {}


def swap_tensors(path, first: str, second: str) -> None:
    """Write `first`'s data where `second`'s is and back, in place: a file with the wrong tensor in a slot."""
    from gguf import GGUFReader

    reader = GGUFReader(path, "r+")
    tensors = {t.name: t for t in reader.tensors}
    a, b = tensors[first].data, tensors[second].data
    assert a.shape == b.shape and a.dtype == b.dtype
    saved = a.copy()
    a[...] = b
    b[...] = saved
    reader.data.flush()


@pytest.mark.slow
@pytest.mark.long  # make rehearse-learner; make test: the tiny export's faults (tests/cli/test_cli_export.py)
def test_05s_16_bit_file_passes_the_certificate_and_a_file_with_a_wrong_tensor_fails_it(request, tmp_path):
    """05's 16-bit export of the embedded fine-tune (make nbval) against its merged model: the file as
    exported passes the certificate; the same file with two layers' MLP output weights swapped, which
    llama.cpp loads without a complaint, fails it."""
    import torch
    from nbval_run import nbval_run
    from transformers import AutoModelForCausalLM

    from gemmate_lib.config import course_config
    from gemmate_lib.data import load_quotes
    from gemmate_lib.models import load_tokenizer

    run = nbval_run(request, "gguf/model-f16.gguf", "merged")

    cfg = course_config()
    tokenizer = load_tokenizer(cfg.model.model_name)
    merged = AutoModelForCausalLM.from_pretrained(run / "merged", dtype=torch.float32).eval()
    data = load_quotes(cfg.data.dataset, cfg.data.eval_fraction, cfg.data.data_seed, tokenizer,
                       cfg.train.max_length)
    prompts = certificate.held_out_prompts(data.held_out, n=3)
    texts = [r["text"] + tokenizer.eos_token for r in data.held_out][:4]
    good, bad = tmp_path / "good" / "model-f16.gguf", tmp_path / "bad" / "model-f16.gguf"
    for path in (good, bad):
        path.parent.mkdir()
        shutil.copyfile(run / "gguf" / "model-f16.gguf", path)
    swap_tensors(bad, "blk.3.ffn_down.weight", "blk.4.ffn_down.weight")

    kept = certificate.certify(good.parent, merged, tokenizer, prompts, texts, n_tokens=24)
    assert kept["passed"] and kept["levels"]["f16"]["failed"] == []
    f16 = kept["levels"]["f16"]
    assert f16["top1_decisive"] > 0.99 and f16["tokens"] >= 8 * len(prompts)
    broken = certificate.certify(bad.parent, merged, tokenizer, prompts, texts, n_tokens=24)
    assert not broken["passed"] and broken["levels"]["f16"]["failed"], broken["levels"]["f16"]
    assert "FAIL" in certificate.table(broken)
    assert json.loads((bad.parent / "certificate.json").read_text())["passed"] is False


def verdict(cert: dict, model_name: str = "embedded") -> tuple[bool, dict[str, list[str]]]:
    """The certificate's own rule (certify) recomputed from a certificate's recorded figures: each level's
    failed bounds (certificate.judge, today's BOUNDS, against the recorded merged row), excused where
    known_losses names the level's loss for `model_name`'s base; passed when every level is within its bounds
    or excused."""
    failed = {level: certificate.judge(level, row, cert["merged"]) for level, row in cert["levels"].items()}
    excused = certificate.known_losses(model_name)
    return all(not f or excused.get(level) for level, f in failed.items()), failed


def committed_certificate() -> dict:
    from tools.runners.export_certificate import RECORD

    return json.loads(RECORD.read_text())


def test_the_committed_certificate_passed_by_its_own_rule_on_its_own_measurements():
    """docs/export.md shows it (tests/test_generated_blocks.py holds the page to the record). Its `passed` and
    each level's `failed` are recomputed from the figures it records, with today's bounds and excuses for the
    embedded base (whose fine-tune 05 exports): a committed flag that its measurements do not support, or
    bounds changed since it was measured, fail here."""
    cert = committed_certificate()
    passed, failed = verdict(cert)
    assert cert["passed"] is True and passed == cert["passed"], failed
    for level, row in cert["levels"].items():
        assert row["failed"] == failed[level], level
        assert row["bounds"] == certificate.BOUNDS.get(level), level
        assert row["excused"] == certificate.known_losses("embedded").get(level), level
    assert {"f16", "q8_0", "q4_k_m"} <= set(cert["levels"])
    assert all(not failed[level] for level in ("f16", "q8_0", "f16+lora"))


def past(bound: str, row: dict, merged: dict, bounds: dict) -> dict:
    """`row` with the figure that `bound` judges moved just past it."""
    if bound == "perplexity_ratio":
        return {**row, "perplexity": merged["perplexity"] * bounds[bound] * 1.001}
    if bound == "top1":
        return {**row, "top1_decisive": bounds[bound] - 0.001}
    return {**row, bound: bounds[bound] * 1.001}


@pytest.mark.parametrize("level", ["f16", "q8_0", "f16+lora"])
@pytest.mark.parametrize("bound", ["mean_gap", "worst_gap", "top1", "perplexity_ratio"])
def test_a_committed_measurement_moved_past_its_bound_fails_the_recomputed_verdict(level, bound):
    """On a copy of the committed certificate, one figure of one level moved just past its bound: the
    recomputed verdict fails on that bound alone, so a committed `passed` would disagree with it."""
    cert = committed_certificate()
    row = cert["levels"][level]
    moved = {**cert, "levels": {**cert["levels"], level: past(bound, row, cert["merged"], row["bounds"])}}
    passed, failed = verdict(moved)
    assert not passed and len(failed[level]) == 1
    assert all(not f for other, f in failed.items() if other not in (level, "q4_k_m"))


def test_the_committed_q4_k_m_loss_passes_only_as_the_embedded_bases_known_loss():
    cert = committed_certificate()
    assert verdict(cert, "embedded")[0]
    passed, failed = verdict(cert, "google/gemma-2b")  # no known loss for a base that was not Q4_K_M
    assert not passed and failed["q4_k_m"] == cert["levels"]["q4_k_m"]["failed"]


@pytest.mark.slow
@pytest.mark.long  # make rehearse-learner; make test: a tiny adapter at 8x alpha (tests/cli/test_cli_export)
def test_05s_adapter_as_gguf_on_its_base_is_within_the_16_bit_files_bounds(request, tmp_path):
    """The real embedded fine-tune's adapter (make nbval's 03) as a llama.cpp LoRA GGUF, on the embedded
    base's 16-bit GGUF, held to the merged model like the merged 16-bit file; the same adapter written with 8
    times its alpha (a wrong scale, as a mismatched rsLoRA setting gives) fails the same certificate."""
    import torch
    from nbval_run import nbval_run
    from transformers import AutoModelForCausalLM

    from gemmate_cli import adapter_gguf
    from gemmate_lib.config import course_config
    from gemmate_lib.data import load_quotes
    from gemmate_lib.models import load_tokenizer

    run = nbval_run(request, "adapter/adapter_model.safetensors", "merged")
    cfg = course_config()
    tokenizer = load_tokenizer(cfg.model.model_name)
    merged = AutoModelForCausalLM.from_pretrained(run / "merged", dtype=torch.float32).eval()
    data = load_quotes(cfg.data.dataset, cfg.data.eval_fraction, cfg.data.data_seed, tokenizer,
                       cfg.train.max_length)
    prompts = certificate.held_out_prompts(data.held_out, n=2)
    texts = [r["text"] + tokenizer.eos_token for r in data.held_out][:2]
    base = adapter_gguf.base_gguf_of(cfg.model.model_name, tmp_path)
    wrong = tmp_path / "wrong-scale"
    shutil.copytree(run / "adapter", wrong)
    config = json.loads((wrong / "adapter_config.json").read_text())
    (wrong / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 8 * config["lora_alpha"]}))
    results = {}
    for name, adapter in (("as trained", run / "adapter"), ("8x alpha", wrong)):
        out = tmp_path / name / adapter_gguf.ADAPTER_FILE
        info = adapter_gguf.write_adapter_gguf(adapter, base, out)
        assert info["size_mib"] < 16 and info["pairs"] == 7 * 18  # 7 modules x 18 layers, a few MB
        results[name] = certificate.certify(out.parent, merged, tokenizer, prompts, texts, n_tokens=16,
                                            files=[], adapter=(base, out))["levels"]["f16+lora"]
    assert results["as trained"]["failed"] == [], results["as trained"]
    assert results["8x alpha"]["failed"], results["8x alpha"]
