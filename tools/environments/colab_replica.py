"""`make colab-replica`: the course inside Colab's own published runtime, on this CPU.

Learners run the course in a Colab GPU runtime with hundreds of preinstalled packages that `.venv` never
has. Google publishes that runtime's package list and OS line in the public repository
googlecolab/backend-info; tools/environments/colab_snapshot/ holds a copy (SOURCE.json: repository, commit,
date). This builds `.venv-colab` beside `.venv`:
- with the Python that Colab reports (same major.minor; COLAB_PYTHON names the interpreter);
- with Colab's version of every package the course imports and Colab has, of every package in Colab's list
  that transformers, peft, trl, accelerate or datasets probe for when present (`find_spec`,
  `_is_package_available`: torchao is one), and of their dependencies (Colab's whole list is the
  constraints file); torch at Colab's version from the registry, whose CUDA build runs on a CPU.
Then it runs, as Colab does, each from Colab's state (the venv is reset to it before each step):
- the ordered notebooks' install cell (`gemmate_lib.guard_rails.colab.install`), with `google.colab`
  importable;
- the one-page recipe's install cell;
- the learner's-path smoke run (tests/learner_path.py) with `.venv-colab`'s Python as the Colab-like kernel;
- the one-page recipe on the embedded default, in the same kernel;
- the one-page recipe on a tiny random Gemma 1, 3 and 4 (the `generations` tests), in the same kernel.
It prints a table (step, result, seconds) and what pip changed from Colab's set (upgrades, downgrades,
additions, and `pip check`'s conflicts), and writes both, with the snapshot's date, into
docs/compatibility.md beside `make drift`'s table. Not part of `make test`: it downloads several GB once.

`python -m tools.environments.colab_replica --refresh PATH` copies a new snapshot from a clone of
googlecolab/backend-info.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from tools.markers import markers, replace

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = Path(__file__).with_name("colab_snapshot")
VENV = ROOT / ".venv-colab"
DOC = ROOT / "docs" / "compatibility.md"
REPLICA_RECORD = ROOT / "docs" / "colab-replica.json"  # the last run's figures, which the section shows
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
# the libraries whose optional-package probes decide what of Colab's list can change their behaviour
PROBERS = ("transformers", "peft", "trl", "accelerate", "datasets")
# import name -> distribution name, where they differ
ALIASES = {"pil": "pillow", "cv2": "opencv-python", "sklearn": "scikit-learn", "yaml": "pyyaml",
           "google.protobuf": "protobuf", "bs4": "beautifulsoup4", "ipython": "ipython",
           "multipart": "python-multipart", "levenshtein": "levenshtein", "jinja2": "jinja2",
           "flash-attn-interface": "flash-attn", "neptune-client": "neptune-client"}
# Colab's kernel itself, which the smoke run's Colab-like kernel needs
KERNEL = ("ipykernel",)
# Colab's CUDA libraries, which follow torch's build (constraints)
CUDA_LIBRARIES = ("nvidia-", "cuda-", "cupy-cuda", "jax-cuda")
# the versions the table's heading names
SHOWN = ("torch", "transformers", "peft", "accelerate", "datasets", "huggingface-hub", "torchao")
BLOCK = "colab replica"  # tools/markers.py: docs/compatibility.md's section, which make drift keeps
BEGIN, END = markers(BLOCK)


def key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def colab_packages(freeze: Path = SNAPSHOT / "pip-freeze.gpu.txt") -> dict[str, str]:
    """{distribution: version} of Colab's `pip freeze` (its `name==version` lines; a CUDA build's local
    version, `+cu128`, dropped: the registry's build of the same release stands in for it)."""
    found = {}
    for line in freeze.read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9_.\-]+)==([^\s#]+)$", line.strip()):
            found[key(m.group(1))] = m.group(2).split("+")[0]
    return found


def constraints(colab: dict[str, str]) -> dict[str, str]:
    """Colab's list as pip constraints, less its CUDA libraries: Colab's torch is PyTorch's own CUDA 12.8
    build, which the registry does not carry; the registry's build of the same release brings the CUDA
    libraries it was built with (none of them run on a CPU)."""
    return {n: v for n, v in colab.items() if not n.startswith(CUDA_LIBRARIES)}


def colab_python(os_info: Path = SNAPSHOT / "os-info-gpu.txt") -> str:
    """Colab's Python release, "3.13.15", from its OS line."""
    return re.search(r"^Python (\d+\.\d+\.\d+)", os_info.read_text(), re.M).group(1)


def probed(site: Path) -> set[str]:
    """Every module name that the PROBERS look for when present (their `find_spec("x")` and
    `_is_package_available("x")` calls), as distribution keys."""
    pattern = re.compile(r'(?:_is_package_available|find_spec|is_package_available)\(\s*"([A-Za-z0-9_.\-]+)"')
    names = set()
    for package in PROBERS:
        for path in (site / package).rglob("*.py"):
            names.update(pattern.findall(path.read_text(errors="ignore")))
    return {key(ALIASES.get(n.lower(), n)) for n in names}


def imported_by_course() -> set[str]:
    """The distributions the course's library and notebooks import (top-level names, mapped through this
    environment's packages_distributions)."""
    from importlib.metadata import packages_distributions

    modules = set()
    sources = [p.read_text() for p in (ROOT / "gemmate_lib").rglob("*.py")]
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        cells = json.loads(nb.read_text())["cells"]
        sources += ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    for text in sources:
        modules.update(re.findall(r"^\s*(?:from|import)\s+([A-Za-z_][A-Za-z0-9_]*)", text, re.M))
    dists = packages_distributions()
    return {key(d) for m in modules for d in dists.get(m, [m])}


def wanted(colab: dict[str, str]) -> dict[str, str]:
    """What .venv-colab gets: Colab's version of what the course imports, of what the PROBERS probe, and
    Colab's kernel; only what Colab's list has."""
    site = Path(sysconfig.get_paths()["purelib"])
    names = (imported_by_course() | probed(site) | set(KERNEL)) & set(colab)
    return {n: colab[n] for n in sorted(names)}


def pip(*args: str, log, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(VENV / "bin" / "python"), "-m", "pip", *args]
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log.write(proc.stdout + proc.stderr)
    if check and proc.returncode != 0:
        why = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING")]
        marker = "The conflict is caused by:"
        cause = why[why.index(marker) + 1:][:2] if marker in why else []
        sys.exit(f"make colab-replica: `pip {' '.join(args[:3])} ...` failed: "
                 f"{' '.join(cause or why[-1:] or ['?'])[:300]} (log: {log.name})")
    return proc


def freeze(log) -> dict[str, str]:
    out = pip("list", "--format", "json", log=log).stdout
    return {key(p["name"]): p["version"] for p in json.loads(out)}


def build(python: str, log) -> dict[str, str]:
    """.venv-colab at Colab's state; returns that state ({package: version}), also kept in the venv."""
    want_minor = ".".join(colab_python().split(".")[:2])
    try:
        have = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        have = ""
    if ".".join(have.split(".")[:2]) != want_minor:
        sys.exit(f"make colab-replica: Colab runs Python {colab_python()}, but COLAB_PYTHON={python} is "
                 f"{have or 'not found'}. Fix: install CPython {want_minor} (e.g. `pyenv install "
                 f"{want_minor}`) and run `make colab-replica COLAB_PYTHON=/path/to/python{want_minor}`")
    baseline = VENV / "colab-state.json"
    if baseline.exists():
        return json.loads(baseline.read_text())
    if VENV.exists():
        shutil.rmtree(VENV)
    subprocess.run([python, "-m", "venv", str(VENV)], check=True)
    colab = colab_packages()
    held = VENV / "colab-constraints.txt"
    held.write_text("".join(f"{n}=={v}\n" for n, v in constraints(colab).items()))
    pip("install", "-q", f"pip=={colab.get('pip', '25.0')}", log=log, check=False)
    specs = [f"{n}=={v}" for n, v in wanted(colab).items()]
    print(f"building {VENV.name}: Python {have}, {len(specs)} of Colab's packages and their dependencies "
          "(several GB, once)...", flush=True)
    pip("install", "-c", str(held), *specs, log=log)
    state = freeze(log)
    baseline.write_text(json.dumps(state, indent=1))
    return state


def reset(state: dict[str, str], log) -> None:
    """Back to Colab's state: remove what a step added, put back what it changed."""
    now = freeze(log)
    extra = sorted(set(now) - set(state) - {"pip", "setuptools"})
    if extra:
        pip("uninstall", "-y", "-q", *extra, log=log)
    changed = [f"{n}=={v}" for n, v in state.items() if now.get(n) != v]
    if changed:
        pip("install", "-q", "--no-deps", *changed, log=log)


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """What pip changed from Colab's set, one line each."""
    from packaging.version import Version

    out = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if old is None:
            out.append(f"added {name} {new}")
        elif new is None:
            out.append(f"removed {name} {old}")
        else:
            verb = "upgraded" if Version(new) > Version(old) else "downgraded"
            out.append(f"{verb} {name} {old} -> {new}")
    return out


def colab_env() -> dict[str, str]:
    """The environment of a Colab-like process: google.colab importable (tests/colab_runtime), offline."""
    return {**os.environ, **OFFLINE, "PYTHONPATH": str(ROOT / "tests" / "colab_runtime"),
            "COLAB_SIM_LOG": str(VENV / "colab.log")}


def run_python(code: str, log, cwd: Path = ROOT / "notebooks", timeout: float = 900) -> tuple[bool, str]:
    """Run `code` in .venv-colab's Python as a Colab kernel would (google.colab imported first)."""
    log.write(f"\n$ .venv-colab python <<'EOF'\n{code}\nEOF\n")
    log.flush()
    try:
        proc = subprocess.run([str(VENV / "bin" / "python"), "-c", "import google.colab\n" + code],
                              capture_output=True, text=True, cwd=cwd, env=colab_env(), timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, "timed out"
    log.write(proc.stdout + proc.stderr)
    last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or [""])[-1]
    return proc.returncode == 0, " ".join(last.split())[:200]


def install_cell(notebook: str) -> str:
    """The code of a notebook's first code cell (its install cell)."""
    cells = json.loads((ROOT / "notebooks" / notebook).read_text())["cells"]
    return "".join(next(c for c in cells if c["cell_type"] == "code")["source"])


def step_install(name: str, code: str, state: dict, log, report: dict) -> tuple[bool, str]:
    reset(state, log)
    ok, last = run_python(code, log)
    check = pip("check", log=log, check=False).stdout.strip().splitlines()
    report[name] = {"changes": changes(state, freeze(log)), "conflicts": check if check != [
        "No broken requirements found."] else []}
    return ok, last


def step_smoke(state: dict, log) -> tuple[bool, str]:
    reset(state, log)
    env = {**os.environ, "GEMMATE_KERNEL_PYTHON": str(VENV / "bin" / "python")}  # no GGUF export: as in Colab
    run_dir = VENV / "smoke" / "run"
    shutil.rmtree(run_dir.parent, ignore_errors=True)
    log.write("\n$ python tests/learner_path.py (kernel: .venv-colab)\n")
    log.flush()
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "learner_path.py"), str(run_dir)],
                          capture_output=True, text=True, env=env)
    log.write(proc.stdout + proc.stderr)
    lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
    fails = [ln for ln in lines if "FAIL" in ln] or lines[-1:] or [""]
    return proc.returncode == 0, " ".join(fails[0].split())[:300]


def step_one_page(state: dict, log) -> tuple[bool, str]:
    """The one-page recipe on the embedded default, in a Colab-like kernel on .venv-colab."""
    reset(state, log)
    sys.path.insert(0, str(ROOT / "tests"))
    import papermill as pm
    from learner_path import colab_kernel

    from gemmate_lib.models import cache_dir
    from tools.runners.course import one_page_parameters

    jupyter = VENV / "jupyter"
    saved = os.environ.copy()
    os.environ.update(JUPYTER_PATH=str(jupyter), GEMMATE_KERNEL_PYTHON=str(VENV / "bin" / "python"),
                      **OFFLINE)
    out = VENV / "one-page"
    out.mkdir(exist_ok=True)
    try:
        kernel = colab_kernel(jupyter)
        page = "qlora_one_runtime.ipynb"
        pm.execute_notebook(str(ROOT / "notebooks" / page), str(out / page),
                            parameters=one_page_parameters(cache_dir() / "gemma-3-270m", out, offline=True),
                            cwd=str(ROOT / "notebooks"), kernel_name=kernel, progress_bar=False)
        return True, ""
    except pm.PapermillExecutionError as err:
        return False, f"cell {err.exec_count}: {err.ename}: {' '.join(str(err.evalue).split())[:240]}"
    finally:
        os.environ.clear()
        os.environ.update(saved)


def step_generations(state: dict, log) -> tuple[bool, str]:
    """The one-page recipe on a tiny random Gemma 1, 3 and 4 (tests/test_generations_one_page.py, marker
    `generations`), each in a Colab-like kernel on .venv-colab after the install cell (JUPYTER_PATH puts
    that kernel under the name the test asks for)."""
    reset(state, log)
    ok, last = run_python(install_cell("00_setup.ipynb"), log)
    if not ok:
        return False, f"install cell: {last}"
    sys.path.insert(0, str(ROOT / "tests"))
    from learner_path import colab_kernel

    jupyter = VENV / "jupyter-generations"
    colab_kernel(jupyter, str(VENV / "bin" / "python"), name="python3")
    log.write("\n$ pytest -m generations tests/test_generations_one_page.py (kernel: .venv-colab)\n")
    log.flush()
    test = str(ROOT / "tests" / "test_generations_one_page.py")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m",
                           "generations", test], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **OFFLINE, "JUPYTER_PATH": str(jupyter)})
    log.write(proc.stdout + proc.stderr)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    return proc.returncode == 0, " ".join((lines[-1:] or [""])[0].split())[:200]


def write_doc(rows: list[tuple[str, str, float, str]], report: dict, state: dict) -> str:
    """docs/compatibility.md's section for this run, and its record (docs/colab-replica.json), from which
    `section` writes the section again (tests/test_generated_blocks.py)."""
    source = json.loads((SNAPSHOT / "SOURCE.json").read_text())
    record = {"date": dt.date.today().isoformat(), "source": source,
              "python": colab_python(), "packages": len(colab_packages()), "held": len(state),
              "shown": {n: state.get(n) for n in SHOWN}, "rows": [list(r) for r in rows], "report": report}
    REPLICA_RECORD.write_text(json.dumps(record, indent=1) + "\n")
    block = section(record)
    page = DOC.read_text() if DOC.exists() else "# Compatibility\n"
    DOC.write_text(replace(page, BLOCK, block, append=True))
    return block


def section(record: dict) -> str:
    """The section of docs/compatibility.md that a run's record writes."""
    source = record["source"]
    lines = ["## Colab's published runtime (`make colab-replica`)", "",
             f"Run on {record['date']} against Colab's GPU runtime as published in "
             f"[{source['repository']}](https://github.com/{source['repository']}) "
             f"(commit `{source['commit'][:12]}`, {source['date']}: {source['subject']}): Python "
             f"{record['python']} ({record['packages']} packages). `.venv-colab` holds {record['held']} of "
             "them, " + ", ".join(f"{n} {v}" for n, v in record["shown"].items()) + ", on a CPU.", "",
             "| step | result | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {'pass' if ok == 'pass' else 'FAIL: ' + why} | {secs:.0f} |"
              for name, ok, secs, why in record["rows"]]
    for name, found in record["report"].items():
        lines += ["", f"What pip changed from Colab's set in *{name}*:", ""]
        lines += [f"- {c}" for c in found["changes"]] or ["- nothing"]
        lines += [f"- conflict reported by `pip check`: {c}" for c in found["conflicts"]]
    return "\n".join(lines)


def refresh(path: Path) -> None:
    """Copy a new snapshot from a clone of googlecolab/backend-info (its newest commit; a bare clone too)."""
    SNAPSHOT.mkdir(parents=True, exist_ok=True)
    for name in ("pip-freeze.gpu.txt", "os-info-gpu.txt"):
        (SNAPSHOT / name).write_text(subprocess.run(["git", "-C", str(path), "show", f"HEAD:{name}"],
                                                    capture_output=True, text=True, check=True).stdout)
    commit, date, subject = subprocess.run(["git", "-C", str(path), "log", "-1", "--format=%H%n%as%n%s"],
                                           capture_output=True, text=True, check=True).stdout.splitlines()
    (SNAPSHOT / "SOURCE.json").write_text(json.dumps({"repository": "googlecolab/backend-info",
                                                      "commit": commit, "date": date, "subject": subject},
                                                     indent=1) + "\n")
    print(f"snapshot of {date} ({commit[:12]}: {subject}); delete .venv-colab to rebuild from it")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default="python3.13", help="the interpreter of Colab's Python release")
    parser.add_argument("--refresh", type=Path, help="copy a new snapshot from a clone of backend-info")
    args = parser.parse_args(argv)
    if args.refresh:
        refresh(args.refresh)
        return 0
    log_path = ROOT / "runs" / "colab-replica.log"
    log_path.parent.mkdir(exist_ok=True)
    with open(log_path, "w") as log:
        state = build(args.python, log)
        steps = [("install cell of 00-07 (gemmate_lib.guard_rails.colab.install)",
                  lambda: step_install("the install cell of 00-07", install_cell("00_setup.ipynb"), state,
                                       log, report)),
                 ("install cell of the one-page recipe",
                  lambda: step_install("the one-page recipe's install cell",
                                       install_cell("qlora_one_runtime.ipynb"), state, log, report)),
                 ("learner's-path smoke run (tiny Gemma 1, every notebook)", lambda: step_smoke(state, log)),
                 ("one-page recipe on the embedded default", lambda: step_one_page(state, log)),
                 ("one-page recipe on tiny Gemma 1, 3 and 4", lambda: step_generations(state, log))]
        rows, report = [], {}
        sys.path.insert(0, str(ROOT / "tests"))
        from learner_path import colab_content

        for name, step in steps:
            start = time.time()
            with colab_content():  # the Drive stand-in's /content goes again after each step
                ok, why = step()
            rows.append((name, "pass" if ok else "fail", time.time() - start, why))
            print(f"{name:58} {'pass' if ok else 'FAIL: ' + why} ({time.time() - start:.0f} s)", flush=True)
        reset(state, log)
    print(write_doc(rows, report, state))
    print(f"written to {DOC.relative_to(ROOT)}; full log: {log_path.relative_to(ROOT)}")
    return 0 if all(r[1] == "pass" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
