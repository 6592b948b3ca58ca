"""The run folder that `make nbval`'s notebooks wrote (runs/nbval), for the tests marked `after_nbval` and the
canary, which make nbval runs in the notebooks' session (tests/nbval_groups.py): they check what the notebooks
produced instead of producing it a second time in make unit."""
import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 1800  # a notebook under nbval ends (passed or failed) well within this; a kernel that hangs does not


def run_folder() -> Path:
    """runs/nbval, or GEMMATE_RUN_DIR, which make nbval sets."""
    return ROOT / os.environ.get("GEMMATE_RUN_DIR", "runs/nbval")


def wait_for(*notebooks: str) -> None:
    """In make nbval's session ($GEMMATE_NBVAL_DONE set), wait until each of `notebooks` (stems, e.g.
    "03_lora_sft"; none: all nine copies in the run folder) has run to its end and its kernel stopped; run
    after nbval, return at once."""
    done = os.environ.get("GEMMATE_NBVAL_DONE")
    if not done:
        return
    stems = notebooks or tuple(sorted(p.stem for p in run_folder().glob("*.ipynb")))
    deadline = time.time() + WAIT_S
    while missing := [s for s in stems if not (Path(done) / s).exists()]:
        assert time.time() < deadline, f"nbval's {missing} did not end within {WAIT_S} s"
        time.sleep(1)


def nbval_run(request, *needed: str, after: tuple[str, ...] = ()) -> Path:
    """The run folder, holding every path of `needed` once the notebooks `after` have ended (wait_for).
    Selected as a tier (`-m after_nbval`, what make nbval runs), a missing file fails the test; run alone
    without nbval's folder (pytest tests/FILE.py), the test is skipped with the command to run."""
    run = run_folder()
    tier = "after_nbval" in (request.config.getoption("markexpr") or "").replace("not after_nbval", "")
    if tier:
        wait_for(*after)
    missing = [name for name in needed if not (run / name).exists()]
    if missing and not tier:
        pytest.skip(f"reads what make nbval's notebooks wrote into {run.name}: run `make nbval`")
    assert not missing, f"{run} lacks {missing}: make nbval's notebooks should have written them"
    return run
