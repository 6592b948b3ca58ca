"""make gpu-record (tools/gpu/gpu_record.py), rehearsed on this CPU: part 1's code with the tiny random Gemma
and no GPU, a part past its time limit recorded without stopping the others, and docs/full-shape.md's GPU
table built only from records in which every phase ran."""
import copy
import json

import pytest

from tools.gpu import gpu_record


@pytest.mark.slow
@pytest.mark.maintainer  # make test-tools; make test keeps a cheaper test of it (CONTRIBUTING.md)
def test_the_dry_run_records_every_phase_of_part_1(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert gpu_record.main(["--dry-run", "--out", str(tmp_path / "out"), "--work", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "out" / "gpu_record.json").read_text())
    part = results["parts"]["full-shape/gemma-2b"]
    assert part["returncode"] == 0 and results["dry_run"]
    assert set(part["phases"]) == {"load", "train", "evaluate"}, part["phases"]
    assert not any("error" in phase for phase in part["phases"].values())
    assert part["phases"]["train"]["steps"] == gpu_record.STEPS
    assert 0 < part["phases"]["evaluate"]["held_out_loss"] < 20  # a number, from the model's logits
    assert part["predicted_mib"]["train"] >= part["predicted_mib"]["copy"] > 0


@pytest.mark.slow
def test_a_part_past_its_limit_is_recorded_and_the_next_part_still_runs(tmp_path, monkeypatch):
    # the next part gets its own half second too: that it starts and is recorded is the point, not its phases
    monkeypatch.setattr(gpu_record, "PART_SECONDS", {"full-shape/gemma-2b": 0.5, "embedded/t4": 0.5})
    code = gpu_record.main(["--dry-run", "--only", "full-shape/gemma-2b", "embedded/t4",
                            "--out", str(tmp_path / "out"), "--work", str(tmp_path)])
    results = json.loads((tmp_path / "out" / "gpu_record.json").read_text())
    assert code == 1
    assert results["parts"]["full-shape/gemma-2b"]["returncode"] == "timed out"
    assert results["parts"]["embedded/t4"]["returncode"] == "timed out"  # started after the first timed out


def test_the_gpu_table_takes_each_model_from_its_last_record_where_every_phase_ran():
    doc = json.loads(gpu_record.GPU_RECORDS.read_text())
    table = gpu_record.table(doc)
    models = {r["model"] for run in doc["records"] for r in run["parts"].values() if "model" in r}
    assert {m for m in models if f"| {m} (" in table} == models  # every model with a complete record
    # a failed phase in the last record: the row comes from an earlier complete record, or not at all
    planted = copy.deepcopy(doc)
    for run in planted["records"]:
        for record in run["parts"].values():
            if record.get("model") == "gemma-4-E2B" and "phases" in record:
                record["phases"]["load"]["error"] = "OutOfMemoryError: planted"
    assert "| gemma-4-E2B (" not in gpu_record.table(planted)
    assert "| gemma-2b (" in gpu_record.table(planted)
    last = next(r for run in doc["records"] for r in run["parts"].values() if r.get("model") == "gemma-4-E2B"
                and len(r.get("phases", {})) == 3 and not any("error" in p for p in r["phases"].values()))
    assert f"| {last['phases']['load']['allocated_mib']:,} |" in table
