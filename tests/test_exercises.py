"""The exercises' check cells: NOT RUN YET before a run, then PASS or FAIL against the expectation."""
from gemmate_lib.exercises import check, has_results


def test_an_exercise_not_run_yet_says_so_and_how(capsys):
    line = check("03-1", "a quarter of the weights", ran=False, passed=lambda: 1 / 0,
                 how_to_run="set lora_r = 2 and run the notebook")
    assert "NOT RUN YET" in line and "lora_r = 2" in capsys.readouterr().out


def test_a_run_exercise_passes_or_fails_by_its_expectation():
    assert "PASS" in check("03-1", "a quarter", ran=True, passed=lambda: 4 == 4)
    assert "FAIL" in check("03-1", "a quarter", ran=True, passed=False)


def test_results_are_found_only_when_every_file_is_there(tmp_path):
    assert not has_results(tmp_path / "missing", "metrics.json")
    (tmp_path / "metrics.json").write_text("{}")
    assert has_results(tmp_path, "metrics.json")
    assert not has_results(tmp_path, "metrics.json", "adapter")


def test_a_verdict_says_what_the_run_shows_and_results_it_cannot_read_fail():
    """A learner reads why: the found part; a file in another shape is a FAIL, never an error in the cell."""
    line = check("05-1", "two dtypes", ran=True, passed=lambda: (False, "['fp32']: two dtypes are needed"))
    assert line == "exercise 05-1: FAIL, expected: two dtypes; found: ['fp32']: two dtypes are needed"
    line = check("05-1", "two dtypes", ran=True, passed=lambda: {}["fp32"])
    assert line.startswith("exercise 05-1: FAIL") and "could not be read (KeyError" in line
