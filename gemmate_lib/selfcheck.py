"""The self-check cell at the end of every notebook: PASS, or what to fix.

Each notebook passes a few (condition, what it checks, what to do if it fails) triples;
papermill and nbval run the cell, so a committed notebook shows all of them passing.
"""
from __future__ import annotations


def self_check(*checks: tuple[bool, str, str]) -> bool:
    """Print `PASS <what>` or `FIX  <what>: <how>` per check, then a summary line; True when all pass."""
    failed = 0
    for ok, what, fix in checks:
        print(f"PASS {what}" if ok else f"FIX  {what}: {fix}")
        failed += not ok
    print(f"self-check: all {len(checks)} passed" if not failed else f"self-check: {failed} of {len(checks)} to fix")
    return not failed
