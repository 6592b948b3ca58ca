"""Timestamped text for GemmaTE (07_temporal_encoding): a Dataset and collate_fn as in the GemmaTE guide,
and the dated-notes task (the same quote at many dates: only the timestamp tells the year)."""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

import torch

from gemmate_lib.guard_rails.errors import DataError
from gemmate_lib.temporal.timestamps import date_ms, draw_minutes, to_milliseconds

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
PROMPT_END = "\nWritten:"  # the notes' prompt ends here; the model continues with " May 2014"
DATE_LINE = re.compile(r"^\s*(" + "|".join(MONTHS) + r")\s+(\d{4})")


class TextDataset(torch.utils.data.Dataset):
    """Tokenized texts with one timestamp each (ms, datetime or ISO string; None = no time given). With
    `prompt_end`, tokens through that marker get no loss (-100): the model learns the continuation only."""

    def __init__(self, texts, tokenizer, timestamps=None, max_length=128, prompt_end: str | None = None):
        texts = list(texts)
        if timestamps is not None and len(timestamps) != len(texts):
            raise DataError(f"{len(texts)} texts but {len(timestamps)} timestamps",
                            "give one timestamp per text")
        self.timestamps = None if timestamps is None else to_milliseconds(list(timestamps))
        self.items = []
        eos = tokenizer.eos_token or ""
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"text {text!r} is empty or not a string",
                                "drop empty rows before building the dataset")
            ids = tokenizer(text + eos, truncation=True, max_length=max_length)["input_ids"]
            head = text.partition(prompt_end)[0] + prompt_end if prompt_end and prompt_end in text else ""
            skip = len(tokenizer(head, truncation=True, max_length=max_length)["input_ids"]) if head else 0
            self.items.append((ids, skip))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        ids, skip = self.items[i]
        item = {"input_ids": torch.tensor(ids), "skip": skip}
        if self.timestamps is not None:
            item["timestamps"] = self.timestamps[i]
        return item


def collate_fn(batch: list[dict], pad_token_id: int = 0) -> dict:
    """Right-pad a list of TextDataset items; labels are -100 on padding and on prompt tokens."""
    width = max(len(b["input_ids"]) for b in batch)
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, b in enumerate(batch):
        n = len(b["input_ids"])
        input_ids[row, :n] = b["input_ids"]
        attention_mask[row, :n] = 1
        labels[row, b.get("skip", 0):n] = b["input_ids"][b.get("skip", 0):]
    out = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    if "timestamps" in batch[0]:
        out["timestamps"] = torch.stack([b["timestamps"] for b in batch])
    return out


@dataclass
class DatedNotes:
    train_texts: list[str]  # full notes: "<quote>\nWritten: May 2014"
    train_timestamps: list[int]  # ms since the epoch, one per note
    test_prompts: list[str]  # held-out notes cut after "Written:", evaluated once (07 section 6)
    test_timestamps: list[int]  # inside the training years, none of them in the training set
    test_dates: list[tuple[int, int]]  # the right (year, month) of each test prompt
    val_prompts: list[str] = field(default_factory=list)  # validation: like test, for design choices
    val_timestamps: list[int] = field(default_factory=list)  # disjoint from train and test
    val_dates: list[tuple[int, int]] = field(default_factory=list)  # the right (year, month) of each
    far_prompts: list[str] = field(default_factory=list)  # extrapolation: dated after the training years
    far_timestamps: list[int] = field(default_factory=list)  # (last_year, extrapolate_to]: never a target
    far_dates: list[tuple[int, int]] = field(default_factory=list)  # the right (year, month) of each

    def split(self, name: str) -> tuple[list[str], list[int], list[tuple[int, int]]]:
        """(prompts, timestamps, dates) of "val", "test" or "far" (extrapolation)."""
        return tuple(getattr(self, f"{name}_{part}") for part in ("prompts", "timestamps", "dates"))


def date_of(ms: float) -> tuple[int, int]:
    """(year, month) in UTC of a timestamp in ms."""
    d = datetime.fromtimestamp(float(ms) / 1000, tz=timezone.utc)
    return d.year, d.month


def _even_stamps(rng: random.Random, years: list[int], n: int, taken: set) -> list[int]:
    """n whole-minute timestamps, the same number in every year, none in `taken` (which they join)."""
    out = [draw_minutes(rng, date_ms(year), date_ms(year + 1), 1, taken)[0]
           for year in (years[i % len(years)] for i in range(n))]
    rng.shuffle(out)
    return out


def make_dated_notes(quotes: list[str], n_train: int = 600, n_test: int = 200, first_year: int = 2007,
                     last_year: int = 2020, max_words: int = 8, seed: int = 0, n_val: int = 100,
                     extrapolate_to: int | None = 2026, n_far: int = 120) -> DatedNotes:
    """Notes ending with the month and year they were written, at distinct whole minutes in [first_year,
    last_year]; held out evenly over their years (ignoring time scores ~1/years) and with other quotes: val
    and test in the training years, extrapolation after them to extrapolate_to; train quotes: many dates."""
    rng = random.Random(seed)
    snippets = sorted({" ".join(q.split()[:max_words]) for q in quotes if q.strip()})
    if len(snippets) < 10:
        raise DataError(f"only {len(snippets)} distinct quotes",
                        "give at least 10 quotes to build dated notes")
    if extrapolate_to is not None and extrapolate_to <= last_year:
        raise DataError(f"extrapolate_to={extrapolate_to} is not after last_year={last_year}",
                        "extrapolation years must follow the training years (or pass extrapolate_to=None)")
    rng.shuffle(snippets)
    cut = max(2, len(snippets) // 5)
    test_pool, train_pool = snippets[:cut], snippets[cut:]
    years = list(range(first_year, last_year + 1))
    taken: set = set()
    test_ms, val_ms = (_even_stamps(rng, years, n, taken) for n in (n_test, n_val))
    far_ms = _even_stamps(rng, list(range(last_year + 1, extrapolate_to + 1)), n_far,
                          taken) if extrapolate_to else []
    train_ms = draw_minutes(rng, date_ms(first_year), date_ms(last_year + 1), n_train, taken)

    def prompts(n: int, offset: int) -> list[str]:
        return [test_pool[(offset + i) % len(test_pool)] + PROMPT_END for i in range(n)]

    train = [f"{train_pool[i % len(train_pool)]}{PROMPT_END} {MONTHS[month - 1]} {year}"
             for i, (year, month) in enumerate(map(date_of, train_ms))]
    return DatedNotes(train, train_ms, prompts(n_test, 0), test_ms, [date_of(ms) for ms in test_ms],
                      prompts(n_val, 7), val_ms, [date_of(ms) for ms in val_ms],
                      prompts(n_far, 13), far_ms, [date_of(ms) for ms in far_ms])


def parse_date(completion: str) -> tuple[int | None, int | None]:
    """(year, month) from a completion like " May 2014..."; None where it does not say."""
    if match := DATE_LINE.match(completion):
        return int(match.group(2)), MONTHS.index(match.group(1)) + 1
    years = re.findall(r"\b(19\d\d|20\d\d)\b", completion[:20])
    return (int(years[0]) if years else None), None
