"""`make exercises`: every exercise's printed solution run once, for real, on the embedded model, then its
check.

As a learner on Colab does it, in the Colab-like kernel of the learner's path (tests/learner_path.py:
`google.colab` imported, the course only on `sys.path` after the install cell, Colab's torchao to upgrade),
with Google Drive mounted and unmounted as Colab does (tests/colab_runtime: $COLAB_SIM_DRIVE keeps Drive's
files in the scratch folder; `flush_and_unmount` in a notebook's last cell takes them away until the next
`get_run_dir` mounts Drive again), on the CPU profile, offline:

1. the lesson: each notebook 00-07 that the chosen exercises need, headless with papermill, into the default
   run folder (runs/interactive on the fake Drive); 00 with `model_name="embedded"` (a Colab runtime without a
   GPU refuses the profile's fallback otherwise), 01-07 with none: they read 00's choice;
2. the solution-type exercises (00-1 to 02-3, 04-2, 04-3, 05-1 to 05-3, and the faults to break on purpose,
   03-4 to 03-6 and 05-4): after the lesson's last cell (*Run all* done, Drive unmounted), in the same
   kernel, each printed solution (the ```python block of its `<details>`), then the notebook's own check cell.
   03-2's solution (it writes the file the rerun reads) runs there too, without its check;
3. the rerun exercises (03-1 to 03-3, 04-1, 06-1 to 06-3, 07-1 to 07-3): each run of
   `gemmate_lib.exercises.judging.EXERCISES[name].parameters` with papermill into the exercise's run folder;
   the last run has the exercise's reading solution (if any) right before its check cell, whose verdict
   counts.

Each check's verdict line (PASS, FAIL, NOT RUN YET, FROM ANOTHER MODEL, MODEL UNKNOWN, or ERROR when a
notebook or a solution raised) and its margins (`parse_verdict`) go into a table
with each exercise's time: printed, and written into docs/exercises.md between its markers. Exit status 1
unless every exercise run is PASS.

Time on a 2-core CPU without native bf16 (fp32), about 2 hours for all 28: the lesson ~30 min (03 ~11 min with
part 2, 06 ~5, 07 ~8, the others 1-3 min each, 00 seconds); the solution-type exercises ~10 min together; the
reruns ~75 min (03 ~5 min a run with compare=False, 03-3's two with part 2 ~8 each, 04-1 ~6, 06 ~3 a run:
06-1 one, 06-2 two, 06-3 three; 07 ~4-8 a run: 07-1 one, 07-2 two, 07-3 one). `--only 03-1 04-2` runs some
(and the lesson notebooks they need), `--seed N` with every notebook's seed N; `--scratch DIR` keeps
everything in DIR, and a second run with the same DIR skips the lesson notebooks that passed there (`--fresh`
reruns them)."""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.markers import markers, replace

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
DOC = ROOT / "docs" / "exercises.md"
RESULTS = ROOT / "docs" / "exercises.json"  # the table's rows, each with the day it ran
BLOCK = "exercises run"  # tools/markers.py: docs/exercises.md's generated section
BEGIN, END = markers(BLOCK)
LESSON_PARAMS = {"00_setup": {"model_name": "embedded"}}  # 01-07: None everywhere, 00's choice decides
SOLUTION_CELL = '''# exercise {name}: its printed solution, as a learner runs it after Run all
import os as __os

__solution = {code!r}
__os.environ["GEMMATE_FIT_PART"] = "exercise {name}"  # the ledger counts what it holds as the exercise's
try:
    exec(compile(__solution, "solution {name}", "exec"), globals())
except Exception as __error:  # noqa: BLE001 - the check below gives its verdict all the same
    print(f"exercise {name}: SOLUTION RAISED {{type(__error).__name__}}: {{__error}}")
finally:
    __os.environ.pop("GEMMATE_FIT_PART", None)
'''


def notebook_path(prefix: str) -> Path:
    return next((ROOT / "notebooks").glob(f"{prefix}_*.ipynb"))


def solution_code(name: str) -> str | None:
    """The ```python block of exercise `name`'s printed solution, None when it has none (03-1: text only)."""
    nb, k = name.split("-")
    for cell in json.loads(notebook_path(nb).read_text())["cells"]:
        text = "".join(cell["source"])
        if cell["cell_type"] == "markdown" and f"<summary>Solution to {k}" in text:
            found = re.search(r"```python\n(.*?)```", text, re.S)
            return found[1] if found else None
    return None


def check_index(node, name: str) -> int:
    """The index of the code cell that checks exercise `name` in notebook `node`."""
    return next(i for i, c in enumerate(node.cells)
                if c.cell_type == "code" and f'exercise_check("{name}")' in c.source)


def prepares(name: str) -> bool:
    """A rerun exercise whose solution writes what its rerun reads (03-2's file): it runs after the lesson."""
    from gemmate_lib.exercises.judging import EXERCISES, InRuns

    return any(isinstance(v, InRuns) for _, params in EXERCISES[name].parameters for v in params.values())


# what a check cell can say (gemmate_lib.exercises.judging.exercise_verdict)
VERDICTS = ("PASS", "FAIL", "NOT RUN YET", "FROM ANOTHER MODEL", "MODEL UNKNOWN")


def parse_verdict(line: str) -> dict:
    """A verdict line (judging.exercise_verdict) as {"name", "verdict", "margins": [(value, unit, what),
    ...]}: what `make exercises` reads from a notebook's output. {} when `line` is no verdict."""
    match = re.match(r"exercise (\d\d-\d): (" + "|".join(VERDICTS) + r")\b", line)
    if not match:
        return {}
    tail = line.split("; margin: ", 1)[1] if "; margin: " in line else ""
    found = re.findall(r"([+-][0-9.e+-]+) (\S+) \(([^()]*)\)", tail)
    margins = [(float(value), unit, what) for value, unit, what in found]
    return {"name": match[1], "verdict": match[2], "margins": margins}


def row_of(executed: Path, name: str) -> dict:
    """Exercise `name`'s verdict from an executed notebook: its check cell's line, parsed, with a solution's
    error when it raised."""
    cells = json.loads(executed.read_text())["cells"]
    printed = {i: "".join("".join(o.get("text", "")) for o in c.get("outputs", []))
               for i, c in enumerate(cells) if c["cell_type"] == "code"}
    raised = [line for text in printed.values() for line in text.splitlines()
              if line.startswith(f"exercise {name}: SOLUTION RAISED")]
    check = [line for i, text in printed.items() if f'exercise_check("{name}")' in "".join(cells[i]["source"])
             for line in text.splitlines() if line.startswith(f"exercise {name}:")]
    seconds = sum(c.get("metadata", {}).get("papermill", {}).get("duration") or 0 for c in cells
                  if f"exercise {name}:" in "".join(c["source"]) or f'exercise_check("{name}")' in
                  "".join(c["source"]))
    if not check:
        return {"name": name, "verdict": "ERROR", "margins": [], "line": "its check cell printed nothing",
                "seconds": seconds}
    # the line the notebook printed above its exercises: does this exercise fit the runtime, before it runs
    fit = [line for text in printed.values() for line in text.splitlines()
           if re.match(rf"exercise {name}: (fits|does not fit)\b", line)]
    if not fit:
        return {"name": name, "verdict": "ERROR", "margins": [], "seconds": seconds,
                "line": f"the notebook printed no fit line for exercise {name} before its exercises"}
    verdict = parse_verdict(check[-1]) or {"name": name, "verdict": "ERROR", "margins": []}
    if raised:
        verdict = {**verdict, "verdict": "ERROR"}
    return {**verdict, "line": (raised[0] + " | " if raised else "") + check[-1], "seconds": seconds,
            "fit": fit[-1]}


class Runner:
    """Runs notebooks in the Colab-like kernel, all under `scratch`."""

    def __init__(self, scratch: Path, fresh: bool = False, seed: int | None = None):
        from gemmate_lib.guard_rails import colab

        self.scratch, self.seed = scratch, seed  # seed: every notebook's `seed` parameter (the lesson's too)
        self.executed = scratch / "executed"
        self.executed.mkdir(parents=True, exist_ok=True)
        self.state_file = scratch / "lessons.json"
        self.passed = {} if fresh or not self.state_file.exists() else json.loads(self.state_file.read_text())
        self.drive_runs = colab.DRIVE_RUNS  # where relative run folders lie while the fake Drive is mounted

    def start(self) -> None:
        from learner_path import colab_kernel, colab_site

        from gemmate_lib.guard_rails import colab

        left = colab.DRIVE / "MyDrive"
        if left.exists() and not left.is_symlink():  # a plain folder there would look mounted for good
            raise SystemExit(f"{left} is a folder an earlier run left behind. Fix: remove {colab.DRIVE}, "
                             "then run again (this run mounts and unmounts Drive there as Colab does)")

        os.environ.update(JUPYTER_PATH=str(self.scratch / "jupyter"), HF_HUB_OFFLINE="1",
                          HF_DATASETS_OFFLINE="1", COLAB_SIM_DRIVE=str(self.scratch / "google-drive"),
                          COLAB_SIM_LOG=str(self.scratch / "colab.log"),
                          GEMMATE_RUNS_ROOT=str(self.scratch))  # outside Drive too: never the course's runs/
        for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "GEMMATE_RUN_DIR", "GEMMATE_PROFILE",
                     "GEMMATE_SMOKE"):
            os.environ.pop(name, None)  # the CPU profile, the default run folder: what a learner gets
        use_site = "GEMMATE_KERNEL_PYTHON" not in os.environ
        python, env = colab_site(self.scratch / "colab-site") if use_site else (None, {})
        self.kernel = colab_kernel(self.scratch / "jupyter", python, env, name="colab-like-exercises")
        # every kernel keeps a ledger of the model copies it holds (tools/fit/ledger.py): scratch/ledger, held
        # to the committed measurement at the end (tools/fit/notebook_fit.check_run)
        from tools.fit.ledger import startup_dir

        os.environ["IPYTHONDIR"] = startup_dir(self.scratch / "ipython")
        (self.scratch / "ledger").mkdir(exist_ok=True)

    def execute(self, node_or_path, out: Path, params: dict) -> tuple[float, str]:
        """Run one notebook with papermill; (seconds, "pass" or the first error in one line)."""
        import papermill as pm

        start = time.time()
        params = params if self.seed is None else {**params, "seed": self.seed}
        os.environ["GEMMATE_LEDGER"] = str(self.scratch / "ledger" / f"{out.stem}.jsonl")
        try:
            pm.execute_notebook(node_or_path, str(out), parameters=params, cwd=str(ROOT / "notebooks"),
                                kernel_name=self.kernel, progress_bar=False)
            status = "pass"
        except pm.PapermillExecutionError as err:
            message = " ".join(str(err.evalue).split())[:300]
            status = f"failed at cell {err.exec_count}: {err.ename}: {message}"
        return time.time() - start, status

    def lesson(self, prefix: str, names: list[str]) -> dict[str, dict]:
        """Notebook `prefix`'s lesson with the solution-type exercises `names` after its last cell (and 03-2's
        preparing solution); their verdicts, and the lesson's own outcome under "lesson"."""
        import nbformat

        from gemmate_lib.exercises.judging import EXERCISES

        path = notebook_path(prefix)
        out = self.executed / f"lesson-{path.name}"
        if path.stem in self.passed and not names and out.exists():
            print(f"{path.stem:28} (passed in {self.scratch}: kept)", flush=True)
            return {"lesson": {"seconds": 0.0, "status": "pass"}}
        node = nbformat.read(path, as_version=4)
        for name in names:
            code = solution_code(name)
            if code is not None:
                node.cells.append(nbformat.v4.new_code_cell(SOLUTION_CELL.format(name=name, code=code)))
            if not EXERCISES[name].parameters:
                node.cells.append(nbformat.v4.new_code_cell(node.cells[check_index(node, name)].source))
        seconds, status = self.execute(node, out, LESSON_PARAMS.get(path.stem, {}))
        print(f"{path.stem:28} {seconds:6.0f} s  lesson {status}", flush=True)
        if status == "pass":
            self.passed[path.stem] = dt.datetime.now().isoformat(timespec="seconds")
            self.state_file.write_text(json.dumps(self.passed, indent=1))
        rows = {"lesson": {"seconds": seconds, "status": status}}
        for name in names:
            if EXERCISES[name].parameters:
                continue  # 03-2: its verdict comes from its rerun
            if out.exists():
                rows[name] = row_of(out, name)
            if status != "pass" and (name not in rows or rows[name]["verdict"] != "PASS"):
                rows[name] = {"name": name, "verdict": "ERROR", "margins": [], "seconds": 0.0,
                              "line": f"the lesson {status}"}
        return rows

    def rerun(self, name: str) -> dict:
        """Exercise `name`'s runs, each notebook again with its parameters; the verdict of the last one's
        check cell, with the exercise's reading solution right before it."""
        import nbformat

        from gemmate_lib.exercises.judging import EXERCISES, InRuns

        runs = EXERCISES[name].parameters
        total = 0.0
        for i, (stem, params) in enumerate(runs, 1):
            # as a learner types them: run_dir relative (the notebook finds it on Drive), a file by its path
            values = {k: (f"runs/{v}" if k == "run_dir" else str(self.drive_runs / v))
                      if isinstance(v, InRuns) else v for k, v in params.items()}
            node = nbformat.read(ROOT / "notebooks" / f"{stem}.ipynb", as_version=4)
            code = solution_code(name)
            if i == len(runs) and code is not None and not prepares(name):
                node.cells.insert(check_index(node, name),
                                  nbformat.v4.new_code_cell(SOLUTION_CELL.format(name=name, code=code)))
            out = self.executed / f"ex{name.replace('-', '_')}-{i}-{stem}.ipynb"
            seconds, status = self.execute(node, out, values)
            total += seconds
            print(f"  {name} run {i}/{len(runs)}: {stem} {seconds:6.0f} s  {status}", flush=True)
            if status != "pass":
                return {"name": name, "verdict": "ERROR", "margins": [], "seconds": total,
                        "line": f"run {i} ({stem}) {status}"}
        return {**row_of(out, name), "seconds": total}


def needed_lessons(names: list[str]) -> list[str]:
    """The lesson notebooks the exercises `names` need: 00 (the model's choice), each one's own, and 03 for
    04 and 05 (its adapter)."""
    prefixes = {"00"} | {n[:2] for n in names}
    if prefixes & {"04", "05"}:
        prefixes.add("03")
    return sorted(prefixes)


def margin_text(row: dict) -> str:
    if row["verdict"] == "ERROR" or not row.get("margins"):
        return "exact" if row["verdict"] in ("PASS", "FAIL") and not row.get("margins") else ""
    return "; ".join(f"{value:+.3g} {unit} ({what})" for value, unit, what in row["margins"])


def table(rows: list[dict]) -> str:
    lines = ["| exercise | verdict | margin to its threshold | time |", "|---|---|---|---|"]
    for row in rows:
        verdict = row["verdict"] + ("" if row["verdict"] == "PASS" else f": {row.get('line', '')}")
        lines.append(f"| {row['name']} | {verdict.replace('|', '/')} | {margin_text(row).replace('|', '/')} "
                     f"| {row.get('seconds', 0) / 60:.1f} min |")
    return "\n".join(lines)


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                      if line.startswith("Model name")), platform.processor())
        bf16 = "native bf16" if re.search(r"amx_bf16|avx512_bf16", lscpu) else "no native bf16"
    except (OSError, subprocess.SubprocessError):
        model, bf16 = platform.processor() or "unknown CPU", "bf16 unknown"
    return f"{os.cpu_count()} cores, {model}, {bf16}"


def write_doc(rows: list[dict], seconds: float, only: bool) -> list[dict]:
    """The table in docs/exercises.md, from its rows in docs/exercises.json. A run of some exercises (`only`)
    replaces their rows and keeps the others' from the runs before, each row with the day it ran; the record
    keeps what the section says of the last run too, so the section is regenerated from it (`section`).
    Returns every row of the table."""
    day = dt.date.today().isoformat()
    fresh = [{**r, "ran": day} for r in rows]
    kept = json.loads(RESULTS.read_text())["rows"] if only and RESULTS.exists() else []
    mine = {r["name"] for r in fresh}
    every = sorted([r for r in kept if r["name"] not in mine] + fresh, key=lambda r: r["name"])
    last = {"seconds": round(seconds), "redid": sorted(mine) if only else None}
    record = {"machine": machine(), "last": last, "rows": every}
    DOC.write_text(replace(DOC.read_text() if DOC.exists() else "", BLOCK, section(record), append=True))
    RESULTS.write_text(json.dumps(record, indent=1) + "\n")
    return every


def section(record: dict) -> str:
    """docs/exercises.md's "last run" section from its record (docs/exercises.json)."""
    every, last = record["rows"], record["last"]
    passed = sum(r["verdict"] == "PASS" for r in every)
    days = sorted({r.get("ran", "?") for r in every})
    minutes = f"{last['seconds'] / 60:.0f} min"
    return ("## The last run (`make exercises`)\n\n"
            f"{passed} of {len(every)} PASS on the embedded model (Gemma 3 270M), CPU profile, offline; "
            f"{record['machine']}; run on {', '.join(days)}"
            + (f" (the last run, {minutes}, redid {', '.join(last['redid'])})" if last["redid"] else
               f", {minutes} in all") + ".\n\n"
            f"{table(every)}")


def main(argv=None) -> int:
    from gemmate_lib.exercises.judging import EXERCISES

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NN-K", help="these exercises (e.g. 03-1 04-2)")
    parser.add_argument("--scratch", type=Path, help="the scratch folder (default: a new temporary one)")
    parser.add_argument("--fresh", action="store_true", help="rerun the lesson notebooks that passed there")
    parser.add_argument("--no-doc", action="store_true", help="print the table, leave docs/exercises.md")
    parser.add_argument("--seed", type=int, help="every notebook's seed (07-1's margin over seeds 42, 1, 2)")
    args = parser.parse_args(argv)
    names = sorted(args.only or EXERCISES)
    unknown = [n for n in names if n not in EXERCISES]
    if unknown:
        parser.error(f"unknown exercise {unknown[0]!r}: use some of {', '.join(EXERCISES)}")
    scratch = (args.scratch or Path(tempfile.mkdtemp(prefix="gemmate-exercises-"))).absolute()
    scratch.mkdir(parents=True, exist_ok=True)
    print(f"exercises {' '.join(names)}; everything in {scratch}", flush=True)
    from learner_path import colab_content

    saved, start, rows = os.environ.copy(), time.time(), {}
    try:
        with colab_content():
            runner = Runner(scratch, fresh=args.fresh, seed=args.seed)
            runner.start()
            for prefix in needed_lessons(names):
                mine = [n for n in names if n.startswith(prefix + "-")
                        and (not EXERCISES[n].parameters or prepares(n))]
                done = runner.lesson(prefix, mine)
                rows.update({k: v for k, v in done.items() if k != "lesson"})
                if done["lesson"]["status"] != "pass":
                    for name in (n for n in names if n.startswith(prefix + "-") and n not in rows):
                        rows[name] = {"name": name, "verdict": "ERROR", "margins": [], "seconds": 0.0,
                                      "line": f"the lesson {done['lesson']['status']}"}
                    continue
                for name in (n for n in names if n.startswith(prefix + "-") and EXERCISES[n].parameters):
                    rows[name] = runner.rerun(name)
                    print(f"  {rows[name]['line']}", flush=True)
                for name in mine:
                    if name in rows and not EXERCISES[name].parameters:
                        print(f"  {rows[name]['line']}", flush=True)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    missing = {"verdict": "ERROR", "margins": [], "line": "not run"}
    ordered = [rows.get(n) or {"name": n, **missing} for n in names]
    seconds = time.time() - start
    print(table(ordered))
    if not args.no_doc:
        write_doc(ordered, seconds, bool(args.only))
        print(f"written into {DOC.relative_to(ROOT)}")
    passed = sum(r["verdict"] == "PASS" for r in ordered)
    print(f"{passed} of {len(ordered)} PASS in {seconds / 60:.0f} min; executed notebooks in "
          f"{scratch / 'executed'}")
    from tools.fit.notebook_fit import check_run

    held = check_run(scratch)  # what each kernel held at once, against the fit lines' measurement
    print("\n".join(held) or "model copies: no run held more at once than the fit lines count")
    return 0 if passed == len(ordered) and not held else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
