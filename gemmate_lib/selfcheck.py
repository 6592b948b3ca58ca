"""The self-check cell at the end of every notebook: PASS, or `SelfCheckError` with one line naming the check
and its fix, so papermill, `make course`, nbval and `make gpu-check` report the notebook as failed. Checks of
how much a few steps learned go through `learned`, which in the smoke run only checks the numbers are sane.
A failed check flushes Google Drive first (in Colab), since the notebook's own flush after it never runs."""
from __future__ import annotations

import os

from gemmate_lib.errors import GemmateError


class SelfCheckError(GemmateError, AssertionError):
    """A notebook's self-check failed."""


def smoke_run() -> bool:
    """True in the smoke run of the learner's path: a tiny random model and a handful of steps."""
    return os.environ.get("GEMMATE_SMOKE") == "1"


def learned(course: bool, smoke: bool) -> bool:
    """The course's condition of a check that judges learning, or in the smoke run the smoke one: a tiny
    random model learns nothing measurable in a few steps, so that one checks the numbers are sane instead."""
    return smoke if smoke_run() else course


def self_check(*checks: tuple[bool, str, str]) -> bool:
    """Print `PASS <what>` or `FAIL <what>: <how>` per check; raise SelfCheckError if any failed."""
    for ok, what, fix in checks:
        print(f"PASS {what}" if ok else f"FAIL {what}: {fix}")
    failed = [(what, fix) for ok, what, fix in checks if not ok]
    if smoke_run():
        print("(smoke run: checks that judge learning only check that "
              "the numbers are sane: a tiny random model, a few steps)")
    if failed:
        # the notebook stops here, before its own flush: Drive still gets what this runtime wrote (Colab only)
        from gemmate_lib.colab import flush_drive

        try:
            flush_drive()
        except Exception as err:  # noqa: BLE001 - the failed check is the error this cell must show
            print(f"Google Drive could not be flushed ({type(err).__name__})")
        what, fix = failed[0]
        more = f" (and {len(failed) - 1} more above)" if len(failed) > 1 else ""
        raise SelfCheckError(f"self-check failed: {what}{more}", fix)
    print(f"self-check: all {len(checks)} passed")
    return True
