import copy
import json
import re
import sys
from pathlib import Path

import pytest

from gemmate_lib.data import (
    MAX_CHARS,
    QuoteData,
    char_spans,
    clean_rows,
    excerpt,
    format_quote,
    load_quotes,
    normalize_author,
    normalize_quote,
    quote_prompt,
    read_hub,
    read_records,
    split_quote,
    split_rows,
    to_dataset,
    token_mask,
    trim_author,
    visible,
)
from gemmate_lib.guard_rails.errors import DataError


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
    assert a.report().splitlines()[0] == ("294 usable rows from inspirational-quotes (embedded, offline): "
                                          "265 train, 29 held out")
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
    ("He said \u201chi\u201d", "He said \u201chi\u201d"),  # a closing mark whose partner is inside: stays
    ("\u201c\u201cHi,\u201d she said.\u201d", "\u201cHi,\u201d she said."),  # a pair that opens the quote
    ("\u201cHe said \u201chi\u201d\u201d", "He said \u201chi\u201d"),  # a pair that closes it
    ("\u201cYes\u201d is a word.", "\u201cYes\u201d is a word."),  # opens with a quoted word: not a wrapper
    ("I think it is right.\u201d", "I think it is right."),  # a closing mark that never opened
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
    assert err.value.fix == 'write flat rows: {"quote": "...", "author": "..."}'


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


# What each step gives the learner, exactly: the texts trained on, the counts, the split, the messages.

def _rows(*authors):
    """Cleaned rows as clean_rows makes them, one per author."""
    return [{"quote": f"Quote {i}.", "author": a, "tags": [], "text": format_quote(f"Quote {i}.", a)}
            for i, a in enumerate(authors)]


@pytest.mark.parametrize("quote, prompt, reference", [
    ("Be", "Be", ""),
    ("Be brave", "Be", "brave"),  # at least one word in the prompt, and the rest to complete
    ("Be brave today", "Be", "brave today"),
    ("one two three four five", "one two", "three four five"),
])
def test_a_quote_splits_into_the_prompt_half_and_the_reference(quote, prompt, reference):
    assert split_quote(quote) == (prompt, reference)
    assert quote_prompt(quote) == f"Quote: {prompt}"


def test_char_spans_name_the_characters_each_loss_counts():
    row = {"quote": "Be brave today", "author": "Ann", "text": format_quote("Be brave today", "Ann")}
    assert char_spans(row, "text") == (0, None)
    start, end = char_spans(row, "quote")
    assert (start, end) == (7, 21) and row["text"][start:end] == "Be brave today"
    start, end = char_spans(row, "completion")
    assert end is None and row["text"][start:] == " brave today\nAuthor: Ann"
    task = {"quote": "not the prompt here", "prompt": "Q: 2+2?\nA:", "text": "Q: 2+2?\nA: 4"}
    assert char_spans(task, "completion") == (len("Q: 2+2?\nA:"), None)  # a task row's own prompt
    with pytest.raises(ValueError, match="^part must be text, quote or completion, not 'author'$"):
        char_spans(row, "author")


@pytest.mark.parametrize("start, end, mask", [
    (0, None, [0, 1, 1, 1, 0]),
    (4, None, [0, 0, 1, 1, 0]),
    (0, 4, [0, 1, 0, 0, 0]),  # the token starting at `end` is outside
    (3, 9, [0, 1, 1, 0, 0]),  # a token overlapping `start` counts
])
def test_token_mask_counts_tokens_overlapping_the_span_never_an_empty_one(start, end, mask):
    offsets = [(0, 0), (0, 4), (4, 9), (9, 12), (12, 12)]  # BOS, three words, a special token with no span
    assert token_mask(offsets, start, end) == mask


@pytest.mark.parametrize("train, held_out, share", [
    (["Ada"], ["Ada", "Ben", "Cy"], 2 / 3),
    (["Zoe", "Ben"], ["Zo\u00eb, Letters", "Cy"], 1 / 2),  # the same author, written another way
    (["Ada"], ["Ben"], 1.0),
    (["Ada"], ["Ada"], 0.0),
    (["Ada"], [], 0.0),
])
def test_unseen_author_share_counts_held_out_authors_never_trained_on(train, held_out, share):
    data = QuoteData(_rows(*train), _rows(*held_out), "q.jsonl")
    assert data.unseen_author_share() == pytest.approx(share)


def test_the_report_gives_the_counts_then_one_line_per_reason_dropped_and_repair():
    data = QuoteData(_rows("A", "B", "C"), _rows("D"), "q.jsonl",
                     dropped={"empty quote": 2, "missing author": 1},
                     examples_dropped={"empty quote": "line 3: {'quote': ''}",
                                       "missing author": "line 7: {'quote': 'Hi.'}"},
                     repaired={"author trimmed": 1})
    assert data.report() == ("4 usable rows from q.jsonl: 3 train, 1 held out\n"
                             "dropped 2 row(s): empty quote, e.g. line 3: {'quote': ''}\n"
                             "dropped 1 row(s): missing author, e.g. line 7: {'quote': 'Hi.'}\n"
                             "repaired 1 row(s): author trimmed")


def test_the_embedded_quotes_come_in_the_shared_schema_and_colab_is_asked_to_install_them(monkeypatch):
    import gemmate_lib.data as data_module
    import gemmate_lib.guard_rails.colab as colab

    asked = []
    monkeypatch.setattr(colab, "install_embedded", lambda module: asked.append(module) or False)
    rows = data_module._read_embedded()
    assert asked == ["inspirational_quotes"]
    assert len(rows) == 326 and all(set(r) == {"quote", "author", "tags"} and r["tags"] == [] for r in rows)


def test_the_embedded_quotes_load_the_same_where_the_locale_is_not_utf8():
    """The quotes package's file is UTF-8, with typographic quotes and dashes: a machine whose locale encodes
    otherwise (Windows' cp1252, a C locale) loads the same rows, not a UnicodeDecodeError or mojibake. (Under
    Python's UTF-8 mode the locale decides no file's encoding, and this test cannot tell.)"""
    import locale

    expected = load_quotes("embedded")
    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")  # ASCII: a byte over 127 read in the locale's encoding fails
    try:
        data = load_quotes("embedded")
    finally:
        locale.setlocale(locale.LC_CTYPE, before)
    assert data == expected
    assert any("\u2019" in row["quote"] for row in data.train)  # the typographic marks came through


def test_without_the_offline_quotes_package_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "inspirational_quotes", None)  # imports as if it were not installed
    with pytest.raises(DataError) as err:
        load_quotes("embedded")
    assert err.value.problem == "the offline quotes package `inspirational-quotes` is not installed"
    assert err.value.fix == "run `make install` (or `pip install inspirational-quotes==0.0.16`)"
    requirements = (Path(__file__).parents[1] / "requirements.txt").read_text()
    assert "inspirational-quotes==0.0.16 " in requirements  # the fix pins what the course installs


NO_ROWS = "add rows (one JSON object per line, or CSV rows)"
RENAME = "rename the columns to quote, author"


@pytest.mark.parametrize("name, content, problem, fix", [
    ("q.txt", b"hello", "data file 'q.txt' is neither .jsonl, .csv nor .json", "save it as .jsonl or .csv"),
    ("q.jsonl", b'{"quote": "A", "author": "B"}\n{"quote": "C", "author": "D"}\n{"quote": "caf\xe9"}\n',
     "q.jsonl line 3 is not UTF-8 text", "save the file as UTF-8"),
    ("q.jsonl", b'{"quote": "A", "author": "B"}\n\n{"quote": oops}\n',
     "q.jsonl line 3 is not valid JSON (Expecting value)",
     "fix that line: each line must be one JSON object"),
    ("q.json", b'[{"quote": "A", "author": "B"},\n {"quote": oops}]',
     "q.json line 2 is not valid JSON (Expecting value)", "fix the JSON there"),
    ("q.json", b'{"quote": "A"}', "q.json is not a JSON array of objects",
     'write [{"quote": "...", "author": "..."}, ...]'),
    ("q.csv", b"quote,author\nOne,A\nTwo,B,extra\n", "q.csv line 3 has more fields than the header",
     'quote fields that contain commas, e.g. "Be kind, always"'),
    ("q.jsonl", b"", "data file 'q.jsonl' has no rows", NO_ROWS),
    ("q.jsonl", b"\n  \n", "data file 'q.jsonl' has no rows", NO_ROWS),
    ("q.csv", b"quote,author\n", "data file 'q.csv' has no rows", NO_ROWS),
    ("q.json", b"[]", "data file 'q.json' has no rows", NO_ROWS),
    ("q.csv", b"text,from\nOne,A\n",
     "data file 'q.csv' has no column quote, author (it has ['from', 'text'])", RENAME),
    ("q.csv", b"quote,who\nOne,A\nTwo,B\n",
     "data file 'q.csv' has no column author (it has ['quote', 'who'])", RENAME),
    ("q.jsonl", b'["One", "A"]\n["Two", "B"]\n',  # arrays, not objects
     "data file 'q.jsonl' has no column quote, author (it has [])", RENAME),
    ("q.csv", b"quote;author\nOne;A\n",
     "data file 'q.csv' has no column quote, author (it has ['quote;author'])",
     "the file separates its fields with ';': save it with commas (or as .jsonl)"),
    ("q.csv", b"quote\tauthor\nOne\tA\n",
     "data file 'q.csv' has no column quote, author (it has ['quote\\tauthor'])",
     "the file separates its fields with '\\t': save it with commas (or as .jsonl)"),
    ("q.csv", b"quote|author\nOne|A\n",
     "data file 'q.csv' has no column quote, author (it has ['quote|author'])",
     "the file separates its fields with '|': save it with commas (or as .jsonl)"),
])
def test_a_bad_file_is_one_error_naming_the_file_the_line_and_the_fix(tmp_path, name, content, problem, fix):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError) as err:
        load_quotes(str(tmp_path / name))
    assert (err.value.problem, err.value.fix) == (problem, fix)


@pytest.mark.parametrize("name", ["no/such/quotes.jsonl", "no/such/quotes.csv", "no/such/quotes.json"])
def test_a_missing_file_is_named_whatever_its_extension_never_looked_up_on_the_hub(name):
    with pytest.raises(DataError) as err:
        load_quotes(name)
    assert err.value.problem == f"data file {name!r} does not exist"
    assert err.value.fix == ("check the path (relative paths start at the notebook's folder) "
                             "or use dataset='embedded'")


def test_a_folder_is_named_as_a_folder(tmp_path):
    with pytest.raises(DataError) as err:
        load_quotes(str(tmp_path))
    assert err.value.problem == f"data file {str(tmp_path)!r} is a folder, not a file"


ROWS = [{"quote": "One", "author": "A"}, {"quote": "Two", "author": "B"}]


@pytest.mark.parametrize("name, content", [
    ("q.csv", "quote,author\nOne,A\nTwo,B\n"),
    ("q.json", json.dumps(ROWS)),
])
def test_a_byte_order_mark_from_a_spreadsheet_is_not_part_of_the_first_column(tmp_path, name, content):
    (tmp_path / name).write_text("\ufeff" + content, encoding="utf-8")  # Excel's "CSV UTF-8" writes one
    assert [r for _, r in read_records(tmp_path / name, ("quote", "author"))] == ROWS


def test_rows_of_a_json_array_are_numbered_from_1_in_the_drop_report(tmp_path):
    rows = [*GOOD[:2], {"quote": "", "author": "X"}]
    (tmp_path / "q.json").write_text(json.dumps(rows))
    assert [n for n, _ in read_records(tmp_path / "q.json")] == [1, 2, 3]
    data = load_quotes(str(tmp_path / "q.json"), eval_fraction=0.5)
    assert data.examples_dropped == {"empty quote": "line 3: {'quote': '', 'author': 'X'}"}


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"])  # Linux, Windows, old Mac spreadsheets
def test_csv_files_load_with_any_line_ends_and_number_their_lines(tmp_path, end):
    path = tmp_path / "q.csv"
    path.write_bytes(end.join([b"quote,author", b"One,A", b"Two,B", b""]))
    assert read_records(path) == [(2, ROWS[0]), (3, ROWS[1])]


def test_json_lines_that_are_not_objects_are_counted_as_rows_without_a_quote(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"quote": "One", "author": "A"}\n["Two", "B"]\n"Three"\nnull\n'
                    '{"quote": "Four", "author": "D"}\n')
    data = load_quotes(str(path), eval_fraction=0.5)
    assert data.dropped == {"missing quote": 3} and data.examples_dropped == {"missing quote": "line 2: {}"}


def _hub(monkeypatch, result):
    """datasets.load_dataset replaced: it records its arguments and returns (or raises) `result`."""
    import datasets

    calls = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        if isinstance(result, Exception):
            raise result
        return datasets.Dataset.from_dict(result)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_a_hub_dataset_is_its_train_split_cleaned_like_a_file(monkeypatch):
    calls = _hub(monkeypatch, {"quote": ["\u201cOne.\u201d", "Two.", ""],
                               "author": ["Ann", "Ben, poet", "Cy"], "tags": [["a"], [], []]})
    data = load_quotes("someone/quotes", eval_fraction=0.5)
    assert calls == [(("someone/quotes",), {"split": "train"})]
    assert data.source == "someone/quotes" and data.dropped == {"empty quote": 1}
    assert sorted(r["text"] for r in data.train + data.held_out) == ["Quote: One.\nAuthor: Ann",
                                                                     "Quote: Two.\nAuthor: Ben"]


def test_a_hub_failure_is_one_data_error_naming_the_dataset(monkeypatch):
    _hub(monkeypatch, ConnectionError("no network"))
    with pytest.raises(DataError) as err:
        read_hub("someone/quotes")
    assert err.value.problem == ("dataset 'someone/quotes' is not cached here and the Hub cannot be reached "
                                 "(offline or HF_HUB_OFFLINE=1)")
    assert isinstance(err.value.__cause__, ConnectionError)


@pytest.mark.parametrize("columns, problem", [
    (["text", "author"], "dataset 'someone/quotes' has no column quote (it has ['text', 'author'])"),
    (["text", "from"], "dataset 'someone/quotes' has no column quote, author (it has ['text', 'from'])"),
])
def test_a_hub_dataset_without_the_columns_names_what_it_has(monkeypatch, columns, problem):
    _hub(monkeypatch, {c: ["One."] for c in columns})
    with pytest.raises(DataError) as err:
        read_hub("someone/quotes")
    assert err.value.problem == problem
    assert err.value.fix == "use a dataset with the columns quote, author"


@pytest.mark.parametrize("n, fraction, n_held", [(10, 0.1, 1), (10, 0.0, 1), (20, 0.1, 2), (4, 0.5, 2),
                                                  (2, 0.9, 1), (5, 1.0, 4)])
@pytest.mark.parametrize("seed", [0, 42])
def test_the_split_holds_out_the_fraction_with_at_least_one_row_on_each_side(n, fraction, n_held, seed):
    rows = list(range(n))
    train, held_out = split_rows(rows, fraction, seed)
    assert (len(train), len(held_out)) == (n - n_held, n_held)
    assert sorted(train + held_out) == rows  # every row once, on one side only
    assert train == sorted(train) and held_out == sorted(held_out)  # each side in the file's order
    assert split_rows(rows, fraction, seed) == (train, held_out)


def test_load_quotes_holds_out_a_tenth_with_seed_42_by_default(tmp_path):
    rows = [{"quote": f"Quote number {i} is here.", "author": f"Author {i}"} for i in range(30)]
    path = _write(tmp_path, rows)
    default = load_quotes(path)
    assert (len(default.train), len(default.held_out)) == (27, 3)
    assert default.held_out == load_quotes(path, eval_fraction=0.1, data_seed=42).held_out
    assert default.held_out != load_quotes(path, data_seed=43).held_out  # the seed decides, on these rows
    assert not {r["quote"] for r in default.train} & {r["quote"] for r in default.held_out}


@pytest.mark.parametrize("text, shown", [("a b", "ab"), ("Zero\u200bwidth", "Zerowidth"), ("e\u0301", "e"),
                                         ("\x07bell\x00", "bell"), ("\u3164", ""), ("\t\n\x85", "")])
def test_visible_keeps_only_what_prints(text, shown):
    assert visible(text) == shown


@pytest.mark.parametrize("field_name", ["quote", "author"])
def test_a_carriage_return_inside_a_field_drops_the_row(field_name):
    row = {"quote": "Be kind.", "author": "Ada", field_name: "Two\rparts"}
    kept, dropped, _, _ = clean_rows([row])
    assert kept == [] and dropped == {
        f"{field_name} contains a newline or a template marker (Quote: / Author:)": 1}


FRAGMENT = "author is a fragment of the quote (the source split the quote at a comma), not a name"


@pytest.mark.parametrize("author", ["never give up.", "then you win!", "why not?", "and so do you",
                                    "iPods come and go.", 'Then you win."'])
def test_an_author_that_is_the_end_of_the_quote_is_dropped_as_a_fragment(author):
    kept, dropped, _, _ = clean_rows([{"quote": "Fashions fade,", "author": author}])
    assert kept == [] and dropped == {FRAGMENT: 1}


@pytest.mark.parametrize("author", ["bell hooks", "e. e. cummings", "Maya Angelou"])
def test_a_lowercase_or_short_name_is_kept(author):
    kept, dropped, _, _ = clean_rows([{"quote": "Fashions fade.", "author": author}])
    assert dropped == {} and kept[0]["author"] == author


@pytest.mark.parametrize("raw, name", [("Bill Gates, co-founder of Microsoft.", "Bill Gates"),
                                       ("General George Patton.", "General George Patton"),
                                       ("John F.", "John F."), ("Ada Lovelace PhD.", "Ada Lovelace PhD.")])
def test_trim_author_removes_a_role_and_a_final_period_but_not_an_initials(raw, name):
    assert trim_author(raw) == name


@pytest.mark.parametrize("raw, key", [("Oscar Wilde, The Picture of Dorian Gray", "oscar wilde"),
                                      ("J.K. Rowling", "j k rowling"),
                                      ("  Zo\u00eb   Salda\u00f1a ", "zoe saldana"), ("", ""), (None, "")])
def test_normalize_author_gives_one_key_per_name(raw, key):
    assert normalize_author(raw) == key


def test_normalize_quote_folds_case_punctuation_and_typographic_marks():
    assert normalize_quote("It's \u201cfine\u201d \u2014 REALLY,\tfine!") == "it s fine really fine"


@pytest.mark.parametrize("text, limit, shown", [
    ("x" * 100, 100, "x" * 100),  # exactly the limit: whole
    ("y" * 101, 100, "y" * 100 + " ..."),
    ("one two three", 9, "one two ..."),  # the cut falls inside "three"
    ("one two   three four", 10, "one two ..."),  # the spaces before the cut go too
    ("abcd efghijkl", 8, "abcd ..."),  # the last space at exactly half the limit: cut there
    ("abcd efghijkl", 9, "abcd ..."),
    ("abcde fghijklmnop", 12, "abcde fghijk ..."),  # the last space before half: at the limit
])
def test_excerpt_cuts_at_the_last_space_within_the_limit(text, limit, shown):
    assert excerpt(text, limit) == shown
    if limit == 100:
        assert excerpt(text) == shown  # a report shows 100 characters


def test_a_row_of_exactly_max_length_tokens_with_eos_is_kept_and_one_more_is_dropped(tiny_tokenizer):
    row = {"quote": "Be brave today.", "author": "Ann"}
    n = len(tiny_tokenizer(format_quote(row["quote"], row["author"]) + "<eos>")["input_ids"])
    kept, dropped, _, _ = clean_rows([row], tiny_tokenizer, n)
    assert dropped == {} and [r["text"] for r in kept] == ["Quote: Be brave today.\nAuthor: Ann"]
    kept, dropped, _, _ = clean_rows([row], tiny_tokenizer, n - 1)
    assert kept == [] and dropped == {
        f"too long (over max_length={n - 1} tokens: the Author: line would be cut off)": 1}


def test_a_text_of_exactly_max_chars_is_kept_and_one_more_is_dropped():
    room = MAX_CHARS - len(format_quote("", "Ann"))
    kept, dropped, _, _ = clean_rows([{"quote": "a" * room, "author": "Ann"}])
    assert dropped == {} and len(kept[0]["text"]) == MAX_CHARS == 1000
    kept, dropped, _, _ = clean_rows([{"quote": "a" * (room + 1), "author": "Ann"}])
    assert kept == [] and dropped == {"too long (over 1000 characters: a paragraph, not a quote)": 1}


def test_repairs_are_counted_by_kind_and_reported(tmp_path):
    rows = [{"quote": "\u201cOne.\u201d", "author": "Ann"},
            {"quote": "\u201cTwo.\u201d", "author": "Ben, poet"}, {"quote": "Three.", "author": "Cy."},
            {"quote": "Four.", "author": "Di, singer."}, {"quote": "Five.", "author": "Ed"}]
    expected = {"quotation marks around the quote removed (the prompts have none)": 2,
                "author trimmed to the name (a role after a comma, or a final period, removed)": 3}
    kept, dropped, _, repaired = clean_rows(rows)
    assert dropped == {} and repaired == expected
    assert [r["text"] for r in kept] == ["Quote: One.\nAuthor: Ann", "Quote: Two.\nAuthor: Ben",
                                         "Quote: Three.\nAuthor: Cy", "Quote: Four.\nAuthor: Di",
                                         "Quote: Five.\nAuthor: Ed"]
    data = load_quotes(_write(tmp_path, rows), eval_fraction=0.4)
    assert data.repaired == expected
    assert data.report().splitlines()[1:] == [f"repaired {n} row(s): {fix}" for fix, n in expected.items()]


@pytest.mark.parametrize("tags, kept_tags", [(["love", "life"], ["love", "life"]), ("love", ["love"]),
                                             (["love", 5, None, "bad \ud800", "life"], ["love", "life"]),
                                             (5, []), (None, []), ({"love": 1}, [])])
def test_tags_are_a_list_of_text_whatever_the_source_wrote(tags, kept_tags):
    kept, _, _, _ = clean_rows([{"quote": "Be kind.", "author": "Ada", "tags": tags}])
    assert kept[0]["tags"] == kept_tags


def test_too_few_usable_rows_lists_every_reason_with_an_example_and_the_fix(tmp_path):
    path = _write(tmp_path, [{"quote": "A", "author": "B"}, {"quote": "", "author": "C"}, {"quote": "D"}])
    with pytest.raises(DataError) as err:
        load_quotes(path)
    assert err.value.problem == ("q.jsonl has 1 usable row(s) after dropping 2: "
                                 "1 empty quote (e.g. line 2: {'quote': '', 'author': 'C'}); "
                                 "1 missing author (e.g. line 3: {'quote': 'D'})")
    assert err.value.fix == ("every row needs a distinct, one-line `quote` and an `author`; "
                             "at least 2 rows are needed")


def test_to_dataset_without_a_tokenizer_is_the_text_column():
    rows = _rows("Ada", "Ben")
    ds = to_dataset(rows)
    assert ds.column_names == ["text"] and ds["text"] == ["Quote: Quote 0.\nAuthor: Ada",
                                                          "Quote: Quote 1.\nAuthor: Ben"]


def test_a_tokenizer_without_an_eos_token_encodes_the_text_alone(tiny_tokenizer):
    rows = _rows("Ada")
    plain = tiny_tokenizer(rows[0]["text"])["input_ids"]
    assert to_dataset(rows, tiny_tokenizer)[0]["input_ids"] == plain + [tiny_tokenizer.eos_token_id]
    no_eos = copy.deepcopy(tiny_tokenizer)
    no_eos.eos_token = None
    assert to_dataset(rows, no_eos)[0]["input_ids"] == plain
