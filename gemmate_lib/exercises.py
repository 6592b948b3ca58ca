"""The check cell that ends every exercise (00-07): it says PASS, FAIL or NOT RUN YET against the exercise's
expectation, from the exercise's own run folder, so a learner knows whether what they did matched.

A check never stops the notebook: the lesson runs top to bottom before any exercise is tried, and an exercise
not tried yet is not a failure. The self-check (gemmate_lib.selfcheck) is the cell that stops a notebook."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def check(name: str, expectation: str, ran: bool, passed: Callable[[], bool] | bool,
          how_to_run: str = "") -> str:
    """Print and return one verdict line for exercise `name`:
    - "NOT RUN YET" when `ran` is False (e.g. its run folder has no results), with `how_to_run`;
    - else "PASS" or "FAIL" by `passed` (a bool, or a callable evaluated only once the exercise ran, so it may
      read files the run writes), followed by the expectation it was judged against."""
    if not ran:
        line = f"exercise {name}: NOT RUN YET" + (f" ({how_to_run})" if how_to_run else "")
    else:
        ok = bool(passed() if callable(passed) else passed)
        line = f"exercise {name}: {'PASS' if ok else 'FAIL'}, expected: {expectation}"
    print(line)
    return line


def has_results(run_dir: str | Path, *names: str) -> bool:
    """True when every file `names` exists in `run_dir` (the exercise's run folder): the exercise ran."""
    folder = Path(run_dir)
    return folder.is_dir() and all((folder / name).exists() for name in names)
