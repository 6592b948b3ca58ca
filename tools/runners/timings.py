"""The course's runtimes from one source: notebooks/course_timings.json (`make notebooks` measures it).

Each notebook's `**Runtime**` line (its first cell) and the README's notebook table are
written from that file by `sync()`, which `python -m tools.runners.course --in-place`
(`make notebooks`) runs after measuring, and `--sync-runtimes` runs alone;
tests/test_notebooks.py checks that they agree. CPU times are measured; T4 times are
estimates kept by hand in the same file, because no GPU ran here.

The test suite's times too: `make test` writes every test's and every nbval cell's time as JUnit XML into
runs/test, and `python -m tools.runners.timings --slowest runs/test/*.xml` prints each step's total and the
slowest tests and cells as the table in CONTRIBUTING.md ("Test time"); `--empty` names a step that selected no
test (pytest's exit code 5), which .ci/run reports.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from gemmate_lib.guard_rails.files import repo_root, write_text

RUNTIME = re.compile(r"^\*\*Runtime\*\*:.*$", re.M)
BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")
BADGE_REPO = re.compile(r"colab\.research\.google\.com/github/([^/\s]+/[^/\s]+)/blob/")  # its owner/name
CLONE = "/content/gemmate"  # where the install cell clones the course in a Colab runtime
# what Colab reads from a notebook's metadata to open it on a GPU runtime, a T4 (the free one): every badge of
# the course opens such a runtime (`make sync` and `make notebooks` keep these keys)
RUNTIME_METADATA = {"accelerator": "GPU", "colab": {"gpuType": "T4", "provenance": []}}


def timings_file() -> Path:
    return repo_root() / "notebooks" / "course_timings.json"


def load() -> dict:
    """{"cpu_seconds": {notebook: s}, "t4_estimate": {notebook: text}, "measured_on": {notebook: text}}.

    `measured_on` says, per notebook, which run and machine measured it: a notebook re-run
    alone (`--only`) on another machine keeps its own line, and the others keep theirs.
    """
    data = json.loads(timings_file().read_text())
    if isinstance(data["measured_on"], str):  # one text for all (the file's first format)
        data["measured_on"] = {name: data["measured_on"] for name in data["cpu_seconds"]}
    return data


def duration(seconds: float) -> str:
    """45 -> '45 s', 250 -> '4 min 10 s'."""
    seconds = round(seconds)
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60:02d} s"


def runtime_line(data: dict, name: str) -> str:
    """The `**Runtime**` line of notebook `name` (stem, e.g. 03_lora_sft)."""
    return (f"**Runtime**: CPU with the embedded default: {duration(data['cpu_seconds'][name])} (measured "
            f"{data['measured_on'][name]}). Colab T4 with `google/gemma-2b`: {data['t4_estimate'][name]} "
            f"(estimate; not "
            "run on a GPU).")


def readme_cells(data: dict, name: str) -> str:
    """The README table's last two cells for notebook `name`."""
    return f"| {duration(data['cpu_seconds'][name])} | {data['t4_estimate'][name]} |"


def cpu_times_line(data: dict) -> str:
    """The README line under the table: which CPU measured its times (a CPU without native bf16 trains in
    fp32, about twice as long; one with it, in bf16)."""
    groups = {}  # each text with its notebooks, the most common first; the others name their notebooks
    for name in data["cpu_seconds"]:
        groups.setdefault(data["measured_on"][name], []).append(name)
    first, *others = sorted(groups, key=lambda text: -len(groups[text]))
    # "on <date>, <machine>": another date on the same machine names its date only
    def short(text):
        return text.split(", ", 1)[0] if text.split(", ", 1)[1:] == first.split(", ", 1)[1:] else text

    where = "; ".join([first] + [f"{', '.join(groups[text])} {short(text)}" for text in others])
    other = ("a CPU without it computes in fp32 and takes about twice as long" if "with native bf16" in where
             else "a CPU with native bf16 takes about half as long")
    return f"CPU times: measured {where}; {other}. Every notebook"


def badge(notebook: str) -> str:
    """The "Open in Colab" badge of a notebook (file name), as the notebooks and the README show it."""
    from gemmate_lib.guard_rails.colab import COURSE_REPO

    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{COURSE_REPO}/blob/main/notebooks/{notebook})")


def _set_source(cell: dict, text: str) -> bool:
    lines = text.split("\n")
    new = [line + "\n" for line in lines[:-1]] + [lines[-1]]
    changed, cell["source"] = cell["source"] != new, new
    return changed


def install_cell(repo: str | None = None) -> str:
    """The first code cell of every notebook (written there by `make sync`), for learners on Colab: clone the
    course, put it on sys.path, install what Colab lacks (never torch). Elsewhere it does nothing.

    The course is not pip-installed on Colab: the kernel imports it from the clone through
    `sys.path`, so a child process needs PYTHONPATH (`hf_token.subprocess_env`). A notebook
    opened inside a checkout (papermill, the smoke run) uses that checkout instead of cloning.
    A failed clone stops the cell with one line, instead of an import error in the next one.
    `colab.start` skips what is installed and stops the notebook when the runtime must restart.
    """
    from gemmate_lib.guard_rails.colab import COURSE_REPO

    repo = repo or COURSE_REPO
    return f"""# Colab only (elsewhere it does nothing): get the course and install the packages Colab lacks.
# It never installs torch (Colab's own build matches its GPU). Safe to re-run: it skips what is there.
import os
import subprocess
import sys
COURSE = "https://github.com/{repo}"  # or the address of your fork
if "google.colab" in sys.modules:
    home = os.path.abspath("..") if os.path.isdir("../gemmate_lib") else "{CLONE}"
    if not os.path.isdir(home):
        git = subprocess.run(["git", "clone", "-q", "--depth", "1", COURSE, home],
                             capture_output=True, text=True)
        if git.returncode != 0:
            raise SystemExit(f"could not clone {{COURSE}}: {{git.stderr.strip()[-200:]}} "
                             "Fix: check the address, or clone the course into {CLONE} yourself")
    sys.path.insert(0, home)  # the course is imported from this folder
    from gemmate_lib.guard_rails import colab
    colab.start(home)  # stops here if the runtime must restart once (Runtime > Restart session)
    os.chdir(os.path.join(home, "notebooks"))"""


def sync(data: dict | None = None) -> list[str]:
    """Rewrite, from one source each, what every notebook repeats; returns what changed.

    The runtime line and the README table from `data` (default: the timings file); the
    Colab badge, the install cell and the markdown's absolute links to the course's files on GitHub
    (relative links do not open in Colab) from `colab.COURSE_REPO` (a fork changes it there); the T4 GPU
    runtime that Colab opens, in the notebook's metadata, from RUNTIME_METADATA.
    """
    from gemmate_lib.guard_rails.colab import COURSE_REPO

    data = data or load()
    root, changed = repo_root(), []
    for name in data["cpu_seconds"]:
        path = root / "notebooks" / f"{name}.ipynb"
        nb = json.loads(path.read_text())
        intro = "".join(nb["cells"][0]["source"])
        before = BADGE_REPO.search(intro)  # the repository the notebook names now
        intro = RUNTIME.sub(runtime_line(data, name), intro)
        intro = BADGE.sub(badge(path.name).replace("\\", "\\\\"), intro)
        edited = _set_source(nb["cells"][0], intro)
        if before and before[1] != COURSE_REPO:  # a fork: links to its files and notebooks follow the badge
            old = re.compile(rf"(github\.com/|colab\.research\.google\.com/github/)"
                             rf"{re.escape(before[1])}/blob/")
            for cell in nb["cells"]:
                text = "".join(cell["source"])
                if cell["cell_type"] == "markdown" and old.search(text):
                    edited |= _set_source(cell, old.sub(lambda m: f"{m[1]}{COURSE_REPO}/blob/", text))
        install = next(c for c in nb["cells"] if c["cell_type"] == "code")
        edited |= _set_source(install, install_cell())
        if any(nb["metadata"].get(k) != v for k, v in RUNTIME_METADATA.items()):  # Colab opens a T4 runtime
            nb["metadata"].update(RUNTIME_METADATA)
            edited = True
        if edited:
            # sorted keys, as nbformat writes them
            write_text(path, json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
            changed.append(path.name)
    readme = (root / "README.md").read_text()
    new = readme
    for name in data["cpu_seconds"]:
        cells = readme_cells(data, name)
        new = re.sub(rf"^(\| `{name}` \|[^|\n]*)\|[^|\n]*\|[^|\n]*\|$", lambda m, cells=cells: m[1] + cells,
                     new,
                     flags=re.M)
    total = sum(data["cpu_seconds"].values())
    new = re.sub(r"^\| \*\*every notebook, start to end\*\* \|.*$",
                 f"| **every notebook, start to end** | | **{duration(total)} "
                 f"for the {len(data['cpu_seconds'])} notebooks** | |",
                 new, flags=re.M)
    new = re.sub(r"^CPU times: .*$", cpu_times_line(data), new, flags=re.M)
    if new != readme:
        write_text(root / "README.md", new)
        changed.append("README.md")
    return changed


def junit_times(path: str | Path) -> tuple[dict, list[dict]]:
    """A pytest --junitxml file's ({"step", "tests", "skipped", "seconds"}, [{"test", "seconds"}, ...]): the
    step is the file's name (unit, nbval, after_nbval), its seconds the whole pytest session's. An nbval cell
    is named as nbval names it (runs/nbval/03_lora_sft.ipynb::Cell 19) with its first line of code."""
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = {"step": Path(path).stem, "tests": sum(int(s.get("tests", 0)) for s in suites),
             "skipped": sum(int(s.get("skipped", 0)) for s in suites),
             "seconds": round(sum(float(s.get("time", 0)) for s in suites), 1)}
    cases = []
    for case in (c for s in suites for c in s.iter("testcase")):
        classname, name = case.get("classname", ""), case.get("name", "")
        if classname.endswith(".ipynb"):  # nbval: runs.nbval.03_lora_sft.ipynb, Cell 19
            test = f"{classname.removesuffix('.ipynb').replace('.', '/')}.ipynb::{name}"
            test += _first_line(test)
        else:  # tests.test_export, test_...: tests/test_export.py::test_...
            test = f"{classname.replace('.', '/')}.py::{name}"
        cases.append({"test": test, "seconds": round(float(case.get("time", 0)), 1)})
    return total, cases


def _first_line(cell: str) -> str:
    """' (its first line of code)' of an nbval item 'path.ipynb::Cell N' (N counts code cells), or ''."""
    path, _, name = cell.partition("::")
    try:
        code = [c for c in json.loads((repo_root() / path).read_text())["cells"] if c["cell_type"] == "code"]
        lines = "".join(code[int(name.split()[-1])]["source"]).splitlines()
    except (OSError, ValueError, IndexError, KeyError):
        return ""
    first = next((line.strip() for line in lines if line.strip()), "")
    return f" (`{first[:60]}`)" if first else ""


def slowest(paths: list[str | Path], n: int = 15) -> str:
    """Markdown: each step's tests and time, then the `n` slowest tests and cells over all of `paths`."""
    steps, cases = [], []
    for path in paths:
        total, found = junit_times(path)
        steps.append(total)
        cases += [{**case, "step": total["step"]} for case in found]
    lines = ["| step | tests | skipped | time |", "|---|---:|---:|---:|"]
    lines += [f"| {t['step']} | {t['tests']} | {t['skipped']} | {duration(t['seconds'])} |" for t in steps]
    lines += [f"| all | {sum(t['tests'] for t in steps)} | {sum(t['skipped'] for t in steps)} | "
              f"{duration(sum(t['seconds'] for t in steps))} |", "",
              "| seconds | step | test or cell |", "|---:|---|---|"]
    lines += [f"| {c['seconds']:.0f} | {c['step']} | {c['test']} |"
              for c in sorted(cases, key=lambda c: -c["seconds"])[:n]]
    return "\n".join(lines)


def empty_steps(paths: list[str | Path]) -> list[str]:
    """The steps among `paths` (JUnit files) whose pytest selected no test (pytest's exit code 5)."""
    return [str(path) for path in paths if Path(path).exists() and junit_times(path)[0]["tests"] == 0]


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="the test suite's times, from pytest's JUnit files")
    parser.add_argument("--slowest", nargs="+", metavar="XML", help="print each step's time and the slowest "
                        "tests and cells (the table in CONTRIBUTING.md)")
    parser.add_argument("-n", type=int, default=15, help="how many of the slowest (default 15)")
    parser.add_argument("--empty", nargs="+", metavar="XML",
                        help="exit 1, naming them, if any of these steps selected no test")
    args = parser.parse_args(argv)
    if args.slowest:
        print(slowest([p for p in args.slowest if Path(p).exists()], args.n))
    if args.empty:
        empty = empty_steps(args.empty)
        for path in empty:
            print(f"{path}: pytest selected no test (exit code 5): the Makefile runs a tier that holds none; "
                  "check its -m expression and the tests' markers")
        return 1 if empty else 0
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
