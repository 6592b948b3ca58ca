import json

import pytest

from gemmate_lib import DataError
from gemmate_lib.data import clean_rows, format_quote, load_quotes


def test_embedded_quotes_load_and_split_deterministically():
    a = load_quotes("embedded", eval_fraction=0.1, seed=42)
    b = load_quotes("embedded", eval_fraction=0.1, seed=42)
    assert (len(a.train), len(a.held_out)) == (293, 33)
    assert [r["text"] for r in a.held_out] == [r["text"] for r in b.held_out]
    assert not {r["text"] for r in a.train} & {r["text"] for r in a.held_out}
    c = load_quotes("embedded", eval_fraction=0.1, seed=7)
    assert [r["text"] for r in c.held_out] != [r["text"] for r in a.held_out]


def test_format():
    assert format_quote("Be yourself.", "Oscar Wilde") == "Quote: Be yourself.\nAuthor: Oscar Wilde"
    assert format_quote("Be yourself.") == "Quote: Be yourself.\nAuthor:"


def test_rows_missing_fields_are_counted_reported_and_dropped(tmp_path):
    rows = [{"quote": "A", "author": "X"}, {"quote": "", "author": "Y"}, {"author": "Z"},
            {"quote": "B", "author": "  "}, {"quote": "C", "author": None}, {"quote": "D", "author": "W"},
            {"quote": "E", "author": "V"}]
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = load_quotes(str(path), eval_fraction=0.34)
    assert len(data.train) + len(data.held_out) == 3
    assert data.dropped == {"missing or empty quote": 2, "missing or empty author": 2}
    report = data.report()
    assert "dropped 2 row(s): missing or empty quote" in report and "dropped 2 row(s): missing or empty author" in report


def test_clean_rows_strips_and_formats():
    kept, dropped, _ = clean_rows([{"quote": " Hi. ", "author": " Me ", "tags": "x"}])
    assert kept == [{"quote": "Hi.", "author": "Me", "tags": ["x"], "text": "Quote: Hi.\nAuthor: Me"}]
    assert dropped == {}


def test_csv_files_work(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("quote,author\nOne,A\nTwo,B\nThree,C\n")
    data = load_quotes(str(path))
    assert len(data.train) + len(data.held_out) == 3 and data.source == "q.csv"


def test_missing_file_names_the_path():
    with pytest.raises(DataError, match="does not exist") as err:
        load_quotes("no/such/quotes.jsonl")
    assert "no/such/quotes.jsonl" in str(err.value) and "Fix:" in str(err.value)


def test_missing_column_is_named(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("text,from\nOne,A\nTwo,B\n")
    with pytest.raises(DataError, match="no column quote, author"):
        load_quotes(str(path))


def test_bad_json_line_is_located(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"quote": "A", "author": "B"}\n{"quote": oops}\n')
    with pytest.raises(DataError, match="line 2"):
        load_quotes(str(path))


def test_too_few_usable_rows(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"quote": "A", "author": "B"}\n{"quote": "", "author": "C"}\n')
    with pytest.raises(DataError, match="1 usable row"):
        load_quotes(str(path))


def test_unsupported_extension(tmp_path):
    path = tmp_path / "q.txt"
    path.write_text("hello")
    with pytest.raises(DataError, match="neither .jsonl nor .csv"):
        load_quotes(str(path))
