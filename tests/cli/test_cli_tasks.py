"""The Gemma 1.1 experiment's tasks (cli/tasks.py): SST-2 and SQuAD v2 configs, fixtures, official metrics
and CPU runs."""
import json
from pathlib import Path

import pytest

from gemmate_cli.parser import load_config
from gemmate_cli.tasks import NO_ANSWER, load_task, squad_v2_scores, sst2_scores, task_of

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
CONFIGS = {"sst2": ROOT / "configs" / "gemma11-sst2.yaml",
           "squad_v2": ROOT / "configs" / "gemma11-squadv2.yaml"}


def test_both_gemma11_configs_load_with_the_tables_keys():
    cfg = load_config(CONFIGS["sst2"], {"device": "cpu"})
    sst2 = cfg.course
    # dataset_id
    assert (sst2.data.dataset, sst2.model.model_name) == ("stanfordnlp/sst2", "google/gemma-1.1-2b-it")
    assert (sst2.train.max_length, sst2.train.learning_rate, sst2.train.batch_size) == (32, 6e-5, 4)
    assert (sst2.lora.lora_r, sst2.lora.lora_alpha, sst2.lora.lora_target_modules) == (4, 8, "all-linear")
    assert (sst2.train.seed, sst2.train.val_steps_freq, cfg.checkpoints.save_optim) == (23, 50, True)
    assert cfg.command.wandb_tags == ["sst2", "lora",
                                      "gemma-1.1"] and cfg.checkpoints.storage_backend == "none"
    squad = load_config(CONFIGS["squad_v2"], {"device": "cpu"}).course
    assert squad.data.dataset == "rajpurkar/squad_v2" and squad.train.completion_only_loss


def test_the_task_follows_from_the_hub_id_or_the_files_columns():
    assert task_of("stanfordnlp/sst2") == "sst2" and task_of("rajpurkar/squad_v2") == "squad_v2"
    assert task_of(str(FIX / "sst2.jsonl")) == "sst2" and task_of(str(FIX / "squad_v2.jsonl")) == "squad_v2"
    assert task_of("embedded") == "quotes" and task_of("Abirate/english_quotes") == "quotes"


def _fixture(name):
    return {r["id"]: r for r in map(json.loads, (FIX / name).read_text().splitlines())}


def test_squad_v2_exact_match_and_f1_by_hand_on_the_fixture():
    rows = _fixture("squad_v2.jsonl")
    golds = [rows[i]["answers"]["text"] for i in ("fx001", "fx002", "fx003", "fx004", "fx005")]
    assert golds[2] == [] and golds[3] == []  # two unanswerable questions
    predictions = ["the Denver Broncos",  # articles are dropped: exact
                   "1991",                 # wrong: 0 and 0
                   NO_ANSWER,              # right "no answer": 1 and 1
                   "Madrid",               # an answer to an unanswerable question: 0 and 0
                   "red house"]            # P = 2/2, R = 2/3: F1 = 0.8
    scores = squad_v2_scores(golds, predictions)
    assert scores["exact"] == 40.0 and scores["f1"] == 56.0
    assert scores["HasAns_exact"] == pytest.approx(33.33) and scores["HasAns_f1"] == 60.0
    assert scores["NoAns_exact"] == 50.0 and scores["NoAns_f1"] == 50.0 and scores["total"] == 5
    # the best gold answer counts
    assert squad_v2_scores([["1990", "in 1990"]], ["In 1990."])["exact"] == 100.0
    assert squad_v2_scores([[]], [""])["exact"] == 100.0  # an empty prediction is "no answer" too


def test_sst2_accuracy_and_f1_by_hand():
    golds = ["positive", "negative", "positive", "negative"]
    scores = sst2_scores(golds, ["positive", "positive.", "Negative", "banana"])
    # tp 1, fp 1, fn 1: F1 = 2/(2+1+1) = 0.5; right: the first only (banana is invalid, counted wrong)
    assert scores == {"accuracy": 25.0, "f1": 50.0, "invalid": 1, "total": 4}


def test_fixture_rows_become_prompts_with_the_answer_as_completion(tiny_tokenizer):
    from gemmate_lib.data import to_dataset

    data = load_task("squad_v2", str(FIX / "squad_v2.jsonl"), 0.25, 23)
    rows = data.train + data.held_out
    assert len(rows) == 12 and sum(r["answer"] == NO_ANSWER for r in rows) == 4
    assert all(r["text"] == f"{r['prompt']} {r['answer']}" for r in rows)
    assert all(r["prompt"].endswith("\nAnswer:") for r in rows)
    ds = to_dataset(rows[:2], tiny_tokenizer, completion_only=True)
    for r, ids, mask in zip(rows, ds["input_ids"], ds["completion_mask"]):
        trained = tiny_tokenizer.decode([i for i, m in zip(ids, mask) if m])
        assert trained.strip() == r["answer"] + "<eos>"
    sst2 = load_task("sst2", str(FIX / "sst2.jsonl"), 0.25, 23)
    assert {r["answer"] for r in sst2.train + sst2.held_out} == {"positive", "negative"}


def test_a_malformed_task_row_is_counted_not_a_crash(tmp_path):
    path = tmp_path / "sst2.jsonl"
    rows = [{"idx": 0, "sentence": "good", "label": 1}, {"idx": 1, "sentence": "bad", "label": 7},
            {"idx": 2, "sentence": "fine", "label": 1}, {"idx": 3, "sentence": None, "label": 0}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    data = load_task("sst2", str(path), 0.5, 0)
    assert len(data.train) + len(data.held_out) == 2 and sum(data.dropped.values()) == 2
    assert "malformed row" in data.report()


def test_an_sst2_csv_keeps_its_labels(tmp_path):
    """A CSV holds every field as text: its labels "0" and "1" were not the numbers 0 and 1, so every row was
    dropped and the command said to check the columns."""
    path = tmp_path / "sst2.csv"
    path.write_text('idx,sentence,label\n0,good,1\n1,bad,0\n2,"fine, really",1\n3,odd,7\n')
    data = load_task("sst2", str(path), 0.5, 0)
    rows = data.train + data.held_out
    assert sorted(r["answer"] for r in rows) == ["negative", "positive", "positive"]
    assert sum(data.dropped.values()) == 1  # the label 7


@pytest.mark.slow
@pytest.mark.parametrize("task, max_length, held_out", [("sst2", 64, 4), ("squad_v2", 128, 3)])
def test_gemmate_train_runs_each_task_and_scores_its_held_out_rows(task, max_length, held_out, tmp_path,
                                                                   tiny_folder, capsys):
    """`gemmate train --config configs/gemma11-*.yaml` on the task's fixture (plumbing: the tiny Gemma): it
    trains the adapter only, and its scores are counts over the held-out rows, in percent."""
    from weights import trains_only_the_trainable

    from gemmate_cli.errors import run_cli
    from gemmate_cli.main import main

    fixture = FIX / ("sst2.jsonl" if task == "sst2" else "squad_v2.jsonl")
    with trains_only_the_trainable():
        assert run_cli(main, ["train", "--config", str(CONFIGS[task]), "--dataset", str(fixture),
                              "--model_name", str(tiny_folder), "--max_steps", "2", "--val_steps_freq", "2",
                              "--steps_freq", "2", "--max_length", str(max_length), "--eval_fraction", "0.25",
                              "--warmup_steps", "0", "--output_dir", str(tmp_path), "--keep_best_n", "0",
                              "--device", "cpu"]) == 0
    metrics = json.loads((tmp_path / "train_metrics.json").read_text())
    scores = metrics["task_metrics"]
    assert metrics["task"] == task and metrics["steps"] == 2 and scores["total"] == held_out
    keys = ("accuracy", "f1") if task == "sst2" else ("exact", "f1", "HasAns_exact", "NoAns_exact")
    assert set(keys) <= set(scores)
    for key in ("accuracy",) if task == "sst2" else ("exact",):  # k of the held-out rows right, in percent
        right = scores[key] * held_out / 100
        assert right == pytest.approx(round(right)), (key, scores[key])
    saved = sorted(p.name for p in (tmp_path / "adapter").glob("*.safetensors"))
    assert saved == ["adapter_model.safetensors"]
