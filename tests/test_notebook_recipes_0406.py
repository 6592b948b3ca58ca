"""The stack calls that 04 and 06 write out for the learner compute what the library computes: 04's held-out
perplexity, generation loop and ROUGE-L equal gemmate_lib.evaluation.evaluate_model's; 06's PEFT configs, and
its QLoRA arm trained by hand with SFTConfig and SFTTrainer, equal methods.build_methods and train_arm's. Each
test runs the notebook's own cell, found by its cell id (tests/test_notebook_recipes.py's helpers), in a
namespace holding what the earlier cells define, on the tiny models of tests/conftest.py."""
import math
import types

import pytest
from test_notebook_recipes import run_cell
from tiny import ROWS

from gemmate_lib.data import format_quote

HALVES = ("Be", "Stay", "Imagination", "one")  # one word each: a two-word quote's first half (split_quote)


@pytest.fixture()
def tuned(tiny_model):
    """04's `tuned`: a base with a LoRA adapter that changes its outputs (B not zero), so that
    `with tuned.disable_adapter():` (the baseline) and the fine-tuned model differ."""
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    set_seed(0)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(tiny_model, config)


@pytest.fixture()
def quote_rows(tuned, tiny_tokenizer):
    """Held-out rows of two words whose second is the first word of the fine-tuned model's own greedy
    continuation of the first: ROUGE-L is above 0 there, so equal scores are not two zeros."""
    from gemmate_lib.text_generation import generate

    endings = generate(tuned, tiny_tokenizer, [f"Quote: {h}" for h in HALVES], 40).completion
    rows = []
    for half, ending, row in zip(HALVES, endings, ROWS):
        words = ending.split("\n")[0].split()
        assert words and any(c.isalnum() for c in words[0]), f"{half!r} -> {ending!r}: pick other first words"
        quote = f"{half} {words[0]}"
        rows.append({"quote": quote, "author": row["author"], "text": format_quote(quote, row["author"])})
    return rows


def evaluated(tuned, tokenizer, rows) -> dict:
    """evaluate_model on the baseline (adapter off) and the fine-tuned model, as 04's table computes them."""
    from gemmate_lib.evaluation import evaluate_model

    with tuned.disable_adapter():
        baseline = evaluate_model(tuned, tokenizer, rows)
    return {"baseline": baseline, "fine-tuned": evaluate_model(tuned, tokenizer, rows)}


def test_04s_written_out_perplexity_equals_evaluate_models(tuned, tiny_tokenizer, quote_rows):
    from gemmate_lib.config import course_config

    ns = run_cell("04_evaluation.ipynb", "bd8f948c", cfg=course_config(), tuned=tuned,
                  tokenizer=tiny_tokenizer, rows=quote_rows)
    library = evaluated(tuned, tiny_tokenizer, quote_rows)
    assert ns["mine"]["baseline"] != pytest.approx(ns["mine"]["fine-tuned"], rel=1e-3)  # the adapter counts
    for name, result in library.items():
        # one row at a time against batched: the same tokens, the same token-weighted mean
        library_value = result.metrics["perplexity"]["value"]
        assert math.exp(ns["mine"][name]) == pytest.approx(library_value, rel=1e-4), name


def test_04s_written_out_generation_loop_and_rouge_l_equal_evaluate_models(tuned, tiny_tokenizer,
                                                                          quote_rows):
    import torch  # imported by 04's perplexity cell before this one

    ns = run_cell("04_evaluation.ipynb", "e907f53e", torch=torch, tuned=tuned, tokenizer=tiny_tokenizer,
                  rows=quote_rows)
    library = evaluated(tuned, tiny_tokenizer, quote_rows)
    assert ns["generated"]["baseline"] != ns["generated"]["fine-tuned"]  # the adapter counts
    for name, result in library.items():
        assert ns["generated"][name] == result.examples.generation.tolist(), name  # the same tokens, decoded
        assert ns["rouge_by_hand"][name] == pytest.approx(result.metrics["rouge_l"]["value"], abs=1e-12), name
    assert library["fine-tuned"].metrics["rouge_l"]["value"] > 0  # the rows make the comparison not empty
    assert tiny_tokenizer.padding_side == "right"  # the loop pads on the left in its own calls only


@pytest.mark.parametrize("generation", ["gemma3", "gemma4"])
def test_06s_written_out_configs_are_what_every_arm_trains(generation, generation_folder):
    """Every method 06 can train: build_methods trains its PEFT config and learning rate as section 2 writes
    them out, on Gemma 3 (the seven layer names) and Gemma 4 (a pattern that leaves the towers out)."""
    from gemmate_lib.config import course_config
    from gemmate_lib.methods import METHODS, build_methods

    cfg = course_config("methods", model_name=str(generation_folder(generation)))
    other_rank = 16
    ns = run_cell("06_compare_methods.ipynb", "9a9c655e", cfg=cfg, other_rank=other_rank)
    written_out, learning_rates = ns["written_out"], ns["learning_rates"]
    assert isinstance(ns["targets"], str) == (generation == "gemma4")
    chosen = build_methods(cfg, ns["model_path"], written_out, learning_rates, list(METHODS), other_rank)
    assert set(chosen) == set(written_out) == set(learning_rates) == set(METHODS)
    for key, method in chosen.items():
        assert method.peft_config is written_out[key], key
        assert method.settings["learning_rate"] == learning_rates[key], key
    assert chosen["lora_r32"].key == "lora_r16" and chosen["lora_r32"].peft_config.r == 16


# the CPU profile in bf16 (CourseSFTTrainer on pre-tokenized quotes: cpu_speedups) and the GPU profile on
# this CPU in fp32 (no fast loss: the plain SFTTrainer on the texts; the cell casts its bf16 LoRA weights to
# fp32)
SETUPS = {"cpu bf16": ("cpu", "bf16"), "gpu fp32": ("gpu", "fp32")}


@pytest.mark.parametrize("profile, dtype", SETUPS.values(), ids=SETUPS)
def test_06s_qlora_arm_by_hand_trains_as_train_arm(profile, dtype, tiny_folder, tiny_tokenizer, tmp_path,
                                                  monkeypatch):
    """06's QLoRA arm written out (NF4 base, k-bit preparation, get_peft_model, SFTConfig, SFTTrainer,
    train): its SFTConfig is training_args for the arm's settings, and it logs the losses of train_arm's
    QLoRA arm step by step (the same initialization, batches and updates)."""
    from gemmate_lib.config import course_config
    from gemmate_lib.methods import build_methods, train_arm
    from gemmate_lib.training import training_args

    if profile == "gpu":
        monkeypatch.setenv("GEMMATE_PROFILE", "gpu")
    cfg = course_config("methods", model_name=str(tiny_folder), dtype=dtype, max_steps=3, batch_size=2)
    ns = run_cell("06_compare_methods.ipynb", "9a9c655e", cfg=cfg, other_rank=32)
    out = tmp_path / "run"
    ns = run_cell("06_compare_methods.ipynb", "6eda3720", cfg=cfg, out=out, tokenizer=tiny_tokenizer,
                  data=types.SimpleNamespace(train=ROWS), written_out=ns["written_out"],
                  learning_rates=ns["learning_rates"])
    qlora = build_methods(cfg, str(tiny_folder), ns["written_out"], ns["learning_rates"], ["qlora"])["qlora"]
    arm_cfg = cfg.replace(**qlora.settings)
    assert ns["qlora_config"] == training_args(arm_cfg, out / "methods" / "by_hand", has_eval=False)
    arm = train_arm(qlora.name, arm_cfg, tiny_tokenizer, ROWS, ROWS[:2], tmp_path / "arm",
                    adapter=qlora.peft_config)
    library = arm.log.loss.dropna().tolist()
    assert len(library) == cfg.train.max_steps and len(set(library)) > 1  # every step logged, and it moved
    assert ns["hand_losses"] == pytest.approx(library, rel=1e-7)


def test_04s_save_cell_records_a_metric_with_nothing_to_count(tmp_path):
    """04 with eval_data of authors 03 never trained on: the seen-author accuracy has no quote to count
    (None), and the save cell stopped with a TypeError after metrics.json, before the manifest."""
    import json

    import pandas as pd

    from gemmate_lib.guard_rails import files, run_folder

    scores = {"perplexity": {"value": 12.345678}, "author_accuracy_seen": {"value": None}}
    result = types.SimpleNamespace(metrics=scores, n_examples=1, settings={},
                                   examples=pd.DataFrame({"quote": ["q"]}))
    results = {"baseline": result, "fine-tuned": result}
    run_cell("04_evaluation.ipynb", "2c33591a", results=results, finetuned=result, baseline=result,
             out=tmp_path, eval_data=None, split="held_out",
             cfg=types.SimpleNamespace(data=types.SimpleNamespace(dataset="embedded")), diffs={},
             unseen_share=1.0, rows=["q"], files=files, run_folder=run_folder)
    metrics = json.loads((tmp_path / "manifest.json").read_text())["notebooks"]["04_evaluation"]["metrics"]
    assert metrics["fine-tuned"] == {"perplexity": 12.3457, "author_accuracy_seen": None}


def test_04s_own_quotes_leave_out_those_03_trained_on(tmp_path, tiny_folder, monkeypatch, capsys):
    """04's eval_data: a quote of the learner's file that 03 trained on (exercise 04-2's starter file holds
    one of the embedded training quotes) was evaluated as the learner's own, its author named from memory."""
    import json

    from gemmate_lib.guard_rails.errors import DataError

    monkeypatch.setenv("GEMMATE_RUN_DIR", str(tmp_path / "run"))
    params = dict(model_name=str(tiny_folder), run_dir=None, dataset=None, data_seed=None, eval_data=None,
                  adapter_repo=None)
    first, second = run_cell("04_evaluation.ipynb", "0246571c", **params)["course"].train[:2]
    mine = tmp_path / "mine.jsonl"
    rows = [{"quote": first["quote"], "author": first["author"]},
            {"quote": "My own words, never trained on.", "author": "Me"},
            {"quote": "And another of mine.", "author": "You"}]
    mine.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ns = run_cell("04_evaluation.ipynb", "0246571c", **{**params, "eval_data": str(mine)})
    assert sorted(r["author"] for r in ns["rows"]) == ["Me", "You"] and ns["split"] == "all"
    assert "left out 1 of your quotes: 03 trained on them" in capsys.readouterr().out
    both = [rows[0], {"quote": second["quote"], "author": second["author"]}]
    mine.write_text("".join(json.dumps(r) + "\n" for r in both))
    with pytest.raises(DataError, match="03 trained on"):  # nothing of the learner's own left
        run_cell("04_evaluation.ipynb", "0246571c", **{**params, "eval_data": str(mine)})
