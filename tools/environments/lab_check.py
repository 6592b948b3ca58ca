"""`make lab-check`: `make lab` in a real headless browser, as a learner on their own machine uses it.

It copies notebooks/00_setup.ipynb and notebooks/qlora_one_runtime.ipynb into runs/lab-check/notebooks with
their outputs cleared (the committed notebooks are never run in place, and every output read back is this
run's), the one-page recipe as `make lab`'s offline copy (tools/runners/course.py lab_copy: this machine's
offline model and quotes in papermill's injected cell after its parameters cell, since the page reads no
course setting), and starts JupyterLab there as `make lab` does: the venv's `jupyter lab` on 127.0.0.1, a free
port, a token of its own, --no-browser, --allow-root as root, the course kernel `python3` as the default. Its
environment is a learner's with no Hugging Face account: no HF_TOKEN and no token file, HF_HUB_OFFLINE=1 and
HF_DATASETS_OFFLINE=1, no GEMMATE_* setting but the model cache (00_setup's), and a fresh run folder
(runs/lab-check/run) instead of the course's runs/interactive. Then, for each notebook, a fresh headless
chromium (Debian's chromium and chromium-driver, driven by selenium) opens it, chooses Run > Run All Cells
from the menu, waits until the kernel is idle and no cell is pending, chooses File > Save Notebook, and reads
the SAVED file back with nbformat (JupyterLab renders only the cells in view, so no output is read from the
page): the self-check's verdict ("self-check: all N passed") and every cell's error (ename: evalue). It prints
one line per notebook (name, seconds, PASS or FAIL with the first error line) and exits non-zero unless every
self-check passed. A notebook that runs past its time limit fails, naming the cell that was running. The saved
notebooks stay in runs/lab-check/notebooks for a look. Not part of `make test` (CONTRIBUTING.md, "Make
targets")."""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from gemmate_lib.guard_rails.errors import one_line

ROOT = Path(__file__).resolve().parents[2]
# the notebooks a learner opens first and the one-page recipe, each with its time limit on a CPU (seconds):
# the recipe took 17.5 min on a busy 2-core CPU without native bf16 (its own-data, held-out and chat parts)
NOTEBOOKS = {"00_setup.ipynb": 10 * 60, "qlora_one_runtime.ipynb": 30 * 60}
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # Debian's chromium, chromium-driver
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000"]
# what both self-checks print when every check passed: gemmate_lib.guard_rails.selfcheck.self_check (00) and
# the one-page recipe's own last cell; a failed check raises (SelfCheckError, the page's Stop), an error in
# the saved file
PASSED = re.compile(r"^self-check: all \d+ passed$")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# a learner with no account: none of these reaches JupyterLab or its kernels
TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "JUPYTER_TOKEN")
IDLE_S = 3  # the kernel idle for this many one-second polls in a row, no prompt [*]: the run is over


@dataclass
class NotebookOutcome:
    passed: bool
    detail: str  # the self-check's line, else the first error line (or why there is none)
    errors: list[str] = field(default_factory=list)  # "cell N: Ename: first line of evalue", in order


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else (value or "")


def _first_line(text: str) -> str:
    return next((line.strip() for line in ANSI.sub("", text).splitlines() if line.strip()), "")


def cell_label(nb, index: int) -> str:
    """`cell 7 (from transformers import AutoConfig)`: the cell's number in the notebook (from 1, markdown
    included, as a learner counts them on the page) and its first line of code."""
    return f"cell {index + 1} ({_first_line(_text(nb.cells[index].source))[:60]})"


def cell_errors(nb) -> list[str]:
    """Every error output of the saved notebook, in order: `cell N (...): Ename: first line of evalue`."""
    errors = []
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if output.get("output_type") == "error":
                evalue = _first_line(_text(output.get("evalue")))
                errors.append(f"{cell_label(nb, index)}: {output.get('ename', 'Error')}"
                              + (f": {evalue}" if evalue else ""))
    return errors


def self_check_line(nb) -> str | None:
    """The self-check's `self-check: all N passed`, from any code cell's stdout; None if none printed it."""
    for cell in nb.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if output.get("output_type") == "stream" and output.get("name") == "stdout":
                for line in ANSI.sub("", _text(output.get("text"))).splitlines():
                    if PASSED.match(line.strip()):
                        return line.strip()
    return None


def running_cell(nb) -> str | None:
    """The cell that Run All Cells was running when the notebook was saved: the first code cell with code and
    no execution count (JupyterLab clears the count of a running or queued cell); None when all have one."""
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and _text(cell.source).strip() and cell.get("execution_count") is None:
            return cell_label(nb, index)
    return None


def outcome_of(nb) -> NotebookOutcome:
    """PASS: the self-check printed that all its checks passed and no cell has an error. Else FAIL with the
    first error line, or with why there is no verdict."""
    errors, line = cell_errors(nb), self_check_line(nb)
    if errors:
        return NotebookOutcome(False, errors[0], errors)
    if line is None:
        stopped = running_cell(nb)
        return NotebookOutcome(False, "no self-check verdict in the saved notebook"
                       + (f": {stopped} never finished" if stopped else ""), errors)
    return NotebookOutcome(True, line, errors)


def read_verdict(path: Path) -> NotebookOutcome:
    """The verdict of a saved notebook file."""
    import nbformat

    return outcome_of(nbformat.read(str(path), as_version=4))


def copy_cleared(source: Path, target: Path) -> None:
    """`source` copied to `target` with every code cell's outputs and execution count cleared: each output in
    the saved file then comes from this run, never from the committed notebook."""
    import nbformat

    nb = nbformat.read(str(source), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, str(target))


def prepare(folder: Path, names, model_folder: Path) -> None:
    """The notebooks `names` as the learner opens them, in `folder`/notebooks: each a copy with its outputs
    cleared; the one-page recipe as `make lab`'s offline copy (lab_copy), its output in `folder`/run."""
    from tools.runners.course import ONE_PAGE, lab_copy

    for name in names:  # copies: the committed notebooks are never run in place
        if name == ONE_PAGE:
            lab_copy(folder / "notebooks", model_folder, folder / "run")
        else:
            copy_cleared(ROOT / "notebooks" / name, folder / "notebooks" / name)


def learner_env(base: dict, folder: Path, token: str) -> dict:
    """The environment of JupyterLab and its kernels: a learner with no Hugging Face account (no token in the
    environment or in a token file), offline, no course setting but the model cache (GEMMATE_CACHE), a fresh
    run folder, and JupyterLab's state (runtime files, workspaces, settings) in `folder`, never the user's."""
    env = {k: v for k, v in base.items()
           if k not in TOKEN_VARS and not (k.startswith("GEMMATE_") and k != "GEMMATE_CACHE")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_TOKEN_PATH=str(folder / "no-hf-token"),
               GEMMATE_RUN_DIR=str(folder / "run"), JUPYTER_TOKEN=token,
               JUPYTER_RUNTIME_DIR=str(folder / "jupyter" / "runtime"),
               JUPYTERLAB_WORKSPACES_DIR=str(folder / "jupyter" / "workspaces"),
               JUPYTERLAB_SETTINGS_DIR=str(folder / "jupyter" / "settings"))
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """JupyterLab as `make lab` starts it, on `notebooks`, in its own process group; `stop` ends it and any
    kernel it left (found by its connection file in this run's runtime folder)."""

    def __init__(self, notebooks: Path, folder: Path):
        self.port, self.token, self.folder = free_port(), secrets.token_hex(16), folder
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = learner_env(dict(os.environ), folder, self.token)
        self.log = folder / "jupyter.log"
        command = [sys.executable, "-m", "jupyter", "lab", f"--notebook-dir={notebooks}",
                   "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
                   "--MultiKernelManager.default_kernel_name=python3", "--no-browser"]
        if os.geteuid() == 0:
            command.append("--allow-root")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(command, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def log_tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def wait_ready(self, seconds: int = 120) -> None:
        """Until the server answers (at most `seconds`), then check that `python3` is the course's kernel."""
        deadline = time.monotonic() + seconds
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                specs = self.api("/api/kernelspecs")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not answer in {seconds} s:\n"
                                       f"{self.log_tail()}") from None
                time.sleep(1)
        spec = specs["kernelspecs"].get("python3", {}).get("spec", {})
        python = Path(spec.get("argv", ["?"])[0])
        if specs["default"] != "python3" or python.parent != Path(sys.prefix) / "bin":
            raise RuntimeError(f"the default kernel is {specs['default']!r} with {python}, not the course's "
                               f"python3 in {Path(sys.prefix) / 'bin'}: run `make install`")

    def session(self, name: str) -> dict | None:
        return next((s for s in self.api("/api/sessions") if s.get("path") == name), None)

    def kernel(self, kernel_id: str) -> dict:
        return self.api(f"/api/kernels/{kernel_id}")

    def close(self, name: str) -> None:
        """Shut the notebook's kernel down (its session), if it has one."""
        try:
            found = self.session(name)
            if found:
                self.api(f"/api/sessions/{found['id']}", method="DELETE")
        except OSError:
            pass

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # JupyterLab shuts its kernels down on SIGTERM
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        runtime = str(self.folder / "jupyter" / "runtime")
        for pid in _processes_mentioning(runtime):  # a kernel runs in a process group of its own
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _processes_mentioning(text: str) -> list[int]:
    """The ids of the processes whose command line holds `text` (this run's kernels: by connection file)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def browser(profile: Path):
    """A fresh headless chromium (its own --user-data-dir) by Debian's chromedriver, no Selenium Manager."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER, log_output=str(profile) + ".log"))


def menu(driver, top: str, item: str, seconds: int = 60) -> None:
    """`top` > `item` in JupyterLab 4's menu bar (Lumino's .lm-MenuBar-itemLabel and .lm-Menu-itemLabel)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, seconds)
    label = "//div[contains(@class, '{}') and normalize-space()='{}']"
    wait.until(ec.element_to_be_clickable((By.XPATH, label.format("lm-MenuBar-itemLabel", top)))).click()
    wait.until(ec.element_to_be_clickable((By.XPATH, label.format("lm-Menu-itemLabel", item)))).click()


PENDING_JS = ("return Array.from(document.querySelectorAll('.jp-InputArea-prompt'))"
              ".some(e => e.textContent.includes('[*]'))")


def save(driver, path: Path, seconds: int = 60) -> None:
    """File > Save Notebook (Ctrl+S if that fails), then wait until the file on disk is newer."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    before = path.stat().st_mtime_ns
    try:
        menu(driver, "File", "Save Notebook", seconds=20)
    except Exception:  # noqa: BLE001 - the keyboard is the learner's other way
        ActionChains(driver).key_down(Keys.CONTROL).send_keys("s").key_up(Keys.CONTROL).perform()
    deadline = time.monotonic() + seconds
    while path.stat().st_mtime_ns == before:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path.name} was not saved within {seconds} s")
        time.sleep(0.5)
    time.sleep(1)  # the write is done by the server in one go; a moment for a slow disk


def run_notebook(lab: Lab, folder: Path, name: str, limit: int) -> tuple[float, NotebookOutcome]:
    """Open `name` in a fresh browser, Run All Cells, wait, save, and judge the saved file."""
    path = folder / "notebooks" / name
    driver = browser(folder / f"browser-{path.stem}")
    start = time.monotonic()
    try:
        driver.get(f"{lab.url}/lab/tree/{name}?reset&token={lab.token}")
        deadline = time.monotonic() + 120
        found = None
        while found is None or lab.kernel(found["kernel"]["id"])["execution_state"] != "idle":
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}'s kernel was not ready within 120 s:\n{lab.log_tail()}")
            time.sleep(1)
            found = lab.session(name)
        kernel_id = found["kernel"]["id"]
        time.sleep(2)  # the page's own first requests (kernel info, comms) land before the baseline
        activity = lab.kernel(kernel_id)["last_activity"]
        start = time.monotonic()
        menu(driver, "Run", "Run All Cells")
        started, idle, stopped = False, 0, None
        while idle < IDLE_S:
            time.sleep(1)
            if time.monotonic() - start > limit:
                stopped = f"time limit of {f'{limit // 60} min' if limit % 60 == 0 else f'{limit} s'} reached"
                break
            state = lab.kernel(kernel_id)
            if state["execution_state"] == "dead":
                stopped = "the kernel died"
                break
            busy = state["execution_state"] != "idle" or driver.execute_script(PENDING_JS)
            started = started or busy or state["last_activity"] != activity
            if not started and time.monotonic() - start > 60:
                raise RuntimeError("Run > Run All Cells did not start the kernel within 60 s")
            idle = 0 if busy or not started else idle + 1
        seconds = time.monotonic() - start - (0 if stopped else IDLE_S)
        save(driver, path)
        result = read_verdict(path)
        if stopped:
            import nbformat

            cell = running_cell(nbformat.read(str(path), as_version=4)) or "a cell"
            result = NotebookOutcome(False, f"{stopped} while {cell} was running", result.errors)
        return seconds, result
    finally:
        driver.quit()
        lab.close(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="PREFIX",
                        help="the notebooks whose names start so (00, qlora); default: both")
    parser.add_argument("--minutes", type=float, default=None,
                        help="time limit per notebook; default: 10 for 00_setup, 30 for the one-page recipe")
    args = parser.parse_args(argv)
    chosen = {n: limit for n, limit in NOTEBOOKS.items() if not args.only or n.startswith(tuple(args.only))}
    for program, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(program, os.X_OK):
            raise SystemExit(f"{program} is missing. Fix: apt-get install -y {package} "
                             "(`make lab-check` does)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        raise SystemExit("selenium is missing. Fix: .venv/bin/python -m pip install -r "
                         "requirements-lab-check.txt (`make lab-check` does)") from None
    folder = ROOT / "runs" / "lab-check"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "notebooks").mkdir(parents=True)
    from gemmate_lib.models import prepare_embedded

    prepare(folder, chosen, prepare_embedded(verbose=False))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: still closes the browser and server
    lab = Lab(folder / "notebooks", folder)
    results = {}
    try:
        lab.wait_ready()
        for name, limit in chosen.items():
            start, limit = time.monotonic(), round(args.minutes * 60) if args.minutes else limit
            try:
                seconds, result = run_notebook(lab, folder, name, limit)
            except Exception as err:  # noqa: BLE001 - one notebook's failure is its line; the next one still runs
                seconds = time.monotonic() - start
                result = NotebookOutcome(False, f"the check itself failed: {one_line(err)}")
            results[name] = result
            print(f"{name:26s} {seconds:6.0f} s  {'PASS' if result.passed else 'FAIL'}  {result.detail}",
                  flush=True)
            for error in result.errors[1:]:
                print(f"{'':36s}also {error}", flush=True)
    finally:
        lab.stop()
    print(f"saved notebooks: {folder.relative_to(ROOT) / 'notebooks'}; JupyterLab's log: "
          f"{lab.log.relative_to(ROOT)}")
    return 0 if len(results) == len(chosen) and all(r.passed for r in results.values()) else 1


if __name__ == "__main__":
    from gemmate_cli.errors import run_cli

    sys.exit(run_cli(main))
