"""`python -m tools.runners.reference_runs --seeds 42 1 2`: measure the bands that gemmate_lib.reference
compares a learner's run with ("is my run normal?", printed near the end of 03, 04 and 07). For each seed, in
a scratch run folder of its own (`--scratch`, default runs/reference/seed-<seed>), it runs with papermill, in
the CPU profile on the embedded model, offline: 03_lora_sft with part 2 off (compare=False, chat_steps=0) and
its `seed`, then 04_evaluation on that adapter, and 07_temporal_encoding with its `seed`. Each notebook runs
with one cell added after its "Is this run normal?" cell (RECORD_CELL): it keeps what that line compared
(gemmate_lib.reference.run_record: model, runtime, machine, settings, figures, read from the run's own files)
in the run folder (SEED_RECORD). The tool reads those records, checks that every seed ran with the same model,
runtime, machine and settings, and writes one band per notebook into gemmate_lib/reference_bands.json: the
lowest and highest figure over the seeds, widened by the figure's margin (MARGINS, written into the file),
with the seeds, the CPU, the date and the commit. A band with the same key is replaced; others are kept. A
second run with the same scratch folder reuses the notebooks that finished there (`--fresh` reruns them).
`--pause-while FILE` waits before each notebook while FILE exists (a shared machine's quiet flag). About 7
minutes a seed on a 2-core CPU with native bf16 (03 about 2, 04 about 1, 07 about 4); run nothing else
CPU-heavy beside it: seconds per step are among the figures."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import time
from pathlib import Path

from gemmate_lib.guard_rails.files import repo_root, save_json, show_path
from gemmate_lib.reference import BANDS
from tools.machine import cpu_name

RUNS = {  # each notebook's papermill parameters beside run_dir (the seed goes to those that take one)
    "03_lora_sft": {"model_name": "embedded", "compare": False, "chat_steps": 0},
    "04_evaluation": {"model_name": "embedded"},
    "07_temporal_encoding": {"model_name": "embedded"},
}
NOTEBOOKS = tuple(RUNS)
SEEDED = ("03_lora_sft", "07_temporal_encoding")
TRAINERS = {"03_lora_sft": ("trainer",), "07_temporal_encoding": ("temporal_trainer", "python_trainer")}
KEY = ("notebook", "model", "runtime", "machine", "settings")
RUN_FILE = "reference_run.json"  # in a seed's run folder: each notebook run's seconds and load average
TIMED = ("seconds_per_step",)  # figures that another job on the cores distorts
# how far a band reaches past the measured runs: (margin, relative): a share of the figure (low = min x
# (1 - margin), high = max x (1 + margin)), else absolute (the shares, kept within 0 and 1)
MARGINS = {"held_out_loss": (0.05, True), "perplexity": (0.15, True), "format_share": (0.1, False),
           "year_accuracy": (0.05, False), "year_accuracy_constant": (0.05, False),
           "python_accuracy": (0.05, False), "seconds_per_step": (0.4, True), "peak_memory_gib": (0.1, True)}
SEED_RECORD = "reference_record-{notebook}.json"  # in a seed's run folder: what the normal line compared
NORMAL_CELL = "is-normal"  # the id of the cell that prints gemmate_lib.reference.normal_line
RECORD_CELL = ("# added by tools/runners/reference_runs.py: what this run's normal line compared\n"
               "from gemmate_lib.guard_rails.files import save_json\n"
               "from gemmate_lib.reference import run_record\n\n"
               "save_json(out / {file!r}, run_record({notebook!r}, out, cfg))")


def margin_words(name: str) -> str:
    margin, relative = MARGINS[name]
    return (f"{margin:.0%} of the figure beyond the lowest and highest run" if relative else
            f"{margin:g} beyond the lowest and highest run")


def band_of(records: list[dict], seeds: list[int], runs: list[dict | None]) -> dict:
    """One band from the same notebook's records over the seeds: each figure's runs, min and max, and low and
    high widened by its margin (a share never below 0 or above 1). Seconds per step measured while other jobs
    shared the cores (`runs`: each seed's notebook run, see contended) are left out, with the reason."""
    first = records[0]
    for record, seed in zip(records[1:], seeds[1:]):
        differ = [k for k in KEY if record[k] != first[k]]
        if differ:
            raise SystemExit(f"seed {seed} ran {first['notebook']} with another {', '.join(differ)} than "
                             f"seed {seeds[0]}: a band spans seeds of one setting only (fix it, then rerun)")
    figures, left_out = {}, {}
    why = contended(runs)
    for name in first["figures"]:
        if name in TIMED and why:
            left_out[name] = why
            continue
        runs = [r["figures"][name] for r in records]
        (margin, relative), low, high = MARGINS[name], min(runs), max(runs)
        if relative:
            low, high = low * (1 - margin), high * (1 + margin)
        else:
            low, high = max(low - margin, 0.0), min(high + margin, 1.0)  # the absolute ones are shares
        figures[name] = {"low": round(low, 4), "high": round(high, 4), "min": min(runs), "max": max(runs),
                         "runs": runs}
    from gemmate_lib.guard_rails.run_folder import git_revision

    return {**{k: first[k] for k in KEY}, "figures": figures, "left_out": left_out, "seeds": seeds,
            "cpu": cpu_name(), "date": dt.date.today().isoformat(), "git_revision": git_revision(),
            "notebook_runs": dict(zip(seeds, runs))}


def merge(path: Path, bands: list[dict]) -> dict:
    """The bands file with `bands` in place of any with the same key, the others kept."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        doc = {}
    keep = [b for b in doc.get("bands", []) if not any(all(b[k] == n[k] for k in KEY) for n in bands)]
    return {"about": "Bands of gemmate_lib.reference ('is my run normal?'), measured from real runs only by "
                     "`python -m tools.runners.reference_runs`: per figure the runs over the seeds, "
                     "their min and "
                     "max, and low/high = min/max widened by the margin below. Different settings are "
                     "never compared.",
            "margins": {name: margin_words(name) for name in MARGINS},
            "bands": keep + bands}


def with_record_cell(notebook: str):
    """`notebook` as committed, with RECORD_CELL after its "Is this run normal?" cell (id NORMAL_CELL):
    papermill runs this copy."""
    import nbformat

    nb = nbformat.read(repo_root() / "notebooks" / f"{notebook}.ipynb", as_version=4)
    source = RECORD_CELL.format(file=SEED_RECORD.format(notebook=notebook), notebook=notebook)
    at = next(i for i, cell in enumerate(nb.cells) if cell.get("id") == NORMAL_CELL) + 1
    nb.cells.insert(at, nbformat.v4.new_code_cell(source))
    return nb


def record_of(run_dir: Path, notebook: str) -> dict | None:
    """The record RECORD_CELL kept in `run_dir`; None before it ran. A run with nothing to compare (run_record
    says why) stops the tool."""
    try:
        record = json.loads((run_dir / SEED_RECORD.format(notebook=notebook)).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(record, str):
        raise SystemExit(f"{notebook} in {show_path(run_dir)} has nothing to compare: {record}")
    return record


def wait_while(flag: str | None) -> None:
    while flag and Path(flag).exists():
        time.sleep(60)


def contended(runs: list[dict | None]) -> str:
    """Why the seconds of these notebook runs are no reference ("" when they are): another job shared the
    cores (the mean load average while a notebook ran above the cores its own kernel keeps busy, plus one),
    or a run's load was not recorded."""
    cores = os.cpu_count() or 1
    worst = max((r["load_average_during"] for r in runs if r is not None), default=0.0)
    if worst > cores + 1:
        return (f"the runs shared the cores with other jobs (mean load average up to {worst:.1f} on {cores} "
                "cores)")
    return "a run's load was not recorded" if any(r is None for r in runs) else ""


def run_notebook(notebook: str, run_dir: Path, seed: int, flag: str | None) -> dict:
    """Run one notebook with papermill into `run_dir`: its seconds, and the machine's load average (1 min)
    before it and its mean while it ran, sampled every 10 s (another job beside a run slows its seconds per
    step); kept in the run folder (RUN_FILE)."""
    import threading

    import papermill as pm

    params = {**RUNS[notebook], "run_dir": str(run_dir), **({"seed": seed} if notebook in SEEDED else {})}
    for folder in TRAINERS.get(notebook, ()):  # from step 0: a checkpoint left there would resume
        shutil.rmtree(run_dir / folder, ignore_errors=True)
    wait_while(flag)
    load, samples, done = os.getloadavg()[0], [], threading.Event()
    print(f"--> seed {seed}: {notebook} with {params} (load average {load:.1f})", flush=True)

    def sample():
        while not done.wait(10):
            samples.append(os.getloadavg()[0])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.time()
    try:
        pm.execute_notebook(with_record_cell(notebook), str(run_dir / f"{notebook}.ipynb"), parameters=params,
                            cwd=str(repo_root() / "notebooks"), kernel_name="python3", progress_bar=False)
    except pm.PapermillExecutionError as err:
        done.set()
        copy = show_path(run_dir / f"{notebook}.ipynb")
        raise SystemExit(f"{notebook} failed for seed {seed} at cell {err.exec_count}: {err.ename}: "
                         f"{err.evalue} (the executed copy: {copy})") from None
    seconds = time.time() - start
    done.set()
    during = sum(samples) / len(samples) if samples else os.getloadavg()[0]
    print(f"    {seconds:.0f} s (mean load average {during:.1f})", flush=True)
    run = {"seconds": round(seconds, 1), "load_average_before": round(load, 2),
           "load_average_during": round(during, 2)}
    runs = read_runs(run_dir)
    save_json(run_dir / RUN_FILE, runs | {notebook: run})
    return run


def read_runs(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2], help="training seeds (03, 07)")
    parser.add_argument("--scratch", default=None, help="folder of the seeds' run folders "
                                                        "(default: runs/reference)")
    parser.add_argument("--only", nargs="*", choices=NOTEBOOKS, help="notebooks to measure (03 runs for 04)")
    parser.add_argument("--fresh", action="store_true", help="rerun notebooks that finished in --scratch")
    parser.add_argument("--bands", default=str(BANDS), help="the bands file to update")
    parser.add_argument("--pause-while", metavar="FILE", help="wait while FILE exists before each notebook")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) < 2:
        parser.error("a band needs at least two different seeds")
    notebooks = list(args.only or NOTEBOOKS)
    needed = sorted(set(notebooks) | ({"03_lora_sft"} if "04_evaluation" in notebooks else set()))
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", CUDA_VISIBLE_DEVICES="")  # the CPU profile
    os.environ.pop("GEMMATE_PROFILE", None)
    from gemmate_lib.models import prepare_embedded

    prepare_embedded()
    scratch = Path(args.scratch or repo_root() / "runs" / "reference").resolve()
    start = time.time()
    for seed in args.seeds:
        run_dir = scratch / f"seed-{seed}"
        if args.fresh or ("03_lora_sft" in needed and record_of(run_dir, "03_lora_sft") is None):
            shutil.rmtree(run_dir, ignore_errors=True)  # 04 reads 03's adapter: a new 03, a new folder
        run_dir.mkdir(parents=True, exist_ok=True)
        for notebook in needed:
            if record_of(run_dir, notebook) is None:
                run_notebook(notebook, run_dir, seed, args.pause_while)
    bands = []
    for notebook in notebooks:
        records = [record_of(scratch / f"seed-{seed}", notebook) for seed in args.seeds]
        runs = [read_runs(scratch / f"seed-{seed}").get(notebook) for seed in args.seeds]
        band = band_of(records, args.seeds, runs)
        bands.append(band)
        for name, figure in band["figures"].items():
            print(f"{notebook} {name}: runs {figure['runs']} -> band {figure['low']} to {figure['high']}")
        for name, why in band["left_out"].items():
            print(f"{notebook} {name}: left out: {why}")
    save_json(Path(args.bands), merge(Path(args.bands), bands))
    print(f"{len(bands)} band(s) written to {show_path(Path(args.bands))} ({time.time() - start:.0f} s; the "
          f"runs are in {show_path(scratch)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
