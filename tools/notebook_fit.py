"""The per-notebook fit table, from what the notebooks were measured to hold: `python -m tools.notebook_fit
RUN`
reads the ledgers that a run's kernels wrote (RUN/ledger/<notebook>.jsonl, tools/ledger.py; the smoke run,
tests/learner_path.py, writes them in the GPU profile: NF4, k-bit preparation, what a T4 runs), and writes

- gemmate_lib/notebook_copies.json: per notebook, each distinct moment's model copies (kinds, the one being
  loaded, training or not) and the cells where it happens, plus the kernel's own memory before its first load;
  the notebooks' fit lines (gemmate_lib.fit.notebook_fit) read it;
- the table "What a free T4 runs" in docs/full-shape.md and the model line of the README's prerequisites: each
  notebook x each offered model at its real shape on a free Colab T4, generated, never typed.

A copy's kind comes from its measured bytes: "nf4" (4-bit layers) or "whole", and "-fp32" when most of its
other weights are fp32 while the run computed in 16 bits (k-bit preparation widens them). Its footprint at a
real shape is gemmate_lib.fit.copy_bytes, held against the copies measured at the real shapes (make rehearse's
"copy" rows). """
from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "full-shape.md"
README = ROOT / "README.md"
# What a notebook leaves out where a whole 16/32-bit copy does not fit: its guarded parts (fit.notebook_fit)
WITHOUT_WHOLE = {
    "03_lora_sft": "compare=True",
    "05_save_and_push": "the merge",
    "06_compare_methods": 'its 16/32-bit methods (methods=["qlora"] runs)',
    "qlora_one_runtime": "the merge",
}
MODELS = {"gemma-2b": "google/gemma-2b", "gemma-3-1b-pt": "Gemma 3 1B", "gemma-4-E2B": "Gemma 4 E2B"}


def cell_ids(notebook: Path) -> dict[str, str]:
    """{ledger hash: cell id} for the code cells of `notebook`."""
    from tools.ledger import cell_hash

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


def moments(ledger: Path, notebook: Path, compute: str) -> tuple[list[dict], int]:
    """The distinct moments of one notebook's ledger, and the kernel's resident memory at its first load less
    that copy (its libraries, tokenizer and data)."""
    ids = cell_ids(notebook)
    found: dict[tuple, dict] = {}
    kernel = 0
    for line in ledger.read_text().splitlines():
        event = json.loads(line)
        kinds = [kind(c, compute) for c in event["copies"]]
        loading = event["event"] == "load"
        if loading and not kernel:
            kernel = event["rss_anon"] - sum(event["copies"][-1]["bytes"].values())
        if not kinds:
            continue
        # the copy being loaded first, the others sorted: moments that hold the same copies compare equal
        ordered = ([kinds[-1]] + sorted(kinds[:-1])) if loading else sorted(kinds)
        key = (tuple(ordered), loading, event["event"] == "train")
        moment = found.setdefault(key, {"copies": ordered, "loading": 0 if loading else None,
                                        "training": event["event"] == "train", "cells": []})
        cell = ids.get(event["source"], "added")
        if cell not in moment["cells"]:
            moment["cells"].append(cell)
    return list(found.values()), kernel


def collect(run: Path, compute: str = "bfloat16") -> dict:
    """gemmate_lib/notebook_copies.json's content from the ledgers of `run` (one per notebook)."""
    notebooks, kernels = {}, []
    for ledger in sorted((run / "ledger").glob("*.jsonl")):
        found, kernel = moments(ledger, ROOT / "notebooks" / f"{ledger.stem}.ipynb", compute)
        notebooks[ledger.stem] = {"moments": found, **({"without_whole": WITHOUT_WHOLE[ledger.stem]}
                                                       if ledger.stem in WITHOUT_WHOLE else {})}
        kernels.append(kernel)
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()
    return {"measured": f"the smoke run (tests/learner_path.py, GPU profile, {compute} compute), {revision}",
            "kernel_bytes": max(kernels), "notebooks": notebooks}


def rows(data: dict | None = None) -> list[dict]:
    """Each notebook x each offered model at its real shape on a free Colab T4."""
    from gemmate_lib import fit
    from gemmate_lib.generations import generation_of
    from tools.full_shape import config_of

    data = data or fit.measured()
    out = []
    for model in MODELS:
        config = config_of(model)
        shape = fit.shape_of(config)
        compute = {"fp16": 2, "fp32": 4}[generation_of(config).t4_dtype]
        for notebook in data["notebooks"]:
            need = fit.notebook_need(notebook, shape, compute, data)
            out.append({"notebook": notebook, "model": model, "copies": need.copies, "gpu": need.gpu,
                        "ram": need.ram, "fits": fit.verdict(need)})
    return out


def table(data: dict | None = None) -> str:
    """The Markdown table of `rows`: copies at once, peak GPU memory and RAM, and the verdict."""
    from gemmate_lib.fit import GIB

    found = rows(data)
    notebooks = list(dict.fromkeys(r["notebook"] for r in found))
    head = "| notebook | " + " | ".join(MODELS.values()) + " |"
    lines = [head, "|---|" + "---|" * len(MODELS)]
    for notebook in notebooks:
        cells = []
        for model in MODELS:
            r = next(r for r in found if r["notebook"] == notebook and r["model"] == model)
            verdict = {"yes": "**fits**", "no": "**does not fit**"}.get(r["fits"], f"fits {r['fits']}")
            cells.append(f"{verdict}: {r['copies']} at once, {r['gpu'] / GIB:.1f} GiB GPU, "
                         f"{r['ram'] / 1e9:.1f} GB RAM")
        lines.append(f"| `{notebook}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def readme_line(data: dict | None = None) -> str:
    """The README's sentence on what each other offered model runs on a free T4, from `rows`."""
    found = rows(data)
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


def compare(committed: dict, found: dict) -> list[str]:
    """What a fresh measurement (`found`, collect's) says that the committed one does not: a notebook whose
    moments changed (regenerate the table), and, worse, one whose verdict for an offered model on a free T4
    got worse than the table says."""
    problems = []
    for notebook in sorted(set(committed["notebooks"]) | set(found["notebooks"])):
        key = lambda m: (tuple(m["copies"]), m["loading"], m["training"])  # noqa: E731
        old = {key(m) for m in committed["notebooks"].get(notebook, {}).get("moments", [])}
        new = {key(m) for m in found["notebooks"].get(notebook, {}).get("moments", [])}
        if old != new:
            most = max((len(k[0]) for k in new), default=0)
            problems.append(f"{notebook}: its measured copies differ from gemmate_lib/notebook_copies.json "
                            f"(now at most {most} at once); run `python -m tools.notebook_fit <smoke run>`")
    if problems:
        said = {(r["notebook"], r["model"]): r["fits"] for r in rows(committed)}
        rank = lambda verdict: 0 if verdict == "yes" else 2 if verdict == "no" else 1  # noqa: E731
        for r in rows(found):
            if rank(r["fits"]) > rank(said.get((r["notebook"], r["model"]), "no")):
                problems.append(f"{r['notebook']} with {r['model']} no longer fits a free T4 as the course "
                                f"says ({said[(r['notebook'], r['model'])]} -> {r['fits']})")
    return problems


def replace(text: str, marker: str, body: str) -> str:
    """`text` with what lies between <!-- marker --> and <!-- end of marker --> replaced by `body`."""
    start, end = f"<!-- {marker} -->", f"<!-- end of {marker} -->"
    if start not in text:
        raise SystemExit(f"no {start} in the page")
    head, rest = text.split(start, 1)
    return head + start + "\n" + body + "\n" + end + rest.split(end, 1)[1]


def write(data: dict) -> None:
    from gemmate_lib import fit

    fit.NOTEBOOKS.write_text(json.dumps(data, indent=1) + "\n")
    fit.measured.cache_clear()
    DOCS.write_text(replace(DOCS.read_text(), "notebook table", table(data)))
    README.write_text(replace(README.read_text(), "fit line", readme_line(data)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, nargs="?", help="a run folder with ledger/*.jsonl (the smoke run)")
    args = parser.parse_args(argv)
    if args.run:
        write(collect(args.run))
    else:
        print(table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
