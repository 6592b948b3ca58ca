"""The exercises' check cells: NOT RUN YET before a run, then PASS or FAIL against the expectation."""
from gemmate_lib.exercises.judging import exercise_verdict, has_results


def test_an_exercise_not_run_yet_says_so_and_how(capsys):
    line = exercise_verdict("03-1", "a quarter of the weights", ran=False, passed=lambda: 1 / 0,
                            how_to_run="set lora_r = 2 and run the notebook")
    assert "NOT RUN YET" in line and "lora_r = 2" in capsys.readouterr().out


def test_a_run_exercise_passes_or_fails_by_its_expectation():
    assert "PASS" in exercise_verdict("03-1", "a quarter", ran=True, passed=lambda: 4 == 4)
    assert "FAIL" in exercise_verdict("03-1", "a quarter", ran=True, passed=False)


def test_results_are_found_only_when_every_file_is_there(tmp_path):
    assert not has_results(tmp_path / "missing", "metrics.json")
    (tmp_path / "metrics.json").write_text("{}")
    assert has_results(tmp_path, "metrics.json")
    assert not has_results(tmp_path, "metrics.json", "adapter")


def test_a_verdict_says_what_the_run_shows_and_results_it_cannot_read_fail():
    """A learner reads why: the found part; a file in another shape is a FAIL, never an error in the cell."""
    line = exercise_verdict("05-1", "two dtypes", ran=True,
                            passed=lambda: (False, "['fp32']: two dtypes are needed"))
    assert line == "exercise 05-1: FAIL, expected: two dtypes; found: ['fp32']: two dtypes are needed"
    line = exercise_verdict("05-1", "two dtypes", ran=True, passed=lambda: {}["fp32"])
    assert line.startswith("exercise 05-1: FAIL") and "could not be read (KeyError" in line


def test_a_margin_below_its_threshold_fails_and_every_margin_is_printed():
    from gemmate_lib.exercises.judging import Margin, less, more

    margins = [more(0.3, 0, "nats", "fall"), less(2.0, 1.5, "x", "time")]
    line = exercise_verdict("06-2", "rank 128 below rank 2", ran=True,
                            passed=lambda: (True, "3.9 / 3.6", margins))
    assert line.startswith("exercise 06-2: FAIL") and line.endswith(
        "; margin: +0.3 nats (fall 0.3, needs > 0), -0.5 x (time 2.0, needs < 1.5)")
    assert Margin(0.0, "share", "drop", strict=False).holds and not Margin(0.0, "share", "drop").holds


def test_results_of_another_model_are_not_judged():
    origin = "FROM ANOTHER MODEL (ran on google/gemma-2b, the lesson now runs google/gemma-3-1b-pt)"
    line = exercise_verdict("03-1", "a quarter", ran=True, passed=lambda: 1 / 0, how_to_run="lora_r = 2",
                            origin=origin)
    assert line == ("exercise 03-1: FROM ANOTHER MODEL (ran on google/gemma-2b, the lesson now runs "
                    "google/gemma-3-1b-pt): run it again (lora_r = 2)")
