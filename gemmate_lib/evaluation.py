"""Baseline against fine-tuned on the held-out split, with 95% intervals and paired differences: the metrics
of 04_evaluation (metrics.json's schema is docs/metrics-json.md). 04 writes out the perplexity, the generation
loop and ROUGE-L before its table; tests/test_notebook_recipes_0406.py holds them equal to evaluate_model."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd
import torch

from gemmate_lib.data import char_spans, format_quote, normalize_author, quote_prompt, split_quote, token_mask
from gemmate_lib.fast_loss import final_hidden, logit_softcap, output_weight, token_nll
from gemmate_lib.guard_rails.errors import DataError
from gemmate_lib.stats import BOOTSTRAP, bootstrap_ci, paired_difference, wilson
from gemmate_lib.text_generation import BATCH_SIZE, follows_the_format, generate

METRICS = ("perplexity", "perplexity_quote", "author_accuracy", "author_accuracy_seen", "rouge_l", "bleu",
           "format_compliance")
PROPORTIONS = ("author_accuracy", "author_accuracy_seen", "format_compliance")  # Wilson intervals
TOKENS = {"author": 10, "completion": 40}  # max_new_tokens: author; completion and format (one run)
SCHEMA_VERSION = 2


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (rouge_score, with stemming)."""
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"], use_stemmer=True).score(reference, prediction)["rougeL"].fmeasure


def bleu(prediction: str, reference: str) -> float:
    """Sentence BLEU (sacrebleu, exponential smoothing), as a share in [0, 1]."""
    import sacrebleu

    return sacrebleu.sentence_bleu(prediction, [reference]).score / 100


@torch.no_grad()
def example_nll_by_part(model, tokenizer, rows, parts=("text",), max_length: int = 128,
                        batch_size: int = 16) -> dict[str, list[tuple[float, int]]]:
    """Per part (data.char_spans), per example: (summed next-token NLL, tokens) of `text + EOS`, the course's
    one held-out loss: the model's own forward (fast_loss.final_hidden), the LM head on real tokens only."""
    model.eval()
    weight, softcap = output_weight(model), logit_softcap(model)
    out: dict[str, list[tuple[float, int]]] = {part: [] for part in parts}
    for i in range(0, len(rows), batch_size):
        batch = rows[i:i + batch_size]
        texts = [r["text"] + (tokenizer.eos_token or "") for r in batch]
        # padded on the right, as TRL pads in training: on the left (the Gemma tokenizers' side) the padding
        # would sit between a soft prompt (06's prompt and prefix tuning) and the text, and move its loss
        enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length,
                        return_offsets_mapping=True, padding_side="right")
        offsets = enc.pop("offset_mapping").tolist()
        enc = enc.to(weight.device)
        hidden = final_hidden(model, enc["input_ids"], enc["attention_mask"])
        real = enc["attention_mask"][:, 1:].bool()  # position i predicts token i + 1
        per_token = torch.zeros(real.shape, dtype=torch.float64, device=weight.device)
        per_token[real] = token_nll(hidden[:, :-1][real], weight, enc["input_ids"][:, 1:][real],
                                   softcap=softcap).double()
        for part in parts:
            spans = torch.tensor([token_mask(o, *char_spans(r, part)) for r, o in zip(batch, offsets)])
            keep = real & spans[:, 1:].to(weight.device).bool()
            out[part].extend(zip(per_token.where(keep, 0).sum(dim=1).tolist(), keep.sum(dim=1).tolist()))
    return out


def held_out_loss(model, tokenizer, rows, max_length: int = 128, batch_size: int = 16) -> float:
    """Mean next-token loss (nats per token) over `rows`' texts (01 compares NF4 with the 16-bit model)."""
    nll = example_nll_by_part(model, tokenizer, rows, ("text",), max_length, batch_size)["text"]
    return sum(s for s, _ in nll) / sum(n for _, n in nll)


@dataclass
class EvalResult:
    metrics: dict[str, dict]  # metric -> {"value", "ci95", "interval", "n"}
    examples: object  # pandas DataFrame, one row per held-out example
    n_examples: int = 0  # rows evaluated
    settings: dict = field(default_factory=dict)  # token limits, bootstrap samples, seed
    items: dict = field(default_factory=dict)  # metric -> (per-item values, weights): for paired tests


def _metric(values, weights=None, *, proportion=False, perplexity=False, seed=0) -> dict:
    value = ci = None
    if values and proportion:
        value, ci = sum(values) / len(values), list(wilson(sum(values), len(values)))
    elif values:
        value = math.exp(sum(values) / sum(weights)) if perplexity else sum(values) / len(values)
        ci = list(bootstrap_ci(values, weights, ratio_exp=perplexity, seed=seed))
    return {"value": value, "ci95": ci, "interval": "wilson" if proportion else "bootstrap", "n": len(values)}


def format_generations(model, tokenizer, rows: list[dict], batch_size: int = BATCH_SIZE):
    """(prompts, generations, 1.0/0.0 each): from `Quote: <first half>`, one `Author:` line, then the end."""
    prompts = [quote_prompt(r["quote"]) for r in rows]
    formats = generate(model, tokenizer, prompts, TOKENS["completion"], batch_size=batch_size)
    stopped = formats.new_tokens < TOKENS["completion"]
    return prompts, formats, [float(follows_the_format(p + g, bool(s)))
                              for p, g, s in zip(prompts, formats.completion, stopped)]


def evaluate_model(model, tokenizer, rows: list[dict], seed: int = 0, batch_size: int = BATCH_SIZE,
                   train_authors=None) -> EvalResult:
    """All metrics for one model on `rows` (quote, author, text). Completion (its first line) and format read
    one generation from `Quote: <first half>`; `train_authors` picks the rows of author_accuracy_seen."""
    if not rows:
        raise DataError("the evaluation set is empty", "pass rows with `quote` and `author` (at least one)")
    parts = example_nll_by_part(model, tokenizer, rows, ("text", "quote"), batch_size=batch_size)
    authors = generate(model, tokenizer, [format_quote(r["quote"]) for r in rows], TOKENS["author"],
                       batch_size=batch_size)
    prompts, formats, format_ok = format_generations(model, tokenizer, rows, batch_size)
    seen = {normalize_author(a) for a in train_authors or ()}
    table = pd.DataFrame({
        "quote": [r["quote"] for r in rows], "author": [r["author"] for r in rows],
        "author_in_training": [normalize_author(r["author"]) in seen for r in rows],
        "predicted_author": [c.strip().split("\n")[0].strip() for c in authors.completion],
        "prompt": prompts, "reference": [split_quote(r["quote"])[1] for r in rows],
        "continuation": [c.split("\n")[0].strip() for c in formats.completion],
        "generation": formats.completion})
    table["author_correct"] = [float(normalize_author(p) == normalize_author(a) and bool(normalize_author(a)))
                               for p, a in zip(table.predicted_author, table.author)]
    table["rouge_l"] = [rouge_l(p, r) for p, r in zip(table.continuation, table.reference)]
    table["bleu"] = [bleu(p, r) for p, r in zip(table.continuation, table.reference)]
    table["format_ok"] = format_ok
    items = {metric: ([s for s, _ in parts[part]], [float(c) for _, c in parts[part]])
             for metric, part in (("perplexity", "text"), ("perplexity_quote", "quote"))}
    items["author_accuracy_seen"] = (table.author_correct[table.author_in_training].tolist(), None)
    for metric, column in (("author_accuracy", "author_correct"), ("rouge_l", "rouge_l"), ("bleu", "bleu"),
                           ("format_compliance", "format_ok")):
        items[metric] = (table[column].tolist(), None)
    metrics = {m: _metric(*items[m], proportion=m in PROPORTIONS, perplexity=m.startswith("perplexity"),
                          seed=seed) for m in METRICS}
    settings = {"max_new_tokens": dict(TOKENS), "bootstrap_samples": BOOTSTRAP, "seed": seed}
    return EvalResult(metrics, table, len(rows), settings, items)


def compare_paired(a: EvalResult, b: EvalResult, seed: int = 0, level: float = 0.95) -> dict:
    """b minus a per metric on the same items, with paired-bootstrap intervals (stats.paired_difference;
    `level` adds a "ci" at that level, e.g. Bonferroni's 1 - 0.05 / number of metrics)."""
    out = {}
    for metric in METRICS:
        (va, wa), (vb, wb) = a.items[metric], b.items[metric]
        if va and len(va) == len(vb):
            out[metric] = paired_difference(va, vb, wa, wb, ratio_exp=metric.startswith("perplexity"),
                                            seed=seed, level=level)
    return out


def paired_support(diff: dict) -> str:
    """04's verdict on one paired difference, for its plot and its text: "supported" when the interval at
    compare_paired's `level` ("ci") excludes 0, "suggestive" when only the plain 95% one does, else "none"."""
    def excludes_zero(interval):
        return interval is not None and (interval[0] > 0 or interval[1] < 0)

    if excludes_zero(diff.get("ci", diff["ci95"])):
        return "supported"
    return "suggestive" if excludes_zero(diff["ci95"]) else "none"


def metrics_document(results: dict[str, EvalResult], dataset: str, split: str,
                     comparisons: dict | None = None, unseen_author_share: float | None = None) -> dict:
    """The metrics.json content (schema: docs/metrics-json.md; tests/metrics_schema.py checks it)."""
    first = next(iter(results.values()))
    return {"schema_version": SCHEMA_VERSION, "dataset": dataset, "split": split,
            "n_examples": first.n_examples, "unseen_author_share": unseen_author_share,
            "settings": first.settings, "models": {name: res.metrics for name, res in results.items()},
            "comparisons": comparisons or {}}
