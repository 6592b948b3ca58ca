"""The run folder that `make nbval`'s notebooks wrote (runs/nbval), for the tests marked `after_nbval`, which
make nbval runs after the notebooks (as it runs the canary test): they check what the notebooks produced
instead of producing it a second time in make unit."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def nbval_run(request, *needed: str) -> Path:
    """runs/nbval (or GEMMATE_RUN_DIR, which make nbval sets), holding every path of `needed`. Selected as a
    tier (`-m after_nbval`, what make nbval runs), a missing file fails the test; run alone without nbval's
    folder (pytest tests/FILE.py), the test is skipped with the command to run."""
    run = ROOT / os.environ.get("GEMMATE_RUN_DIR", "runs/nbval")
    missing = [name for name in needed if not (run / name).exists()]
    tier = "after_nbval" in (request.config.getoption("markexpr") or "").replace("not after_nbval", "")
    if missing and not tier:
        pytest.skip(f"reads what make nbval's notebooks wrote into {run.name}: run `make nbval`")
    assert not missing, f"{run} lacks {missing}: make nbval's notebooks should have written them"
    return run
