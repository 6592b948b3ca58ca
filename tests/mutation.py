"""`make mutants`: mutation testing (mutmut) of the modules that decide what the learner is told. mutmut
plants one fault at a time (a flipped comparison, a changed number, a dropped argument) and runs the tests
that cover the function it changed; a fault that no test notices ("survived") is a behaviour no test reads.

Each module runs against the test files that cover it (COVERING), in a folder of its own,
runs/mutants/<module>/ (e.g. runs/mutants/gemmate_lib.stats/). mutmut reads one configuration,
pyproject.toml's [tool.mutmut], from the folder it runs in: each folder holds links to the checkout and a copy
of pyproject.toml with the two settings that differ per module added to that table, `only_mutate` (the
module) and `pytest_add_cli_args_test_selection` (its tests). Every run starts from an empty folder, so no
result of an older test suite is kept. At the end it prints, and writes to runs/mutants/summary.txt, one line
per module: mutants, killed, survived, no tests, timeouts, suspicious, the share not killed and the time; each
survivor's diff goes to runs/mutants/<module>/survivors.txt. It exits non-zero when mutmut stops or when more
than GOAL of a module's mutants are not killed.

    python tests/mutation.py [MODULE ...]    (make mutants MODULES="gemmate_lib/stats.py"); none: all of them
    python tests/mutation.py --rerun MODULE  (make mutants RERUN=1 MODULES=...): the survivors of the module's
                                             last run again, against the tests as they are now (after new
                                             tests were written for them), keeping the killed ones' results
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "mutants"
MUTMUT = Path(sys.executable).with_name("mutmut")
GOAL = 0.10  # the largest share of a module's mutants left alive
# (CONTRIBUTING.md has the table; docs/maintaining.md lists each one left)

# module -> the tests that cover it: only these run for its mutants (mutmut then runs, for each mutant, the
# tests among them that called the function it changed). mutmut sees calls made in the pytest process only:
# code that runs in a child process (a notebook kernel, the command line) counts as "no tests".
COVERING = {
    "gemmate_lib/fit.py": ["tests/test_fit.py", "tests/test_notebook_fit.py",
                           "tests/test_generated_blocks.py"],
    "gemmate_lib/exercises/judging.py": [
        "tests/test_exercise_checks.py", "tests/test_exercises.py", "tests/test_exercise_check_machinery.py",
        "tests/test_exercise_fit.py"],
    "gemmate_lib/exercises/__init__.py": [
        "tests/test_exercise_checks.py", "tests/test_exercise_runner.py", "tests/test_exercise_solutions.py",
        "tests/test_exercise_fit.py"],
    "gemmate_lib/exercises/checks_00_03.py": [
        "tests/test_exercise_checks.py", "tests/test_exercise_solutions.py", "tests/test_exercise_fit.py"],
    "gemmate_lib/exercises/checks_04_07.py": [
        "tests/test_exercise_checks.py", "tests/test_exercise_solutions.py"],
    "gemmate_lib/preflight.py": ["tests/test_preflight.py"],
    "gemmate_lib/stats.py": ["tests/test_stats.py"],
    # what decides the loss, a resume, the dtype and the data trained on (issue 77)
    "gemmate_lib/resume.py": ["tests/test_resume.py", "tests/test_temporal_training.py"],
    "gemmate_lib/fast_loss.py": ["tests/test_fast_loss.py", "tests/test_logit_cap.py"],
    "gemmate_lib/generations.py": ["tests/test_generations.py", "tests/test_logit_cap.py"],
    "gemmate_lib/hardware.py": ["tests/test_hardware.py", "tests/test_fit.py"],  # test_fit: the memory line
    "gemmate_lib/data.py": ["tests/test_data.py"],
    "gemmate_lib/reference.py": ["tests/test_reference.py"],
    "gemmate_cli/certificate.py": ["tests/test_certificate.py"],
    # in this process, with a stand-in shell (the smoke run drives it through real kernels, minutes a mutant)
    "tools/fit/ledger.py": ["tests/test_ledger.py"],
    "tools/fit/notebook_fit.py": ["tests/test_notebook_fit.py", "tests/test_notebook_fit_ledgers.py",
                              "tests/test_generated_blocks.py"],
    "tools/fit/exercise_fit.py": ["tests/test_exercise_fit.py", "tests/test_notebook_fit_ledgers.py"],
}
# what a run folder never links: the runs themselves, the environments, git, and the pyproject.toml it writes
UNLINKED = {"runs", "mutants", "pyproject.toml"}
COLUMNS = ("mutants", "killed", "survived", "no tests", "not checked", "timeout", "suspicious", "not killed",
           "time")


def folder_of(module: str) -> Path:
    return RUNS / module.removesuffix(".py").replace("/", ".")


def configuration(module: str) -> str:
    """pyproject.toml with the module's own two settings added to [tool.mutmut]."""
    text = (ROOT / "pyproject.toml").read_text()
    header = "[tool.mutmut]\n"
    if header not in text:
        raise SystemExit("pyproject.toml has no [tool.mutmut] table, where make mutants reads its settings")
    own = (f"only_mutate = {json.dumps([module])}\n"
           f"pytest_add_cli_args_test_selection = {json.dumps(COVERING[module])}\n")
    text = text.replace(header, header + own, 1)
    table = tomllib.loads(text)["tool"]["mutmut"]  # a key set twice (in pyproject.toml too) fails here
    assert (table["only_mutate"], table["pytest_add_cli_args_test_selection"]) == ([module], COVERING[module])
    return text


def prepare(module: str) -> Path:
    """An empty run folder for `module`: links to the checkout's files and folders, its own pyproject.toml."""
    folder = folder_of(module)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for entry in ROOT.iterdir():
        if entry.name not in UNLINKED and not entry.name.startswith("."):
            (folder / entry.name).symlink_to(entry)
    (folder / "pyproject.toml").write_text(configuration(module))
    return folder


def mutmut(folder: Path, *args: str, log=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(MUTMUT), *args], cwd=folder, text=True, check=False,
                          stdout=log or subprocess.PIPE, stderr=subprocess.STDOUT if log else subprocess.PIPE)


def counts(folder: Path) -> dict:
    """mutmut's own tally of the folder's last run (`mutmut export-cicd-stats`)."""
    mutmut(folder, "export-cicd-stats")
    stats = json.loads((folder / "mutants" / "mutmut-cicd-stats.json").read_text())
    return {"mutants": stats["total"], "killed": stats["killed"], "survived": stats["survived"],
            "no tests": stats["no_tests"], "timeout": stats["timeout"],
            "suspicious": stats["suspicious"] + stats["segfault"],
            "not checked": stats["total"] - sum(stats[k] for k in (
                "killed", "survived", "no_tests", "timeout", "suspicious", "segfault", "skipped",
                "check_was_interrupted_by_user"))}


def not_killed(folder: Path) -> list[str]:
    """The names of the folder's mutants not killed (`mutmut results`)."""
    listed = mutmut(folder, "results").stdout
    return [name for name, _ in re.findall(r"^\s+(\S+): (survived|no tests|suspicious|segfault|not checked)$",
                                          listed, re.M)]


def write_survivors(folder: Path) -> list[str]:
    """Every mutant not killed, with its diff (`mutmut show`), into survivors.txt; returns their names."""
    names = not_killed(folder)
    with open(folder / "survivors.txt", "w") as out:
        for name in names:
            out.write(mutmut(folder, "show", name).stdout + "\n")
    return names


def run(module: str, children: int) -> dict:
    folder = prepare(module)
    start = time.monotonic()
    with open(folder / "mutmut.log", "w") as log:
        done = mutmut(folder, "run", "--max-children", str(children), log=log)
    row = {"module": module, "seconds": time.monotonic() - start, "code": done.returncode}
    if (folder / "mutants" / "mutmut-stats.json").exists():
        row.update(counts(folder))
        row["survivors"] = write_survivors(folder)
    return row


def rerun(module: str, children: int) -> dict:
    """The mutants not killed in `module`'s last run, run again with the current tests (mutmut copies tests/
    afresh on every run; its test-to-function map is collected again, so new tests count)."""
    folder = folder_of(module)
    if not (folder / "mutants" / "mutmut-stats.json").exists():
        raise SystemExit(f"{module} has no finished run in {folder.relative_to(ROOT)}: "
                         "run make mutants first")
    (folder / "pyproject.toml").write_text(configuration(module))  # COVERING may have changed
    names = not_killed(folder)
    (folder / "mutants" / "mutmut-stats.json").unlink()
    start = time.monotonic()
    with open(folder / "mutmut-rerun.log", "w") as log:
        done = mutmut(folder, "run", "--max-children", str(children), *names, log=log) if names else None
    row = {"module": module, "seconds": time.monotonic() - start, "code": done.returncode if done else 0,
           "rerun": len(names)}
    row.update(counts(folder))
    row["survivors"] = write_survivors(folder)
    return row


def alive(row: dict) -> int:
    """Mutants not killed: survived, with no test, or not checked (their function changed since they ran)."""
    return row["survived"] + row["no tests"] + row.get("not checked", 0)


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def table(rows: list[dict]) -> str:
    """One line per module: the counts, the share not killed (survived + no tests, of all), the time."""
    lines = [("module",) + COLUMNS]
    for row in rows:
        if "mutants" not in row:
            lines.append((row["module"], "mutmut stopped: see its mutmut.log") + ("",) * 7)
            continue
        share = alive(row) / max(row["mutants"], 1)
        lines.append((row["module"], *(str(row.get(c, 0)) for c in COLUMNS[:7]), f"{share:.1%}",
                      minutes(row["seconds"])))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                               enumerate(zip(line, widths))).rstrip() for line in lines)


def main(argv: list[str]) -> int:
    children = int(os.environ.get("MUTANT_CHILDREN", "1"))
    again = "--rerun" in argv
    argv = [a for a in argv if a != "--rerun"]
    modules = argv or list(COVERING)
    unknown = [m for m in modules if m not in COVERING]
    if unknown:
        print(f"make mutants: no covering tests known for {', '.join(unknown)}: MODULES takes "
              f"{', '.join(COVERING)}")
        return 2
    rows = []
    for module in modules:
        print(f"{module}: mutmut {'reruns its survivors ' if again else ''}against "
              f"{' '.join(COVERING[module])} ...", flush=True)
        rows.append(rerun(module, children) if again else run(module, children))
    summary = table(rows)
    problems = []
    for row in rows:
        folder = folder_of(row["module"]).relative_to(ROOT)
        if row["code"] or "mutants" not in row:
            problems.append(f"{row['module']}: mutmut stopped (exit code {row['code']}): "
                            f"read {folder}/mutmut.log")
        elif alive(row) > GOAL * row["mutants"]:
            problems.append(f"{row['module']}: more than {GOAL:.0%} of its mutants survive: read "
                            f"{folder}/survivors.txt and add tests that notice them")
    text = f"{time.strftime('%Y-%m-%d %H:%M')}, mutmut on {children} child process(es)\n{summary}\n"
    text += "".join(f"{p}\n" for p in problems)
    RUNS.mkdir(parents=True, exist_ok=True)
    (RUNS / "summary.txt").write_text(text)
    print(text, end="")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
