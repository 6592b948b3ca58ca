"""The Gemma 1.1 experiment's tasks for `gemmate train` (docs/gemma11-experiment.md): SST-2 and SQuAD v2 with
their official metrics; the task follows from the data's columns (Hub datasets and files alike)."""
from __future__ import annotations

import collections
import re
import string
from pathlib import Path

from gemmate_lib.data import QuoteData, read_hub, read_records, split_rows
from gemmate_lib.guard_rails.errors import DataError
from gemmate_lib.text_generation import generate

HUB_IDS = {"stanfordnlp/sst2": "sst2", "sst2": "sst2", "glue/sst2": "sst2", "rajpurkar/squad_v2": "squad_v2",
           "squad_v2": "squad_v2"}
SCHEMAS = {"sst2": ("sentence", "label"), "squad_v2": ("context", "question", "answers")}
NO_ANSWER = "unanswerable"  # what the model writes for a SQuAD v2 question without an answer
NEW_TOKENS = {"sst2": 3, "squad_v2": 24}  # generation limit per task
LABELS = {0: "negative", 1: "positive"}


def task_of(dataset: str) -> str:
    """"quotes", "sst2" or "squad_v2": from a known Hub id, or from a data file's columns."""
    if dataset in HUB_IDS:
        return HUB_IDS[dataset]
    path = Path(dataset)
    if path.suffix in (".jsonl", ".json", ".csv") and path.is_file():
        columns = set(read_records(path)[0][1])
        for task, needed in SCHEMAS.items():
            if set(needed) <= columns:
                return task
    return "quotes"


def prompt_and_answer(task: str, row: dict) -> tuple[str, str]:
    """The prompt and the answer text of one row (the answer is what the loss and the metrics see)."""
    if task == "sst2":
        label = row.get("label")  # a CSV's is text: "0" or "1"
        label = int(label) if isinstance(label, str) and label.strip() in ("0", "1") else label
        if label not in LABELS or not isinstance(row.get("sentence"), str):
            raise ValueError("needs a text sentence and a label 0 or 1")
        return f"Sentence: {row['sentence'].strip()}\nSentiment:", LABELS[label]
    answers = row.get("answers") or {}
    texts_ok = isinstance(row.get("context"), str) and isinstance(row.get("question"), str)
    if not texts_ok or not isinstance(answers, dict):
        raise ValueError("needs a text context and question, and answers {text: [...], answer_start: [...]}")
    texts = [t for t in answers.get("text", []) if isinstance(t, str) and t.strip()]
    prompt = f"Context: {row['context'].strip()}\nQuestion: {row['question'].strip()}\nAnswer:"
    return prompt, texts[0].strip() if texts else NO_ANSWER


def load_task(task: str, dataset: str, eval_fraction: float, data_seed: int, tokenizer=None,
              max_length: int | None = None):
    """Rows {prompt, answer, text, gold} split into train / held-out (QuoteData); bad or long rows counted."""
    if Path(dataset).suffix in (".jsonl", ".json", ".csv"):
        records, name = read_records(dataset, SCHEMAS[task]), Path(dataset).name
    else:
        records, name = list(enumerate(read_hub(dataset, SCHEMAS[task]), 1)), dataset
    kept, dropped, examples = [], collections.Counter(), {}
    eos = getattr(tokenizer, "eos_token", "") or ""
    for line, row in records:
        try:
            prompt, answer = prompt_and_answer(task, row)
        except ValueError as err:
            reason = f"malformed row ({err})"
        else:
            text, reason = f"{prompt} {answer}", None
            if tokenizer is not None and max_length and len(tokenizer(text + eos)["input_ids"]) > max_length:
                reason = f"too long (over max_length={max_length} tokens: the answer would be cut off)"
        if reason:
            dropped[reason] += 1
            examples.setdefault(reason, f"line {line}: {repr(row)[:100]}")
            continue
        gold = list((row.get("answers") or {}).get("text", [])) if task == "squad_v2" else [answer]
        kept.append({"prompt": prompt, "answer": answer, "text": text, "gold": gold})
    if len(kept) < 2:
        raise DataError(f"{name} has {len(kept)} usable {task} row(s)",
                        f"check the columns: {', '.join(SCHEMAS[task])}")
    train, held = split_rows(kept, eval_fraction, data_seed)
    return QuoteData(train=train, held_out=held, source=name, dropped=dict(dropped),
                     examples_dropped=examples)


# --- the metrics ---------------------------------------------------------------------------------
def normalize_answer(text: str) -> str:
    """The official SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_f1(gold: str, prediction: str) -> float:
    gold_tokens, pred_tokens = normalize_answer(gold).split(), normalize_answer(prediction).split()
    if not gold_tokens or not pred_tokens:  # a no-answer on either side: right only if both are empty
        return float(gold_tokens == pred_tokens)
    common = sum((collections.Counter(gold_tokens) & collections.Counter(pred_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_v2_scores(golds: list[list[str]], predictions: list[str]) -> dict:
    """Exact match and F1 in percent (official v2 rules), overall and split by answerable / unanswerable.
    `golds[i]` is empty for an unanswerable question; a prediction of NO_ANSWER or "" means "no answer"."""
    exact, f1, has = [], [], []
    for gold, pred in zip(golds, predictions):
        pred = "" if pred.strip().lower() == NO_ANSWER else pred
        answers = [g for g in gold if normalize_answer(g)] or [""]
        exact.append(max(int(normalize_answer(g) == normalize_answer(pred)) for g in answers))
        f1.append(max(squad_f1(g, pred) for g in answers))
        has.append(answers != [""])

    scores = {}  # the means over all questions, the answerable ones and the unanswerable ones
    for prefix, keep in (("", [True] * len(exact)), ("HasAns_", has), ("NoAns_", [not h for h in has])):
        for key, values in (("exact", exact), ("f1", f1)):
            chosen = [v for v, k in zip(values, keep) if k]
            scores[prefix + key] = round(100 * sum(chosen) / len(chosen), 2) if chosen else None
    return scores | {"total": len(exact)}


def sst2_scores(golds: list[str], predictions: list[str]) -> dict:
    """Accuracy and F1 of the positive class in percent; a prediction that is neither label is wrong."""
    words = [(p.strip().split() or [""])[0].strip(string.punctuation).lower() for p in predictions]
    tp = sum(g == w == "positive" for g, w in zip(golds, words))
    positives = sum((g == "positive") + (w == "positive") for g, w in zip(golds, words))  # 2 tp + fp + fn
    f1 = 2 * tp / positives if tp else 0.0
    correct = sum(g == w for g, w in zip(golds, words))
    return {"accuracy": round(100 * correct / len(golds), 2), "f1": round(100 * f1, 2),
            "invalid": sum(w not in LABELS.values() for w in words), "total": len(golds)}


def evaluate_task(model, tokenizer, task: str, rows: list[dict]) -> dict:
    """Greedy answers to the held-out prompts, scored by the task's metrics; with the first predictions."""
    table = generate(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=NEW_TOKENS[task])
    predictions = [c.strip().split("\n")[0].strip() for c in table.completion]
    scores = (sst2_scores([r["answer"] for r in rows], predictions) if task == "sst2"
              else squad_v2_scores([r["gold"] for r in rows], predictions))
    return {**scores,
            "examples": [{"answer": r["answer"], "prediction": p} for r, p in zip(rows[:5], predictions)]}
