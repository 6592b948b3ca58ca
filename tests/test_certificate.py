"""gemmate_cli.certificate (`gemmate export`, docs/export.md): what each GGUF level cost against the merged
model. The bounds and the table on figures given here, and the committed record (docs/export-certificate.json,
which `gemmate export` on the embedded fine-tune regenerates) by its own rule. The certificate computed in
this process on a tiny export (exported once per machine, then cached): the files as exported pass it, a file
with two MLP weights swapped and an adapter at 8x alpha fail it, each figure recomputed here. `gemmate export`
end to end on a tiny fine-tune is tests/cli/test_cli_export.py's (make test); on the embedded fine-tune that
make nbval's 05 exported, the tests marked long here (make rehearse-learner, after make nbval)."""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, GemmaForCausalLM  # here: mutmut's fork server imports it once (2 s)

from gemmate_cli import certificate, gguf_export

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
        "q6_k": {**ROW, "top1_decisive": None, "bounds": None, "failed": [], "excused": None},
        "q5_k_m": {**ROW, "first_part": [None] * 4, "parted": 0, "bounds": None, "failed": [],
                   "excused": None}}}
    lines = certificate.table(result).splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [len(line.strip("|").split("|")) for line in lines[:2]] == [9, 9]  # a markdown table: 9 columns
    assert [c[0] for c in cells] == [certificate.MERGED, "f16", "q4_k_m", "q8_0", "q6_k", "q5_k_m"]
    assert cells[0][6:] == ["10.00 (9.00-11.00)", "75% (47%-91%)", "reference"]
    assert cells[1][1:6] == ["286", "0.010", "0.20", "99.0% (99.5%)", "token 0 (2 of 4)"]
    assert cells[1][8] == "within bounds"
    assert cells[2][8] == "outside bounds: top-1 agreement 50.0% < 70% (known: the base arrived as Q4_K_M)"
    assert cells[3][8].endswith("FAIL") and "mean gap" in cells[3][8]
    assert cells[4][8].startswith("not judged") and cells[4][4] == "99.0% (-)"
    assert cells[5][5] == "- (0 of 4)"  # no prompt parted from the merged model's text
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
    """Write `first`'s data where `second`'s is and back, in place: a file with the wrong tensor in a slot
    (the header read by gguf_file, not gguf's GGUFReader, which takes ~19 s over a Gemma vocabulary)."""
    import mmap

    from gemmate_cli.gguf_file import read_gguf_layout

    spans = read_gguf_layout(path)[1]
    (a, size), (b, other) = spans[first], spans[second]
    assert size == other and a != b
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as buf:
        buf[a:a + size], buf[b:b + size] = buf[b:b + size], buf[a:a + size]


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


# The certificate computed in this process (mutmut sees only calls made in the pytest process; `gemmate
# export` runs it in a child), on a tiny Gemma 1 that knows TINY_QUOTES by heart, so that it is sure of most
# tokens, ends a quote with an Author: line and stops: its prompts reach every case a level is read for (a
# quote kept, one cut short by the token limit, a text that stops without an Author line, and an unseen
# prompt, where the model is unsure of some tokens).
TINY_QUOTES = ("Quote: Be yourself.\nAuthor: Oscar Wilde",
               "Quote: Imagination is more important than knowledge.\nAuthor: Albert Einstein",
               "one two three four five six")
TINY_PROMPTS = ("Quote: Be", "Quote: Imagination is", "one two", "Author:")
TINY_TEXTS = tuple(q + "<eos>" for q in TINY_QUOTES)
N_TOKENS, MAX_NEW = 16, 10
CACHE = Path(tempfile.gettempdir()) / "gemmate-test-cache"
ON_TINY_EXPORT = pytest.mark.xdist_group("tiny_export")  # one worker loads it (make unit: TEST_WORKERS)


def _build_tiny_export(folder: Path) -> None:
    """Into `folder`: base-f16.gguf, a tiny random Gemma 1 (SentencePiece vocabulary of ~400) trained on
    TINY_QUOTES until it knows them, as llama.cpp's converter writes it; run/adapter, a LoRA on it (every
    linear layer, rank 4, B random and small); merged/, the adapter merged into that model (fp32, with the
    tokenizer); and run/gguf/model-{f16,q8_0,q4_0}.gguf, export_gguf's files of the merged model."""
    from peft import LoraConfig, get_peft_model
    from tiny import make_sentencepiece_tokenizer
    from transformers import GemmaConfig

    from gemmate_lib import export

    tokenizer = make_sentencepiece_tokenizer(folder / "merged", TINY_QUOTES)
    config = GemmaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                         max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = GemmaForCausalLM(config)
    batch = tokenizer([q + tokenizer.eos_token for q in TINY_QUOTES], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    model.train()
    for _ in range(60):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    base = folder / "base"
    model.eval().save_pretrained(base)
    tokenizer.save_pretrained(base)
    shutil.copy(folder / "merged" / "tokenizer.model", base)  # Gemma 1's converter reads it
    export.convert(base, folder / "base-f16.gguf")
    shutil.rmtree(base)
    torch.manual_seed(1)
    tuned = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in tuned.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    tuned.save_pretrained(folder / "run" / "adapter")
    merged = tuned.merge_and_unload().eval()
    gguf_export.export_gguf(folder / "run", merged, tokenizer, ["q8_0", "q4_0"], keep="f16")
    merged.save_pretrained(folder / "merged")
    tokenizer.save_pretrained(folder / "merged")


def _export_key() -> str:
    """What decides the tiny export's files: its recipe (the builders' source), the libraries that train,
    save, convert and quantize it, llama.cpp's converter, gemmate_lib/export.py and
    gemmate_cli/gguf_export.py."""
    import inspect
    from importlib.metadata import version

    import tiny

    from gemmate_lib import export

    digest = hashlib.sha256(repr([TINY_QUOTES] + [version(p) for p in (
        "torch", "transformers", "peft", "sentencepiece", "llama_cpp_python", "safetensors")]).encode())
    for builder in (_build_tiny_export, tiny.make_sentencepiece_tokenizer):
        digest.update(inspect.getsource(builder).encode())
    code = Path(inspect.getfile(export))
    shim = code.parent / "converter_shim" / "sitecustomize.py"
    for path in [code, Path(inspect.getfile(gguf_export)), shim, *sorted(export.CONVERTER_DIR.rglob("*.py"))]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _cached(name: str, build) -> Path:
    """CACHE/name, made by build(folder) once per machine: built in a fresh folder beside it and renamed into
    place whole (a rename is atomic), so a process that finds the folder finds it complete, and when two
    build at once the second's copy is dropped."""
    folder = CACHE / name
    if folder.is_dir():
        return folder
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=CACHE))
    try:
        build(work)
        try:
            work.rename(folder)
        except OSError:  # another process's build got there first
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


@pytest.fixture(scope="module")
def tiny_export(one_thread):
    """The tiny export (_build_tiny_export), from the machine's cache: its files, the merged model and the
    tokenizer, loaded in this process."""
    pytest.importorskip("llama_cpp")
    folder = _cached(f"certificate-tiny-{_export_key()}", _build_tiny_export)
    merged = GemmaForCausalLM.from_pretrained(folder / "merged", dtype=torch.float32).eval()
    return SimpleNamespace(gguf=folder / "run" / "gguf", adapter=folder / "run" / "adapter",
                           base=folder / "base-f16.gguf", merged=merged,
                           tokenizer=AutoTokenizer.from_pretrained(folder / "merged"))


def _expected_merged_row(merged, tokenizer) -> dict:
    """merged_row recomputed here: torch's cross-entropy over TINY_TEXTS, transformers' own greedy text."""
    from gemmate_cli.gguf_verify import hf_greedy
    from gemmate_lib.stats import bootstrap_ci, wilson
    from gemmate_lib.text_generation import has_author_line

    nll, counts = [], []
    for text in TINY_TEXTS:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = merged(input_ids=ids).logits[0, :-1].double()
        nll.append(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item())
        counts.append(ids.shape[1] - 1)
    kept = 0
    for prompt in TINY_PROMPTS:
        new, _, stopped = hf_greedy(merged, tokenizer, prompt, MAX_NEW)
        kept += stopped and has_author_line(tokenizer.decode(new))
    n = len(TINY_PROMPTS)
    return {"perplexity": math.exp(sum(nll) / sum(counts)),
            "perplexity_ci95": list(bootstrap_ci(nll, counts, ratio_exp=True)),
            "author_share": kept / n, "author_share_ci95": list(wilson(kept, n)), "prompts": n}


def _llama_figures(path, refs, lora=None) -> dict:
    """score_file's figures of one file recomputed here: torch's log-softmax of llama.cpp's logits, its
    perplexity (gguf_verify.perplexity) and its greedy text's Author: line."""
    from gemmate_cli.gguf_verify import llama_greedy, perplexity
    from gemmate_lib.export import load_llama
    from gemmate_lib.text_generation import has_author_line

    llm = load_llama(path, logits_all=True, lora_path=lora)
    gaps, same, sure, parts = [], [], [], []
    try:
        for ref in refs:
            ids, cont = ref["ids"], ref["continuation"]
            llm.reset()
            llm.eval(ids + cont)
            rows = np.array(llm.scores[len(ids) - 1:len(ids) - 1 + len(cont)])
            lp = torch.log_softmax(torch.tensor(rows, dtype=torch.float64), -1)
            hits = [lp[j].argmax().item() == t for j, t in enumerate(cont)]
            gaps += [abs(lp[j, t].item() - ref["logprobs"][j]) for j, t in enumerate(cont)]
            same += hits
            sure += [hit for hit, decisive in zip(hits, ref["decisive"]) if decisive]
            parts.append(hits.index(False) if False in hits else None)
        kept = 0
        for ref in refs:
            new, _, stopped = llama_greedy(llm, ref["prompt"], MAX_NEW)
            kept += stopped and has_author_line(llm.detokenize(new).decode(errors="replace"))
        ppl = perplexity(llm, TINY_TEXTS)
    finally:
        llm.close()
    return {"mean_gap": sum(gaps) / len(gaps), "worst_gap": max(gaps), "top1": sum(same) / len(same),
            "top1_decisive": sum(sure) / len(sure), "decisive": len(sure), "tokens": len(same),
            "first_part": parts, "parted": len(parts) - parts.count(None), "perplexity": ppl,
            "author_share": kept / len(refs)}


def _figures(row: dict, keys) -> list:
    """`row`'s figures under `keys`, lists spread out (pytest.approx compares flat sequences only)."""
    return [x for key in keys for x in (row[key] if isinstance(row[key], list) else [row[key]])]


def _table_cells(result) -> dict[str, list[str]]:
    lines = certificate.table(result).splitlines()
    return {c[0]: c[1:] for c in ([x.strip() for x in line.strip("|").split("|")] for line in lines[2:])}


@ON_TINY_EXPORT
def test_the_reference_is_the_merged_models_greedy_text_and_its_log_probabilities(tiny_export):
    """reference(): per prompt, transformers' greedy continuation (one at a time here, not as a left-padded
    batch), its end token kept when it stops, each token's log-probability and whether the merged model led
    its runner-up there by DECISIVE nats or more."""
    from gemmate_cli.gguf_verify import hf_greedy

    merged, tokenizer = tiny_export.merged, tiny_export.tokenizer
    side = tokenizer.padding_side
    refs = certificate.reference(merged, tokenizer, TINY_PROMPTS, N_TOKENS)
    assert tokenizer.padding_side == side  # left padding for the batch only
    assert [r["prompt"] for r in refs] == list(TINY_PROMPTS)
    stops, decisive = [], []
    for prompt, ref in zip(TINY_PROMPTS, refs):
        new, _, stopped = hf_greedy(merged, tokenizer, prompt, N_TOKENS)
        assert ref["ids"] == tokenizer(prompt)["input_ids"]
        assert ref["continuation"] == new + [tokenizer.eos_token_id] * stopped, prompt
        with torch.no_grad():
            logits = merged(input_ids=torch.tensor([ref["ids"] + ref["continuation"]])).logits[0].double()
        lp = torch.log_softmax(logits, -1)[len(ref["ids"]) - 1:-1]
        cont = ref["continuation"]
        assert ref["logprobs"] == pytest.approx([lp[j, t].item() for j, t in enumerate(cont)], abs=1e-5)
        runner_up = lp.topk(2).values[:, 1]
        assert ref["decisive"] == [lp[j, t].item() - runner_up[j].item() >= certificate.DECISIVE
                                   for j, t in enumerate(cont)]
        stops.append(stopped)
        decisive += ref["decisive"]
    # the set-up: the known texts end; after a prompt it does not know, the model is unsure of a few tokens
    assert stops[:3] == [True, True, True]
    assert 0 < decisive.count(False) < decisive.count(True)


@ON_TINY_EXPORT
def test_a_tiny_exports_files_pass_the_certificate_and_read_as_the_merged_model(tiny_export, tmp_path):
    """certify() on export_gguf's 16-bit, Q8_0 and Q4_0 files of a tiny fine-tune and on its base's 16-bit
    file with the adapter GGUF: every level within its bounds (Q4_0, which BOUNDS lacks, reported, not
    judged), the levels largest file first, the merged model's row as recomputed here, the 16-bit file's
    figures as recomputed from llama.cpp's logits, and the table saying so."""
    from gemmate_cli import adapter_gguf
    from gemmate_lib.export import load_llama

    merged, tokenizer = tiny_export.merged, tiny_export.tokenizer
    folder = tmp_path / "gguf"
    folder.mkdir()
    for name in ("model-f16.gguf", "model-q8_0.gguf", "model-q4_0.gguf"):
        (folder / name).symlink_to(tiny_export.gguf / name)
    lora = tmp_path / adapter_gguf.ADAPTER_FILE
    adapter_gguf.write_adapter_gguf(tiny_export.adapter, tiny_export.base, lora)
    llm = load_llama(folder / "model-f16.gguf")  # the set-up: llama.cpp splits the texts as transformers does
    assert [llm.tokenize(t.encode(), add_bos=True, special=True) for t in TINY_TEXTS] == [
        tokenizer(t)["input_ids"] for t in TINY_TEXTS]
    llm.close()

    result = certificate.certify(folder, merged, tokenizer, TINY_PROMPTS, TINY_TEXTS, n_tokens=N_TOKENS,
                                 max_new_tokens=MAX_NEW, excused={"q4_k_m": "not exported"},
                                 adapter=(tiny_export.base, lora))
    assert result["passed"] is True
    assert list(result["levels"]) == ["f16", "q8_0", "q4_0", "f16+lora"]  # by size, largest first
    assert (result["n_tokens"], result["prompts"], result["held_out_texts"]) == (N_TOKENS, list(TINY_PROMPTS),
                                                                                 3)
    expected = _expected_merged_row(merged, tokenizer)
    assert list(result["merged"]) == list(expected)
    assert _figures(result["merged"], expected) == pytest.approx(_figures(expected, expected), rel=1e-5)
    assert 0 < expected["author_share"] < 0.5  # the set-up: a quote kept, one cut short, one without Author:
    levels = result["levels"]
    for level, row in levels.items():
        assert row["failed"] == [] and row["excused"] is None, level
        assert row["bounds"] == certificate.BOUNDS.get(level), level
        assert row["perplexity"] == pytest.approx(expected["perplexity"], rel=0.01), level
        assert (row["author_share"], row["author_share_ci95"]) == (expected["author_share"],
                                                                   expected["author_share_ci95"]), level
        assert row["tokens"] == levels["f16"]["tokens"] and row["decisive"] == levels["f16"]["decisive"]
    assert levels["q4_0"]["bounds"] is None  # not judged
    refs = certificate.reference(merged, tokenizer, TINY_PROMPTS, N_TOKENS)
    f16 = levels["f16"]
    figures = _llama_figures(folder / "model-f16.gguf", refs)
    assert _figures(f16, figures) == pytest.approx(_figures(figures, figures), rel=1e-6, abs=1e-6)
    assert f16["tokens"] == sum(len(r["continuation"]) for r in refs)
    assert f16["mean_gap"] < 0.002 and f16["worst_gap"] < 0.05 and f16["top1"] > 0.9
    assert f16["top1_decisive"] == 1.0 and f16["first_part"][:3] == [None] * 3  # where the model was sure
    assert 0 < f16["perplexity_ci95"][0] <= f16["perplexity"] <= f16["perplexity_ci95"][1]
    sizes = [row["size_mib"] for row in levels.values()]
    assert sizes[:3] == [(tiny_export.gguf / f"model-{level}.gguf").stat().st_size / 2**20
                         for level in list(levels)[:3]]
    assert sizes[0] > sizes[1] > sizes[2] and sizes[3] == lora.stat().st_size / 2**20
    assert [row["file"] for row in levels.values()] == [
        "model-f16.gguf", "model-q8_0.gguf", "model-q4_0.gguf", "base-f16.gguf + adapter-lora.gguf"]
    assert json.loads((folder / "certificate.json").read_text()) == json.loads(json.dumps(result))

    cells = _table_cells(result)
    assert list(cells) == [certificate.MERGED, *levels]
    assert cells[certificate.MERGED][-1] == "reference"
    assert [cells[level][-1] for level in levels] == ["within bounds"] * 2 + [
        "not judged (no bounds for this level)", "within bounds"]
    assert cells["f16"][1:3] == [f"{f16['mean_gap']:.3f}", f"{f16['worst_gap']:.2f}"]
    assert cells["f16"][3].endswith("(100.0%)") and cells["f16"][4].endswith(f"({f16['parted']} of 4)")


@ON_TINY_EXPORT
def test_a_file_with_two_mlp_weights_swapped_and_an_adapter_at_8x_alpha_fail_the_certificate(tiny_export,
                                                                                             tmp_path):
    """The 16-bit file with layers 0 and 1's MLP output weights swapped (llama.cpp loads it without a
    complaint) leaves every bound, each figure as recomputed here; the adapter GGUF written with 8 times its
    alpha (a wrong scale) leaves the 16-bit bounds too. A failing level fails the certificate unless `excused`
    names its loss; the table says which."""
    from gemmate_cli import adapter_gguf

    merged, tokenizer = tiny_export.merged, tiny_export.tokenizer
    bad = tmp_path / "gguf" / "model-f16.gguf"
    bad.parent.mkdir()
    shutil.copyfile(tiny_export.gguf / "model-f16.gguf", bad)
    swap_tensors(bad, "blk.0.ffn_down.weight", "blk.1.ffn_down.weight")
    wrong = tmp_path / "wrong-scale"
    shutil.copytree(tiny_export.adapter, wrong)
    config = json.loads((wrong / "adapter_config.json").read_text())
    (wrong / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 8 * config["lora_alpha"]}))
    scaled = tmp_path / adapter_gguf.ADAPTER_FILE
    adapter_gguf.write_adapter_gguf(wrong, tiny_export.base, scaled)

    result = certificate.certify(bad.parent, merged, tokenizer, TINY_PROMPTS, TINY_TEXTS, n_tokens=N_TOKENS,
                                 max_new_tokens=MAX_NEW, excused={"f16+lora": "a known loss"},
                                 adapter=(tiny_export.base, scaled))
    assert result["passed"] is False  # the 16-bit file's failures are not excused
    f16, lora = result["levels"]["f16"], result["levels"]["f16+lora"]
    refs = certificate.reference(merged, tokenizer, TINY_PROMPTS, N_TOKENS)
    figures = _llama_figures(bad, refs)
    assert _figures(f16, figures) == pytest.approx(_figures(figures, figures), rel=1e-6, abs=1e-6)
    bounds = certificate.BOUNDS["f16"]
    ratio = f16["perplexity"] / result["merged"]["perplexity"]
    assert f16["failed"] == [  # every bound the swap leaves, in judge's words
        f"mean gap {f16['mean_gap']:.3f} > {bounds['mean_gap']}",
        f"worst gap {f16['worst_gap']:.2f} > {bounds['worst_gap']}",
        f"top-1 agreement where the merged model was sure {f16['top1_decisive']:.1%} < {bounds['top1']:.0%}",
        f"perplexity {ratio:.3f}x the merged model's > {bounds['perplexity_ratio']}x"]
    assert f16["mean_gap"] > 0.2 and f16["top1_decisive"] < 0.9 and ratio > 1.1 and f16["parted"] >= 2
    assert f16["excused"] is None and lora["excused"] == "a known loss"
    scaled_figures = _llama_figures(tiny_export.base, refs, lora=scaled)
    assert _figures(lora, figures) == pytest.approx(_figures(scaled_figures, figures), rel=1e-6, abs=1e-6)
    assert lora["failed"][0].startswith("mean gap") and lora["mean_gap"] > 0.1
    assert json.loads((bad.parent / "certificate.json").read_text())["passed"] is False
    cells = _table_cells(result)
    assert cells["f16"][-1] == "outside bounds: " + "; ".join(f16["failed"]) + " FAIL"
    assert cells["f16+lora"][-1] == "outside bounds: " + "; ".join(lora["failed"]) + " (known: a known loss)"
    assert cells["f16"][4].startswith("token ") and cells["f16"][4].endswith(f"({f16['parted']} of 4)")

    # a failing level whose loss is known passes the certificate, its failures still listed
    known = certificate.certify(bad.parent, merged, tokenizer, TINY_PROMPTS[:1], TINY_TEXTS[:1], n_tokens=8,
                                max_new_tokens=4, files=[bad], excused={"f16": "a known loss"})
    assert known["passed"] is True and list(known["levels"]) == ["f16"]
    assert known["levels"]["f16"]["failed"] and known["levels"]["f16"]["excused"] == "a known loss"
