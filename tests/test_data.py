import json
import re

import pytest

from gemmate_lib.data import (
    clean_rows,
    excerpt,
    format_quote,
    load_quotes,
    normalize_quote,
    to_dataset,
    trim_author,
)
from gemmate_lib.housekeeping.errors import DataError


def test_broken_author_fields_are_dropped_or_trimmed_and_counted():
    rows = [{"quote": "I never think of the future", "author": "it comes soon enough."},
            {"quote": "If plan A fails", "author": "remember you have 25 letters left.\u201d"},
            {"quote": "Read more.", "author": "bell hooks"},  # a real lowercase name stays
            {"quote": "Ideas are easy.", "author": "Guy Kawasaki, founder of AllTop"},
            {"quote": "Bounce.", "author": "General George Patton."},
            {"quote": "Ask not.", "author": "John F. Kennedy"}]
    kept, dropped, _, repaired = clean_rows(rows)
    assert [r["author"] for r in kept] == ["bell hooks", "Guy Kawasaki", "General George Patton",
                                           "John F. Kennedy"]
    assert list(dropped.values()) == [2] and "fragment" in next(iter(dropped))
    assert list(repaired.values()) == [2]
    assert trim_author("J.K. Rowling, Harry Potter") == "J.K. Rowling" and trim_author("John F.") == "John F."


def test_completion_mask_covers_the_second_half_and_the_author(tiny_tokenizer):
    rows = [{"quote": "one two three four", "author": "Me", "text": format_quote("one two three four", "Me")}]
    ds = to_dataset(rows, tiny_tokenizer, completion_only=True)
    ids, mask = ds[0]["input_ids"], ds[0]["completion_mask"]
    assert len(ids) == len(mask) and 0 < sum(mask) < len(mask)
    trained = tiny_tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert trained.replace(" ", "") == "threefour\nAuthor:Me<eos>"
    assert mask == sorted(mask)  # the prompt first, then only completion
    assert "completion_mask" not in to_dataset(rows, tiny_tokenizer).column_names


def test_embedded_quotes_load_and_split_deterministically():
    a = load_quotes("embedded", eval_fraction=0.1, data_seed=42)
    b = load_quotes("embedded", eval_fraction=0.1, data_seed=42)
    # 326 rows less 20 duplicate quotes, 12 author fragments
    assert (len(a.train), len(a.held_out)) == (265, 29)
    assert sum(v for k, v in a.dropped.items() if k.startswith("duplicate quote")) == 20
    assert sum(v for k, v in a.dropped.items() if k.startswith("author is a fragment")) == 12
    assert [r["text"] for r in a.held_out] == [r["text"] for r in b.held_out]
    assert not {r["text"] for r in a.train} & {r["text"] for r in a.held_out}
    train_quotes = {normalize_quote(r["quote"]) for r in a.train}
    assert not train_quotes & {normalize_quote(r["quote"]) for r in a.held_out}
    assert 0.3 < a.unseen_author_share() < 0.8  # many held-out authors never appear in training
    c = load_quotes("embedded", eval_fraction=0.1, data_seed=7)
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
    assert data.dropped == {"empty quote": 1, "missing quote": 1, "empty author": 1, "missing author": 1}
    report = data.report()
    assert "dropped 1 row(s): missing quote, e.g. line 3:" in report
    assert "dropped 1 row(s): empty author" in report


def test_a_drop_report_cuts_its_example_between_words_never_inside_one():
    quote = "For all of the most important things, the timing always sucks. Waiting for a good time to quit"
    rows = [{"quote": "A", "author": "X"}, {"quote": "B", "author": "Y"}, {"quote": quote, "author": ""}]
    example = clean_rows(rows)[2]["empty author"]
    shown = example.removeprefix("line 3: ").removesuffix(" ...")
    assert example.endswith(" ...") and len(shown) <= 100
    assert repr(rows[2]).startswith(shown) and repr(rows[2])[len(shown)] == " "  # the next character: a space
    assert excerpt("short text") == "short text"
    assert excerpt("one two three", limit=8) == "one two ..."  # "three" would be cut: left out whole
    assert excerpt("one two three", limit=7) == "one two ..."  # the limit falls on a space: "two" is whole
    assert excerpt("x" * 30, limit=10) == "x" * 10 + " ..."  # no space to cut at: one long word, at the limit


def test_wrong_types_are_reported_as_such_not_as_missing(tmp_path):
    rows = [{"quote": "A", "author": "X", "tags": 5}, {"quote": 7, "author": "Y"},
            {"quote": "B", "author": ["Z"]},
            {"quote": "C", "author": "W"}]
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = load_quotes(str(path), eval_fraction=0.34)
    assert data.dropped == {"quote is not text": 1, "author is not text": 1}
    # "tags": 5 is ignored, not a crash
    assert sorted(r["tags"] for r in data.train + data.held_out) == [[], []]


@pytest.mark.parametrize("raw, quote", [
    ("\u201cBe yourself; everyone else is taken.\u201d", "Be yourself; everyone else is taken."),
    (" \u201cThe \u201cword\u201d stays.\u201d ", "The \u201cword\u201d stays."),  # inner marks stay
    ("\u201cI think it is wrong.", "I think it is wrong."),  # an opening mark that never closes
    ("\u201cA\u201d and \u201cB\u201d", "\u201cA\u201d and \u201cB\u201d"),  # two quoted parts, not one pair
    ("He said \u201chi\u201d.", "He said \u201chi\u201d."),
])
def test_training_texts_start_like_the_prompts_without_curly_marks(raw, quote):
    """Abirate/english_quotes wraps every quote in curly marks; the prompts (`Quote: Imagination is more`)
    have none, so the texts that 03 trains on must not start `Quote: \u201c` either."""
    kept, dropped, _, repaired = clean_rows([{"quote": raw, "author": "Ada"}])
    assert dropped == {} and kept[0]["quote"] == quote
    assert kept[0]["text"] == f"Quote: {quote}\nAuthor: Ada"
    assert bool(repaired) == (quote != raw.strip())


def test_clean_rows_strips_and_formats():
    kept, dropped, _, _ = clean_rows([{"quote": " Hi. ", "author": " Me ", "tags": "x"}])
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


def test_too_few_usable_rows_says_why_with_the_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"quote": "A", "author": "B"}\n{"quote": "", "author": "C"}\n')
    with pytest.raises(DataError, match="1 usable row.*1 empty quote \\(e.g. line 2:"):
        load_quotes(str(path))


def _write(tmp_path, rows, name="q.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


GOOD = [{"quote": f"Quote number {w} is here.", "author": f"Author {w}"}
        for w in ("one", "two", "three", "four")]


def test_duplicates_exact_and_normalized_are_dropped_before_the_split(tmp_path):
    rows = GOOD + [dict(GOOD[0]), {"quote": "QUOTE number one, is here!", "author": "Someone"},
                   {"quote": "Quote number “two” is here.", "author": "X"}]
    data = load_quotes(_write(tmp_path, rows), eval_fraction=0.5)
    assert len(data.train) + len(data.held_out) == 4
    assert data.dropped == {"duplicate quote (exact)": 1,
                            "duplicate quote (after normalizing case, punctuation and typographic quotes)": 2}
    assert not {r["quote"] for r in data.train} & {r["quote"] for r in data.held_out}


def test_newlines_and_template_markers_inside_a_field_are_dropped(tmp_path):
    rows = GOOD + [{"quote": "Be kind.\nAuthor: Me", "author": "X"},
                   {"quote": "Fine.", "author": "Quote: hi"},
                   {"quote": "Two\nlines", "author": "Y"}]
    data = load_quotes(_write(tmp_path, rows), eval_fraction=0.5)
    assert data.dropped == {"quote contains a newline or a template marker (Quote: / Author:)": 2,
                            "author contains a newline or a template marker (Quote: / Author:)": 1}
    rows = data.train + data.held_out
    assert all(r["text"].count("Author:") == 1 and r["text"].count("\n") == 1 for r in rows)


def test_a_million_character_quote_is_dropped_as_too_long(tmp_path, tiny_tokenizer):
    rows = GOOD + [{"quote": "word " * 200_000, "author": "Verbose"}]
    data = load_quotes(_write(tmp_path, rows), 0.5, 42, tiny_tokenizer, 128)
    assert list(data.dropped) == ["too long (over max_length=128 tokens: the Author: line would be cut off)"]
    assert "line 5" in data.report()


def test_unsupported_extension(tmp_path):
    path = tmp_path / "q.txt"
    path.write_text("hello")
    with pytest.raises(DataError, match="neither .jsonl, .csv nor .json"):
        load_quotes(str(path))


def test_one_reader_for_jsonl_csv_and_json_arrays(tmp_path):
    from gemmate_lib.data import read_records

    rows = [{"quote": "One", "author": "A"}, {"quote": "Two", "author": "B"}]
    (tmp_path / "q.json").write_text(json.dumps(rows))
    (tmp_path / "q.jsonl").write_text("\ufeff" + "\n".join(json.dumps(r) for r in rows))  # with a BOM
    (tmp_path / "q.csv").write_text("quote,author\nOne,A\nTwo,B\n")
    for name in ("q.json", "q.jsonl", "q.csv"):
        assert [r for _, r in read_records(tmp_path / name)] == rows, name
    assert [n for n, _ in read_records(tmp_path / "q.csv")] == [2, 3]  # file line numbers


@pytest.mark.parametrize("name, content, message", [
    ("latin1.jsonl", '{"quote": "caf\xe9", "author": "A"}\n'.encode("latin-1"), "line 1 is not UTF-8"),
    ("extra.csv", b"quote,author\nOne,A\nTwo,B,extra\n", "line 3 has more fields than the header"),
    ("obj.json", b'{"quote": "A"}', "not a JSON array"),
    ("semicolons.csv", b"quote;author\nOne;A\nTwo;B\n", "(?s)no column quote, author.*separates its fields "
                                                         "with ';': save it with commas"),
])
def test_bad_files_name_the_line_and_the_fix(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        load_quotes(str(path))
    assert err.value.fix


def test_a_folder_named_like_a_data_file_is_a_clear_error(tmp_path):
    (tmp_path / "x.jsonl").mkdir()
    with pytest.raises(DataError, match="is a folder, not a file"):
        load_quotes(str(tmp_path / "x.jsonl"))


def test_a_quote_of_a_million_characters_is_dropped_even_without_a_tokenizer(tmp_path):
    rows = [{"quote": "word " * 200_000, "author": "Someone"}]
    rows += [{"quote": f"Quote number {i} is short.", "author": "Anon"} for i in range(5)]
    path = tmp_path / "quotes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_quotes(str(path))  # no tokenizer: 07 reads quotes like this
    assert len(data.train) + len(data.held_out) == 5
    assert [n for reason, n in data.dropped.items() if "too long" in reason] == [1]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_a_pathologically_nested_json_file_is_refused_with_its_name_and_why(tmp_path, suffix):
    path = tmp_path / f"deep{suffix}"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")  # valid JSON, nested deeper than Python recurses
    where = "deep.json" if suffix == ".json" else "deep.jsonl line 1"
    message = re.escape(f"{where} nests JSON deeper than Python's parser can go")
    with pytest.raises(DataError, match=message) as err:
        load_quotes(str(path))
    assert "flat" in err.value.fix  # the fix says what shape to write


@pytest.mark.parametrize("invisible", ["\u200b", "\u200b\u200c\u200d", "\ufeff \u2060", "\u00ad\t\u180e"])
def test_text_made_only_of_invisible_characters_counts_as_empty(tmp_path, invisible):
    rows = [{"quote": invisible, "author": "Ada"}, {"quote": "Be brave.", "author": invisible},
            {"quote": "Keep going.", "author": "Anon"}, {"quote": "Stay curious.", "author": "Anon"},
            {"quote": "Rest well.", "author": "Ben"}]
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_quotes(str(path), eval_fraction=0.34)
    assert len(data.train) + len(data.held_out) == 3
    assert data.dropped == {"empty quote": 1, "empty author": 1}
    assert "dropped 1 row(s): empty author, e.g. line 2:" in data.report()


def test_invisible_characters_inside_real_text_keep_the_row():
    kept, dropped, _, _ = clean_rows([{"quote": "Zero\u200bwidth inside.", "author": "Ada"}])
    assert dropped == {} and kept[0]["quote"] == "Zero\u200bwidth inside."


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085"])
def test_a_jsonl_file_with_unicode_line_separators_inside_strings_loads_whole(tmp_path, separator):
    """U+2028, U+2029 and U+0085 are legal, unescaped, inside JSON strings: the file is split on \\n only."""
    rows = GOOD + [{"quote": f"Two parts{separator}of one quote.", "author": f"Ada{separator}Lovelace"}]
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    data = load_quotes(str(path), eval_fraction=0.4)
    assert len(data.train) + len(data.held_out) == 5 and data.dropped == {}
    (tmp_path / "q.csv").write_text("quote,author\n" + "".join(f"{r['quote']},{r['author']}\n" for r in rows),
                                    encoding="utf-8")
    data = load_quotes(str(tmp_path / "q.csv"), eval_fraction=0.4)
    assert len(data.train) + len(data.held_out) == 5 and data.dropped == {}


BAD_TEXT = [("Nul\x00inside.", "control character"), ("Bell\x07rings.", "control character"),
            ("Broken \ud800 half.", "not valid Unicode"), ("\udfff", "not valid Unicode")]


@pytest.mark.parametrize("bad, kind", BAD_TEXT)
@pytest.mark.parametrize("field_name", ["quote", "author"])
def test_control_characters_and_lone_surrogates_are_dropped_and_counted_by_kind(tmp_path, bad, kind,
                                                                                 field_name):
    row = {"quote": "A bad row.", "author": "Ada", field_name: bad}
    path = tmp_path / "q.jsonl"
    # json.dumps escapes both, as a JSON writer must: "\u0000", "\ud800"
    path.write_text("".join(json.dumps(r) + "\n" for r in GOOD + [row]))
    data = load_quotes(str(path), eval_fraction=0.5)
    assert len(data.train) + len(data.held_out) == 4
    assert list(data.dropped) == [f"{field_name} contains a {kind} (e.g. NUL)" if kind == "control character"
                                  else f"{field_name} is {kind} (a lone UTF-16 surrogate)"]
    assert "line 5" in data.report()
    for r in data.train + data.held_out:  # what is kept can be written as UTF-8
        r["text"].encode("utf-8")


def test_every_source_drops_the_same_bad_text(monkeypatch, tmp_path):
    """The embedded quotes, a Hub dataset (03 cleans its rows) and a .json file share one rule."""
    import gemmate_lib.data as data_module

    rows = GOOD + [{"quote": "Nul\x00inside.", "author": "A"}, {"quote": "Half \ud800.", "author": "B"},
                   {"quote": "\u0301\ufe0f", "author": "C"}]
    expected = {"quote contains a control character (e.g. NUL)": 1,
                "quote is not valid Unicode (a lone UTF-16 surrogate)": 1, "empty quote": 1}
    monkeypatch.setattr(data_module, "_read_embedded", lambda: [dict(r) for r in rows])
    assert load_quotes("embedded", eval_fraction=0.5).dropped == expected
    monkeypatch.setattr(data_module, "read_hub", lambda *a, **k: [dict(r) for r in rows])
    assert load_quotes("someone/quotes", eval_fraction=0.5).dropped == expected
    (tmp_path / "q.json").write_text(json.dumps(rows))
    assert load_quotes(str(tmp_path / "q.json"), eval_fraction=0.5).dropped == expected
    # a CSV file (UTF-8 text: no surrogates) with a NUL and a quote of marks only
    (tmp_path / "q.csv").write_text("quote,author\n" + "".join(f"{r['quote']},{r['author']}\n"
                                                               for r in rows if "\ud800" not in r["quote"]))
    expected.pop("quote is not valid Unicode (a lone UTF-16 surrogate)")
    assert load_quotes(str(tmp_path / "q.csv"), eval_fraction=0.5).dropped == expected


def test_files_joined_with_their_byte_order_marks_load_whole(tmp_path):
    """`cat a.jsonl b.jsonl` keeps b's BOM at the start of a line in the middle: not a broken line."""
    bom = "\ufeff"
    path = tmp_path / "q.jsonl"
    path.write_text("".join(bom + json.dumps(r) + "\n" for r in GOOD), encoding="utf-8")
    data = load_quotes(str(path), eval_fraction=0.5)
    assert len(data.train) + len(data.held_out) == 4 and data.dropped == {}


@pytest.mark.parametrize("marks", ["\u0301", "\u0301\u0308\u0327", "\ufe0f", "\ufe0e\ufe0f", "\U000e0100",
                                   "\u20dd", " \u0301 \ufe0f "])
def test_text_made_only_of_combining_marks_or_variation_selectors_counts_as_empty(tmp_path, marks):
    rows = [{"quote": marks, "author": "Ada"}, {"quote": "Be brave.", "author": marks}, *GOOD]
    data = load_quotes(_write(tmp_path, rows), eval_fraction=0.5)
    assert len(data.train) + len(data.held_out) == 4
    assert data.dropped == {"empty quote": 1, "empty author": 1}


def test_real_text_with_combining_marks_and_variation_selectors_is_kept():
    rows = [{"quote": "Cafe\u0301 au lait.", "author": "Zoe\u0308"},
            {"quote": "I \u2764\ufe0f it.", "author": "Me"},
            {"quote": "\u0915\u093f\u0924\u093e\u092c", "author": "\u092e\u0940\u0930\u093e"}]
    kept, dropped, _, _ = clean_rows(rows)
    assert dropped == {} and [r["quote"] for r in kept] == [r["quote"] for r in rows]
