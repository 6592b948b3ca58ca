"""The planner's hold-out record, docs/planner-holdout.json: for every row of docs/full-shape.json that no
constant of the planner (gemmate_lib/fit.py) was fitted on, its FIRST prediction of that row, made by the
planner as it stood before the row was measured, beside the measurement. A planner tuned after it has seen a
row fits that row by construction; only the first prediction says how well it predicts a model it has not
seen, so the record keeps it.

The record is append-only: an entry, once committed, is never changed or deleted (tests/test_fit.py compares
every committed version of the file with the current one); later planner changes are judged against it in
the hold-out table of docs/full-shape.md (first prediction, the planner now, measured), which
`python -m tools.fit.holdout` writes.

`python -m tools.fit.holdout --append` records the entries the record lacks: the current planner's prediction,
once, with gemmate_lib/fit.py as committed (planner_commit: HEAD). Run it when `make rehearse` has measured a
new hold-out row and before the planner changes for it; commit the row and its entry together
(measured_commit null: the commit that adds the entry).
"""
from __future__ import annotations

import argparse
import json
import subprocess

from tools.fit.rehearse import DOCS

HOLDOUT_RECORD = DOCS / "planner-holdout.json"
PAGE = DOCS / "full-shape.md"
ROOT = DOCS.parent
LIMIT = 0.15  # the planner's allowance on every row (tests/test_fit.py)
PLANNER = ("gemmate_lib/fit.py", "gemmate_lib/generations.py",  # what a prediction depends on
           "tools/fit/merge_shards.py")


def held_out(rows: list[dict]) -> list[dict]:
    """The phase rows of docs/full-shape.json no constant of the planner was fitted on."""
    return [r for r in rows if not r["calibrated"] and r["phase"] != "copy"]


def key(item: dict) -> tuple[str, str]:
    """(model, phase): what names a row and its entry."""
    return item["model"], item["phase"]


def entry(row: dict, plan: dict, planner_commit: str, measured_commit: str | None) -> dict:
    """The record's entry for a measured `row` and the planner's `plan` of it ({phase: {"ram", "disk"}}).
    The relative error is (predicted - measured) / measured; within: the test's rel=0.15, nothing more."""
    measured = {"ram": row["peak_ram"], "disk": row["peak_disk"]}
    first = {what: round(plan[row["phase"]][what]) for what in ("ram", "disk")}
    error = {what: (first[what] - measured[what]) / measured[what] for what in measured}
    return {"model": row["model"], "phase": row["phase"], "measured": measured, "first_prediction": first,
            "relative_error": {what: round(e, 4) for what, e in error.items()},
            "within_15_percent": {what: abs(e) <= LIMIT for what, e in error.items()},
            "planner_commit": planner_commit, "measured_commit": measured_commit}


def missing(record: dict, rows: list[dict]) -> list[dict]:
    """The hold-out rows of `rows` that have no entry in `record`."""
    recorded = {key(e) for e in record["entries"]}
    return [r for r in held_out(rows) if key(r) not in recorded]


def changed(old: dict, new: dict) -> list[str]:
    """What `new` changed or deleted of `old`'s entries (two versions of the record): one line each."""
    now = {key(e): e for e in new["entries"]}
    lines = []
    for e in old["entries"]:
        if key(e) not in now:
            lines.append(f"{' '.join(key(e))}: deleted")
        elif now[key(e)] != e:
            fields = sorted(f for f in e.keys() | now[key(e)].keys() if e.get(f) != now[key(e)].get(f))
            lines.append(f"{' '.join(key(e))}: changed ({', '.join(fields)})")
    return lines


def _cell(predicted: float, measured: float) -> str:
    """GB and the signed error against `measured`, in bold beyond the 15% allowance."""
    error = (predicted - measured) / measured
    percent = round(error * 100)
    text = f"{predicted / 1e9:.2f} ({f'{percent:+d}%' if percent else '0%'})"
    return f"**{text}**" if abs(error) > LIMIT else text


def table(record: dict, rows: list[dict], plans: dict[str, dict]) -> str:
    """The hold-out rows: measured now, the record's first prediction (its error against the measurement it
    was recorded with) and the planner now (`plans`: {model: planner.predict(...)}), RAM then disk; beyond 15%
    in bold; then a line counting the checks each planner passed."""
    entries = {key(e): e for e in record["entries"]}
    lines = ["| model | phase | RAM measured (GB) | first prediction | planner now | disk measured (GB) | "
             "first prediction | planner now |", "|---|---|---|---|---|---|---|---|"]
    first_ok = now_ok = checks = 0
    commits = set()
    for r in held_out(rows):
        e, now = entries[key(r)], plans[r["model"]][r["phase"]]
        cells = []
        for what, peak in (("ram", "peak_ram"), ("disk", "peak_disk")):
            cells += [f"{r[peak] / 1e9:.2f}", _cell(e["first_prediction"][what], e["measured"][what]),
                      _cell(now[what], r[peak])]
            first_ok += e["within_15_percent"][what]
            now_ok += abs(now[what] - r[peak]) <= LIMIT * r[peak]
            checks += 1
        commits.add(e["planner_commit"][:7])
        lines.append(f"| {r['model']} | {r['phase']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + (
        f"\n\nWithin 15%: the first predictions {first_ok} of {checks} checks (the planner of "
        f"{', '.join(sorted(commits))}), the planner now {now_ok} of {checks}.")


def block(page: str, marker: str = "hold-out table") -> str:
    """What lies between <!-- marker --> and <!-- end of marker --> in `page` (without the newlines)."""
    return page.split(f"<!-- {marker} -->\n", 1)[1].split(f"\n<!-- end of {marker} -->", 1)[0]


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def main(argv=None) -> int:
    from tools.fit.rehearse import planned
    from tools.markers import replace

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--append", action="store_true",
                        help="record the current planner's prediction of every hold-out row the record lacks")
    args = parser.parse_args(argv)
    rows = json.loads((DOCS / "full-shape.json").read_text())["rows"]
    record = json.loads(HOLDOUT_RECORD.read_text())
    new = missing(record, rows)
    if args.append and new:
        if _git("status", "--porcelain", "--", *PLANNER).strip():
            raise SystemExit(f"{', '.join(PLANNER)} differ from HEAD: a first prediction is the committed "
                             "planner's, before it changes for the new rows; commit or set the change aside")
        head = _git("rev-parse", "HEAD").strip()
        for r in new:
            record["entries"].append(entry(r, planned(r["model"]), head, None))
            print(f"recorded {' '.join(key(r))}: the planner of {head[:7]}")
        HOLDOUT_RECORD.write_text(json.dumps(record, indent=1) + "\n")
    elif new:
        raise SystemExit(f"no entry for {', '.join(' '.join(key(r)) for r in new)}: "
                         "python -m tools.fit.holdout --append")
    plans = {name: planned(name) for name in {r["model"] for r in held_out(rows)}}
    PAGE.write_text(replace(PAGE.read_text(), "hold-out table", table(record, rows, plans)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
