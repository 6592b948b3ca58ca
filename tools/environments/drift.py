"""`make drift`: the course against the newest releases of the Hugging Face stack.

Learners do not run the pinned stack: Colab brings its own torch, and a learner who copies a recipe into
their own project gets whatever is newest. This builds a second environment, `.venv-drift` beside `.venv`,
with the course's torch and every other pin of requirements.txt, except the packages in DRIFTING, which get
their newest release. In it, it runs the fast tier, the tests of each Gemma generation (1, 3, 4;
`-m generations`), the learner's-path smoke run and the one-page notebook on the course's own CPU
parameters, then prints two tables (package, pinned, newest; step, result) and writes them with the date to
docs/compatibility.md. A failing test is named in one
line with the package whose code raised it and the first error. The embedded model is converted again from
its GGUF file with the newest transformers (its own cache folder): that conversion is the course's most
version-sensitive path.

Not part of `make test`: its result changes whenever a release comes out. Run it before raising a pin
(CONTRIBUTING.md, "Raising a pin").
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from tools.environments.colab_replica import BEGIN, END

ROOT = Path(__file__).resolve().parents[2]
# the packages whose newest release the learner meets; torch stays at the course's pin (Colab brings its own)
DRIFTING = ("transformers", "trl", "peft", "accelerate", "datasets", "huggingface_hub", "bitsandbytes",
            "tokenizers", "safetensors")
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
# The notebooks' install cells (the smoke run's Colab branch, the one-page notebook's pip line) would put the
# pins back over the newest releases, as they do in Colab; a dry run lets them run without changing anything.
NO_INSTALL = {"PIP_DRY_RUN": "1", "GEMMATE_SMOKE_COLAB_SITE": "0"}
# the tests that prove each Gemma generation (1, 3, 4) on a tiny model of its architecture, slow ones included
# (tests/test_generations.py, tests/test_preflight.py); a Colab replica runs the same selection
GENERATIONS_SELECTION = "generations"


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(requirements: Path = ROOT / "requirements.txt") -> dict[str, str]:
    """{package: pinned version} from requirements.txt (comments and blank lines skipped)."""
    found = {}
    for line in requirements.read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9_.\-]+)==([^\s#]+)", line.split("#")[0].strip()):
            found[_key(m.group(1))] = m.group(2)
    return found


def drift_requirements(pinned: dict[str, str]) -> list[str]:
    """requirements.txt's lines with the DRIFTING packages unpinned (torch is installed first, on its own)."""
    drifting = {_key(p) for p in DRIFTING}
    return [name if name in drifting else f"{name}=={version}"
            for name, version in pinned.items() if name != "torch"]


def run(cmd: list[str], log, env: dict | None = None, timeout: float | None = None) -> int:
    """Run `cmd`, its output appended to `log`; the exit code (124 on a time-out)."""
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    try:
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, timeout=timeout,
                              env={**os.environ, **(env or {})}).returncode
    except subprocess.TimeoutExpired:
        return 124


def build(venv: Path, python: str, log, converter: str) -> None:
    """The drift environment: torch at the course's pin, the drifting packages at their newest; llama.cpp's
    converter (`converter`, the Makefile's pin) in its own folder, as `make install` puts it."""
    req = venv / "drift-requirements.txt"
    if not (venv / "bin" / "python").exists():
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
    req.write_text("\n".join(drift_requirements(pins())) + "\n")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    for step in ([*pip, "--upgrade", "pip"], [*pip, f"torch=={pins()['torch']}"],
                 [*pip, "--upgrade", "--upgrade-strategy", "only-if-needed", "-r", str(req)],
                 [*pip, "--no-deps", "-e", "."],
                 [*pip, "--no-deps", "--upgrade", "--target", str(venv / "llama-convert"), converter],
                 [str(venv / "bin" / "python"), "-m", "ipykernel", "install", "--sys-prefix",
                  "--name", "python3"]):
        if run(step, log) != 0:
            sys.exit(f"make drift: could not build {venv} (`{' '.join(step[2:6])}` failed); see {log.name}")


def installed(venv: Path) -> dict[str, str]:
    """{package: version} installed in `venv`."""
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
                         capture_output=True, text=True, check=True).stdout
    return {_key(p["name"]): p["version"] for p in json.loads(out)}


def newest_on_index(venv: Path, package: str) -> str | None:
    """The newest release the package index offers (None when it cannot be asked)."""
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "index", "versions", package],
                         capture_output=True, text=True).stdout
    m = re.search(r"^\S+ \(([^)]+)\)", out, re.M)
    return m.group(1) if m else None


def blame(traceback: str) -> str:
    """The drifting package whose code raised last in `traceback`, else the course's own code."""
    hits = re.findall(r"site-packages/([A-Za-z0-9_]+)/", traceback)
    drifting = [h for h in hits if _key(h) in {_key(p) for p in DRIFTING}]
    ours = "gemmate_lib" in traceback or "gemmate_cli" in traceback
    return drifting[-1] if drifting else ("the course" if ours else (hits[-1] if hits else "the course"))


def first_error(text: str) -> str:
    """The first `E   ...` line of a pytest failure (else the last non-empty line), on one line."""
    lines = [ln[1:].strip() for ln in text.splitlines() if ln.startswith("E ") and ln[1:].strip()]
    line = lines[0] if lines else next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "")
    return " ".join(line.split())[:240]


def junit_results(path: Path) -> tuple[dict[str, int], list[str]]:
    """({passed, failed, skipped}, one line per failure) from a pytest --junitxml file."""
    counts, failures = {"passed": 0, "failed": 0, "skipped": 0}, []
    if not path.exists():
        return counts, failures
    for case in ET.parse(path).getroot().iter("testcase"):
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if bad is not None:
            counts["failed"] += 1
            text = (bad.text or "") + "\n" + (bad.get("message") or "")
            failures.append(f"{case.get('name')}: {blame(text)}: {first_error(text)}")
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts, failures


def pytest_step(venv: Path, name: str, args: list[str], work: Path, log, env: dict) -> dict:
    xml = work / f"{re.sub(r'[^a-z0-9]+', '-', name.lower())}.xml"
    xml.unlink(missing_ok=True)
    start = time.time()
    code = run([str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                f"--junitxml={xml}", *args], log, env)
    counts, failures = junit_results(xml)
    if code not in (0, 1) and not failures:  # collection error, crash or time-out
        failures = [f"pytest exited {code} before reporting (see {log.name})"]
    ok = code == 0 and counts["passed"] > 0
    result = f"{counts['passed']} passed, {counts['failed']} failed" + \
        (f", {counts['skipped']} skipped" if counts["skipped"] else "")
    return {"step": name, "ok": ok, "result": result, "seconds": round(time.time() - start),
            "failures": failures}


def one_page_notebooks() -> list[Path]:
    """The notebooks that sort apart from 00-07: the one-page recipe, notebooks/qlora_one_runtime.ipynb."""
    return sorted(p for p in (ROOT / "notebooks").glob("*.ipynb") if not p.name[:2].isdigit())


def one_page_step(venv: Path, work: Path, log, env: dict) -> dict | None:
    """The one-page recipe notebook on the course's CPU parameters (tools.runners.course), if the course has
    one."""
    pages = one_page_notebooks()
    if not pages:
        return None
    start, failures = time.time(), []
    for page in pages:
        code = run([str(venv / "bin" / "python"), "-m", "tools.runners.course", "--only", page.name,
                    "--run-dir", str(work / "one-page")], log, env)
        if code != 0:
            failures.append(f"{page.name}: exited {code}; {last_error(log.name)}")
    return {"step": f"one-page notebook ({', '.join(p.name for p in pages)})", "ok": not failures,
            "result": "ran to the end" if not failures else "failed", "seconds": round(time.time() - start),
            "failures": failures}


def last_error(log_name: str) -> str:
    """The last line of the log that names an error (papermill prints the notebook's exception)."""
    lines = Path(log_name).read_text(errors="replace").splitlines()
    hits = [ln for ln in lines if re.search(r"(Error|Exception)\b", ln)]
    return " ".join((hits[-1] if hits else lines[-1] if lines else "").split())[:240]


def table(rows: list[list[str]], head: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


# What changed in a release that the course knows of, with what the course does about it: (package, first
# version, text). report() lists those the tested versions reach. The fast tier holds each (tests marked
# xfail(strict=True) where the course cannot help it, so that a fixed release shows up as a failure).
KNOWN = [
    ("transformers", "5.24.0",
     "renames the KV cache `past_key_values` to `cache` (argument and output; the old name works, "
     "deprecated, until 5.40). The course's pre-flight and the one-page recipe's speak both names; prompt "
     "tuning (06) generates without the cache, since peft 0.21 looks for it under the old name and would "
     "prepend its soft prompt at every step. Prefix tuning cannot do without the cache: with peft 0.21.2 its "
     "prefix is lost in `generate` (06's format check for prefix tuning then measures the model without it; "
     "test_text_generation's xfail)."),
]


def known(versions: list[list[str]]) -> list[str]:
    """The KNOWN entries whose package was tested at or past their version."""
    from packaging.version import Version

    tested = {row[0]: row[3].split("+")[0] for row in versions if row[3] not in ("-", "")}
    return [f"- {name} {first}+: {text}" for name, first, text in KNOWN
            if name in tested and Version(tested[name]) >= Version(first)]


def report(versions: list[list[str]], steps: list[dict], date: str) -> str:
    failures = [f for s in steps for f in s["failures"]]
    lines = [
        "# Compatibility with the newest releases",
        "",
        f"Written by `make drift` on {date} (tools/environments/drift.py). "
        "It installs the newest release of each",
        "package below beside the course's other pins and its torch, converts the embedded model again with",
        "the newest transformers, and runs the fast tier, the tests of each Gemma generation (1, 3 and 4 on",
        "tiny models), the learner's-path smoke run and the one-page notebook. It is not part of",
        "`make test`: its result changes whenever a release comes out. Run it before raising a pin",
        "(CONTRIBUTING.md, \"Raising a pin\").",
        "",
        table(versions, ["package", "pinned", "newest", "tested"]),
        "",
        table([[s["step"], "pass" if s["ok"] else "FAIL", s["result"], f"{s['seconds']} s"] for s in steps],
              ["step", "verdict", "result against the newest stack", "time"]),
        "",
    ]
    if failures:
        lines += ["## What breaks", "",
                  "Each line: the test, the package whose code raised, the first error.", ""]
        lines += [f"- {f}" for f in failures] + [""]
    else:
        lines += ["Every step passed against the newest stack: the pins can be raised to the versions",
                  "tested.", ""]
    if known(versions):
        lines += ["## Known changes in these releases", ""] + known(versions) + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default=str(ROOT / ".venv-drift"), help="the drift environment's folder")
    parser.add_argument("--python", default=sys.executable, help="the Python that creates it")
    parser.add_argument("--converter", required=True,
                        help="llama.cpp's converter as pip names it (make drift: the Makefile's CONVERTER)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["fast", "generations", "smoke", "one-page"],
                        help="steps to leave out")
    parser.add_argument("--no-write", action="store_true", help="print the tables, leave docs/ alone")
    args = parser.parse_args(argv)
    venv, work = Path(args.venv), Path(args.venv) / "work"
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(work / "drift.log", "w") as log:
        print(f"make drift: building {venv} (log: {log.name}) ...", flush=True)
        build(venv, args.python, log, args.converter)
        now, pinned = installed(venv), pins()
        versions = []
        for package in DRIFTING:
            newest = newest_on_index(venv, package) or "?"
            versions.append([package, pinned.get(_key(package), "-"), newest, now.get(_key(package), "-")])
        versions.append(["torch (not drifted)", pinned["torch"], "-", now.get("torch", "-")])
        print(table(versions, ["package", "pinned", "newest", "tested"]), flush=True)
        # its own model cache: the embedded model is converted from GGUF by the newest transformers
        env = {**OFFLINE, **NO_INSTALL, "GEMMATE_CACHE": str(venv / "cache"),
               "GEMMATE_RUN_DIR": str(work / "runs")}
        env.pop("HF_TOKEN", None)
        steps = []
        if "fast" not in args.skip:
            print("make drift: fast tier ...", flush=True)
            steps.append(pytest_step(venv, "fast tier (make test-fast)",
                                     ["-m", "not slow and not canary", "tests"], work, log, env))
        if "generations" not in args.skip:
            print("make drift: each Gemma generation on a tiny model ...", flush=True)
            steps.append(pytest_step(venv, "Gemma 1, 3 and 4 on tiny models (pytest -m generations)",
                                     ["-m", GENERATIONS_SELECTION, "tests"], work, log, env))
        if "smoke" not in args.skip:
            print("make drift: learner's-path smoke run ...", flush=True)
            steps.append(pytest_step(venv, "learner's-path smoke run (make smoke)",
                                     ["tests/test_learner_path.py", "-k", "every_notebook", "-s"],
                                     work, log, {**env, "GEMMATE_SMOKE_EXPORT": "1"}))  # 05 exports too
        if "one-page" not in args.skip and (step := one_page_step(venv, work, log, env)):
            steps.append(step)
        after = installed(venv)
        if changed := [f"{p} {now.get(_key(p))} -> {after.get(_key(p))}" for p in DRIFTING
                       if now.get(_key(p)) != after.get(_key(p))]:
            steps.append({"step": "environment unchanged by the run", "ok": False, "result": "changed",
                          "seconds": 0, "failures": [f"something installed over the newest releases: "
                                                     f"{', '.join(changed)}"]})
    date = dt.date.today().isoformat()
    print(table([[s["step"], "pass" if s["ok"] else "FAIL", s["result"], f"{s['seconds']} s"] for s in steps],
                ["step", "verdict", "result", "time"]))
    for step in steps:
        for failure in step["failures"]:
            print(f"FAIL {failure}")
    if not args.no_write:
        out = ROOT / "docs" / "compatibility.md"
        old = out.read_text() if out.exists() else ""
        # make colab-replica's table lives in the same page: kept as it is
        kept = old[old.index(BEGIN):old.index(END) + len(END)] if BEGIN in old and END in old else ""
        out.write_text(report(versions, steps, date) + (f"\n{kept}\n" if kept else ""))
        print(f"wrote {out.relative_to(ROOT)}")
    print(f"make drift: {time.time() - started:.0f} s in all")
    return 0 if all(s["ok"] for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
