"""Every generated block of docs/ and the README (between `<!-- NAME -->` and `<!-- end of NAME -->`,
tools/markers.py) is what its generator writes from the committed data: a table edited by hand, or data
changed without its page, fails here, and the message names the command that rewrites the block. A new
block with no generator here fails too."""
import json
import re
from pathlib import Path

import pytest

from tools.markers import block

ROOT = Path(__file__).resolve().parent.parent


def _notebook_fit(kind):
    from tools.fit import notebook_fit

    return {"notebook table": notebook_fit.table, "fit line": notebook_fit.readme_line,
            "exercise fit table": notebook_fit.exercise_table}[kind]()


def _rehearse(kind):
    from tools.fit import rehearse

    rows = json.loads((rehearse.DOCS / "full-shape.json").read_text())["rows"]
    return {"rehearsal table": rehearse.table, "copy table": rehearse.copy_table}[kind](rows)


def _holdout(_):
    from tools.fit import holdout, rehearse

    rows = json.loads((rehearse.DOCS / "full-shape.json").read_text())["rows"]
    plans = {name: rehearse.planned(name) for name in {r["model"] for r in holdout.held_out(rows)}}
    return holdout.table(json.loads(holdout.HOLDOUT_RECORD.read_text()), rows, plans)


def _quota(kind):
    from tools.runners import quota

    return {"quota plan": quota.block, "quota line": quota.readme_line}[kind]()


def _certificate(_):
    from tools.runners import export_certificate

    return export_certificate.section(json.loads(export_certificate.RECORD.read_text()))


def _colab_replica(_):
    from tools.environments import colab_replica

    return colab_replica.section(json.loads(colab_replica.REPLICA_RECORD.read_text()))


def _exercises(_):
    from tools.runners import exercises

    return exercises.section(json.loads(exercises.RESULTS.read_text()))


def _gpu_record(_):
    from tools.gpu import gpu_record

    return gpu_record.table(json.loads(gpu_record.GPU_RECORDS.read_text()))


NOTEBOOK_FIT = "python -m tools.fit.notebook_fit RUN (a smoke run with its ledgers)"
# (page, block name): (its generator, the command that rewrites it)
GENERATED = {
    ("docs/full-shape.md", "notebook table"): (_notebook_fit, NOTEBOOK_FIT),
    ("README.md", "fit line"): (_notebook_fit, NOTEBOOK_FIT),
    ("docs/exercises.md", "exercise fit table"): (_notebook_fit, NOTEBOOK_FIT),
    ("docs/full-shape.md", "rehearsal table"): (_rehearse, "make rehearse"),
    ("docs/full-shape.md", "copy table"): (_rehearse, "make rehearse"),
    ("docs/full-shape.md", "hold-out table"): (_holdout, "python -m tools.fit.holdout"),
    ("docs/colab.md", "quota plan"): (_quota, "python -m tools.runners.quota --write"),
    ("README.md", "quota line"): (_quota, "python -m tools.runners.quota --write"),
    ("docs/export.md", "certificate table"): (_certificate,
                                              "python -m tools.runners.export_certificate RUN_DIR"),
    ("docs/exercises.md", "exercises run"): (_exercises, "make exercises"),
    ("docs/compatibility.md", "colab replica"): (_colab_replica, "make colab-replica"),
    ("docs/full-shape.md", "gpu table"): (_gpu_record, "python -m tools.gpu.gpu_record --write"),
}


def blocks_in_pages() -> set[tuple[str, str]]:
    found = set()
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text()
        for name in re.findall(r"<!-- (?!end of )(.+?) -->", text):
            if f"<!-- end of {name} -->" in text:  # a block, not a comment
                found.add((str(page.relative_to(ROOT)), name))
    return found


def test_every_generated_block_has_its_generator_here():
    assert blocks_in_pages() == set(GENERATED)


@pytest.mark.parametrize("page, name", sorted(GENERATED), ids=[n for _, n in sorted(GENERATED)])
def test_the_block_is_what_its_generator_writes_from_the_committed_data(page, name):
    generate, command = GENERATED[(page, name)]
    written = block((ROOT / page).read_text(), name)
    assert written is not None, f"{page} lost its <!-- {name} --> block"
    assert written.strip() == generate(name).strip(), f"{page}'s {name} is stale or edited by hand: {command}"


def test_make_colab_replica_writes_the_record_its_section_comes_back_from(tmp_path, monkeypatch):
    from tools.environments import colab_replica

    monkeypatch.setattr(colab_replica, "DOC", tmp_path / "compatibility.md")
    monkeypatch.setattr(colab_replica, "REPLICA_RECORD", tmp_path / "colab-replica.json")
    rows = [("install cell", "pass", 21.6, ""), ("smoke run", "fail", 3.2, "1 failed")]
    report = {"the install cell": {"changes": ["added trl 1.16.0"], "conflicts": []}}
    written = colab_replica.write_doc(rows, report, {"torch": "2.11.0", "trl": "1.16.0"})
    assert "| smoke run | FAIL: 1 failed | 3 |" in written and "- added trl 1.16.0" in written
    record = json.loads(colab_replica.REPLICA_RECORD.read_text())
    assert record["held"] == 2 and record["shown"]["torch"] == "2.11.0"
    page = colab_replica.DOC.read_text()
    assert block(page, colab_replica.BLOCK) == colab_replica.section(record) == written
