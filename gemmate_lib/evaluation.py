"""Baseline against fine-tuned, on the held-out split only, with bootstrapped 95% intervals.

Taught in 05_evaluation. Four kinds of metric:
- perplexity of the formatted `Quote/Author` text (lower is better);
- author attribution: prompt `Quote: <quote>\\nAuthor:`, greedy, normalised exact match;
- quote completion: the first half of a quote, the model continues; ROUGE-L (rouge_score)
  and BLEU (sacrebleu) of the continuation's first line against the true second half;
- format compliance: from `Quote: <first half>`, the share of generations that give exactly
  one `Author: <name>` line and stop (end-of-text) within the token limit.

metrics.json (schema version 1), written by `metrics_document` and checked by `validate_metrics`:
    {"schema_version": 1, "dataset": str, "split": str, "n_examples": int,
     "settings": {"max_new_tokens": {...}, "bootstrap_samples": int, "seed": int},
     "models": {name: {metric: {"value": float, "ci95": [low, high]}}}}
with metric in METRICS. Values are shares in [0, 1] except perplexity (>= 1).
"""
from __future__ import annotations

import math
import random
import re
import unicodedata
from dataclasses import dataclass, field

import torch

from .data import format_quote
from .errors import DataError
from .fast_loss import LinearCrossEntropy
from .generation import generate, has_author_line

METRICS = ("perplexity", "author_accuracy", "rouge_l", "bleu", "format_compliance")
TOKENS = {"author": 10, "completion": 40}  # max_new_tokens: author attribution; completion and format (one run)
BOOTSTRAP = 1000  # bootstrap resamples for the 95% intervals


def normalize_author(name: str) -> str:
    """Lowercase, no accents, no punctuation, single spaces; drop a trailing ", source"."""
    name = unicodedata.normalize("NFKD", name or "").encode("ascii", "ignore").decode()
    name = name.split(",")[0].lower()
    name = re.sub(r"[^a-z0-9 ]+", " ", name)
    return " ".join(name.split())


def split_quote(quote: str) -> tuple[str, str]:
    """First half of the words (the prompt) and the rest (the reference)."""
    words = quote.split()
    cut = max(1, len(words) // 2)
    return " ".join(words[:cut]), " ".join(words[cut:])


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (rouge_score, with stemming)."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(reference, prediction)["rougeL"].fmeasure


def bleu(prediction: str, reference: str) -> float:
    """Sentence BLEU (sacrebleu, exponential smoothing), as a share in [0, 1]."""
    import sacrebleu

    return sacrebleu.sentence_bleu(prediction, [reference]).score / 100


def bootstrap_ci(values, weights=None, ratio_exp: bool = False, samples: int = BOOTSTRAP, seed: int = 0):
    """Percentile 95% interval of a mean (or of exp(sum/sum weights) for perplexity) over examples."""
    rng = random.Random(seed)
    n = len(values)
    weights = weights or [1.0] * n
    stats = []
    for _ in range(samples):
        idx = [rng.randrange(n) for _ in range(n)]
        total, count = sum(values[i] for i in idx), sum(weights[i] for i in idx)
        stats.append(math.exp(total / count) if ratio_exp else total / count)
    stats.sort()
    return stats[int(0.025 * samples)], stats[int(0.975 * samples) - 1]


@torch.no_grad()
def example_nll(model, tokenizer, rows, max_length: int = 128, batch_size: int = 16):
    """Per example: (summed next-token NLL, number of tokens) of `text + EOS`: the course's one held-out loss.

    The LM head runs on real tokens only (fast_loss.LinearCrossEntropy), so a batch of
    padded quotes costs what its tokens cost.
    """
    model.eval()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(rows), batch_size):
        texts = [r["text"] + tokenizer.eos_token for r in rows[i:i + batch_size]]
        enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length).to(device)
        hidden = base.get_decoder()(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        weight = base.get_output_embeddings().weight
        for h, ids, mask in zip(hidden, enc["input_ids"], enc["attention_mask"]):
            keep = mask[1:].bool()
            nll = LinearCrossEntropy.apply(h[:-1][keep], weight, ids[1:][keep])
            out.append((float(nll), int(keep.sum())))
    return out


def held_out_loss(model, tokenizer, rows, max_length: int = 128, batch_size: int = 16) -> float:
    """Mean next-token loss (nats per token) over `rows`, from example_nll."""
    nll = example_nll(model, tokenizer, rows, max_length, batch_size)
    return sum(s for s, _ in nll) / sum(n for _, n in nll)


@dataclass
class EvalResult:
    metrics: dict[str, dict]  # metric -> {"value": float, "ci95": [low, high]}
    examples: object  # pandas DataFrame, one row per held-out example
    n_examples: int = 0  # rows evaluated
    settings: dict = field(default_factory=dict)  # token limits, bootstrap samples, seed


def evaluate_model(model, tokenizer, rows: list[dict], seed: int = 0, batch_size: int = 8) -> EvalResult:
    """All metrics for one model on `rows` (dicts with quote, author, text).

    Quote completion and format compliance read the same generation from `Quote: <first half>`:
    the continuation is its first line, the format check looks at the whole of it.
    """
    import pandas as pd

    if not rows:
        raise DataError("the evaluation set is empty", "pass rows with `quote` and `author` (at least one)")
    nll = example_nll(model, tokenizer, rows, batch_size=batch_size)
    authors = generate(model, tokenizer, [format_quote(r["quote"]) for r in rows], TOKENS["author"],
                       batch_size=batch_size)
    halves = [split_quote(r["quote"]) for r in rows]
    prompts = [f"Quote: {first}" for first, _ in halves]
    formats = generate(model, tokenizer, prompts, TOKENS["completion"], batch_size=batch_size)
    table = pd.DataFrame({
        "quote": [r["quote"] for r in rows], "author": [r["author"] for r in rows],
        "predicted_author": [c.strip().split("\n")[0].strip() for c in authors.completion],
        "prompt": prompts, "reference": [rest for _, rest in halves],
        "continuation": [c.split("\n")[0].strip() for c in formats.completion],
        "generation": formats.completion,
    })
    table["author_correct"] = [float(normalize_author(p) == normalize_author(a) and bool(normalize_author(a)))
                               for p, a in zip(table.predicted_author, table.author)]
    table["rouge_l"] = [rouge_l(p, r) for p, r in zip(table.continuation, table.reference)]
    table["bleu"] = [bleu(p, r) for p, r in zip(table.continuation, table.reference)]
    stopped = formats.new_tokens < TOKENS["completion"]
    table["format_ok"] = [float(has_author_line(p + g) and bool(s))
                          for p, g, s in zip(prompts, formats.completion, stopped)]
    sums, counts = [s for s, _ in nll], [float(c) for _, c in nll]
    metrics = {"perplexity": {"value": math.exp(sum(sums) / sum(counts)),
                              "ci95": list(bootstrap_ci(sums, counts, ratio_exp=True, seed=seed))}}
    for metric, column in (("author_accuracy", "author_correct"), ("rouge_l", "rouge_l"), ("bleu", "bleu"),
                           ("format_compliance", "format_ok")):
        values = table[column].tolist()
        metrics[metric] = {"value": sum(values) / len(values), "ci95": list(bootstrap_ci(values, seed=seed))}
    return EvalResult(metrics, table, len(rows), {"max_new_tokens": dict(TOKENS), "bootstrap_samples": BOOTSTRAP,
                                                  "seed": seed})


def compare_models(results: dict[str, EvalResult]):
    """One table: a row per (model, metric) with value and 95% interval."""
    import pandas as pd

    rows = [{"model": name, "metric": metric, "value": m["value"], "ci_low": m["ci95"][0], "ci_high": m["ci95"][1]}
            for name, res in results.items() for metric, m in res.metrics.items()]
    return pd.DataFrame(rows)


def metrics_document(results: dict[str, EvalResult], dataset: str, split: str) -> dict:
    """The metrics.json content (schema in this module's docstring)."""
    first = next(iter(results.values()))
    doc = {"schema_version": 1, "dataset": dataset, "split": split, "n_examples": first.n_examples,
           "settings": first.settings, "models": {name: res.metrics for name, res in results.items()}}
    validate_metrics(doc)
    return doc


def validate_metrics(doc: dict) -> None:
    """Raise ValueError when `doc` does not follow metrics.json schema version 1."""
    def fail(msg):
        raise ValueError(f"metrics.json: {msg}")

    if doc.get("schema_version") != 1:
        fail("schema_version must be 1")
    for key, kind in (("dataset", str), ("split", str), ("n_examples", int), ("settings", dict), ("models", dict)):
        if not isinstance(doc.get(key), kind):
            fail(f"{key} must be a {kind.__name__}")
    if doc["n_examples"] < 1 or not doc["models"]:
        fail("needs at least one example and one model")
    for name, metrics in doc["models"].items():
        if set(metrics) != set(METRICS):
            fail(f"model {name!r} must have exactly the metrics {METRICS}")
        for metric, m in metrics.items():
            value, ci = m.get("value"), m.get("ci95")
            if not isinstance(value, (int, float)) or not (isinstance(ci, list) and len(ci) == 2):
                fail(f"{name}.{metric} needs a number `value` and a two-number `ci95`")
            lo_bound, hi_bound = (1.0, math.inf) if metric == "perplexity" else (0.0, 1.0)
            if not (lo_bound - 1e-9 <= ci[0] <= value + 1e-9 and value - 1e-9 <= ci[1] <= hi_bound + 1e-9):
                fail(f"{name}.{metric}: need {lo_bound} <= ci95[0] <= value <= ci95[1] <= {hi_bound}")


def evaluate_from_config(cfg) -> dict:
    """`gemmate evaluate`: 05's metrics of the trained adapter on the held-out split; writes output_dir/metrics.json."""
    from pathlib import Path

    from .data import load_quotes
    from .fsio import save_json
    from .hub import load_tuned
    from .models import load_tokenizer

    data = load_quotes(cfg.data.dataset, cfg.data.eval_fraction, cfg.data.data_seed,
                       load_tokenizer(cfg.model.model_name), cfg.train.max_length)
    print(data.report(), flush=True)  # before the model loads: bad data stops here
    model, tokenizer = load_tuned(cfg)
    result = evaluate_model(model, tokenizer, data.held_out, seed=cfg.train.seed)
    doc = metrics_document({"fine-tuned": result}, cfg.data.dataset, "held_out")
    save_json(Path(cfg.checkpoints.output_dir) / "metrics.json", doc)
    return doc


def generate_from_config(cfg):
    """`gemmate generate`: greedy completions of cfg.generate.prompts (default: the four standard prompts)."""
    from .generation import STANDARD_PROMPTS
    from .hub import load_tuned

    model, tokenizer = load_tuned(cfg)
    return generate(model, tokenizer, cfg.generate.prompts or STANDARD_PROMPTS, max_new_tokens=cfg.generate.max_new_tokens)
