"""GemmaTE's data (temporal/data.py, 07): the dated-notes task's disjoint splits and dates (the JSONL files
`gemmate train-te` reads: tests/cli/test_cli_train_te.py)."""
import pytest

from gemmate_lib.guard_rails.errors import DataError


def test_dated_notes_and_their_dates():
    from gemmate_lib.temporal.data import make_dated_notes, parse_date

    notes = make_dated_notes([f"quote number {i} is here" for i in range(40)], n_train=50, n_test=10)
    assert not set(notes.train_timestamps) & set(notes.test_timestamps)
    assert all(2007 <= y <= 2020 for y, _ in notes.test_dates)
    from collections import Counter

    balanced = make_dated_notes([f"quote number {i} is here" for i in range(40)], n_train=50, n_test=28,
                                n_val=14,
                                n_far=12)
    assert set(Counter(y for y, _ in balanced.test_dates).values()) == {2}  # 2 per training year
    assert set(Counter(y for y, _ in balanced.val_dates).values()) == {1}
    # 2 per year after them
    assert Counter(y for y, _ in balanced.far_dates) == {y: 2 for y in range(2021, 2027)}
    assert parse_date(notes.train_texts[0].split("Written:")[1])[0] is not None
    assert parse_date(" May 2014, a fine") == (2014, 5) and parse_date(" once upon") == (None, None)


def test_dated_notes_keep_validation_test_and_extrapolation_apart():
    from gemmate_lib.temporal.data import PROMPT_END, date_of, make_dated_notes

    notes = make_dated_notes([f"quote number {i} is here today" for i in range(60)], n_train=300, n_test=40,
                             n_val=30,
                             n_far=24, seed=3)
    splits = [set(notes.train_timestamps), set(notes.val_timestamps), set(notes.test_timestamps),
              set(notes.far_timestamps)]
    # no timestamp in two places
    assert sum(map(len, splits)) == len(set().union(*splits)) == 300 + 30 + 40 + 24
    assert {date_of(ms)[0] for ms in notes.train_timestamps} <= set(range(2007, 2021))
    assert {y for y, _ in notes.far_dates} == set(range(2021, 2027))  # no training target names these years
    assert not any(f" {y}" in t for t in notes.train_texts for y in range(2021, 2027))
    trained = {t.split(PROMPT_END)[0] for t in notes.train_texts}
    held = {p.removesuffix(PROMPT_END) for p in notes.val_prompts + notes.test_prompts + notes.far_prompts}
    assert trained and held and not trained & held  # held-out quotes are never trained on
    assert notes.split("far") == (notes.far_prompts, notes.far_timestamps, notes.far_dates)
    with pytest.raises(DataError, match="extrapolate_to=2019 is not after last_year=2020"):
        make_dated_notes([f"q {i} words" for i in range(20)], extrapolate_to=2019)
