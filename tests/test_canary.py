"""Canary: `make test` runs nbval with HF_TOKEN set to a fake value; nothing nbval's run wrote may contain it.

Run after the notebooks (the Makefile's nbval target runs it in their session), on runs/nbval;
tests/canary.py prints the value the Makefile puts in HF_TOKEN.
"""
import os
from pathlib import Path

import pytest
from canary import CANARY

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.canary
def test_no_file_the_notebooks_wrote_contains_the_token():
    from nbval_run import run_folder, wait_for

    wait_for()  # in make nbval's session: every notebook has ended
    run_dir = run_folder()
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    # the whole course ran there: manifest, adapter, metrics, the GemmaTE model and the merged model
    names = {p.name for p in files}
    assert {"manifest.json", "adapter_model.safetensors", "metrics.json",
            "temporal.safetensors"} <= names, names
    assert os.environ.get("HF_TOKEN") == CANARY, "run through `make nbval`, which sets the fake token"
    leaks = [str(p.relative_to(run_dir)) for p in files if CANARY.encode() in p.read_bytes()]
    assert leaks == []


def test_a_failed_push_with_a_token_reports_one_line_without_it(monkeypatch, tmp_path):
    from gemmate_lib.adapters import push_problem

    monkeypatch.setenv("HF_TOKEN", CANARY)
    status = push_problem("someone/canary-test")  # offline: the token's check fails
    assert status.startswith("push failed") and CANARY not in status and "\n" not in status
