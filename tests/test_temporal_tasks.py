"""07's time-conditioned task (the newest Python 3 release on a date; `gemmate train-te --temporal_task` runs
it: tests/cli/test_cli_train_te.py).

The truth, the splits and the baselines are checked by hand. Whether GemmaTE learns the task is
measured on the embedded model in 07 (nbval runs it; its self-check asks for >= 0.9).
"""
from datetime import datetime, timezone

import pytest

from gemmate_lib.temporal.tasks import (
    PYTHON_RELEASES,
    PythonQuestions,
    days_to_release,
    make_python_questions,
    newest_python,
    parse_version,
    python_baselines,
)


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp() * 1000)


def test_the_newest_release_changes_on_python_org_dates():
    assert newest_python(ms("2008-12-03T00:00:00")) == "3.0"
    assert newest_python(ms("2009-06-26T23:59:00")) == "3.0"
    assert newest_python(ms("2009-06-27T00:00:00")) == "3.1"
    assert newest_python(ms("2021-10-03T12:00:00")) == "3.9"
    assert newest_python(ms("2021-10-04T00:01:00")) == "3.10"
    assert newest_python(ms("2026-09-30T23:59:00")) == "3.14"
    for outside in ("2008-12-02T23:59:00", "2026-10-01T00:00:00"):
        with pytest.raises(ValueError, match="outside 2008-12-03..2026-10-01"):
            newest_python(ms(outside))
    assert [v for v, _ in PYTHON_RELEASES] == [f"3.{i}" for i in range(15)]
    assert days_to_release(ms("2023-10-12T00:00:00")) == 10  # 3.12 came out on 2023-10-02
    # 3.0's own day is no boundary: the next is 2009-06-27
    assert days_to_release(ms("2009-01-01T00:00:00")) == 177


def test_versions_are_read_from_completions():
    assert parse_version(" 3.12\nThe newest") == "3.12"
    assert parse_version(" 3.1, released") == "3.1"
    assert parse_version("3.123") is None and parse_version(" three point one") is None
    assert parse_version("") is None


def test_questions_use_disjoint_times_and_say_the_truth():
    q = make_python_questions(n_train=120, n_val=30, n_test=50, seed=5)
    times = [set(q.train_timestamps), set(q.val_timestamps), set(q.test_timestamps)]
    assert sum(map(len, times)) == len(set().union(*times)) == 200
    assert all(ms("2008-12-03T00:00:00") <= t < ms("2026-10-01T00:00:00") for t in set().union(*times))
    for text, t in zip(q.train_texts, q.train_timestamps):
        assert text == f"{q.prompt} {newest_python(t)}"
    assert len({text.split()[-1] for text in q.train_texts}) >= 12  # the answer really changes with time


def test_python_baselines_by_hand():
    q = PythonQuestions(["a", "b"], [ms("2020-09-01T00:00:00"), ms("2023-01-01T00:00:00")], [], [])
    held = [ms("2020-10-20T00:00:00"), ms("2020-12-01T00:00:00"), ms("2022-12-01T00:00:00")]
    got = python_baselines(q, held, near_days=60)
    # neighbours: 2020-09-01 (3.8) for the first two (truth 3.9, 3.9); 2023-01-01 (3.11) for the third (3.11)
    assert got["nearest"] == pytest.approx(1 / 3) and got["nearest_near_release"] == pytest.approx(1 / 3)
    assert got["chance"] == pytest.approx(1 / 15)


def test_the_majority_baseline_is_the_training_questions_majority_scored_on_the_held_out_times():
    """07's check "with a constant timestamp the Python answers fall to about the majority answer's share"
    compared with the held-out answers' own majority, a baseline no model could know (on the course's
    questions 0.12, against 0.095 for the training questions' majority): the bound was looser than it said."""
    train = [ms("2020-09-01T00:00:00"), ms("2020-09-02T00:00:00"), ms("2023-01-01T00:00:00")]  # 3.8 3.8 3.11
    q = PythonQuestions(["a", "b", "c"], train, [], [])
    held = [ms("2020-09-20T00:00:00"), ms("2020-10-20T00:00:00"), ms("2020-12-01T00:00:00")]  # 3.8, 3.9, 3.9
    got = python_baselines(q, held, near_days=60)
    assert got["majority_answer"] == "3.8" and got["majority_share"] == pytest.approx(1 / 3)


def test_metrics_with_no_date_near_a_release_are_none_and_valid_json(tiny_model, tiny_tokenizer):
    import json

    from gemmate_lib.temporal.model import GemmaTEForCausalLM
    from gemmate_lib.temporal.tasks import python_accuracy

    questions = make_python_questions(n_train=20, n_val=0, n_test=0)
    far = [ms("2013-06-01T00:00:00"), ms("2017-06-01T00:00:00")]  # months from any release day
    _, metrics = python_accuracy(GemmaTEForCausalLM(tiny_model), tiny_tokenizer, questions, far, near_days=5)
    baselines = python_baselines(questions, far, near_days=5)
    assert metrics["n_near_release"] == 0 and metrics["accuracy_near_release"] is None
    assert baselines["nearest_near_release"] is None
    json.dumps({"metrics": metrics, "baselines": baselines}, allow_nan=False)  # NaN would not be valid JSON
