"""Evaluation (evaluation.py, 04_evaluation): author matching, ROUGE-L and BLEU, the held-out loss by part,
and the metrics.json schema."""
import json

import pytest
from metrics_schema import validate_metrics

from gemmate_lib.data import normalize_author, split_quote
from gemmate_lib.evaluation import METRICS, bleu, evaluate_model, rouge_l
from gemmate_lib.guard_rails.errors import DataError


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


def test_the_prompt_is_a_prefix_of_the_training_text_whatever_spaces_the_quote_holds():
    """03's completion-only data cuts each text after quote_prompt (and char_spans counts from there): the
    first half was the words rejoined with single spaces, so a quote with a double space or a tab (scraped
    Hub data, a learner's file) gave a prompt that is not the text's start, and prompt + completion garbled
    the text. The cut is made in the quote as written now."""
    from gemmate_lib.data import format_quote, quote_prompt

    for quote in ("Be  yourself; everyone else is taken.", "One\ttwo three  four", "Go\u00a0on, go now."):
        text = format_quote(quote, "Someone")
        assert text.startswith(quote_prompt(quote)) and len(quote_prompt(quote)) > len("Quote: ")
    assert split_quote("one  two\tthree four") == ("one  two", "three four")


def _doc(**change):
    metrics = {m: {"value": 0.5, "ci95": [0.4, 0.6], "interval": "bootstrap", "n": 33} for m in METRICS}
    for m in ("author_accuracy", "author_accuracy_seen", "format_compliance"):
        metrics[m]["interval"] = "wilson"
    metrics["perplexity"] = {"value": 12.0, "ci95": [10.0, 15.0], "interval": "bootstrap", "n": 33}
    metrics["perplexity_quote"] = {"value": 30.0, "ci95": [20.0, 45.0], "interval": "bootstrap", "n": 33}
    doc = {"schema_version": 2, "dataset": "embedded", "split": "held_out", "n_examples": 33,
           "unseen_author_share": 0.5, "settings": {}, "models": {"baseline": metrics},
           "comparisons": {"fine-tuned - baseline": {"perplexity": {
               "difference": -3.0, "ci95": [-4.0, -2.0], "share_positive": 0.0,
               "method": "paired bootstrap"}}}}
    doc.update(change)
    return doc


def test_metrics_schema_accepts_good_and_rejects_bad_documents():
    validate_metrics(_doc())
    no_seen = _doc()
    no_seen["models"]["baseline"]["author_accuracy_seen"] = {"value": None, "ci95": None,
                                                             "interval": "wilson", "n": 0}
    validate_metrics(no_seen)
    with pytest.raises(ValueError, match="schema_version"):
        validate_metrics(_doc(schema_version=1))
    with pytest.raises(ValueError, match="exactly the metrics"):
        validate_metrics(_doc(models={"m": {"perplexity": {"value": 2.0, "ci95": [1.0, 3.0]}}}))
    bad = _doc()
    bad["models"]["baseline"]["bleu"] = {"value": 0.9, "ci95": [0.1, 0.5], "interval": "bootstrap", "n": 33}
    with pytest.raises(ValueError, match="bleu"):
        validate_metrics(bad)
    bad = _doc()
    bad["models"]["baseline"]["format_compliance"]["interval"] = "bootstrap"
    with pytest.raises(ValueError, match="must be wilson"):
        validate_metrics(bad)
    with pytest.raises(ValueError, match="unseen_author_share"):
        validate_metrics(_doc(unseen_author_share=1.5))
    with pytest.raises(ValueError, match="comparison"):
        validate_metrics(_doc(comparisons={"x": {"bleu": {"difference": 0.1, "ci95": [0.2, 0.1]}}}))


def test_quote_only_and_completion_losses_count_their_own_tokens(tiny_model, tiny_tokenizer):
    from gemmate_lib.data import format_quote
    from gemmate_lib.evaluation import example_nll_by_part

    rows = [{"quote": q, "author": "Oscar Wilde", "text": format_quote(q, "Oscar Wilde")}
            for q in ("Be yourself; everyone else is taken.", "one two three four")]
    text = example_nll_by_part(tiny_model, tiny_tokenizer, rows, batch_size=2)["text"]
    quote = example_nll_by_part(tiny_model, tiny_tokenizer, rows, ("quote",), batch_size=2)["quote"]
    completion = example_nll_by_part(tiny_model, tiny_tokenizer, rows, ("completion",),
                                     batch_size=2)["completion"]
    for r, (_, n_text), (_, n_quote), (_, n_completion) in zip(rows, text, quote, completion):
        ids = tiny_tokenizer(r["quote"], add_special_tokens=False)["input_ids"]
        assert 0 < n_quote < n_text and 0 < n_completion < n_text
        # the quote's own tokens (a boundary token may merge with the space)
        assert abs(n_quote - len(ids)) <= 1
    one = example_nll_by_part(tiny_model, tiny_tokenizer, rows[:1], ("quote",), batch_size=1)["quote"]
    assert one[0] == pytest.approx(quote[0], rel=1e-4)  # padding in a batch changes nothing


def test_empty_evaluation_set_is_a_clear_error(tiny_model, tiny_tokenizer):
    with pytest.raises(DataError, match="empty"):
        evaluate_model(tiny_model, tiny_tokenizer, [])


def test_one_held_out_nll_gives_both_per_example_sums_and_the_mean(tiny_model, tiny_tokenizer):
    import torch

    from gemmate_lib.evaluation import example_nll_by_part, held_out_loss
    from gemmate_lib.fast_loss import causal_lm_loss

    rows = [{"text": "Quote: Be yourself.\nAuthor: Oscar Wilde"}, {"text": "Quote: one two\nAuthor: Me"}]
    per = example_nll_by_part(tiny_model, tiny_tokenizer, rows, batch_size=1)["text"]
    assert [n for _, n in per] == [len(tiny_tokenizer(r["text"] + "<eos>")["input_ids"]) - 1 for r in rows]
    enc = tiny_tokenizer([r["text"] + "<eos>" for r in rows], return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    with torch.no_grad():
        reference = float(causal_lm_loss(tiny_model, enc["input_ids"], enc["attention_mask"], labels))
    assert held_out_loss(tiny_model, tiny_tokenizer, rows) == pytest.approx(reference, rel=1e-5)


@pytest.mark.after_nbval
def test_04s_metrics_json_follows_the_schema(request):
    """The file 04 wrote under nbval from `evaluate_model` on the embedded model (the fine-tuned model against
    the baseline, with their comparison): every metric for each model, one example row per counted quote."""
    import csv

    from nbval_run import nbval_run

    run = nbval_run(request, "metrics.json", "eval_examples_baseline.csv", after=("04_evaluation",))
    doc = json.loads((run / "metrics.json").read_text())
    validate_metrics(doc)
    assert set(doc["models"]) == {"baseline", "fine-tuned"} and doc["comparisons"]
    for metrics in doc["models"].values():
        assert set(metrics) == set(METRICS)
        assert metrics["perplexity"]["value"] > 1 and metrics["perplexity_quote"]["value"] > 1
    with open(run / "eval_examples_baseline.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == doc["n_examples"] > 0


def test_several_parts_come_from_one_pass_and_prompt_tuning_counts(tiny_model, tiny_tokenizer):
    import torch
    from peft import PromptTuningConfig, get_peft_model

    from gemmate_lib.data import format_quote
    from gemmate_lib.evaluation import example_nll_by_part

    rows = [{"quote": q, "author": a, "text": format_quote(q, a)}
            for q, a in (("Be yourself, everyone else is taken.", "Oscar Wilde"),
                         ("one two three four", "Me"))]
    both = example_nll_by_part(tiny_model, tiny_tokenizer, rows, ("text", "quote"))
    assert both["text"] == pytest.approx(example_nll_by_part(tiny_model, tiny_tokenizer, rows)["text"],
                                         rel=1e-6)
    assert both["quote"] == pytest.approx(
        example_nll_by_part(tiny_model, tiny_tokenizer, rows, ("quote",))["quote"], rel=1e-6)
    torch.manual_seed(0)
    prompted = get_peft_model(tiny_model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    with_prompt = example_nll_by_part(prompted, tiny_tokenizer, rows)["text"]
    assert [n for _, n in with_prompt] == [n for _, n in both["text"]]  # the same real tokens are scored ...
    # ... after the virtual tokens (06's prompt tuning)
    assert with_prompt != pytest.approx(both["text"], rel=1e-3)


def test_the_held_out_loss_works_with_a_tokenizer_that_has_no_eos(tiny_model, tiny_tokenizer):
    import copy

    from gemmate_lib.data import format_quote
    from gemmate_lib.evaluation import example_nll_by_part

    rows = [{"quote": "Be kind.", "text": format_quote("Be kind.", "Anon")}]
    with_eos = example_nll_by_part(tiny_model, tiny_tokenizer, rows, ("text",), 64)["text"][0]
    no_eos = copy.deepcopy(tiny_tokenizer)
    no_eos.eos_token = None
    without = example_nll_by_part(tiny_model, no_eos, rows, ("text",), 64)["text"][0]
    assert without[1] == with_eos[1] - 1  # the same text, one predicted token fewer: no EOS to predict


@pytest.mark.parametrize("peft_type", ["prompt", "prefix"])
def test_a_soft_prompts_held_out_loss_does_not_depend_on_the_padding_in_its_batch(peft_type, tiny_model,
                                                                                  tiny_tokenizer):
    """06's prompt and prefix tuning: the embedded Gemma tokenizer pads on the left, which put the padding
    between the virtual tokens and the quote, at another distance from it than in training (TRL pads on the
    right), so a quote's held-out loss moved with the lengths of the quotes batched with it. Each quote's loss
    now equals its loss measured alone, as it does for the other methods."""
    import copy

    import torch
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

    from gemmate_lib.data import format_quote
    from gemmate_lib.evaluation import example_nll_by_part

    quotes = ("Go.", "Stay hungry, stay foolish.", "Whatever you are, be a good one, said the old man.")
    rows = [{"quote": q, "author": "Someone", "text": format_quote(q, "Someone")} for q in quotes]
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.padding_side = "left"  # as the embedded model's tokenizer
    config = {"prompt": PromptTuningConfig, "prefix": PrefixTuningConfig}[peft_type]
    torch.manual_seed(0)
    model = get_peft_model(copy.deepcopy(tiny_model), config(task_type="CAUSAL_LM", num_virtual_tokens=4))
    alone = example_nll_by_part(model, tokenizer, rows, batch_size=1)["text"]
    batched = example_nll_by_part(model, tokenizer, rows, batch_size=3)["text"]
    assert [n for _, n in batched] == [n for _, n in alone]
    assert [s for s, _ in batched] == pytest.approx([s for s, _ in alone], rel=1e-5)
