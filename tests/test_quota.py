"""The quota plan (tools/runners/quota.py): docs/colab.md's block and the README's line are the generator's
output, the projection's arithmetic on hand-made cases, what it reads from the course (the estimates, the
exercise texts, the steps each run trains), and the day plan's packing."""
import re
from pathlib import Path

import pytest

from gemmate_lib.config import SEED_QLORA, TASK_DEFAULTS
from gemmate_lib.exercises.judging import EXERCISES
from gemmate_lib.methods import GPU_DEFAULT_METHODS
from tools.runners import quota
from tools.runners.timings import load

ROOT = Path(__file__).resolve().parents[1]


def between(text: str, marker: str) -> str:
    return text.split(f"<!-- {marker} -->\n", 1)[1].split(f"\n<!-- end of {marker} -->", 1)[0]


# ---- the projection ----

BASE = {"step_s": 3.0, "download_s": 60.0}  # a base model: 3 s a step, a one-minute download
TWICE = {"step_s": 6.0, "download_s": 120.0}  # twice its step time and checkpoint


def test_a_notebook_with_a_known_training_share_projects_to_a_model_with_twice_the_step():
    # 10 min = 1 min download + 100 steps x 3 s (5 min) + 4 min of the rest
    item = quota.Item("03_x", "03_x", "lesson", 10, steps=100, downloads=1)
    assert quota.project(item, BASE, BASE) == pytest.approx(10)
    assert quota.project(item, BASE, TWICE) == pytest.approx(4 + 2 + 10)
    faster = {"step_s": 1.5, "download_s": 30.0}
    assert quota.project(item, BASE, faster) == pytest.approx(4 + 0.5 + 2.5)


def test_what_trains_nothing_and_downloads_nothing_keeps_its_estimate():
    item = quota.Item("02-1", "02_x", "exercise", 7)
    assert quota.project(item, BASE, TWICE) == pytest.approx(7)


def test_an_estimate_below_its_own_training_keeps_no_negative_rest():
    # 5 min estimate, 200 steps x 3 s = 10 min of training: the rest is 0, not -5
    item = quota.Item("07-1", "07_x", "exercise", 5, steps=200)
    assert quota.project(item, BASE, BASE) == pytest.approx(10)
    assert quota.project(item, BASE, TWICE) == pytest.approx(20)


def test_gemma_2b_projects_to_the_hand_kept_estimates():
    """The projection of the base model gives its estimate back, unless the estimate is shorter than the
    training it counts (then the training)."""
    base = quota.models()["gemma-2b"]
    for item in quota.items():
        floor = (item.downloads * base["download_s"] + item.steps * base["step_s"]) / 60
        assert quota.project(item, base, base) == pytest.approx(max(item.minutes, floor)), item.key


def test_the_planner_gives_the_step_and_download_times():
    every = quota.models()
    assert list(every) == list(quota.TITLES)
    base = every["gemma-2b"]
    assert base["bytes"] == pytest.approx(5.0e9, rel=0.02)  # GUIDE.md section 9's checkpoints
    assert every["gemma-3-1b-pt"]["bytes"] == pytest.approx(2.0e9, rel=0.02)
    assert every["gemma-4-E2B"]["bytes"] == pytest.approx(10.2e9, rel=0.02)
    # Gemma 3 and 4 compute in fp32 on a T4: slower steps than gemma-2b's fp16 for all their size
    assert min(every["gemma-3-1b-pt"]["step_s"], every["gemma-4-E2B"]["step_s"]) > base["step_s"]


# ---- what it reads from the course ----

@pytest.mark.parametrize("text, minutes", [
    ("1 / 5 min", 5), ("8 / 35 min, both", 35), ("CPU about 5 min; T4 about 20 min, an estimate", 20),
    ("CPU about 2 min; T4 about 3 min", 3), ("under a minute", 1)])
def test_an_exercise_time_is_read_as_its_t4_minutes(text, minutes):
    assert quota.minutes_of(text) == minutes


def test_a_rerun_of_the_whole_notebook_takes_its_lessons_t4_time():
    assert quota.minutes_of("about as long as the lesson", lesson=30.0) == 30
    with pytest.raises(ValueError, match="CPU / T4"):  # no lesson to read it from
        quota.minutes_of("about as long as the lesson", "07_x, exercise 07-9")


def test_an_exercise_time_without_a_t4_figure_is_an_error_that_names_it():
    with pytest.raises(ValueError, match="03_x, exercise 03-9.*CPU / T4"):
        quota.minutes_of("a while", "03_x, exercise 03-9")


def test_the_lessons_are_the_readmes_t4_column_and_every_exercise_has_a_time():
    lessons = quota.lesson_estimates()
    assert list(lessons) == list(load()["cpu_seconds"])
    for stem, text in load()["t4_estimate"].items():
        assert f"~{lessons[stem][0]:g} min" in text
        for name, added in lessons[stem][1].items():
            assert f"+{added:g} with {name}=True" in text
    assert set(quota.exercise_estimates(lessons)) == set(EXERCISES)


def test_the_steps_each_run_trains_follow_the_gpu_profile():
    main = SEED_QLORA["max_steps"]
    assert quota.t4_steps("03_lora_sft") == main
    # part 2: the other loss masking, section 7's two arms, the chat run
    compare_steps = quota.parameters("03_lora_sft")["compare_steps"]
    part_2 = main + 2 * compare_steps + quota.CHAT_STEPS
    assert quota.t4_steps("03_lora_sft", {"compare": True}) == main + part_2
    assert quota.t4_steps("03_lora_sft", {"max_steps": 10, "compare": True, "compare_steps": 2,
                                               "chat_steps": 0}) == 10 + 10 + 4
    assert quota.t4_steps("05_save_and_push") == quota.parameters("05_save_and_push")["second_steps"]
    methods = TASK_DEFAULTS["methods"]
    per_step = SEED_QLORA["batch_size"] * SEED_QLORA["gradient_accumulation_steps"]
    # every arm of section 2, and section 3's QLoRA arm written out by hand
    assert quota.t4_steps("06_compare_methods") == ((len(GPU_DEFAULT_METHODS) + 1) * methods["max_steps"]
                                                         * methods["batch_size"] // per_step)
    p = quota.parameters("07_temporal_encoding")
    assert quota.t4_steps("07_temporal_encoding", {"n_train": 100, "num_epochs": 2.0, "n_python": 40,
                                                        "python_epochs": 1.0}) == 50 + 10
    assert p["n_train"] > 0 and quota.t4_steps("02_baseline_generation") == 0


def test_each_notebook_that_loads_the_model_downloads_it_once_and_an_exercise_in_another_runtime_again():
    found = {item.key: item for item in quota.items()}
    assert found["00_setup"].downloads == 0 and found["03_lora_sft"].downloads == 1
    assert found["03_lora_sft"].fetches and not found["00_setup"].fetches
    assert found["00-3"].downloads == 1 and found["00-3"].fetches  # 00 loads no model; its exercise 3 does
    assert found["04-1"].downloads == 1 and not found["04-1"].fetches  # it runs 03 in a runtime of its own
    assert found["03-1"].downloads == 0 and found["03-3"].steps == (10 + 10 + 4) + (30 + 30 + 4)
    assert not found["00-1"].loads and found["01-1"].loads


def test_what_does_not_fit_says_so_instead_of_a_time():
    rows = quota.plan()
    said = quota.verdicts()
    page = quota.table(rows)
    for item, cells in rows:
        for model, cell in cells.items():
            assert (cell.minutes is None) == (said[(item.key, model)] == "no")
    assert any(cell.minutes is None for _, cells in rows for cell in cells.values())
    assert page.count("does not fit") == sum(c.minutes is None for _, cells in rows for c in cells.values())


def test_the_readme_line_sums_the_table():
    rows = quota.plan()
    line = quota.readme_line(rows)
    lessons = quota.totals(rows, "gemma-2b", "lesson")[0]
    assert f"{lessons / 60:.1f} h with gemma-2b" in line
    assert "projections, not measured on a T4" in line and quota.ANCHOR in line


# ---- the day plan ----

def lesson(nb, minutes):
    return quota.Item(nb, nb, "lesson", minutes, downloads=1, fetches=True), minutes


def exercise(name, nb, minutes, loads=True, fetches=False, downloads=0):
    item = quota.Item(name, nb, "exercise", minutes, downloads=downloads, loads=loads, fetches=fetches)
    return item, minutes


def test_days_keep_course_order_and_their_limit():
    entries = [lesson("00", 30), exercise("00-1", "00", 20), lesson("01", 50), exercise("01-1", "01", 30)]
    found = quota.days(entries, limit=100, reopen=3, install=2)
    assert [[i.key for i, _ in day] for day in found] == [["00", "00-1", "01"], ["01-1"]]
    # 01-1 falls on the day after its lesson: a fresh runtime, the install and the download again
    assert found[1] == [(entries[3][0], 30 + 2 + 3)]
    assert [i for day in found for i, _ in day] == [i for i, _ in entries]


def test_an_exercise_after_its_lesson_on_a_new_day_pays_its_runtime_once_a_day():
    entries = [lesson("03", 90), exercise("03-1", "03", 20), exercise("03-2", "03", 20),
               exercise("00-1", "00", 5, loads=False), exercise("00-3", "00", 5, fetches=True, downloads=1),
               exercise("04-1", "04", 10, downloads=1)]
    found = quota.days(entries, limit=100, reopen=3, install=2)
    # 00-1 loads nothing: the install alone, and 00-3 runs in the runtime 00-1 opened (its estimate holds its
    # download); 04-1's download is for 03's runtime of its own, and its own runtime downloads again
    assert [m for _, m in found[1]] == [20 + 2 + 3, 20, 5 + 2, 5, 10 + 2 + 3]
    alone = quota.days([lesson("00", 90), exercise("00-3", "00", 20, fetches=True, downloads=1)], limit=100,
                       reopen=3, install=2)
    assert alone[1][0][1] == 20 + 2  # a fresh runtime: the install; the download is in its estimate


def test_an_item_longer_than_a_day_gets_a_day_of_its_own():
    entries = [lesson("06", 40), lesson("07", 180), exercise("07-1", "07", 150)]
    found = quota.days(entries, limit=120, reopen=3, install=2)
    assert [[i.key for i, _ in day] for day in found] == [["06"], ["07"], ["07-1"]]
    assert "more than the" in quota.day_table({"gemma-2b": (found, []), "gemma-3-1b-pt": (found, []),
                                               "gemma-4-E2B": (found, [])})


def test_the_generated_day_plan_holds_every_item_that_fits_once_in_course_order():
    rows = quota.plan()
    for model, (found, skipped) in quota.day_plans().items():
        planned = [i.key for day in found for i, _ in day]
        fits = [i.key for i, cells in rows if i.kind != "part" and cells[model].minutes is not None]
        assert planned == fits
        assert {i.key for i in skipped} == {i.key for i, cells in rows
                                            if i.kind != "part" and cells[model].minutes is None}
        for day in found:
            assert len(day) == 1 or sum(m for _, m in day) <= quota.DAY_MINUTES


def test_every_figure_is_marked_a_projection():
    page = quota.block()
    assert "projections, not measured on a T4" in page
    assert re.search(r"Assumptions, since Colab publishes neither", page)
