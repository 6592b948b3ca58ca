"""make drift (tools/environments/drift.py): what it installs, and how it names a failure."""
from tools.environments.drift import (
    DRIFTING,
    blame,
    drift_requirements,
    first_error,
    junit_results,
    pins,
    report,
)


def test_only_the_hugging_face_stack_drifts_and_torch_is_left_to_its_own_install():
    pinned = pins()
    lines = drift_requirements(pinned)
    unpinned = {line for line in lines if "==" not in line}
    assert unpinned == {name.replace("_", "-") for name in DRIFTING}
    assert not any(line.startswith("torch") for line in lines)
    assert f"pandas=={pinned['pandas']}" in lines  # everything else keeps the course's pin


def test_a_failure_names_the_package_whose_code_raised_and_the_first_error(tmp_path):
    trace = ("gemmate_lib/training.py:40: in build\n"
             "    SFTTrainer(...)\n"
             ".venv-drift/lib/python3.11/site-packages/trl/trainer/sft_trainer.py:500: in __init__\n"
             ".venv-drift/lib/python3.11/site-packages/transformers/trainer.py:900: in __init__\n"
             "E   TypeError: Trainer.__init__() got an unexpected keyword argument 'tokenizer'\n"
             "E   second line\n")
    assert blame(trace) == "transformers"
    error = "TypeError: Trainer.__init__() got an unexpected keyword argument 'tokenizer'"
    assert first_error(trace) == error
    assert blame("gemmate_lib/data.py:3: in f\nE   ValueError: x") == "the course"
    xml = tmp_path / "r.xml"
    xml.write_text('<testsuites><testsuite><testcase name="test_a"/><testcase name="test_b">'
                   f'<failure message="boom">{trace}</failure></testcase>'
                   '<testcase name="test_c"><skipped/></testcase></testsuite></testsuites>')
    counts, failures = junit_results(xml)
    assert counts == {"passed": 1, "failed": 1, "skipped": 1}
    assert failures == ["test_b: transformers: TypeError: Trainer.__init__() got an unexpected keyword "
                        "argument 'tokenizer'"]
    page = report([["transformers", "5.23.0", "5.24.0", "5.24.0"]],
                  [{"step": "fast tier", "ok": False, "result": "1 passed, 1 failed", "seconds": 3,
                    "failures": failures}], "2026-11-24")
    assert "2026-11-24" in page and "| transformers | 5.23.0 | 5.24.0 | 5.24.0 |" in page
    assert "- test_b: transformers: TypeError" in page
