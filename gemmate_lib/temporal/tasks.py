"""GemmaTE's harder test (07_temporal_encoding, section 10): one question whose answer, the newest Python 3
release, changes with its timestamp alone, and its scoring. Release dates: data_cards/python_releases.md."""
from __future__ import annotations

import bisect
import random
import re
from collections import Counter
from dataclasses import dataclass

import pandas as pd

from gemmate_lib.temporal.timestamps import DAY_MS, date_ms, draw_minutes, nearest
from gemmate_lib.text_generation import generate

# (version, date of its first final release), from python.org/downloads and the release PEPs
PYTHON_RELEASES = (
    ("3.0", "2008-12-03"), ("3.1", "2009-06-27"), ("3.2", "2011-02-20"), ("3.3", "2012-09-29"),
    ("3.4", "2014-03-16"), ("3.5", "2015-09-13"), ("3.6", "2016-12-23"), ("3.7", "2018-06-27"),
    ("3.8", "2019-10-14"), ("3.9", "2020-10-05"), ("3.10", "2021-10-04"), ("3.11", "2022-10-24"),
    ("3.12", "2023-10-02"), ("3.13", "2024-10-07"), ("3.14", "2025-10-07"),
)
PYTHON_END = "2026-10-01"  # 3.15 is scheduled for this day (PEP 790): later dates might have a newer answer
QUESTION = "The newest Python 3 release is Python"  # the prompt; the model continues with " 3.12"
RELEASE_MS = [date_ms(*map(int, day.split("-"))) for _, day in PYTHON_RELEASES]  # midnight UTC, in ms
END_MS = date_ms(*map(int, PYTHON_END.split("-")))


def newest_python(ms: float) -> str:
    """The newest Python 3 release on this timestamp (a release counts from midnight UTC of its day)."""
    i = bisect.bisect_right(RELEASE_MS, ms) - 1
    if i < 0 or ms >= END_MS:
        raise ValueError(f"timestamp {ms} is outside {PYTHON_RELEASES[0][1]}..{PYTHON_END}")
    return PYTHON_RELEASES[i][0]


def days_to_release(ms: float) -> float:
    """Days from this timestamp to the nearest release day that changes the answer (3.1 onwards)."""
    return min(abs(ms - r) for r in RELEASE_MS[1:]) / DAY_MS


@dataclass
class PythonQuestions:
    train_texts: list[str]  # the prompt with its answer: "... is Python 3.12"
    train_timestamps: list[int]  # ms, uniform over 3.0's release day .. PYTHON_END
    val_timestamps: list[int]  # validation: held-out times for design choices
    test_timestamps: list[int]  # test: held-out times, evaluated once
    prompt: str = QUESTION  # what every held-out timestamp is asked with


def make_python_questions(n_train: int = 300, n_val: int = 100, n_test: int = 200,
                          seed: int = 0) -> PythonQuestions:
    """The same question at random whole-minute times; train, validation and test times are disjoint."""
    rng, taken = random.Random(seed), set()
    test, val, train = (draw_minutes(rng, RELEASE_MS[0], END_MS, n, taken) for n in (n_test, n_val, n_train))
    return PythonQuestions([f"{QUESTION} {newest_python(ms)}" for ms in train], train, val, test)


def parse_version(completion: str) -> str | None:
    """ "3.12" from a completion like " 3.12\\nQ: ..."; None when it names no 3.x version."""
    match = re.match(r"\s*(3\.\d{1,2})(?!\d)", completion)
    return match.group(1) if match else None


def _share(hits) -> float | None:
    """The share of True in `hits`; None for no rows (NaN would not be valid JSON in the metrics file)."""
    return float(hits.mean()) if len(hits) else None


def python_accuracy(te, tokenizer, questions: PythonQuestions, timestamps, asked_at=None,
                    near_days: float = 60.0, batch_size: int = 100):
    """Greedy answers at `timestamps` (or all asked at one `asked_at` time), scored against the release at
    `timestamps`; (table, metrics): accuracy overall, within `near_days` of a release, and farther away."""
    stamps = list(timestamps)
    out = generate(te, tokenizer, [questions.prompt] * len(stamps), max_new_tokens=5, batch_size=batch_size,
                   timestamps=stamps if asked_at is None else [asked_at] * len(stamps))
    table = pd.DataFrame({"timestamp": stamps, "answer": [parse_version(c) for c in out.completion],
                          "truth": [newest_python(ms) for ms in stamps],
                          "days_to_release": [days_to_release(ms) for ms in stamps]})
    table["ok"] = table.answer == table.truth
    near = table.days_to_release <= near_days
    return table, {"accuracy": _share(table.ok), "accuracy_near_release": _share(table.ok[near]),
                   "accuracy_far_from_release": _share(table.ok[~near]), "n_near_release": int(near.sum()),
                   "n": len(table)}


def python_baselines(questions: PythonQuestions, timestamps, near_days: float = 60.0) -> dict:
    """Chance, the training questions' majority answer, and the nearest training timestamp's answer, each
    scored on these held-out times: what a model that ignores time, or only looks up its training times, gets
    (the majority of the held-out answers themselves would be a baseline no model could know)."""
    truth = [newest_python(ms) for ms in timestamps]
    train = sorted(questions.train_timestamps)
    ok = [newest_python(nearest(train, ms)) == answer for ms, answer in zip(timestamps, truth)]
    near = [hit for ms, hit in zip(timestamps, ok) if days_to_release(ms) <= near_days]
    majority = Counter(newest_python(ms) for ms in train).most_common(1)[0][0]
    return {"chance": 1 / len(PYTHON_RELEASES), "majority_answer": majority,
            "majority_share": truth.count(majority) / len(truth), "nearest": sum(ok) / len(truth),
            "nearest_near_release": sum(near) / len(near) if near else None}

