"""The exercises' fit table, gemmate_lib/exercises/fit_table.json: for each exercise, the runs it makes (each
notebook it runs, with the optional parts and the LoRA rank its parameters choose) and the 16/32-bit copy of
the model its check reads, if any. The fit line each notebook prints above its exercises
(gemmate_lib.exercises.fit_lines) reads it and sizes those runs at the learner's model, from the copies the
notebooks were measured to hold (gemmate_lib/notebook_copies.json).

`python -m tools.fit.exercise_fit` writes it from the exercises' registry and the committed copies
(`python -m tools.fit.notebook_fit RUN` does too, with the copies it writes); `--check` says whether the
committed table is what they give now (tests/test_exercise_fit.py holds it so)."""
from __future__ import annotations

import argparse
import json

# Exercises whose check reads a 16/32-bit copy of the model: where that copy does not fit (Gemma 4 E2B on a
# free T4), no 4-bit variant answers them
NEEDS_WHOLE_COPY = {
    "05-1": "05's merge (a 16/32-bit copy)", "05-3": "05's merge (a 16/32-bit copy)",
    "05-4": "05's merge (a 16/32-bit copy)",
    "06-1": "LoRA r=8 on a 16/32-bit base beside QLoRA", "06-2": "two LoRA ranks on a 16/32-bit base",
    "06-3": "LoRA r=8 on a 16/32-bit base beside prompt tuning",
}
OWN_WHOLE_COPY = "a 16/32-bit copy of the model"  # what a solution that loads one itself needs


def exercise_runs(name: str, data: dict | None = None) -> list[tuple[str, dict]]:
    """(notebook stem, parameters) of each run exercise `name` makes: a rerun exercise's runs, or its lesson
    with the solution run after it (`exercise`: the part the smoke run's ledger measured it as)."""
    from gemmate_lib.exercises.judging import EXERCISES
    from gemmate_lib.fit import measured

    spec = EXERCISES[name]
    if spec.parameters:
        return [(stem, dict(params)) for stem, params in spec.parameters]
    stem = next(nb for nb in (data or measured())["notebooks"] if nb.startswith(name[:2] + "_"))
    return [(stem, {"exercise": name})]


def entry(name: str, data: dict | None = None) -> dict:
    """Exercise `name`'s row: {"runs": [[stem, its parts, its LoRA rank], ...], "needs": the 16/32-bit copy
    its check reads ("" for none): NEEDS_WHOLE_COPY's, or OWN_WHOLE_COPY where its solution's own measured
    moments hold a whole copy}."""
    from gemmate_lib import fit

    data = data or fit.measured()
    runs = [[stem, sorted(fit.parts_of(stem, params)), fit.trained_rank(params)]
            for stem, params in exercise_runs(name, data)]
    own = [m for stem, _, _ in runs for m in data["notebooks"][stem]["moments"]
           if m.get("part") == f"exercise {name}"]
    whole = any(not kind.startswith("nf4") for m in own for kind in m["copies"])
    return {"runs": runs, "needs": NEEDS_WHOLE_COPY.get(name, OWN_WHOLE_COPY if whole else "")}


def table(data: dict | None = None) -> dict[str, dict]:
    """{exercise: entry} for every registered exercise, in the course's order."""
    from gemmate_lib.exercises.judging import EXERCISES

    return {name: entry(name, data) for name in EXERCISES}


def write(found: dict[str, dict]) -> None:
    from gemmate_lib import exercises

    rows = (f" {json.dumps(name)}: {json.dumps(row)}" for name, row in found.items())  # one line each
    exercises.FIT_TABLE.write_text("{\n" + ",\n".join(rows) + "\n}\n")
    exercises.fit_table.cache_clear()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="only say whether the committed table is current")
    args = parser.parse_args(argv)
    from gemmate_lib.exercises import fit_table

    found = table()
    if args.check:
        current = fit_table() == found
        print("the exercises' fit table is current" if current else
              "gemmate_lib/exercises/fit_table.json is stale: run `python -m tools.fit.exercise_fit`")
        return 0 if current else 1
    write(found)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
