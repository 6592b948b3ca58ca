"""English quotes (03_lora_sft, 04_evaluation): load, validate, split, format as "Quote: ...\\nAuthor: ...".
Three sources share one schema (quote, author, tags): `Abirate/english_quotes`, the embedded quotes of
`inspirational-quotes`, or a .jsonl/.csv file. Bad rows are counted, reported and dropped, never silently."""
from __future__ import annotations

import csv
import io
import json
import random
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from itertools import accumulate
from pathlib import Path

from gemmate_lib.config import EMBEDDED
from gemmate_lib.guard_rails import colab
from gemmate_lib.guard_rails.errors import DataError, hub_load_error

REQUIRED = ("quote", "author")


def format_quote(quote: str, author: str | None = None) -> str:
    """The training format. Without `author` it is the prompt that asks for one."""
    return f"Quote: {quote}\nAuthor:" if author is None else f"Quote: {quote}\nAuthor: {author}"


def unwrap_quote(quote: str) -> str:
    """The quote without curly quotation marks around the whole of it (`Abirate/english_quotes` writes
    "“Be ...”"; the prompts start with a plain word): a nested pair, or a mark with no partner in the text."""
    text = quote.strip()
    inner = text
    if text.startswith("\u201c") and text.endswith("\u201d"):
        depths = list(accumulate(((ch == "\u201c") - (ch == "\u201d") for ch in text[1:-1]), initial=0))
        if min(depths) == 0 == depths[-1]:  # one pair: not “A” and “B”, where the depth drops below 0
            inner = text[1:-1]
    elif "\u201c" not in text or "\u201d" not in text:  # a mark with no partner
        inner = text.removeprefix("\u201c").removesuffix("\u201d")
    return inner.strip() or text  # marks around nothing stay: the row is refused as it is


def split_quote(quote: str) -> tuple[str, str]:
    """First half of the words (the prompt) and the rest (the reference), cut in the quote as written: the
    first half is a prefix of the quote, whatever spaces it holds (a double space, a tab), so
    `quote_prompt` is a prefix of the training text."""
    words = list(re.finditer(r"\S+", quote))
    if len(words) < 2:
        return quote.strip(), ""
    cut = len(words) // 2
    return quote[:words[cut - 1].end()], quote[words[cut].start():].rstrip()


def quote_prompt(quote: str) -> str:
    """`Quote: <first half of the words>`: the prompt of 03's completion-only training and 04's test."""
    return f"Quote: {split_quote(quote)[0]}"


def char_spans(row: dict, part: str) -> tuple[int, int | None]:
    """Characters [start, end) of `row["text"]` that a loss counts (end None: to the end, with EOS): "text",
    "quote" (its own words) or "completion" (what follows quote_prompt, the `Author:` line and EOS)."""
    if part == "text":
        return 0, None
    if part == "quote":
        return len("Quote: "), len("Quote: " + row["quote"])
    if part == "completion":  # rows with their own prompt (the Gemma 1.1 tasks, tasks.py) say where it ends
        return len(row["prompt"]) if "prompt" in row else len(quote_prompt(row["quote"])), None
    raise ValueError(f"part must be text, quote or completion, not {part!r}")


def token_mask(offsets, start: int, end: int | None) -> list[int]:
    """1 for each token that overlaps characters [start, end) (Gemma's tokens carry their leading space), from
    a fast tokenizer's offset_mapping; special tokens with an empty span (BOS, padding) never count."""
    return [int(b > a and b > start and (end is None or a < end)) for a, b in offsets]


@dataclass
class QuoteData:
    train: list[dict]  # rows used for training: {"quote", "author", "tags", "text"}
    held_out: list[dict]  # rows never trained on, for evaluation
    source: str  # where the rows came from
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> number of rows dropped
    examples_dropped: dict[str, str] = field(default_factory=dict)  # reason -> one row, "line N: {...}"
    repaired: dict[str, int] = field(default_factory=dict)  # repair -> rows kept after repairing a field

    def unseen_author_share(self) -> float:
        """Share of held-out quotes whose author never appears in training, so cannot be learned here."""
        seen = {normalize_author(r["author"]) for r in self.train}
        unseen = sum(normalize_author(r["author"]) not in seen for r in self.held_out)
        return unseen / max(1, len(self.held_out))

    def report(self) -> str:
        """One paragraph for the notebook and commands: counts, and what was dropped, why, with an example."""
        return "\n".join([f"{len(self.train) + len(self.held_out)} usable rows from {self.source}: "
                          f"{len(self.train)} train, {len(self.held_out)} held out",
                          *(f"dropped {n} row(s): {reason}, e.g. {self.examples_dropped[reason]}"
                            for reason, n in self.dropped.items()),
                          *(f"repaired {n} row(s): {repair}" for repair, n in self.repaired.items())])


def _read_embedded() -> list[dict]:
    colab.install_embedded("inspirational_quotes")  # Colab, a GPU runtime: the install cell left it out
    try:
        text = resources.files("inspirational_quotes").joinpath("quotes.json").read_text(encoding="utf-8")
    except ModuleNotFoundError as err:
        raise DataError("the offline quotes package `inspirational-quotes` is not installed",
                        "run `make install` (or `pip install inspirational-quotes==0.0.16`)") from err
    return [{"quote": r.get("text"), "author": r.get("from"), "tags": []} for r in json.loads(text)]


def _json(text: str, name: str, line: int, fix: str):
    """`text` parsed as JSON, or a DataError naming the file and line (`line` 0: the error's own line)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{name} line {line or err.lineno} is not valid JSON ({err.msg})", fix) from None
    except RecursionError:
        where = f"{name} line {line}" if line else name
        raise DataError(f"{where} nests JSON deeper than Python's parser can go (over ~1,000 levels)",
                        'write flat rows: {"quote": "...", "author": "..."}') from None


def read_records(path: str | Path, required: tuple[str, ...] = ()) -> list[tuple[int, dict]]:
    """(line number, row) pairs from a .jsonl, .csv or .json (an array of objects) file in UTF-8: the course's
    one reader (03, 04, 07). A bad encoding, line or column is one DataError naming file, line and fix. Lines
    end at \n only: U+2028, U+2029 and U+0085, legal inside JSON strings, are text."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise DataError(f"data file {str(path)!r} {what}",
                        "check the path (relative paths start at the notebook's folder) "
                        "or use dataset='embedded'")
    if path.suffix not in (".jsonl", ".csv", ".json"):
        raise DataError(f"data file {path.name!r} is neither .jsonl, .csv nor .json",
                        "save it as .jsonl or .csv")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[:err.start].count(b"\n") + 1
        raise DataError(f"{path.name} line {line} is not UTF-8 text", "save the file as UTF-8") from None
    if path.suffix == ".csv":
        rows = []
        reader = csv.DictReader(io.StringIO(text, newline=""))
        for row in reader:
            if None in row:  # more fields than the header names
                raise DataError(f"{path.name} line {reader.line_num} has more fields than the header",
                                "quote fields that contain commas, e.g. \"Be kind, always\"")
            rows.append((reader.line_num, row))
    elif path.suffix == ".json":
        rows = _json(text, path.name, 0, "fix the JSON there")
        if not isinstance(rows, list):
            raise DataError(f"{path.name} is not a JSON array of objects",
                            'write [{"quote": "...", "author": "..."}, ...]')
        rows = list(enumerate(rows, 1))
    else:
        fix = "fix that line: each line must be one JSON object"
        # a BOM starting a later line comes from joined files (`cat a.jsonl b.jsonl`): not part of the row
        lines = [line.removeprefix("\ufeff") for line in text.split("\n")]
        rows = [(n, _json(line, path.name, n, fix)) for n, line in enumerate(lines, 1) if line.strip()]
    # valid JSON that is not an object: an empty row, which the cleaning step counts and reports
    rows = [(n, row if isinstance(row, dict) else {}) for n, row in rows]
    if not rows:
        raise DataError(f"data file {path.name!r} has no rows",
                        "add rows (one JSON object per line, or CSV rows)")
    if missing := [c for c in required if all(c not in r for _, r in rows)]:
        header = [str(c) for c in rows[0][1]]
        separator = next((s for s in (";", "\t", "|") if path.suffix == ".csv" and len(header) == 1
                          and s in header[0]), None)  # a spreadsheet's "CSV" in a locale with decimal commas
        fix = (f"the file separates its fields with {separator!r}: save it with commas (or as .jsonl)"
               if separator else f"rename the columns to {', '.join(required)}")
        raise DataError(f"data file {path.name!r} has no column {', '.join(missing)} "
                        f"(it has {sorted(header)})", fix)
    return rows


def read_hub(dataset_id: str, required: tuple[str, ...] = REQUIRED) -> list[dict]:
    """The train split of a Hub dataset as rows; a Hub failure or a missing column is one clear error."""
    from datasets import load_dataset  # imported here: slow, and not needed offline

    try:
        ds = load_dataset(dataset_id, split="train")
    except Exception as err:  # noqa: BLE001 - mapped to one clear message below
        raise hub_load_error(dataset_id, err, kind="dataset") from err
    if missing := [c for c in required if c not in ds.column_names]:
        raise DataError(f"dataset {dataset_id!r} has no column {', '.join(missing)} "
                        f"(it has {ds.column_names})",
                        f"use a dataset with the columns {', '.join(required)}")
    return ds.to_list()


def split_rows(rows: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """(train, held_out): a seeded shuffle, at least one row on each side, each side in the original order."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_held = min(max(1, round(len(rows) * eval_fraction)), len(rows) - 1)
    return [rows[i] for i in sorted(order[n_held:])], [rows[i] for i in sorted(order[:n_held])]


MAX_CHARS = 1000  # without a tokenizer to count tokens: longer is a paragraph (or a broken row), not a quote
MARKERS = ("Quote:", "Author:")  # the training template's markers: inside a field they corrupt the format


# Text made only of whitespace and what prints as nothing reads as empty: format characters (Cf), controls
# (Cc), marks alone (M), and these blank fillers, which are letters by category
_FILLERS = {"\u115f", "\u1160", "\u2800", "\u3164", "\uffa0"}
# Controls that text may hold (line ends are refused by the template rule); any other is a broken export
_TEXT_CONTROLS = {"\t", "\n", "\r", "\x85"}
# A lone UTF-16 surrogate (JSON's "\ud800"): Python keeps it, but no UTF-8 file or tokenizer can
_SURROGATE = re.compile("[\ud800-\udfff]")


def visible(text: str) -> str:
    """`text` without whitespace, invisible characters and marks: empty when nothing would print alone."""
    return "".join(ch for ch in text if not (ch.isspace() or ch in _FILLERS
                                             or unicodedata.category(ch) in ("Cf", "Cc", "Mn", "Mc", "Me")))


def broken_text(text: str) -> str | None:
    """What makes `text` unusable as training text in any field (quotes, 07's notes), or None."""
    if _SURROGATE.search(text):
        return "is not valid Unicode (a lone UTF-16 surrogate)"
    if any(unicodedata.category(ch) == "Cc" and ch not in _TEXT_CONTROLS for ch in text):
        return "contains a control character (e.g. NUL)"
    return None


def _problem(row: dict, key: str) -> str | None:
    value = row.get(key)
    if value is None:
        return f"missing {key}"
    if not isinstance(value, str):
        return f"{key} is not text"
    if broken := broken_text(value):
        return f"{key} {broken}"
    if not visible(value):
        return f"empty {key}"
    if "\n" in value.strip() or "\r" in value or any(m in value for m in MARKERS):
        return f"{key} contains a newline or a template marker ({' / '.join(MARKERS)})"
    # an author that is the end of the quote, cut off at a comma ('it comes soon enough.'): lowercase and a
    # sentence or over three words ('bell hooks' stays), or ending with a closing quote
    text = value.strip()
    if key == "author" and (text[:1].islower() and (text.endswith((".", "!", "?")) or len(text.split()) > 3)
                            or text.endswith(("\u201d", '"'))):
        return "author is a fragment of the quote (the source split the quote at a comma), not a name"
    return None


def trim_author(author: str) -> str:
    """The name alone: 'Bill Gates, co-founder of Microsoft.' -> 'Bill Gates' (no role, no final period)."""
    name = author.split(",")[0].strip()
    return name[:-1] if name.endswith(".") and not name[-2:-1].isupper() else name


def normalize_author(name: str) -> str:
    """Lowercase, no accents, no punctuation, single spaces; drop a trailing ", source"."""
    name = unicodedata.normalize("NFKD", name or "").encode("ascii", "ignore").decode()
    return " ".join(re.findall(r"[a-z0-9]+", name.split(",")[0].lower()))


def normalize_quote(text: str) -> str:
    """Lowercase letters and digits only, typographic quotes and dashes folded: finds near-duplicates."""
    text = unicodedata.normalize("NFKD", text).casefold()
    return " ".join("".join(ch if ch.isalnum() else " " for ch in text).split())


def excerpt(text: str, limit: int = 100) -> str:
    """`text` as a report shows it: whole up to `limit` characters, else cut at the last space within them
    (at the limit where that space comes before half of it: one long word), with " ..." after it."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    space = head.rfind(" ") if not text[limit].isspace() else limit
    return (head[:space].rstrip() if space >= limit // 2 else head) + " ..."


def clean_rows(rows, tokenizer=None, max_length: int | None = None):
    """Keep well-formed, distinct rows (dicts or (line number, dict) pairs); count the rest by reason, with
    one example each (_problem; duplicates after normalize_quote; over `max_length` tokens, which would cut
    the `Author:` line off, or MAX_CHARS characters). Repairs (unwrap_quote, trim_author) go in `repaired`."""
    kept, dropped, examples, seen, repaired = [], Counter(), {}, {}, Counter()
    for i, item in enumerate(rows, 1):
        where, row = item if isinstance(item, tuple) else (i, item)
        reason = _problem(row, "quote") or _problem(row, "author")
        if not reason:
            quote, author = unwrap_quote(row["quote"]), trim_author(row["author"].strip())
            text = format_quote(quote, author)
            key = normalize_quote(quote)
            if key in seen:
                reason = ("duplicate quote (exact)" if seen[key] == quote
                          else "duplicate quote (after normalizing case, punctuation and typographic quotes)")
            elif tokenizer is not None and max_length and \
                    len(tokenizer(text + (tokenizer.eos_token or ""))["input_ids"]) > max_length:
                reason = f"too long (over max_length={max_length} tokens: the Author: line would be cut off)"
            elif tokenizer is None and len(text) > MAX_CHARS:
                reason = f"too long (over {MAX_CHARS} characters: a paragraph, not a quote)"
        if reason:
            dropped[reason] += 1
            examples.setdefault(reason, f"line {where}: {excerpt(repr(row))}")
            continue
        seen[key] = quote
        if quote != row["quote"].strip():
            repaired["quotation marks around the quote removed (the prompts have none)"] += 1
        if author != row["author"].strip():
            repaired["author trimmed to the name (a role after a comma, or a final period, removed)"] += 1
        tags = row.get("tags") or []
        tags = [tags] if isinstance(tags, str) else tags if isinstance(tags, list) else []
        tags = [t for t in tags if isinstance(t, str) and not _SURROGATE.search(t)]
        kept.append({"quote": quote, "author": author, "tags": tags, "text": text})
    return kept, dict(dropped), examples, dict(repaired)  # plain dicts: 03 prints them


def load_quotes(dataset: str = EMBEDDED, eval_fraction: float = 0.1, data_seed: int = 42, tokenizer=None,
                max_length: int | None = None) -> QuoteData:
    """Load, clean (clean_rows) and split quotes from "embedded", a Hub id or a .jsonl/.csv/.json path.
    Duplicates are dropped before the split, so no held-out quote appears in training."""
    dataset = colab.uploaded(dataset)  # in Colab, a file uploaded with the file browser lands in /content
    if dataset == EMBEDDED:
        rows, name = _read_embedded(), "inspirational-quotes (embedded, offline)"
    elif dataset.endswith((".jsonl", ".csv", ".json")) or Path(dataset).exists():
        rows, name = read_records(dataset, REQUIRED), Path(dataset).name
    else:
        rows, name = read_hub(dataset), dataset
    kept, dropped, examples, repaired = clean_rows(rows, tokenizer, max_length)
    if len(kept) < 2:
        detail = "; ".join(f"{n} {reason} (e.g. {examples[reason]})" for reason, n in dropped.items())
        raise DataError(f"{name} has {len(kept)} usable row(s) after "
                        f"dropping {sum(dropped.values())}: {detail}",
                        "every row needs a distinct, one-line `quote` "
                        "and an `author`; at least 2 rows are needed")
    return QuoteData(*split_rows(kept, eval_fraction, data_seed), name, dropped, examples, repaired)


def to_dataset(rows: list[dict], tokenizer=None, completion_only: bool = False):
    """A `datasets.Dataset` for SFTTrainer: the `text` column, or with a tokenizer `input_ids` of text + EOS
    as SFTTrainer makes them (without `datasets` fingerprinting a 262k vocabulary, which dominates a short CPU
    run). `completion_only` adds TRL's `completion_mask` (1 after quote_prompt)."""
    from datasets import Dataset

    if tokenizer is None:
        return Dataset.from_dict({"text": [r["text"] for r in rows]})
    eos = tokenizer.eos_token or ""
    enc = tokenizer([r["text"] + eos for r in rows], return_offsets_mapping=completion_only)
    columns = {"input_ids": enc["input_ids"]}
    if completion_only:
        columns["completion_mask"] = [token_mask(offsets, *char_spans(r, "completion"))
                                      for r, offsets in zip(rows, enc["offset_mapping"])]
    return Dataset.from_dict(columns)
