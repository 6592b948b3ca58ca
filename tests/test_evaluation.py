import json

import pytest

from gemmate_lib import DataError
from gemmate_lib.data import load_quotes
from gemmate_lib.evaluation import (
    METRICS,
    bleu,
    bootstrap_ci,
    evaluate_model,
    metrics_document,
    normalize_author,
    rouge_l,
    split_quote,
    validate_metrics,
)


def test_author_normalisation():
    assert normalize_author("  Albert  Einstein, The World As I See It") == "albert einstein"
    assert normalize_author("Frédéric Chopin.") == "frederic chopin"
    assert normalize_author("J.K. Rowling") == normalize_author("j k rowling")
    assert normalize_author("") == ""


def test_rouge_and_bleu_on_hand_checked_cases():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert rouge_l("dogs bark loudly", "the cat sat") == 0.0
    assert rouge_l("the cat", "the cat sat on") == pytest.approx(2 * (1.0 * 0.5) / 1.5)  # P=1, R=1/2
    assert bleu("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert bleu("dogs bark loudly at night", "the cat sat on the mat") < 0.05


def test_split_quote():
    assert split_quote("one two three four five") == ("one two", "three four five")
    assert split_quote("single") == ("single", "")


def test_bootstrap_interval():
    assert bootstrap_ci([1.0] * 10) == (1.0, 1.0)
    lo, hi = bootstrap_ci([0.0, 1.0] * 20)
    assert 0.2 < lo < 0.5 < hi < 0.8


def _doc(**change):
    metrics = {m: {"value": 0.5, "ci95": [0.4, 0.6]} for m in METRICS}
    metrics["perplexity"] = {"value": 12.0, "ci95": [10.0, 15.0]}
    doc = {"schema_version": 1, "dataset": "embedded", "split": "held_out", "n_examples": 33,
           "settings": {}, "models": {"baseline": metrics}}
    doc.update(change)
    return doc


def test_metrics_schema_accepts_good_and_rejects_bad_documents():
    validate_metrics(_doc())
    with pytest.raises(ValueError, match="schema_version"):
        validate_metrics(_doc(schema_version=2))
    with pytest.raises(ValueError, match="exactly the metrics"):
        validate_metrics(_doc(models={"m": {"perplexity": {"value": 2.0, "ci95": [1.0, 3.0]}}}))
    bad = _doc()
    bad["models"]["baseline"]["bleu"] = {"value": 0.9, "ci95": [0.1, 0.5]}
    with pytest.raises(ValueError, match="bleu"):
        validate_metrics(bad)


def test_empty_evaluation_set_is_a_clear_error(tiny_model, tiny_tokenizer):
    with pytest.raises(DataError, match="empty"):
        evaluate_model(tiny_model, tiny_tokenizer, [])


def test_one_held_out_nll_gives_both_per_example_sums_and_the_mean(tiny_model, tiny_tokenizer):
    import torch

    from gemmate_lib.evaluation import example_nll, held_out_loss
    from gemmate_lib.fast_loss import causal_lm_loss

    rows = [{"text": "Quote: Be yourself.\nAuthor: Oscar Wilde"}, {"text": "Quote: one two\nAuthor: Me"}]
    per = example_nll(tiny_model, tiny_tokenizer, rows, batch_size=1)
    assert [n for _, n in per] == [len(tiny_tokenizer(r["text"] + "<eos>")["input_ids"]) - 1 for r in rows]
    enc = tiny_tokenizer([r["text"] + "<eos>" for r in rows], return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    with torch.no_grad():
        reference = float(causal_lm_loss(tiny_model, enc["input_ids"], enc["attention_mask"], labels))
    assert held_out_loss(tiny_model, tiny_tokenizer, rows) == pytest.approx(reference, rel=1e-5)


def test_evaluate_model_for_real_gives_a_valid_document(base_model, tokenizer):
    rows = load_quotes("embedded").held_out[:3]
    result = evaluate_model(base_model, tokenizer, rows)
    assert len(result.examples) == 3 and set(result.metrics) == set(METRICS)
    assert result.metrics["perplexity"]["value"] > 1
    doc = metrics_document({"baseline": result}, "embedded", "held_out")
    assert json.loads(json.dumps(doc))["n_examples"] == 3
