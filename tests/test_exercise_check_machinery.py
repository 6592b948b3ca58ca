"""The machinery of an exercise's check cell (gemmate_lib/exercises/judging.py), on hand-made
specs and files: the verdict line a learner reads (its expectation, what was found, the margins, how to run an
exercise not run yet), the line read back by `make exercises`, the readers of a run's manifest and their
one-line reasons for a file in another shape, the text of a rerun exercise's parameters, and when results
are another model's. tests/test_exercise_checks.py holds the 28 registered checks to the files their
solutions write."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gemmate_lib.exercises import judging as ec
from gemmate_lib.guard_rails import run_folder
from gemmate_lib.guard_rails.files import show_path
from tools.runners.exercises import parse_verdict

# ---- margins and the verdict line ----

@pytest.mark.parametrize("make, value, threshold, strict, holds, text", [
    (ec.more, 1.0, 1.0, True, False, "w 1.0, needs > 1"),
    (ec.more, 1.0, 1.0, False, True, "w 1.0, needs >= 1"),
    (ec.less, 1.0, 1.0, True, False, "w 1.0, needs < 1"),
    (ec.less, 1.0, 1.0, False, True, "w 1.0, needs <= 1"),
    (ec.less, 0.5, 1.0, True, True, "w 0.5, needs < 1"),
])
def test_a_margin_at_its_threshold_holds_only_when_not_strict(make, value, threshold, strict, holds, text):
    margin = make(value, threshold, "x", "w", strict=strict)
    assert margin.holds is holds and margin.strict is strict and margin.what == text


def test_a_verdict_line_without_a_how_or_a_found_has_no_empty_parts(capsys):
    assert ec.exercise_verdict("00-1", "e", False, True) == "exercise 00-1: NOT RUN YET"
    assert ec.exercise_verdict("00-1", "e", False, True, "run solution 1") == (
        "exercise 00-1: NOT RUN YET (run solution 1)")
    other = "FROM ANOTHER MODEL (ran on a)"
    said = ec.exercise_verdict("00-1", "e", True, True, origin=other)
    assert said == f"exercise 00-1: {other}: run it again"
    assert ec.exercise_verdict("00-1", "e", True, True, "run 2", origin=other) == (
        f"exercise 00-1: {other}: run it again (run 2)")
    assert ec.exercise_verdict("00-1", "e", True, True) == "exercise 00-1: PASS, expected: e"  # a plain bool
    assert ec.exercise_verdict("00-1", "e", True, False) == "exercise 00-1: FAIL, expected: e"
    assert ec.exercise_verdict("00-1", "e", True, lambda: True) == "exercise 00-1: PASS, expected: e"
    assert ec.exercise_verdict("00-1", "e", True, lambda: (True, "")) == "exercise 00-1: PASS, expected: e"
    assert ec.exercise_verdict("00-1", "e", True, lambda: (False, "2 of 3")) == (
        "exercise 00-1: FAIL, expected: e; found: 2 of 3")
    assert capsys.readouterr().out.count("\n") == 9  # each printed


def test_a_failing_margin_fails_a_rule_that_said_ok():
    line = ec.exercise_verdict("03-1", "e", True, lambda: (True, "f", [ec.more(-0.5, 0, "nats", "fall")]))
    assert line == "exercise 03-1: FAIL, expected: e; found: f; margin: -0.5 nats (fall -0.5, needs > 0)"


def test_margins_are_read_back_from_after_the_margin_mark_only():
    """A found text that looks like a margin is not one; a margin in e-notation is read whole."""
    line = ec.exercise_verdict("03-1", "e", True, lambda: (True, "+9 nats (a decoy)", [
        ec.more(1.5e-05, 0, "x", "tiny")]))
    assert parse_verdict(line) == {"name": "03-1", "verdict": "PASS",
                                      "margins": [(1.5e-05, "x", "tiny 0.0, needs > 0")]}


# ---- the readers of a run's files ----

def _manifest(folder: Path, content) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(content))
    return folder


def test_a_file_in_another_shape_is_named_with_the_shape_it_has(tmp_path):
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(TypeError, match=r"^x\.json is a list, not a dict$"):
        ec.read_json(tmp_path, "x.json", dict)
    assert ec.read_json(tmp_path, "x.json") == [1, 2]
    with pytest.raises(TypeError, match=r"^manifest\.json's notebooks is a list, not a dict$"):
        ec.facts(_manifest(tmp_path / "a", {"notebooks": []}), "03_lora_sft")
    with pytest.raises(TypeError, match=r"^manifest\.json's entry of 03_lora_sft is a str, not a dict$"):
        ec.facts(_manifest(tmp_path / "b", {"notebooks": {"03_lora_sft": "x"}}), "03_lora_sft")
    bad_config = {"notebooks": {"03_lora_sft": {"config": [1]}}}
    with pytest.raises(TypeError, match=r"^03_lora_sft's config in the manifest is a list, not a dict$"):
        ec.recorded_settings(_manifest(tmp_path / "c", bad_config), "03_lora_sft")
    bad_settings = {"notebooks": {"07_temporal_encoding": {"settings": [1]}}}
    with pytest.raises(TypeError, match=r"^07_temporal_encoding's settings in the manifest is a list"):
        ec.recorded_settings(_manifest(tmp_path / "d", bad_settings), "07_temporal_encoding")


def test_a_manifest_without_the_notebook_or_its_config_gives_nothing(tmp_path):
    assert ec.facts(tmp_path, "03_lora_sft") == {}  # no manifest
    assert ec.facts(_manifest(tmp_path / "a", {"created": 1}), "03_lora_sft") == {}
    assert ec.facts(_manifest(tmp_path / "b", {"notebooks": {"04_evaluation": {}}}), "03_lora_sft") == {}
    no_config = _manifest(tmp_path / "c", {"notebooks": {"03_lora_sft": {"model": "m"}}})
    assert ec.recorded_settings(no_config, "03_lora_sft") == {}


def _rerun(*runs):
    """A rerun exercise's spec whose runs set `runs` ({parameter: value} each, with its run_dir)."""
    return ec.exercise_spec("03-9", lambda ex, lesson: True, ("manifest.json",), "section 5",
                            "the rerun", parameters=tuple(("03_lora_sft", params) for params in runs))


def test_a_rerun_names_every_recorded_setting_that_changed_besides_its_parameters(tmp_path):
    """rerun_changes: config fields and settings both runs record, with both values; the exercise's own
    parameters (of any of its runs) and a setting only one run records are no change."""
    mine = _manifest(tmp_path / "ex03_9", {"notebooks": {"03_lora_sft": {
        "config": {"train": {"max_steps": 80, "lr": 1e-4, "only_mine": 1}, "lora": {"r": 8}, "note": "x"},
        "settings": {"compare_steps": 2, "chat_steps": 0}}}})
    lesson = _manifest(tmp_path / "lesson", {"notebooks": {"03_lora_sft": {
        "config": {"train": {"max_steps": 40, "lr": 2e-4, "only_theirs": 2}, "lora": {"r": 8}},
        "settings": {"compare_steps": 6, "chat_steps": None}}}})
    spec = _rerun({"max_steps": 80, "run_dir": "runs/ex03_9"}, {"chat_steps": 0, "run_dir": "runs/ex03_9b"})
    assert "manifest.json" in spec.lesson  # a rerun needs the lesson's record to compare with
    assert ec.rerun_changes(spec, [mine], lesson) == ["compare_steps (2, the lesson's 6)",
                                                      "lr (0.0001, the lesson's 0.0002)"]
    same = _rerun({"max_steps": 80, "lr": 1e-4, "compare_steps": 2, "chat_steps": 0,
                   "run_dir": "runs/ex03_9"})
    assert ec.rerun_changes(same, [mine], lesson) == []


def test_the_model_a_notebook_ran_is_its_record_else_its_config(tmp_path):
    assert ec.notebook_model(tmp_path, "03") is None  # no manifest
    assert ec.notebook_model(_manifest(tmp_path / "a", {"created": 1}), "03") is None
    configured = {"notebooks": {"02_baseline_generation": {"model": "other"},
                                "03_lora_sft": {"config": {"model": {"model_name": "m"}}}}}
    assert ec.notebook_model(_manifest(tmp_path / "b", configured), "03") == "m"
    recorded = {"notebooks": {"03_lora_sft": {"model": "n", "config": {"model": {"model_name": "m"}}}}}
    assert ec.notebook_model(_manifest(tmp_path / "c", recorded), "03") == "n"
    assert ec.notebook_model(_manifest(tmp_path / "d", {"notebooks": {"03_lora_sft": {}}}), "03") is None
    assert ec.notebook_model(_manifest(tmp_path / "e", {"notebooks": {"03_lora_sft": {"config": {}}}}),
                             "03") is None


def test_a_folders_time_is_its_oldest_files_and_an_empty_folders_its_own(tmp_path):
    (tmp_path / "sub").mkdir()
    for name, when in (("a", 1000), ("sub/b", 500), ("c", 2000)):
        (tmp_path / name).write_text("x")
        os.utime(tmp_path / name, (when, when))
    os.utime(tmp_path / "sub", (100, 100))  # a folder's own time is not a file's
    assert ec._written(tmp_path) == 500
    assert ec._written(tmp_path / "a") == 1000
    (tmp_path / "empty").mkdir()
    os.utime(tmp_path / "empty", (300, 300))
    assert ec._written(tmp_path / "empty") == 300


def test_a_value_is_shown_with_three_decimals():
    assert ec.rounded(1.23456) == 1.235


# ---- a rerun exercise's text ----

def test_parameters_are_written_as_the_parameters_cell_takes_them():
    assert ec.literal(0.01) == "0.01" and ec.literal(0.003) == "3e-3" and ec.literal(2.5e-4) == "2.5e-4"
    said = ec.parameters_text({"lora_r": 2, "run_dir": "runs/ex03_1"})
    assert said == '`lora_r = 2`, `run_dir = "runs/ex03_1"`'


def test_an_exercise_spec_names_its_folder_files_and_how_to_rerun_it(tmp_path):
    judged = []
    spec = ec.exercise_spec("03-2", lambda doc: judged.append(doc) or (True, "ok"), "result.json", "run it",
                            "the loss falls", lesson=("adapter",))
    assert (spec.expectation, spec.folders, spec.results, spec.how_to_run, spec.lesson, spec.parameters,
            spec.reads) == ("the loss falls", ("ex03_2",), ("result.json",), "run it", ("adapter",), (), "")
    (tmp_path / "result.json").write_text('{"a": 1}')
    assert spec.passed([tmp_path, tmp_path / "other"], tmp_path / "lesson") == (True, "ok")
    assert judged == [{"a": 1}]  # the one JSON file of the first folder, read for the rule

    def rule(ex, lesson):
        return True, f"{len(ex)} folders"

    rerun = ec.exercise_spec("03-1", rule, ("a.json", "b.csv"), "section 7", "r = 2 learns less",
                             folders=("ex03_1a", "ex03_1b"),
                             parameters=(("03_lora_sft", {"lora_r": 2, "run_dir": "runs/ex03_1a"}),
                                         ("04_evaluation", {"run_dir": "runs/ex03_1b"})))
    assert (rerun.folders, rerun.results, rerun.passed, rerun.reads) == (
        ("ex03_1a", "ex03_1b"), ("a.json", "b.csv"), rule, "section 7")
    assert rerun.how_to_run == ('set the parameters cell, then Run all: 03 with lora_r = 2, run_dir = '
                                '"runs/ex03_1a"; then 04 with run_dir = "runs/ex03_1b" (the check reads '
                                'section 7)')


# ---- whose results: the origin record ----

@pytest.fixture
def course(tmp_path, monkeypatch):
    """A course folder whose lesson runs "m" (as after a notebook's setup cell), its runs under runs/."""
    monkeypatch.setenv(run_folder.RUNS_ROOT, str(tmp_path))
    monkeypatch.setattr(run_folder, "git_revision", lambda: "test")
    monkeypatch.setenv("GEMMATE_RUN_DIR", str(tmp_path / "runs" / "lesson"))
    monkeypatch.setitem(run_folder._KERNEL, "model_name", "m")
    return tmp_path / "runs"


def _origin(folder: Path, **record) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / run_folder.ORIGIN).write_text(json.dumps(record))
    return folder


def _result(folder: Path, name="r.json", when=None) -> Path:
    (folder / name).write_text("{}")
    if when is not None:
        os.utime(folder / name, (when, when))
    return folder


SPEC = ec.exercise_spec("03-2", lambda doc: (True, ""), "r.json", "run it", "e")


@pytest.mark.parametrize("written, stale", [(998.0, False), (997.5, True)])
def test_a_result_written_more_than_two_seconds_before_the_model_switch_is_the_old_models(
        course, written, stale):
    ex = _result(_origin(course / "ex03_2", model="m", since=1000, before={"model": "old"}), when=written)
    said = ec.origin_problem("03-2", SPEC, [ex], course / "lesson")
    assert said == (f"FROM ANOTHER MODEL ({show_path(ex)}'s r.json was written on old, not on m)" if stale
                    else None)


def test_a_result_older_than_a_record_without_a_former_model_is_of_an_unknown_model(course):
    ex = _result(_origin(course / "ex03_2", model="m", since=1000), when=100)
    assert ec.origin_problem("03-2", SPEC, [ex], course / "lesson") == (
        f"MODEL UNKNOWN ({show_path(ex)}'s r.json was written before this folder recorded its model, not on "
        "m)")
    bare = _result(_origin(course / "ex03_3", since=1000), when=2000)
    assert ec.origin_problem("03-2", SPEC, [bare], course / "lesson") == (
        f"MODEL UNKNOWN ({show_path(bare)} does not record the model its results come from, so they may be "
        "another model's)")


def test_a_comparison_with_a_lesson_that_does_not_record_its_model_says_which_notebook_to_rerun(course):
    spec = ec.exercise_spec("04-1", lambda doc: (True, ""), "r.json", "run it", "e", lesson=("metrics.json",))
    ex = _result(_origin(course / "ex04_1", model="m", since=0))
    assert ec.origin_problem("04-1", spec, [ex], _manifest(course / "lesson", {"notebooks": {}})) == (
        "MODEL UNKNOWN (the lesson's run folder does not record which model its 04 ran: run the lesson's 04 "
        "again)")


def _spec_with_lesson():
    return ec.exercise_spec("04-1", lambda doc: (True, "fine"), "r.json", "run solution 1", "it improves",
                            lesson=("metrics.json",))


def _lesson(course: Path, model="m") -> Path:
    lesson = _manifest(course / "lesson", {"notebooks": {"04_evaluation": {"model": model}}})
    (lesson / "metrics.json").write_text("{}")
    return lesson


def test_an_exercise_is_run_only_when_its_files_and_the_lessons_are_there(course, capsys):
    spec = _spec_with_lesson()
    not_yet = "exercise 04-1: NOT RUN YET (run solution 1)"
    assert ec.judge_exercise("04-1", spec) == not_yet  # nothing yet
    assert not (course / "lesson").exists()  # a check cell leaves no folder behind
    _lesson(course)
    assert ec.judge_exercise("04-1", spec) == not_yet  # the lesson ran, the exercise did not
    ex = _origin(course / "ex04_1", model="m", since=0)
    assert ec.judge_exercise("04-1", spec) == not_yet  # its folder, without its result
    _result(ex)
    (course / "lesson" / "metrics.json").unlink()
    assert ec.judge_exercise("04-1", spec) == not_yet  # the lesson's file is missing
    _lesson(course)
    assert ec.judge_exercise("04-1", spec) == "exercise 04-1: PASS, expected: it improves; found: fine"


def test_an_origin_record_that_cannot_be_read_says_so_and_the_check_goes_on(course, monkeypatch):
    spec = _spec_with_lesson()
    _lesson(course)
    _result(_origin(course / "ex04_1", model="m", since=0))
    monkeypatch.setattr(ec, "notebook_model", lambda folder, prefix: 1 / 0)
    assert ec.judge_exercise("04-1", spec) == (
        "exercise 04-1: MODEL UNKNOWN (its record could not be read: ZeroDivisionError): run it again "
        "(run solution 1)")
