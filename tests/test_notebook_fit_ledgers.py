"""How a run's ledgers become the measured copies (tools/fit/notebook_fit.py): each kernel's events turned
into the distinct moments a notebook holds (its child processes' copies counted beside the kernel's), the kind
of each copy from its bytes, which notebook a ledger ran, and the check that holds nbval's and `make course`'s
runs to the committed measurement. Hand-made ledgers over the real notebooks' cells, so a mistake here would
put a wrong row into docs/full-shape.md's table or let a notebook that grew pass unnoticed."""
import json
from pathlib import Path

import pytest

from gemmate_lib import exercises, fit
from tools.fit import exercise_fit, notebook_fit

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / "notebooks"


def _hash(stem: str, cell_id: str | None = None, index: int = 0) -> str:
    """The ledger's hash of a real cell of notebook `stem` (by its id, or the `index`-th code cell whose hash
    no other notebook shares)."""
    ids = notebook_fit.cell_ids(NB / f"{stem}.ipynb")
    if cell_id:
        return next(h for h, c in ids.items() if c == cell_id)
    others = {h for nb in NB.glob("*.ipynb") if nb.stem != stem for h in notebook_fit.cell_ids(nb)}
    return [h for h in ids if h not in others][index]


def _copy(**sizes) -> dict:
    return {"class": "Gemma3ForCausalLM", "bytes": {k.replace("__", ":"): v for k, v in sizes.items()}}


def _event(event, source, time, copies=(), rss=0, **more) -> dict:
    return {"event": event, "cell": 0, "source": source, "time": time, "copies": list(copies),
            "rss_anon": rss, **more}


def _ledger(path: Path, events) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(e) + "\n" for e in events) + "\n")
    return path


WHOLE = _copy(cpu__bfloat16=1000, cpu__float32=10)
NF4 = _copy(cpu__4bit=400, cpu__bfloat16=300, cpu__float32=100)
NF4_WIDE = _copy(cpu__4bit=400, cpu__bfloat16=100, cuda__float32=60, cpu__float32=50)


@pytest.mark.parametrize("copy, compute, expected", [
    (WHOLE, "bfloat16", "whole"),
    (_copy(cpu__float32=4000), "float32", "whole"),
    (NF4, "bfloat16", "nf4"),
    (NF4_WIDE, "bfloat16", "nf4-fp32"),  # fp32 on two devices adds up to more than the 16-bit weights
    (NF4_WIDE, "float16", "nf4-fp32"),
    (NF4_WIDE, "float32", "nf4"),  # an fp32 run's 4-bit copy is not widened
    (_copy(cpu__4bit=400, cpu__bfloat16=50, cpu__float16=50, cpu__float32=100), "bfloat16", "nf4"),  # a tie
    (_copy(cpu__4bit=0, cpu__float32=100), "bfloat16", "whole"),
    (_copy(cpu__4bit=400), "bfloat16", "nf4"),  # nothing else: not widened
    (_copy(cpu__4bit=400, cpu__bfloat16=300), "bfloat16", "nf4"),  # no fp32 at all
    (_copy(cpu__4bit=400, cpu__float16=100, cpu__float32=101), "float16", "nf4-fp32"),  # no bf16, 1 byte over
    (_copy(cpu__4bit=400, cpu__bfloat16=100, cpu__float32=101), "bfloat16", "nf4-fp32"),  # no fp16
])
def test_a_copys_kind_comes_from_its_bytes(copy, compute, expected):
    assert notebook_fit.kind(copy, compute) == expected


def test_a_ledgers_events_become_the_notebooks_distinct_moments(tmp_path):
    """05's kernel loads a 16-bit copy, a child process reloads one beside it and exits, the kernel loads a
    4-bit copy and trains it in two cells, and the export cell (an optional part, by its cell) holds it. The
    events are written out of order, as two processes append them."""
    export = _hash("05_save_and_push", "d7c65ecd")
    load, merge, train_a, train_b = [h for h in map(lambda i: _hash("05_save_and_push", index=i), range(5))
                                     if h != export][:4]
    events = [
        _event("cell", load, 1.0, rss=100),  # nothing held: no moment
        _event("load", load, 2.0, [WHOLE], rss=5000),
        _event("load", merge, 3.0, [WHOLE], rss=900, pid=7),
        _event("exit", merge, 4.0, [], pid=7),
        _event("load", train_a, 5.0, [NF4_WIDE], rss=9000),  # the kernel now holds the 4-bit copy only
        _event("train", train_a, 6.0, [NF4_WIDE]),
        _event("train", train_b, 7.0, [NF4_WIDE]),
        _event("cell", export, 8.0, [NF4_WIDE]),
        _event("cell", "0123456789ab", 9.0, [NF4_WIDE], part="exercise 05-2"),
        _event("exit", train_b, 10.0, [], pid=8),  # a child that loaded nothing
        _event("cell", train_b, 11.0, [NF4_WIDE]),  # the trained copy, held after training
    ]
    ledger = _ledger(tmp_path / "05_save_and_push.jsonl",
                     [events[i] for i in (3, 0, 5, 10, 1, 8, 2, 7, 4, 9, 6)])
    ids = notebook_fit.cell_ids(NB / "05_save_and_push.ipynb")
    found, kernel = notebook_fit.moments(ledger, NB / "05_save_and_push.ipynb", "bfloat16")
    assert kernel == 5000 - 1010  # the kernel's memory at its first load, less the copy it loads
    assert found == [
        {"copies": ["whole"], "loading": 0, "training": False, "part": None, "child": False,
         "cells": [ids[load]]},
        {"copies": ["whole", "whole"], "loading": 0, "training": False, "part": None, "child": True,
         "cells": [ids[merge]]},
        {"copies": ["whole"], "loading": None, "training": False, "part": None, "child": False,
         "cells": [ids[merge]]},  # the child's exit: the kernel's own copy again
        {"copies": ["nf4-fp32"], "loading": 0, "training": False, "part": None, "child": False,
         "cells": [ids[train_a]]},
        {"copies": ["nf4-fp32"], "loading": None, "training": True, "part": None, "child": False,
         "cells": [ids[train_a], ids[train_b]]},  # one moment, two cells
        {"copies": ["nf4-fp32"], "loading": None, "training": False, "part": "export_gguf", "child": False,
         "cells": [ids[export]]},
        {"copies": ["nf4-fp32"], "loading": None, "training": False, "part": "exercise 05-2", "child": False,
         "cells": ["added"]},  # a cell the notebook does not have (an exercise's solution)
        {"copies": ["nf4-fp32"], "loading": None, "training": False, "part": None, "child": False,
         "cells": [ids[train_b]]},
    ]
    # an fp32 run's 4-bit copy is not counted as widened
    fp32, _ = notebook_fit.moments(ledger, NB / "05_save_and_push.ipynb", "float32")
    assert [m["copies"] for m in fp32][3:] == [["nf4"]] * 5


def test_the_copy_being_loaded_comes_first_and_the_others_are_sorted(tmp_path):
    """Two moments holding the same copies compare equal whatever order they were loaded in; the one being
    loaded leads, so the planner knows which copy is at its load peak."""
    cell = _hash("04_evaluation")
    ledger = _ledger(tmp_path / "04_evaluation.jsonl", [
        _event("load", cell, 1.0, [NF4], rss=3000),
        _event("load", cell, 2.0, [NF4, WHOLE], rss=4000),
        _event("cell", cell, 3.0, [WHOLE, NF4]),
        _event("cell", cell, 4.0, [NF4, WHOLE]),
    ])
    found, kernel = notebook_fit.moments(ledger, NB / "04_evaluation.ipynb", "bfloat16")
    assert [(m["copies"], m["loading"]) for m in found] == [
        (["nf4"], 0), (["whole", "nf4"], 0), (["nf4", "whole"], None)]
    assert kernel == 3000 - 800  # the first load only


def test_a_child_process_loading_before_the_kernel_does_not_set_the_kernels_memory(tmp_path):
    cell = _hash("05_save_and_push")
    ledger = _ledger(tmp_path / "05_save_and_push.jsonl", [
        _event("load", cell, 1.0, [WHOLE], rss=99_000, pid=3),
        _event("load", cell, 2.0, [NF4], rss=2000),
    ])
    found, kernel = notebook_fit.moments(ledger, NB / "05_save_and_push.ipynb", "bfloat16")
    assert kernel == 2000 - 800
    assert found[1]["copies"] == ["nf4", "whole"] and found[1]["child"]
    # the same two copies, once one in a child process and once both in the kernel: two moments
    ledger = _ledger(tmp_path / "two.jsonl", [
        _event("load", cell, 1.0, [WHOLE], rss=99_000, pid=3),
        _event("cell", cell, 2.0, [NF4]),
        _event("exit", cell, 3.0, [], pid=3),
        _event("cell", cell, 4.0, [NF4, WHOLE]),
    ])
    found, _ = notebook_fit.moments(ledger, NB / "05_save_and_push.ipynb", "bfloat16")
    assert [(m["copies"], m["child"]) for m in found] == [
        (["whole"], True), (["nf4", "whole"], True), (["nf4"], False), (["nf4", "whole"], False)]


def test_cells_without_ids_are_named_by_their_place(tmp_path):
    """An older notebook's cells carry no id: a ledger's cell is then named by its index among all cells."""
    import nbformat

    from tools.fit.ledger import cell_hash

    node = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# a"),
                                           nbformat.v4.new_code_cell("x = 1"),
                                           nbformat.v4.new_code_cell("y = 2\nprint(y)")])
    path = tmp_path / "old.ipynb"
    text = json.loads(nbformat.writes(node))
    for c in text["cells"]:
        c.pop("id", None)
    path.write_text(json.dumps(text))
    assert notebook_fit.cell_ids(path) == {cell_hash("x = 1"): "1", cell_hash("y = 2\nprint(y)"): "2"}


def test_a_ledger_is_matched_to_its_notebook_by_name_or_by_most_of_its_cells(tmp_path):
    run = tmp_path / "run"
    named = _ledger(run / "ledger" / "04_evaluation.jsonl", [_event("cell", "nothing", 1.0)])
    mostly_06 = [_hash("06_compare_methods", index=i) for i in range(3)] + [_hash("04_evaluation")]
    kernel = _ledger(run / "ledger" / "kernel-41.jsonl",
                     [_event("cell", s, float(i)) for i, s in enumerate(mostly_06)])
    stranger = _ledger(run / "ledger" / "kernel-7.jsonl", [_event("cell", "0123456789ab", 1.0)])
    assert notebook_fit.notebook_of(named) == NB / "04_evaluation.ipynb"
    assert notebook_fit.notebook_of(kernel) == NB / "06_compare_methods.ipynb"
    assert notebook_fit.notebook_of(stranger) is None
    assert notebook_fit.ledgers(run) == [("04_evaluation", named), ("06_compare_methods", kernel)]
    assert notebook_fit.ledgers(tmp_path / "no-run") == []


def _two_kernels_of_05(run: Path, rss=(5000, 7000)) -> None:
    cell, export = _hash("05_save_and_push"), _hash("05_save_and_push", "d7c65ecd")
    _ledger(run / "ledger" / "kernel-1.jsonl", [_event("load", cell, 1.0, [NF4], rss=rss[0])])
    _ledger(run / "ledger" / "kernel-2.jsonl", [_event("load", cell, 1.0, [NF4], rss=rss[1]),
                                                _event("cell", export, 2.0, [NF4])])
    _ledger(run / "ledger" / "04_evaluation.jsonl", [_event("load", _hash("04_evaluation"), 1.0, [WHOLE],
                                                            rss=1010 + 300)])


def test_a_runs_ledgers_are_collected_per_notebook_with_the_largest_kernel(tmp_path):
    """Two kernels ran 05 (nbval's two runs of a notebook): their moments together, each once."""
    _two_kernels_of_05(tmp_path)
    found = notebook_fit.collect(tmp_path, "float16")
    assert found["kernel_bytes"] == 7000 - 800
    assert found["child_phases"] == {"export_gguf": ["convert", "quantize", "verify"]}  # 05's export
    five = found["notebooks"]["05_save_and_push"]
    assert five["without_whole"] == notebook_fit.WITHOUT_WHOLE["05_save_and_push"]
    assert [(m["copies"], m["loading"], m["part"]) for m in five["moments"]] == [
        (["nf4"], 0, None), (["nf4"], None, "export_gguf")]
    assert "without_whole" not in found["notebooks"]["04_evaluation"]
    assert "float16 compute" in found["measured"]
    import subprocess

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert found["measured"].endswith(f"compute), {head.stdout.strip()}")  # the commit it measured
    wide = _copy(cpu__4bit=400, cpu__float32=500)
    _ledger(tmp_path / "ledger" / "04_evaluation.jsonl",
            [_event("load", _hash("04_evaluation"), 1.0, [wide])])
    fp32 = notebook_fit.collect(tmp_path, "float32")["notebooks"]["04_evaluation"]["moments"]
    assert fp32[0]["copies"] == ["nf4"]
    assert notebook_fit.collect(tmp_path / "empty")["kernel_bytes"] == 0


def _committed(kernel=6000) -> dict:
    nf4 = {"copies": ["nf4"], "loading": 0, "training": False, "part": None, "child": False}
    export = {**nf4, "copies": ["nf4", "whole"], "loading": None, "part": "export_gguf"}
    return {"kernel_bytes": kernel, "notebooks": {"05_save_and_push": {"moments": [nf4, export]}}}


def test_a_run_is_held_to_the_committed_copies_of_the_parts_it_ran(tmp_path):
    cell, export = _hash("05_save_and_push"), _hash("05_save_and_push", "d7c65ecd")
    two = [_event("load", cell, 1.0, [NF4], rss=5000), _event("load", cell, 2.0, [NF4, WHOLE])]
    _ledger(tmp_path / "plain" / "ledger" / "05_save_and_push.jsonl", two)
    problems = notebook_fit.check_run(tmp_path / "plain", _committed())
    assert problems == ["05_save_and_push held 2 model copies at once in 05_save_and_push.jsonl; the course "
                        "says at most 1 (gemmate_lib/notebook_copies.json)"]
    # the same two copies inside the export cell: the part ran, and the course allows it two
    _ledger(tmp_path / "export" / "ledger" / "05_save_and_push.jsonl",
            [two[0], _event("cell", export, 2.0, [NF4, WHOLE])])
    assert notebook_fit.check_run(tmp_path / "export", _committed()) == []


LIMIT = 6000 * 1.25 + 0.5e9  # _committed's kernel, its slack and half a GB


@pytest.mark.parametrize("rss, fails", [(LIMIT + 800, False), (LIMIT + 801, True)])
def test_a_kernel_holding_more_than_its_slack_is_caught(tmp_path, rss, fails):
    _ledger(tmp_path / "ledger" / "05_save_and_push.jsonl",
            [_event("load", _hash("05_save_and_push"), 1.0, [NF4], rss=rss)])
    problems = notebook_fit.check_run(tmp_path, _committed())
    assert len(problems) == fails
    assert all("before its first load" in p and "0.00 GB allows" in p for p in problems)


@pytest.mark.parametrize("ratio, stale", [(1.24, False), (1.26, True), (0.76, False), (0.74, True)])
def test_a_kernel_that_moved_more_than_its_slack_makes_the_table_stale(ratio, stale):
    committed = fit.measured()
    moved = {**committed, "kernel_bytes": committed["kernel_bytes"] * ratio}
    problems = notebook_fit.compare(committed, moved)
    assert bool(problems) == stale
    assert not stale or "before its first load" in problems[0]


def test_a_notebook_whose_verdict_got_worse_is_named_with_the_model(monkeypatch):
    """A fresh measurement where 04 holds a whole copy beside its 4-bit one: the table goes stale, and the
    offered models for which 04 no longer fits a free T4 are named, with the verdict before and after."""
    committed = fit.measured()
    grown = json.loads(json.dumps(committed))
    grown["notebooks"]["04_evaluation"]["moments"].append(
        {"copies": ["whole", "nf4"], "loading": 0, "training": False, "part": None, "child": False})
    problems = notebook_fit.compare(committed, grown)
    assert problems[0].startswith("04_evaluation: its measured copies differ")
    assert "now at most 2 at once" in problems[0]
    worse = problems[1:]
    assert worse and all(p.startswith("04_evaluation with ") and "(yes -> no)" in p for p in worse)
    assert any("Gemma 4 E2B" in p or "gemma-4-E2B" in p for p in worse)


def test_each_table_cell_says_the_verdict_copies_and_peaks():
    gib = fit.GIB
    row = {"fits": "yes", "copies": 1, "gpu": 3 * gib, "ram": 1.05e9, "gpu_rest": 0, "ram_rest": 0}
    assert notebook_fit.cell_text(row) == "**fits**: 1 at once, 3.0 GiB GPU, 1.1 GB RAM"
    assert notebook_fit.cell_text({**row, "fits": "no", "copies": 2}) == (
        "**does not fit**: 2 at once, 3.0 GiB GPU, 1.1 GB RAM")
    partial = {**row, "fits": "without the merge", "gpu": 20 * gib, "gpu_rest": 5.5 * gib, "ram_rest": 1.05e9}
    assert notebook_fit.cell_text(partial) == (
        "fits without the merge: 1 at once, 5.5 GiB GPU, 1.1 GB RAM (with it 20.0 GiB)")


def test_the_exercise_table_has_a_row_per_exercise_and_says_why_one_does_not_fit(monkeypatch):
    from gemmate_lib import exercises
    from gemmate_lib.exercises.judging import EXERCISES

    def fake_fit(name, shape, compute, runtime, data, table):
        return ({"fits": True, "gpu": 2 * fit.GIB, "ram": 3e9} if name.startswith("00")
                else {"fits": False, "why": f"{name} needs two copies"})

    monkeypatch.setattr(exercises, "exercise_fit", fake_fit)
    lines = notebook_fit.exercise_table().splitlines()
    assert lines[0] == "| exercise | google/gemma-2b | Gemma 3 1B | Gemma 4 E2B |"
    assert len(lines) == 2 + len(EXERCISES)
    first, last = lines[2], lines[-1]
    assert first.startswith(f"| {next(iter(EXERCISES))} | fits: 2.0 GiB GPU, 3.0 GB RAM | ")
    name = list(EXERCISES)[-1]
    assert last == f"| {name} | " + " | ".join([f"**does not fit**: {name} needs two copies"] * 3) + " |"


def test_the_readme_line_names_what_each_model_leaves_out(monkeypatch):
    fake = [{"notebook": nb, "part": part, "model": model, "fits": fits}
            for model in notebook_fit.MODELS
            for nb, part, fits in (("00_setup", "", "yes"), ("03_lora_sft", "", "without section 7"),
                                   ("05_save_and_push", "", "no"), ("qlora_one_runtime", "", "no"),
                                   ("03_lora_sft", "part 2", "no"))]
    monkeypatch.setattr(notebook_fit, "rows", lambda data=None: fake)
    line = notebook_fit.readme_line()
    assert line.startswith("Gemma 3 1B (`google/gemma-3-1b-pt`) runs every notebook but 05, the one-page "
                           "recipe, and 03 without their 16/32-bit parts; Gemma 4 E2B (`google/gemma-4-E2B`)")
    assert line.endswith("([measured per notebook](docs/full-shape.md#what-a-free-t4-runs-by-notebook)).")
    monkeypatch.setattr(notebook_fit, "rows", lambda data=None: [r for r in fake if r["fits"] == "yes"])
    assert notebook_fit.readme_line().startswith("Gemma 3 1B (`google/gemma-3-1b-pt`) runs every notebook; ")


def test_writing_a_measurement_regenerates_the_json_and_the_three_tables(tmp_path, monkeypatch):
    pages = {}
    for name, path in (("DOCS", notebook_fit.DOCS), ("README", notebook_fit.README),
                       ("EXERCISE_DOCS", notebook_fit.EXERCISE_DOCS)):
        pages[name] = tmp_path / path.name
        pages[name].write_text(path.read_text())
        monkeypatch.setattr(notebook_fit, name, pages[name])
    monkeypatch.setattr(fit, "MEASURED_COPIES", tmp_path / "copies.json")
    monkeypatch.setattr(notebook_fit, "table", lambda data=None: f"TABLE {len(data['notebooks'])}")
    monkeypatch.setattr(notebook_fit, "readme_line", lambda data=None: f"README {len(data['notebooks'])}")
    monkeypatch.setattr(notebook_fit, "exercise_table",
                        lambda data=None: f"EXERCISES {len(data['notebooks'])}")
    # the exercises' fit table follows the copies (tools/fit/exercise_fit.py): written beside them
    monkeypatch.setattr(exercises, "FIT_TABLE", tmp_path / "fit_table.json")
    written = {"99-1": {"runs": [["a", [], 8]], "needs": ""}}
    monkeypatch.setattr(exercise_fit, "table", lambda data=None: written)
    data = {"kernel_bytes": 1, "notebooks": {"a": {"moments": [{"copies": ["nf4"]}]}}}
    try:
        notebook_fit.write(data)
        assert (tmp_path / "copies.json").read_text() == json.dumps(data, indent=1) + "\n"  # as committed
        assert fit.measured() == data  # the cached committed measurement is read again
        assert exercises.fit_table() == written
    finally:
        fit.measured.cache_clear()
        exercises.fit_table.cache_clear()
    bad = {"kernel_bytes": 1, "notebooks": {"a": {"moments": [{"copies": ["whle"]}]}}}
    with pytest.raises(ValueError, match="unknown model-copy kind 'whle'"):
        notebook_fit.write(bad)  # a kind the planner does not know is never written
    assert fit.MEASURED_COPIES.read_text() == json.dumps(data, indent=1) + "\n"
    assert "\nTABLE 1\n" in pages["DOCS"].read_text()
    assert "\nREADME 1\n" in pages["README"].read_text()
    assert "\nEXERCISES 1\n" in pages["EXERCISE_DOCS"].read_text()


def test_the_command_checks_a_run_and_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fit, "measured", lambda: _committed())
    _ledger(tmp_path / "ledger" / "05_save_and_push.jsonl",
            [_event("load", _hash("05_save_and_push"), 1.0, [NF4], rss=5000)])
    assert notebook_fit.main([str(tmp_path), "--check"]) == 0
    said = capsys.readouterr().out
    assert said == f"{tmp_path}: every notebook held the copies the course says, or fewer\n"
    _ledger(tmp_path / "ledger" / "05_save_and_push.jsonl",
            [_event("load", _hash("05_save_and_push"), 1.0, [NF4, WHOLE], rss=5000)])
    assert notebook_fit.main([str(tmp_path), "--check"]) == 1
    assert "held 2 model copies at once" in capsys.readouterr().out


def test_the_command_writes_a_runs_measurement_or_prints_the_table(tmp_path, capsys, monkeypatch):
    written = []
    monkeypatch.setattr(notebook_fit, "write", written.append)
    monkeypatch.setattr(notebook_fit, "table", lambda data=None: "THE TABLE")
    _two_kernels_of_05(tmp_path)
    assert notebook_fit.main([str(tmp_path)]) == 0
    assert written == [notebook_fit.collect(tmp_path)]
    assert notebook_fit.main([]) == 0
    assert capsys.readouterr().out == "THE TABLE\n"


def test_the_help_says_what_the_command_reads_and_checks(capsys):
    with pytest.raises(SystemExit):
        notebook_fit.main(["--help"])
    said = " ".join(capsys.readouterr().out.split())
    assert " ".join(notebook_fit.__doc__.split("\n\n")[0].split()) in said
    assert "a run folder with ledger/*.jsonl (the smoke run)" in said
    assert "check RUN (nbval's, `make course`'s) against the committed measurement instead" in said


def test_the_check_prints_one_line_per_problem(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fit, "measured", lambda: {"kernel_bytes": 10**12, "notebooks": {}})
    for stem in ("04_evaluation", "05_save_and_push"):
        _ledger(tmp_path / "ledger" / f"{stem}.jsonl", [_event("load", _hash(stem), 1.0, [NF4], rss=5000)])
    assert notebook_fit.main([str(tmp_path), "--check"]) == 1
    assert [line.split(" held ")[0] for line in capsys.readouterr().out.splitlines()] == [
        "04_evaluation", "05_save_and_push"]


def _moment(copies=("nf4",), **more):
    return {"copies": list(copies), "loading": None, "training": False, "part": None, "child": False, **more}


def _rows_by_name(monkeypatch, verdicts):
    """rows() of a hand-made measurement: verdicts[data["name"]] = {(notebook, part, model): verdict}."""
    monkeypatch.setattr(notebook_fit, "rows", lambda data=None: [
        {"notebook": nb, "part": part, "model": model, "fits": fits}
        for (nb, part, model), fits in verdicts[data["name"]].items()])


def test_a_verdict_is_worse_when_it_moves_from_fits_to_partly_or_from_partly_to_not(monkeypatch):
    """Only a worse verdict is named (yes -> without a part -> no), a row with its part in its name; a better
    verdict, an equal one and a row the committed table lacks are not."""
    _rows_by_name(monkeypatch, {
        "old": {("03_lora_sft", "", "gemma-2b"): "yes", ("03_lora_sft", "part 2", "gemma-4-E2B"): "without x",
                ("04_evaluation", "", "gemma-2b"): "without x", ("05_save_and_push", "", "gemma-2b"): "no"},
        "new": {("03_lora_sft", "", "gemma-2b"): "without x", ("03_lora_sft", "part 2", "gemma-4-E2B"): "no",
                ("04_evaluation", "", "gemma-2b"): "yes", ("05_save_and_push", "", "gemma-2b"): "no",
                ("06_compare_methods", "", "gemma-2b"): "no"}})
    committed = {"name": "old", "kernel_bytes": 1e9, "notebooks": {"03_lora_sft": {"moments": [_moment()]}}}
    found = {"name": "new", "kernel_bytes": 1e9,
             "notebooks": {"03_lora_sft": {"moments": [_moment(), _moment(("nf4", "whole"))]}}}
    assert notebook_fit.compare(committed, found) == [
        "03_lora_sft: its measured copies differ from gemmate_lib/notebook_copies.json (now at most 2 at "
        "once); run `python -m tools.fit.notebook_fit <smoke run>`",
        "03_lora_sft with gemma-2b no longer fits a free T4 as the course says (yes -> without x)",
        "03_lora_sft with part 2 with gemma-4-E2B no longer fits a free T4 as the course says (without x -> "
        "no)"]


@pytest.mark.parametrize("change", [{"part": "export_gguf"}, {"child": True}])
def test_a_moment_that_moved_into_a_part_or_a_child_process_is_a_change(monkeypatch, change):
    _rows_by_name(monkeypatch, {"old": {}, "new": {}})
    committed = {"name": "old", "kernel_bytes": 1e9,
                 "notebooks": {"05_save_and_push": {"moments": [_moment()]}}}
    found = {"name": "new", "kernel_bytes": 1e9,
             "notebooks": {"05_save_and_push": {"moments": [_moment(**change)]}}}
    assert [p.split(":")[0] for p in notebook_fit.compare(committed, found)] == ["05_save_and_push"]


def test_a_notebook_measured_on_one_side_only_is_a_change(monkeypatch):
    _rows_by_name(monkeypatch, {"old": {}, "new": {}})
    committed = {"name": "old", "kernel_bytes": 1e9, "notebooks": {"04_evaluation": {"moments": [_moment()]}}}
    found = {"name": "new", "kernel_bytes": 1e9, "notebooks": {"05_save_and_push": {"moments": [_moment()]}}}
    problems = notebook_fit.compare(committed, found)
    assert [p.split(":")[0] for p in problems] == ["04_evaluation", "05_save_and_push"]
    assert "(now at most 0 at once)" in problems[0] and "(now at most 1 at once)" in problems[1]


@pytest.mark.parametrize("was, now, stale", [(4e9, 5e9, False), (1.135e9, 0.805e9, True)])
def test_the_kernels_line_gives_both_figures(monkeypatch, was, now, stale):
    _rows_by_name(monkeypatch, {"old": {}, "new": {}})
    problems = notebook_fit.compare({"name": "old", "kernel_bytes": was, "notebooks": {}},
                                    {"name": "new", "kernel_bytes": now, "notebooks": {}})
    assert problems == ([
        "a notebook's kernel now holds 0.81 GB before its first load, 1.14 GB as committed (more than 25% "
        "apart); run `python -m tools.fit.notebook_fit <smoke run>`"] if stale else [])


def test_a_notebook_the_committed_measurement_lacks_and_a_kernel_over_its_slack_are_named(tmp_path):
    _ledger(tmp_path / "ledger" / "05_save_and_push.jsonl",
            [_event("load", _hash("05_save_and_push"), 1.0, [NF4], rss=2.035e9 + 800)])
    assert notebook_fit.check_run(tmp_path, {"kernel_bytes": 1.135e9, "notebooks": {}}) == [
        "05_save_and_push held 1 model copies at once in 05_save_and_push.jsonl; the course says at most 0 "
        "(gemmate_lib/notebook_copies.json)",
        f"a kernel held 2.04 GB before its first load in {tmp_path.name}, more than the committed 1.14 GB "
        "allows"]


def test_the_tables_are_those_of_the_measurement_they_are_given():
    """A measurement where 04 loads a whole copy beside its 4-bit one: the table and the README line say 04
    does not fit Gemma 4 E2B on a free T4, where the committed measurement's say it does."""
    grown = json.loads(json.dumps(fit.measured()))
    grown["notebooks"]["04_evaluation"]["moments"].append(_moment(("whole", "nf4"), loading=0))
    line = next(r for r in notebook_fit.table(grown).splitlines() if r.startswith("| `04_evaluation` |"))
    assert line.rstrip(" |").rsplit("|", 1)[1].strip().startswith("**does not fit**")
    committed = next(r for r in notebook_fit.table().splitlines() if r.startswith("| `04_evaluation` |"))
    assert committed.rstrip(" |").rsplit("|", 1)[1].strip().startswith("**fits**")
    e2b = notebook_fit.readme_line(grown).split("; ")[1]
    assert "but 01, 04," in e2b and "04" not in notebook_fit.readme_line().split("; ")[1]


def test_the_exercise_table_is_that_of_the_measurement_it_is_given(monkeypatch):
    from gemmate_lib import exercises

    monkeypatch.setattr(exercises, "exercise_fit", lambda name, shape, compute, runtime, data, table: (
        {"fits": True, "gpu": fit.GIB, "ram": 1.05e9} if data.get("roomy") else {"fits": False, "why": "no"}))
    roomy = notebook_fit.exercise_table({**fit.measured(), "roomy": True}).splitlines()[2]
    assert roomy.endswith(" | fits: 1.0 GiB GPU, 1.1 GB RAM |")
    tight = notebook_fit.exercise_table({**fit.measured(), "roomy": False}).splitlines()[2]
    assert tight.endswith(" | **does not fit**: no |")
