"""The per-notebook fit table, from what the notebooks were measured to hold: `python -m
tools.fit.notebook_fit RUN` reads the ledgers that a run's kernels wrote (RUN/ledger/*.jsonl,
tools/fit/ledger.py; the smoke run, tests/learner_path.py, writes them in the GPU profile: NF4, k-bit
preparation, what a T4 runs, with 03's part 2, every method of 06 and the exercises' solutions), and writes

- gemmate_lib/notebook_copies.json: per notebook, each distinct moment's model copies (kinds, the one being
  loaded, training or not, held by a child process or not), the optional part it belongs to (PART_CELLS: 03's
  part 2, 05's GGUF export, an exercise's solution) and the cells where it happens, plus the kernel's own
  memory before its first load, and which planner's phases a part's child processes run (CHILD_PHASES);
  the notebooks' fit lines (gemmate_lib.fit.notebook_fit) and the exercises' (gemmate_lib.exercises.fit_lines)
  read it;
- gemmate_lib/exercises/fit_table.json: the runs each exercise makes (tools/fit/exercise_fit.py);
- the table "What a free T4 runs" in docs/full-shape.md (each notebook, and its optional parts as rows of
  their own), the model line of the README's prerequisites, and the exercise x model table of
  docs/exercises.md: each at every offered model's real shape on a free Colab T4, generated, never typed.

`python -m tools.fit.notebook_fit RUN --check` holds a run of another profile (nbval's, `make course`'s, `make
exercises`') to the committed measurement: no notebook held more copies at once than it says.

A copy's kind comes from its measured bytes: "nf4" (4-bit layers) or "whole", and "-fp32" when most of its
other weights are fp32 while the run computed in 16 bits (k-bit preparation widens them). Its footprint at a
real shape is gemmate_lib.fit.predicted_copy_bytes, held against the copies measured at the real shapes (make
rehearse's "copy" rows). """
from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "full-shape.md"
README = ROOT / "README.md"
EXERCISE_DOCS = ROOT / "docs" / "exercises.md"  # its exercise x model table
# What a notebook leaves out where a whole 16/32-bit copy does not fit: its guarded parts (fit.notebook_fit)
WITHOUT_WHOLE = {
    "03_lora_sft": "section 7 (its 16/32-bit LoRA arm)",
    "05_save_and_push": "the merge",
    "06_compare_methods": 'its 16/32-bit methods (methods=["qlora"] runs)',
    "qlora_one_runtime": "the merge",
}
# A notebook's optional parts, by the ids of the cells that run them (gemmate_lib.fit.PART_PARAMETERS says
# which parameters run each); an exercise's solution is labelled by the cell that runs it (GEMMATE_FIT_PART)
PART_CELLS = {
    "03_lora_sft": {"compare": ("70a09624", "badcee92"), "chat": ("c3baca86",)},
    "05_save_and_push": {"export_gguf": ("d7c65ecd", "gguf-check", "gguf-table")},
}
# Parts that run child processes whose memory the planner's phases measure (make rehearse): llama.cpp's
# converter, quantizer and check run beside the kernel and its copies (the file's "child_phases")
CHILD_PHASES = {"export_gguf": ["convert", "quantize", "verify"]}
COPY_KINDS = ("nf4", "nf4-fp32", "whole", "whole-fp32")  # a model copy's kinds (fit.predicted_copy_bytes)
MODELS = {"gemma-2b": "google/gemma-2b", "gemma-3-1b-pt": "Gemma 3 1B", "gemma-4-E2B": "Gemma 4 E2B"}
KERNEL_SLACK = 0.25  # a kernel's own memory may move this much between runs before the table is stale


def cell_ids(notebook: Path) -> dict[str, str]:
    """{ledger hash: cell id} for the code cells of `notebook`."""
    from tools.fit.ledger import cell_hash

    cells = json.loads(notebook.read_text())["cells"]
    return {cell_hash("".join(c["source"])): c.get("id", str(i)) for i, c in enumerate(cells)
            if c["cell_type"] == "code"}


def kind(copy: dict, compute: str) -> str:
    """"nf4" or "whole"; "nf4-fp32" when a 4-bit copy's other weights are mostly fp32 while the run computed
    in
    16 bits (k-bit preparation widened them). A whole copy is counted in the compute dtype, as a GPU holds it:
    the smoke run's kernels see no GPU, so 05's merge and the one-page recipe's reload take their CPU branch
    (fp32) there, and 06's full fine-tuning (fp32 master weights) is refused on a T4 before it loads."""
    size = {}
    for slot, n in copy["bytes"].items():
        size[slot.split(":", 1)[1]] = size.get(slot.split(":", 1)[1], 0) + n
    if not size.get("4bit"):
        return "whole"
    wide = size.get("float32", 0) > size.get("bfloat16", 0) + size.get("float16", 0)
    return "nf4-fp32" if wide and compute != "float32" else "nf4"


def events(ledger: Path) -> list[dict]:
    """A kernel's ledger and its children's lines, in the order they happened."""
    found = [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()]
    return sorted(found, key=lambda e: e["time"])


def moments(ledger: Path, notebook: Path, compute: str) -> tuple[list[dict], int]:
    """The distinct moments of one notebook's ledger (the kernel's copies and those its child processes hold
    at the same time), each with the optional part it belongs to, and the kernel's resident memory at its
    first load less that copy (its libraries, tokenizer and data)."""
    ids = cell_ids(notebook)
    by_cell = {cell: part for part, cells in PART_CELLS.get(notebook.stem, {}).items() for cell in cells}
    found: dict[tuple, dict] = {}
    kernel, held, children = 0, [], {}
    for event in events(ledger):
        kinds = [kind(c, compute) for c in event["copies"]]
        pid = event.get("pid")
        if pid is None:
            held = kinds
        elif event["event"] == "exit":
            children.pop(pid, None)
        else:
            children[pid] = kinds
        loading = event["event"] == "load"
        if loading and pid is None and not kernel:
            kernel = event["rss_anon"] - sum(event["copies"][-1]["bytes"].values())
        in_child = [k for p, ks in children.items() for k in ks]
        every = held + in_child
        if not every:
            continue
        new = (kinds[-1] if loading else None)
        rest = list(every)
        if new is not None:
            rest.remove(new)
        # the copy being loaded first, the others sorted: moments that hold the same copies compare equal
        ordered = ([new] + sorted(rest)) if new is not None else sorted(every)
        cell = ids.get(event["source"], "added")
        part = event.get("part") or by_cell.get(cell)
        key = (tuple(ordered), loading, event["event"] == "train", part, bool(in_child))
        moment = found.setdefault(key, {"copies": ordered, "loading": 0 if loading else None,
                                        "training": event["event"] == "train", "part": part,
                                        "child": bool(in_child), "cells": []})
        if cell not in moment["cells"]:
            moment["cells"].append(cell)
    return list(found.values()), kernel


def notebook_of(ledger: Path) -> Path | None:
    """The notebook whose cells a ledger ran: its name (<stem>.jsonl), or, for a folder of kernels' ledgers
    (nbval: kernel-<pid>.jsonl), the notebook most of its cells belong to."""
    named = ROOT / "notebooks" / f"{ledger.stem}.ipynb"
    if named.exists():
        return named
    sources = {e["source"] for e in events(ledger)}
    scores = {nb: len(sources & set(cell_ids(nb))) for nb in (ROOT / "notebooks").glob("*.ipynb")}
    best = max(scores, key=scores.get, default=None)
    return best if best and scores[best] else None


def ledgers(run: Path) -> list[tuple[str, Path]]:
    """(notebook stem, ledger) for each kernel's ledger in `run` (run/ledger/<stem>.jsonl; nbval's
    kernel-<pid>.jsonl; `make exercises`' one per run of a notebook)."""
    found = []
    for ledger in sorted((run / "ledger").glob("*.jsonl")) if (run / "ledger").is_dir() else []:
        notebook = notebook_of(ledger)
        if notebook is not None:
            found.append((notebook.stem, ledger))
    return found


def collect(run: Path, compute: str = "bfloat16") -> dict:
    """gemmate_lib/notebook_copies.json's content from the ledgers of `run` (the moments of every ledger of a
    notebook together)."""
    notebooks, kernels = {}, []
    for stem, ledger in ledgers(run):
        found, kernel = moments(ledger, ROOT / "notebooks" / f"{stem}.ipynb", compute)
        entry = notebooks.setdefault(stem, {"moments": [], **({"without_whole": WITHOUT_WHOLE[stem]}
                                                              if stem in WITHOUT_WHOLE else {})})
        entry["moments"] += [m for m in found if m not in entry["moments"]]
        kernels.append(kernel)
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()
    return {"measured": f"the smoke run (tests/learner_path.py, GPU profile, {compute} compute), {revision}",
            "kernel_bytes": max(kernels, default=0), "child_phases": CHILD_PHASES, "notebooks": notebooks}


def check_kinds(data: dict) -> None:
    """A ValueError for a copy whose kind is not one of COPY_KINDS (a hand edit, a typo), which the library
    would otherwise count as some copy: "whle" as one with nothing in 4 bits, "nf4-fp16" as an NF4 one."""
    for entry in data["notebooks"].values():
        for kind in (k for m in entry["moments"] for k in m["copies"]):
            if kind not in COPY_KINDS:
                raise ValueError(f"unknown model-copy kind {kind!r}: use one of {', '.join(COPY_KINDS)}")


# The optional parts that get their own row in the table: (notebook, its parameters that run them)
PART_ROWS = (("03_lora_sft", {"compare": True}), ("05_save_and_push", {"export_gguf": True}))


def model_shapes() -> dict[str, tuple]:
    """{offered model: (its Shape at the real size, a T4's compute bytes for it)}."""
    from gemmate_lib import fit
    from gemmate_lib.generations import generation_of
    from tools.fit.full_shape import config_of

    found = {}
    for model in MODELS:
        config = config_of(model)
        found[model] = (fit.shape_of(config), {"fp16": 2, "fp32": 4}[generation_of(config).t4_dtype])
    return found


def rows(data: dict | None = None) -> list[dict]:
    """Each notebook (its default path, then each optional part of PART_ROWS as a row of its own) x each
    offered model at its real shape on a free Colab T4."""
    from gemmate_lib import fit

    data = data or fit.measured()
    out = []
    for model, (shape, compute) in model_shapes().items():
        for notebook in data["notebooks"]:
            runs = [("", {})] + [(fit.parts_text(fit.parts_of(nb, params)), params)
                                 for nb, params in PART_ROWS if nb == notebook]
            for label, params in runs:
                need = fit.notebook_need(notebook, shape, compute, data, parts=fit.parts_of(notebook, params))
                out.append({"notebook": notebook, "part": label, "params": params, "model": model,
                            "copies": need.copies, "gpu": need.gpu, "ram": need.ram,
                            "gpu_rest": need.gpu_without_whole, "ram_rest": need.ram_without_whole,
                            "fits": fit.fit_answer(need)})
    return out


def cell_text(r: dict) -> str:
    """One row's cell: the verdict with the peak of what runs (without the part it leaves out)."""
    from gemmate_lib.fit import GIB

    if r["fits"].startswith("without"):
        return (f"fits {r['fits']}: {r['copies']} at once, {r['gpu_rest'] / GIB:.1f} GiB GPU, "
                f"{r['ram_rest'] / 1e9:.1f} GB RAM (with it {r['gpu'] / GIB:.1f} GiB)")
    verdict = {"yes": "**fits**", "no": "**does not fit**"}[r["fits"]]
    return f"{verdict}: {r['copies']} at once, {r['gpu'] / GIB:.1f} GiB GPU, {r['ram'] / 1e9:.1f} GB RAM"


def table(data: dict | None = None) -> str:
    """The Markdown table of `rows`: copies at once, peak GPU memory and RAM, and the verdict."""
    found = rows(data)
    keys = list(dict.fromkeys((r["notebook"], r["part"]) for r in found))
    head = "| notebook | " + " | ".join(MODELS.values()) + " |"
    lines = [head, "|---|" + "---|" * len(MODELS)]
    for notebook, part in keys:
        cells = [cell_text(next(r for r in found if (r["notebook"], r["part"], r["model"]) ==
                                (notebook, part, model))) for model in MODELS]
        lines.append(f"| `{notebook}`{' with ' + part if part else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def readme_line(data: dict | None = None) -> str:
    """The README's sentence on what each other offered model runs on a free T4, from `rows` (each notebook's
    default path)."""
    found = [r for r in rows(data) if not r["part"]]
    ids = {"gemma-3-1b-pt": "google/gemma-3-1b-pt", "gemma-4-E2B": "google/gemma-4-E2B"}
    short = lambda nb: nb[:2] if nb[:2].isdigit() else "the one-page recipe"  # noqa: E731
    parts = []
    for model, hub_id in ids.items():
        mine = [r for r in found if r["model"] == model]
        out = [short(r["notebook"]) for r in mine if r["fits"] == "no"]
        partial = [short(r["notebook"]) for r in mine if r["fits"].startswith("without")]
        text = f"{MODELS[model]} (`{hub_id}`) runs every notebook" + (f" but {', '.join(out)}" if out else "")
        if partial:
            text += f", and {', '.join(partial)} without their 16/32-bit parts"
        parts.append(text)
    where = "docs/full-shape.md#what-a-free-t4-runs-by-notebook"
    return "; ".join(parts) + f" ([measured per notebook]({where}))."


def exercise_rows(data: dict | None = None) -> list[dict]:
    """Each exercise x each offered model on a free Colab T4 (gemmate_lib.exercises.exercise_fit)."""
    from gemmate_lib import fit
    from gemmate_lib.exercises import exercise_fit
    from tools.fit.exercise_fit import table as runs_table

    data = data or fit.measured()
    runs = runs_table(data)
    out = []
    for model, (shape, compute) in model_shapes().items():
        for name in runs:
            answer = exercise_fit(name, shape, compute, fit.FREE_COLAB, data, table=runs)
            out.append({"exercise": name, "model": model, **answer})
    return out


def exercise_table(data: dict | None = None) -> str:
    """The Markdown table of `exercise_rows`: what each exercise needs on a free T4, per model."""
    from gemmate_lib.fit import GIB

    found = exercise_rows(data)
    head = "| exercise | " + " | ".join(MODELS.values()) + " |"
    lines = [head, "|---|" + "---|" * len(MODELS)]
    for name in dict.fromkeys(r["exercise"] for r in found):
        cells = []
        for model in MODELS:
            r = next(r for r in found if r["exercise"] == name and r["model"] == model)
            if r["fits"]:
                cells.append(f"fits: {r['gpu'] / GIB:.1f} GiB GPU, {r['ram'] / 1e9:.1f} GB RAM")
            else:
                cells.append(f"**does not fit**: {r['why']}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare(committed: dict, found: dict) -> list[str]:
    """What a fresh measurement (`found`, collect's, of the same kind of run) says that the committed one
    does not: a notebook whose moments changed or whose kernel holds more or less than KERNEL_SLACK apart
    (regenerate the table), and, worse, one whose verdict for an offered model on a free T4 got worse than
    the table says."""
    problems = []
    for notebook in sorted(set(committed["notebooks"]) | set(found["notebooks"])):
        key = lambda m: (tuple(m["copies"]), m["loading"], m["training"], m.get("part"),  # noqa: E731
                         bool(m.get("child")))
        old = {key(m) for m in committed["notebooks"].get(notebook, {}).get("moments", [])}
        new = {key(m) for m in found["notebooks"].get(notebook, {}).get("moments", [])}
        if old != new:
            most = max((len(k[0]) for k in new), default=0)
            problems.append(f"{notebook}: its measured copies differ from gemmate_lib/notebook_copies.json "
                            f"(now at most {most} at once); run "
                            "`python -m tools.fit.notebook_fit <smoke run>`")
    was, now = committed["kernel_bytes"], found["kernel_bytes"]
    if abs(now / was - 1) > KERNEL_SLACK:
        problems.append(f"a notebook's kernel now holds {now / 1e9:.2f} GB before its first load, "
                        f"{was / 1e9:.2f} GB as committed (more than {KERNEL_SLACK:.0%} apart); run "
                        "`python -m tools.fit.notebook_fit <smoke run>`")
    if problems:
        said = {(r["notebook"], r["part"], r["model"]): r["fits"] for r in rows(committed)}
        rank = lambda verdict: 0 if verdict == "yes" else 2 if verdict == "no" else 1  # noqa: E731
        for r in rows(found):
            before = said.get((r["notebook"], r["part"], r["model"]), "no")
            if rank(r["fits"]) > rank(before):
                where = f"{r['notebook']}{' with ' + r['part'] if r['part'] else ''}"
                problems.append(f"{where} with {r['model']} no longer fits a free T4 as the course says "
                                f"({before} -> {r['fits']})")
    return problems


def check_run(run: Path, committed: dict | None = None) -> list[str]:
    """For a run in another profile than the smoke run's (nbval's and `make course`'s CPU profile, `make
    exercises`): no notebook held more model copies at once than the committed measurement says for the parts
    that ran, and no kernel held more than the committed kernel's memory plus KERNEL_SLACK (its data and
    tokenizer are the real ones there)."""
    from gemmate_lib import fit

    committed = committed or fit.measured()
    problems = []
    for notebook, ledger in ledgers(run):
        entry = {"moments": moments(ledger, ROOT / "notebooks" / f"{notebook}.ipynb", "bfloat16")[0]}
        ran = {m.get("part") for m in entry["moments"]} - {None}
        allowed = [m for m in committed["notebooks"].get(notebook, {}).get("moments", [])
                   if m.get("part") is None or m.get("part") in ran]
        most, said = (max((len(m["copies"]) for m in ms), default=0) for ms in (entry["moments"], allowed))
        if most > said:
            problems.append(f"{notebook} held {most} model copies at once in {ledger.name}; the course says "
                            f"at most {said} (gemmate_lib/notebook_copies.json)")
    kernel = collect(run)["kernel_bytes"]
    if kernel > committed["kernel_bytes"] * (1 + KERNEL_SLACK) + 0.5e9:
        problems.append(f"a kernel held {kernel / 1e9:.2f} GB before its first load in {run.name}, more than "
                        f"the committed {committed['kernel_bytes'] / 1e9:.2f} GB allows")
    return problems


def write(data: dict) -> None:
    from gemmate_lib import fit
    from tools.fit import exercise_fit
    from tools.markers import replace

    check_kinds(data)
    fit.MEASURED_COPIES.write_text(json.dumps(data, indent=1) + "\n")
    fit.measured.cache_clear()
    DOCS.write_text(replace(DOCS.read_text(), "notebook table", table(data)))
    README.write_text(replace(README.read_text(), "fit line", readme_line(data)))
    exercise_fit.write(exercise_fit.table(data))
    EXERCISE_DOCS.write_text(replace(EXERCISE_DOCS.read_text(), "exercise fit table", exercise_table(data)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, nargs="?", help="a run folder with ledger/*.jsonl (the smoke run)")
    parser.add_argument("--check", action="store_true",
                        help="check RUN (nbval's, `make course`'s) against the committed measurement instead")
    args = parser.parse_args(argv)
    if args.run and args.check:
        problems = check_run(args.run)
        print("\n".join(problems) or f"{args.run}: every notebook held the copies the course says, or fewer")
        return 1 if problems else 0
    if args.run:
        write(collect(args.run))
    else:
        print(table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
