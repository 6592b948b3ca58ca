"""`python -m tools.runners.course`: what `make course` runs.

Prepares the embedded default, then runs every notebook in notebooks/ in order
with papermill into one run folder runs/<timestamp>/, and writes the measured
time of each notebook to course_timings.json there. `--params FILE` (make course
PARAMS=FILE) passes a YAML of parameters to every notebook that declares them. Stops at the first failing
notebook and says which one, and where its executed copy lies.

After 00-07 it runs the one-page recipe (ONE_PAGE), which imports nothing of the course: offline on a CPU it
gets the embedded model's folder, the embedded quotes as a .jsonl in `Abirate/english_quotes`' columns
(written next to the model by `prepare_one_page_data`) and CPU-sized steps as papermill parameters
(`one_page_parameters`: the one place that holds them). The page itself holds only the learner's T4 values:
`--in-place` (make notebooks) injects the offline ones, runs it from step 0 (an earlier run's checkpoint
removed) and drops papermill's injected cell again before writing it back, `--lab-copy DIR` (make lab) writes
a copy with them injected and its outputs cleared for JupyterLab, and `--nbval-copy DIR` (make nbval, since
nbval cannot pass parameters) writes a copy with the committed outputs and the injected cell for nbval to
compare. `--nbval-copy DIR --params FILE` writes such a copy of every notebook: each gets the values of FILE
(params/nbval.yaml) that its `parameters` cell declares or that its own section (its name as a key) holds, so
nbval runs 03's part 2, 06's methods and the one-page recipe in a few steps while every checked output stays
as committed.

Each run prints the ten slowest cells (papermill's, or nbclient's, per-cell times) and keeps them in the run
folder's course_timings.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

from gemmate_lib.guard_rails.files import repo_root, save_json, show_path
from gemmate_lib.guard_rails.run_folder import get_run_dir

ONE_PAGE = "qlora_one_runtime.ipynb"  # the whole recipe on one page, sorted apart from 00-07
# its CPU-sized steps offline, meant to let the committed "after" generations show the format learned (an
# Author: line) in about two minutes on a 2-core CPU: 80 quotes at a CPU-run learning rate, one evaluation at
# the end (the page compares it with its own held-out loss); dropout off, as the course's CPU profile does; a
# checkpoint halfway (and one at the end), as a T4 run writes one every few minutes; a few chat-format steps
ONE_PAGE_CPU = dict(max_steps=10, batch_size=8, gradient_accumulation_steps=1, max_length=64, logging_steps=2,
                    eval_steps=10, save_steps=5, gradient_checkpointing=False, max_new_tokens=20,
                    lora_dropout=0.0, learning_rate=1e-3, warmup_steps=2, chat_steps=4)
INJECTED = "injected-parameters"  # papermill's tag on the cell it inserts after the `parameters` cell
ONE_PAGE_QUOTES = "english_quotes_embedded.jsonl"  # in the model cache, beside gemma-3-270m


def course_notebooks(root: Path) -> list[Path]:
    """The ordered notebooks 00-07, then the one-page recipe (when there is one)."""
    notebooks = sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    return notebooks + [p for p in [root / "notebooks" / ONE_PAGE] if p.exists()]


def prepare_one_page_data() -> Path:
    """The embedded quotes as a .jsonl with `Abirate/english_quotes`' columns (quote, author, tags), raw: the
    one-page notebook cleans them itself. Written once into the model cache (`make embedded`)."""
    import json
    from importlib import resources

    from gemmate_lib.guard_rails.files import write_text
    from gemmate_lib.models import cache_dir

    path = cache_dir() / ONE_PAGE_QUOTES
    if not path.exists():
        rows = json.loads(resources.files("inspirational_quotes").joinpath("quotes.json").read_text("utf-8"))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, "".join(json.dumps({"quote": r.get("text"), "author": r.get("from"), "tags": []},
                                            ensure_ascii=False) + "\n" for r in rows))
    return path


def one_page_parameters(model_folder: Path, run_dir: Path, offline: bool, start: Path | None = None) -> dict:
    """The one-page notebook's papermill parameters: its output folder in the run folder (relative to `start`,
    the folder its kernel starts in, when given: the page prints it, and a committed output shows no machine's
    path), and offline (the embedded profile) the embedded model's folder, the .jsonl and CPU-sized steps."""
    output = run_dir / Path(ONE_PAGE).stem
    params = {"output_dir": os.path.relpath(output, start) if start else str(output)}
    if offline:
        params.update(model_name=str(model_folder), dataset=str(prepare_one_page_data()), **ONE_PAGE_CPU)
    return params


# notebook metadata that survives re-execution: the kernel, and the T4 GPU runtime that Colab opens
# (papermill's and nbclient's run records are dropped)
KEPT_METADATA = ("kernelspec", "language_info", "accelerator", "colab")


def with_parameters(nb, parameters: dict):
    """`nb` with papermill's injected-parameters cell after its `parameters` cell (a new notebook)."""
    from papermill.parameterize import parameterize_notebook

    nb.metadata.setdefault("papermill", {})  # papermill records the parameters there
    for cell in nb.cells:  # papermill reads every cell's tags (its own runs add them first)
        cell.metadata.setdefault("tags", [])
    return parameterize_notebook(nb, parameters, kernel_name="python3", language="python")


def without_injected_parameters(nb):
    """`nb` without papermill's injected-parameters cell or its metadata, every other cell's outputs kept: a
    learner who opens the committed page in Colab must not run the course's offline paths."""
    nb.cells = [cell for cell in nb.cells if INJECTED not in cell.metadata.get("tags", [])]
    nb.metadata.pop("papermill", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        if cell.metadata.get("tags") == []:
            del cell.metadata["tags"]
    return nb


def nbval_copy(folder: Path, model_folder: Path, run_dir: Path, notebook: Path | None = None,
               parameters: dict | None = None) -> Path:
    """`notebook` (default: the one-page recipe) with its committed outputs and `parameters` injected (the
    one-page recipe: its offline ones, then `parameters`), written into `folder` for nbval, which runs a
    notebook as it is and cannot pass parameters. A notebook that gets no parameters is copied as it is."""
    import nbformat

    notebook = Path(notebook or repo_root() / "notebooks" / ONE_PAGE)
    nb = nbformat.read(notebook, as_version=4)
    values = dict(parameters or {})
    if notebook.name == ONE_PAGE:
        values = {**one_page_parameters(model_folder, run_dir, offline=True), **values}
    out = Path(folder) / notebook.name
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(with_parameters(nb, values) if values else nb, out)
    return out


# `make lab`: where it writes the one-page recipe's offline copy (lab_copy), inside JupyterLab's folder
# (notebooks/) and ignored by git (runs/)
LAB_COPY = Path("notebooks") / "runs" / "offline"


def lab_copy(folder: Path, model_folder: Path, run_dir: Path) -> Path:
    """The one-page recipe as `make lab` and `make lab-check` open it on a machine without a GPU or a token:
    its outputs cleared and its offline parameters (one_page_parameters: the embedded model's folder, the
    quotes' .jsonl, CPU steps, its output in `run_dir`, relative to `folder`, where its kernel starts) in
    papermill's injected cell after its parameters cell, where the learner sees them; written into `folder`.
    The page itself reads no course setting: this cell is all that points it at this machine's files."""
    import nbformat

    folder = Path(folder).resolve()
    nb = nbformat.read(repo_root() / "notebooks" / ONE_PAGE, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    values = one_page_parameters(model_folder, Path(run_dir).resolve(), offline=True, start=folder)
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(with_parameters(nb, values), folder / ONE_PAGE)
    return folder / ONE_PAGE


def nbval_copies(folder: Path, model_folder: Path, params_file: str | None = None) -> list[Path]:
    """Every notebook of the course (00-07 and the one-page recipe) as nbval runs it (make nbval): a copy in
    `folder`, with the values of `params_file` that its `parameters` cell declares injected (nbval_copy).
    `folder` is also the run folder (the one-page recipe's output goes there)."""
    notebooks = course_notebooks(repo_root())
    per_notebook = notebook_parameters(notebooks, params_file)
    return [nbval_copy(folder, model_folder, folder, nb, per_notebook[nb.name]) for nb in notebooks]


def cell_seconds(nb) -> list[tuple[float, int, str]]:
    """(seconds, code cell number, first line) of every executed code cell of `nb`: papermill's duration in
    each cell's metadata, else nbclient's timestamps (record_timing). The number counts code cells only, from
    0, as nbval names them ("Cell 12")."""
    rows = []
    code = [c for c in nb.cells if c.cell_type == "code"]
    for number, cell in enumerate(code):
        seconds = (cell.metadata.get("papermill") or {}).get("duration")
        stamps = cell.metadata.get("execution") or {}
        if seconds is None and "iopub.execute_input" in stamps and "shell.execute_reply" in stamps:
            begin, end = (dt.datetime.fromisoformat(stamps[k].replace("Z", "+00:00"))
                          for k in ("iopub.execute_input", "shell.execute_reply"))
            seconds = (end - begin).total_seconds()
        if seconds is not None:
            first = next((line for line in cell.source.splitlines() if line.strip()), "")
            rows.append((float(seconds), number, first.strip()[:70]))
    return rows


def slowest_cells(cells: dict[str, list[tuple[float, int, str]]], n: int = 10) -> list[dict]:
    """The `n` slowest cells over every notebook of a run: {notebook: cell_seconds(...)} -> rows, slowest
    first."""
    rows = [{"notebook": name, "cell": number, "seconds": round(seconds, 1), "source": first}
            for name, found in cells.items() for seconds, number, first in found]
    return sorted(rows, key=lambda r: -r["seconds"])[:n]


def print_slowest(rows: list[dict]) -> None:
    print(f"the {len(rows)} slowest cells (code cells counted from 0, as nbval names them):")
    for r in rows:
        print(f"  {r['seconds']:7.1f} s  {r['notebook']:28} Cell {r['cell']:<3} {r['source']}")


def execute_in_place(path: Path, run_dir: Path,
                     parameters: dict | None = None) -> list[tuple[float, int, str]]:
    """Run one notebook top to bottom and write it back with clean metadata (what gets committed); returns its
    cells' times (cell_seconds). `parameters` are injected for the run only: the notebook is written back
    without them."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    if parameters:
        nb = with_parameters(nb, parameters)
    os.environ["GEMMATE_RUN_DIR"] = str(run_dir)  # the kernel inherits it: artifacts go to the run folder
    NotebookClient(nb, timeout=1800, kernel_name="python3", record_timing=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    without = [c for c in nb.cells if INJECTED not in c.metadata.get("tags", [])]  # numbered as committed
    seconds = cell_seconds(nbformat.v4.new_notebook(cells=without))
    nb = without_injected_parameters(nb)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in KEPT_METADATA}
    nbformat.write(nb, path)
    return seconds


RUNNER_KEY = "learning_checks"  # a params file's runner option: "report" (a quick pass) or "stop" (default)


def run_options(params_file: str | None) -> dict[str, str]:
    """The environment a params file asks for the kernels: `learning_checks: report` makes each self-check
    report a learning goal its few steps miss instead of stopping (selfcheck.self_check)."""
    from gemmate_cli.settings import read_yaml

    value = read_yaml(params_file, "PARAMS").get(RUNNER_KEY, "stop") if params_file else "stop"
    if value not in ("stop", "report"):
        from gemmate_lib.guard_rails.errors import ParameterError

        raise ParameterError(f"{params_file}: {RUNNER_KEY} = {value!r}", 'use "report" or "stop"')
    return {"GEMMATE_LEARNING_CHECKS": value} if value == "report" else {}


def notebook_parameters(notebooks: list[Path], params_file: str | None) -> dict[str, dict]:
    """{notebook name: the parameters from `params_file` that its `parameters` cell declares}; a key that
    names a notebook (`qlora_one_runtime: {max_steps: 4}`) holds values for that notebook alone.

    A key that no notebook declares is an error that lists the valid keys, so a typo in
    PARAMS=... stops the batch run before any notebook starts.
    """
    import papermill as pm

    from gemmate_cli.settings import read_yaml
    from gemmate_lib.guard_rails.errors import ParameterError

    if not params_file:
        return {nb.name: {} for nb in notebooks}
    values = read_yaml(params_file, "PARAMS")
    values.pop(RUNNER_KEY, None)  # the runner's own option (run_options), no notebook's parameter
    declared = {nb.name: set(pm.inspect_notebook(str(nb))) for nb in notebooks}
    # a notebook's name (without .ipynb) as a key: a mapping of values for that notebook alone
    own = {f"{k}.ipynb": values.pop(k) for k in list(values) if f"{k}.ipynb" in declared}
    for name, mine in own.items():
        unknown = sorted(set(mine) - declared[name]) if isinstance(mine, dict) else None
        if unknown or unknown is None:
            raise ParameterError(f"{params_file}: {name[:-6]} has no parameter named {', '.join(unknown)}"
                                 if unknown else f"{params_file}: {name[:-6]} must map parameters to values",
                                 f"valid names: {', '.join(sorted(declared[name]))}")
    valid = set().union(*declared.values()) - {"run_dir"}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ParameterError(f"{params_file}: no notebook has a parameter named {', '.join(unknown)}",
                             f"valid names: {', '.join(sorted(valid))}")
    return {name: {**{k: v for k, v in values.items() if k in names}, **own.get(name, {})}
            for name, names in declared.items()}


def hub_environment(per_notebook: dict[str, dict]) -> dict[str, str]:
    """The Hub variables for the notebooks' kernels: offline for the embedded profile only.

    On a machine without a GPU or token every notebook runs the embedded default, which
    needs no network: HF_HUB_OFFLINE=1 makes a stray Hub call fail at once instead of after
    ~30 s of retries. A learner with a token on a GPU, or a params file that names a Hub
    model or dataset, gets the Hub as usual, without setting anything.
    """
    from gemmate_lib.config import EMBEDDED, course_config

    for params in per_notebook.values():
        cfg = course_config(**{k: params.get(k) for k in ("model_name", "dataset")})
        if cfg.model.model_name != EMBEDDED or cfg.data.dataset != EMBEDDED:
            return {}
    return {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def record_timings(timings: dict[str, float]) -> None:
    """Store measured notebook times in notebooks/course_timings.json
    and write them into the notebooks and README."""
    from gemmate_lib.hardware import describe_hardware
    from tools.runners.timings import load, sync, timings_file

    data = load()
    data["cpu_seconds"].update({name.removesuffix(".ipynb"): round(s) for name, s in timings.items()})
    hw = describe_hardware()
    machine = (f"on {dt.date.today().isoformat()}, a {hw['cpu_count']}-core CPU "
               f"{'with' if hw['cpu_native_bf16'] else 'without'} native bf16 "
               f"({'bf16' if hw['cpu_native_bf16'] else 'fp32'} compute), no GPU")
    data["measured_on"].update({name.removesuffix(".ipynb"): machine for name in timings})
    save_json(timings_file(), data)
    print("runtimes written into:", ", ".join(sync(data)) or "nothing (unchanged)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", help="run folder (default: runs/<timestamp>)")
    parser.add_argument("--only", nargs="*", help="notebook name prefixes to run, e.g. 00 03")
    parser.add_argument("--prepare-only", action="store_true", help="only prepare the embedded model")
    parser.add_argument("--params",
                        help="YAML of notebook parameters passed to every notebook that declares them")
    parser.add_argument("--in-place", action="store_true",
                        help="maintainers: execute the notebooks in notebooks/ and store their outputs "
                             "there, record their times in notebooks/course_timings.json and write them "
                             "into the docs")
    parser.add_argument("--nbval-copy", metavar="DIR",
                        help="maintainers (make nbval): only write the one-page notebook with its committed "
                             "outputs and the offline parameters injected into DIR, for nbval to run; with "
                             "--params, a copy of every notebook, each with the values it declares")
    parser.add_argument("--lab-copy", metavar="DIR",
                        help="make lab: only write the one-page notebook with its outputs cleared and the "
                             "offline parameters injected into DIR (its output in runs/interactive)")
    parser.add_argument("--sync-runtimes", action="store_true",
                        help="only rewrite the notebooks' runtime lines "
                             "and the README table from course_timings.json")
    args = parser.parse_args(argv)
    if args.sync_runtimes:
        from tools.runners.timings import sync

        print("updated:", ", ".join(sync()) or "nothing (already in sync)")
        return 0

    from gemmate_lib.models import prepare_embedded

    start = time.time()
    folder = prepare_embedded()
    print(f"embedded model ready in {show_path(folder)} ({time.time() - start:.0f} s)")
    print(f"the one-page notebook's quotes ready in {show_path(prepare_one_page_data())}")
    if args.prepare_only:
        return 0
    if args.lab_copy:
        copy = lab_copy(Path(args.lab_copy), folder, repo_root() / "runs" / "interactive")
        print(f"the one-page recipe with this machine's offline model and quotes as its parameters, for a "
              f"run without a GPU or a Hugging Face token: {show_path(copy)}")
        return 0
    if args.nbval_copy:
        target = Path(args.nbval_copy).resolve()  # nbval's kernel starts in the copy's folder
        if args.params:
            copies = nbval_copies(target, folder, args.params)
            given = notebook_parameters(course_notebooks(repo_root()), args.params)
            print(f"{len(copies)} notebooks for nbval in {show_path(target)}; parameters from {args.params}: "
                  + ("; ".join(f"{name} {values}" for name, values in given.items() if values) or "none"))
        else:
            copy = nbval_copy(target, folder, target)
            print(f"the one-page notebook with its offline parameters for nbval: {show_path(copy)}")
        return 0

    import papermill as pm

    root = repo_root()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = get_run_dir(args.run_dir or root / "runs" / stamp)
    notebooks = course_notebooks(root)
    if args.only:
        notebooks = [nb for nb in notebooks if nb.name.startswith(tuple(args.only))]
    per_notebook = notebook_parameters(notebooks, args.params)
    os.environ.update(run_options(args.params))  # the kernels inherit it
    offline = hub_environment(per_notebook)
    for name, value in offline.items():
        os.environ.setdefault(name, value)  # the kernels inherit them
    print("Hub: " + ("offline (the embedded default needs no network)" if offline
                     else "online (a Hub model or dataset)"))
    # every kernel keeps a ledger of the model copies it holds at once (tools/fit/ledger.py): run_dir/ledger
    from tools.fit.ledger import startup_dir

    os.environ["IPYTHONDIR"] = startup_dir(run_dir / "ledger" / "ipython")
    timings, cells = {}, {}
    for nb in notebooks:
        out = run_dir / nb.name
        os.environ["GEMMATE_LEDGER"] = str(run_dir / "ledger" / f"{nb.stem}.jsonl")
        params = {**per_notebook[nb.name], "run_dir": str(run_dir)}
        if nb.name == ONE_PAGE:  # imports nothing of ours: no run_dir; its own parameters, a params file wins
            params = {**one_page_parameters(folder, run_dir, bool(offline), start=nb.parent),
                      **per_notebook[nb.name]}
            if args.in_place:  # the committed outputs: a run from step 0, never one resumed from the
                import shutil  # checkpoint that an earlier run left in runs/interactive

                shutil.rmtree(run_dir / Path(ONE_PAGE).stem / "trainer", ignore_errors=True)
        print(f"--> {nb.name}" + (" (in place)" if args.in_place else "")
              + (f" with {per_notebook[nb.name]}" if per_notebook[nb.name] else ""), flush=True)
        t0 = time.time()
        if args.in_place:
            cells[nb.stem] = execute_in_place(nb, run_dir, params if nb.name == ONE_PAGE else None)
        else:
            try:
                executed = pm.execute_notebook(str(nb), str(out), parameters=params,
                                               cwd=str(nb.parent), kernel_name="python3", progress_bar=False)
            except pm.PapermillExecutionError as err:
                print(f"FAILED: {nb.name} at cell {err.exec_count}: {err.ename}: {err.evalue}\n"
                      f"  the executed copy with the error is {show_path(out)}", file=sys.stderr)
                return 1
            cells[nb.stem] = cell_seconds(executed)
        timings[nb.name] = round(time.time() - t0, 1)
        print(f"    {timings[nb.name]:.0f} s", flush=True)
    if args.in_place and not args.params:
        # the one-page notebook's runtime line is kept by hand (tools/runners/timings.py syncs the ordered
        # notebooks)
        record_timings({name: s for name, s in timings.items() if name != ONE_PAGE})
    timings["total_notebooks_s"] = round(sum(timings.values()), 1)
    timings["params_file"] = args.params
    timings["slowest_cells"] = slowest_cells(cells)
    save_json(run_dir / "course_timings.json", timings)
    print_slowest(timings["slowest_cells"])
    # what each kernel held at once, against what the fit lines say (gemmate_lib/notebook_copies.json)
    from tools.fit.notebook_fit import check_run

    held = check_run(run_dir)
    print("\n".join(held) or "model copies: no notebook held more at once than its fit line counts")
    print(f"course done: {timings['total_notebooks_s']:.0f} s for {len(notebooks)} notebooks; "
          f"everything is in {show_path(run_dir)}")
    return 1 if held else 0


if __name__ == "__main__":
    from gemmate_cli.errors import run_cli

    sys.exit(run_cli(main))
