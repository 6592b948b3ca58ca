"""A quota plan for Colab's free tier: T4 minutes per notebook and per exercise for each model the course
offers (google/gemma-2b, Gemma 3 1B, Gemma 4 E2B), and the course split into days, so a learner with a limited
GPU quota (Colab publishes none) knows what a day can hold before starting.

Every figure is a projection from the course's own time model, never a T4 measurement. Its basis is the
hand-kept gemma-2b T4 estimates (notebooks/course_timings.json's `t4_estimate`, the README's T4 column; each
exercise's "(CPU / T4 min)" in its notebook's "## Exercises" text). Each is split into three parts:

- its checkpoint downloads: every Colab notebook runs in a fresh runtime, so each one that loads the model
  downloads it again; the planner's load time (`planner.predict`'s "load" seconds: checkpoint bytes at its
  rate);
- its training: the optimizer steps it runs (of four examples, the seed recipe's batch 1 x 4; `t4_steps`
  counts them from the notebooks' parameters and the GPU profile) at the planner's step time for the model
  (`planner.predict`'s "nf4" seconds for one step, from the model's config: `fit.shape_of`);
- the rest (install, Drive, loading from disk, generation, evaluation), kept as it is for gemma-2b.

A model's projection swaps in its own checkpoint and step time (`project`). Where a notebook or an exercise
does not fit a free T4 (tools/fit/notebook_fit.rows, gemmate_lib.exercises.exercise_fit) it says so instead of
a time. `python -m tools.runners.quota` prints the plan; `--write` writes docs/colab.md's block (between
`<!-- quota plan -->` markers) and the README's line (`<!-- quota line -->`);
tests/test_generated_blocks.py holds both to it.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "colab.md"
README = ROOT / "README.md"
ANCHOR = "docs/colab.md#a-quota-plan"  # the docs' "## A quota plan" heading
TITLES = {"gemma-2b": "gemma-2b", "gemma-3-1b-pt": "Gemma 3 1B", "gemma-4-E2B": "Gemma 4 E2B"}
# ASSUMPTIONS (Colab publishes neither the free tier's GPU quota nor its idle limit): a cautious day of T4
# time, and the install cell's time in a fresh runtime (docs/colab.md: "about 1-2 min"; its upper end)
DAY_MINUTES = 120
INSTALL_MINUTES = 2
CHAT_STEPS = 40  # 03's chat run (section 8): `chat_steps=None` means this many steps when part 2 runs
# Exercises whose own runs load the model although their lesson loads none: a fresh runtime's first load
# downloads the checkpoint ("00-3": load the profile's model three times)
LOADS_ALONE = ("00-3",)


@dataclass(frozen=True)
class Item:
    """One row of the plan: a lesson, an optional part of one, or an exercise, with its gemma-2b estimate."""

    key: str  # "03_lora_sft", "03_lora_sft+compare", "03-1"
    notebook: str  # the notebook's stem
    kind: str  # "lesson", "part" or "exercise"
    minutes: float  # the hand-kept T4 estimate with google/gemma-2b, install and downloads included
    steps: int = 0  # optimizer steps of four examples it trains
    downloads: int = 0  # fresh runtimes whose first load the estimate includes (a checkpoint download each)
    loads: bool = True  # it loads the model: in a fresh runtime of its own it downloads the checkpoint first
    fetches: bool = False  # its estimate holds that download already (a lesson's, 00-3's)
    params: tuple = ()  # a part's parameters, as (name, value) pairs


# ---------------------------------------------------------------------------------------- the estimates

def minutes_of(text: str, where: str = "", lesson: float | None = None) -> float:
    """T4 minutes of an exercise's time text: "1 / 5 min" (CPU / T4), "CPU about 5 min; T4 about 20 min, an
    estimate", "8 / 35 min, both", "under a minute" (1), "about as long as the lesson" (a rerun of the whole
    notebook: `lesson`, its T4 estimate)."""
    if found := re.match(r"\s*[\d.]+ / ([\d.]+) min", text):
        return float(found[1])
    if lesson is not None and re.fullmatch(r"\s*about as long as the lesson(?: itself)?\s*", text):
        return lesson
    if found := re.search(r"T4 about ([\d.]+) min", text):
        return float(found[1])
    if re.fullmatch(r"\s*under a minute\s*", text):
        return 1.0
    raise ValueError(f"{where}: no T4 time in {text!r}; write it as (CPU / T4 min)")


def lesson_estimates(data: dict | None = None) -> dict[str, tuple[float, dict[str, float]]]:
    """{notebook: (T4 minutes of its default path, {part's parameter: minutes it adds})} from the hand-kept
    `t4_estimate` texts ("~15 min (+15 with compare=True)")."""
    from tools.runners.timings import load

    found = {}
    for stem, text in (data or load())["t4_estimate"].items():
        head = re.fullmatch(r"~([\d.]+) min((?: \(\+[\d.]+ with \w+=True\))*)", text)
        if not head:
            raise ValueError(f"course_timings.json, {stem}: cannot read {text!r} "
                             "(write '~N min (+M with x=True)')")
        parts = {name: float(m) for m, name in re.findall(r"\+([\d.]+) with (\w+)=True", head[2])}
        found[stem] = (float(head[1]), parts)
    return found


def notebook_cells(stem: str) -> list[dict]:
    return json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text())["cells"]


def exercise_estimates(stems) -> dict[str, float]:
    """{"03-1": T4 minutes} from each notebook's exercise texts, in course order: the numbered items
    `N. **Title** (time)` of the markdown cells from its "## Exercises" heading on."""
    found = {}
    for stem in stems:
        seen = False
        for cell in notebook_cells(stem):
            text = "".join(cell["source"])
            seen = seen or (cell["cell_type"] == "markdown" and text.lstrip().startswith("## Exercises"))
            if seen and cell["cell_type"] == "markdown":
                for number, time in re.findall(r"^(\d+)\. \*\*.+?\*\* \(([^)]*)\)", text, re.M):
                    name = f"{stem[:2]}-{number}"
                    found[name] = minutes_of(time, f"{stem}, exercise {name}", lesson_estimates()[stem][0])
    return found


@cache
def parameters(stem: str) -> dict:
    """The literal defaults of a notebook's `parameters` cell ({name: value})."""
    cell = next(c for c in notebook_cells(stem) if "parameters" in c.get("metadata", {}).get("tags", []))
    found = {}
    for node in ast.parse("".join(cell["source"])).body:
        if isinstance(node, ast.Assign):
            value = ast.literal_eval(node.value)
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = value
                elif isinstance(target, ast.Tuple):
                    found.update({t.id: v for t, v in zip(target.elts, value)})
    return found


def t4_steps(stem: str, params: dict | None = None) -> int:
    """Optimizer steps of four examples (the seed recipe's batch 1 x 4 accumulation, whose step time the
    planner knows) that a T4 run of notebook `stem` trains in the GPU profile, with `params` over its
    parameters cell: 03's run and, with compare=True, its part 2 (the other loss masking, section 7's two
    arms, the chat run); 05's second adapter; 06's methods and its written-out QLoRA arm (section 3);
    07's two GemmaTE runs."""
    from gemmate_lib.config import SEED_QLORA, TASK_DEFAULTS
    from gemmate_lib.methods import GPU_DEFAULT_METHODS

    p = {**parameters(stem), **(params or {})}
    per_step = SEED_QLORA["batch_size"] * SEED_QLORA["gradient_accumulation_steps"]
    if stem.startswith("03_"):
        main = p.get("max_steps") or SEED_QLORA["max_steps"]
        compare = bool(p.get("compare"))  # None: off under the GPU profile (config.compare_default)
        chat = p.get("chat_steps")
        chat = (CHAT_STEPS if compare else 0) if chat is None else chat
        return main + ((p.get("masking_steps") or main) + 2 * p["compare_steps"] if compare else 0) + chat
    if stem.startswith("05_"):
        return p["second_steps"]
    if stem.startswith("06_"):
        methods = TASK_DEFAULTS["methods"]
        steps, batch = p.get("steps") or methods["max_steps"], p.get("batch_size") or methods["batch_size"]
        arms = len(p.get("methods") or GPU_DEFAULT_METHODS) + 1  # + section 3's QLoRA arm by hand
        return math.ceil(arms * steps * batch / per_step)
    if stem.startswith("07_"):
        return (math.ceil(p["n_train"] * p["num_epochs"] / per_step)
                + math.ceil(p["n_python"] * p["python_epochs"] / per_step))
    return 0


# Exercises whose solution trains in the lesson's kernel: its steps, from the notebook's parameters
SOLUTION_STEPS = {"05-2": lambda p: p["second_steps"]}  # a third adapter at section 6's `short` settings


def items() -> list[Item]:
    """Every row of the plan in course order: each notebook's default path, its optional parts, its
    exercises."""
    from gemmate_lib.exercises.judging import EXERCISES
    from gemmate_lib.fit import measured
    from tools.fit.exercise_fit import exercise_runs

    lessons = lesson_estimates()
    exercises = exercise_estimates(lessons)
    if set(exercises) != set(EXERCISES):
        raise ValueError(f"the exercise texts name {sorted(set(exercises) ^ set(EXERCISES))}, which "
                         "gemmate_lib.exercises does not (or the reverse)")
    # the lesson's own path, without an optional part's or an exercise's moments (00-3 loads, 00 does not)
    loads = {stem: any(m.get("part") is None for m in entry["moments"])
             for stem, entry in measured()["notebooks"].items()}
    found = []
    for stem, (minutes, parts) in lessons.items():
        found.append(Item(stem, stem, "lesson", minutes, t4_steps(stem), int(loads[stem]), loads[stem],
                          loads[stem]))
        for name, added in parts.items():
            steps = t4_steps(stem, {name: True}) - t4_steps(stem)
            found.append(Item(f"{stem}+{name}", stem, "part", added, steps, params=((name, True),)))
        for name in (n for n in exercises if n.startswith(stem[:2] + "-")):
            runs = exercise_runs(name)
            steps = sum(t4_steps(s, p) for s, p in runs if "exercise" not in p)
            steps += SOLUTION_STEPS[name](parameters(stem)) if name in SOLUTION_STEPS else 0
            # a run of another notebook opens a runtime of its own (04-1 runs 03 there): one more download
            downloads = sum(s != stem for s, _ in runs) + (name in LOADS_ALONE)
            found.append(Item(name, stem, "exercise", exercises[name], steps, downloads,
                              loads[stem] or name in LOADS_ALONE, name in LOADS_ALONE))
    return found


# ------------------------------------------------------------------------------------- the projection

@cache
def models() -> dict[str, dict]:
    """{model: {"shape", "compute", "step_s" (the planner's seconds for one 4-bit training step on a T4),
    "download_s" (its seconds for the checkpoint), "bytes" (the checkpoint's)}}."""
    from tools.fit import planner
    from tools.fit.notebook_fit import model_shapes

    found = {}
    for model, (shape, compute) in model_shapes().items():
        plan = planner.predict(shape, compute, steps=1)
        found[model] = {"shape": shape, "compute": compute, "step_s": plan["nf4"]["seconds"],
                        "download_s": plan["load"]["seconds"], "bytes": plan["load"]["disk"]}
    return found


def project(item: Item, base: dict, model: dict) -> float:
    """T4 minutes of `item` with `model`, from its estimate with the `base` model (gemma-2b): the estimate
    less its downloads and training at the base's times is the rest (never below 0), kept; the model's own
    downloads and training are added to it. `base` and `model`: {"step_s", "download_s"}."""
    downloads, training = item.downloads * base["download_s"], item.steps * base["step_s"]
    rest = max(item.minutes * 60 - downloads - training, 0.0)
    return (rest + item.downloads * model["download_s"] + item.steps * model["step_s"]) / 60


@cache
def verdicts() -> dict[tuple[str, str], str]:
    """{(item key, model): "yes", "without <what it leaves out>" or "no"} on a free Colab T4: the notebooks'
    from tools/fit/notebook_fit.rows (its default path and each optional part), the exercises' from
    gemmate_lib.exercises.exercise_fit. Computed once a process (each model's shape is built on the meta
    device)."""
    from gemmate_lib import fit
    from gemmate_lib.exercises import exercise_fit
    from tools.fit.notebook_fit import rows

    found = {}
    for r in rows():
        key = r["notebook"] + "".join(f"+{name}" for name in sorted(r["params"]))
        found[(key, r["model"])] = r["fits"]
    for item in items():
        if item.kind == "exercise":
            for model, m in models().items():
                answer = exercise_fit(item.key, m["shape"], m["compute"], fit.FREE_COLAB)
                found[(item.key, model)] = "yes" if answer["fits"] else "no"
    return found


@dataclass(frozen=True)
class Cell:
    minutes: int | None  # None: does not fit a free T4
    leaves_out: str = ""  # what a notebook that fits only without its 16/32-bit part leaves out


def plan() -> list[tuple[Item, dict[str, Cell]]]:
    """Each item with its projected T4 minutes per model (rounded), or None where it does not fit."""
    said, every = verdicts(), models()
    base = every["gemma-2b"]
    out = []
    for item in items():
        cells = {}
        for model, m in every.items():
            verdict = said[(item.key, model)]
            if verdict == "no":
                cells[model] = Cell(None)
            else:
                left = verdict.removeprefix("without ").split(" (")[0] if verdict != "yes" else ""
                cells[model] = Cell(round(project(item, base, m)), left)
        out.append((item, cells))
    return out


# ---------------------------------------------------------------------------------------- the day plan

def days(entries: list[tuple[Item, int]], limit: int = DAY_MINUTES, reopen: int = 0,
         install: int = INSTALL_MINUTES) -> list[list[tuple[Item, int]]]:
    """`entries` (items with their minutes, in course order) packed into days of at most `limit` minutes, in
    order. An exercise placed on a later day than its notebook's lesson runs in a fresh runtime: it costs
    `install` minutes more, and `reopen` more (the checkpoint's download) when it loads the model and its
    estimate does not hold that download (`Item.fetches`). An item longer than `limit` gets a day of its
    own."""
    out: list[list[tuple[Item, int]]] = []
    for item, minutes in entries:
        today = {i.notebook for i, _ in out[-1]} if out else set()
        fresh = minutes + install + (reopen if item.loads and not item.fetches else 0)
        fresh = minutes if item.kind == "lesson" else fresh  # a lesson's estimate holds its own runtime
        here = minutes if item.notebook in today else fresh
        if out and sum(m for _, m in out[-1]) + here <= limit:
            out[-1].append((item, here))
        else:
            out.append([(item, fresh)])
    return out


def day_plans(rows=None) -> dict[str, tuple[list[list[tuple[Item, int]]], list[Item]]]:
    """{model: (its days, the items it skips because they do not fit a free T4)}: the lessons and
    exercises (not the optional parts) in course order."""
    every, found = models(), {}
    rows = rows or plan()
    for model, m in every.items():
        runs = [(item, cells[model].minutes) for item, cells in rows
                if item.kind != "part" and cells[model].minutes is not None]
        skipped = [item for item, cells in rows if item.kind != "part" and cells[model].minutes is None]
        found[model] = (days(runs, reopen=math.ceil(m["download_s"] / 60)), skipped)
    return found


# ------------------------------------------------------------------------------------------ the pages

def label(item: Item) -> str:
    from gemmate_lib import fit

    if item.kind == "lesson":
        return f"`{item.notebook}`"
    if item.kind == "part":
        return f"`{item.notebook}`, " + ", ".join(fit.parts_text([n]) for n, _ in item.params) + ": added"
    return f"exercise {item.key}"


def short(item: Item) -> str:
    """An item's name in the day plan: "03" for a lesson, "03-1" for an exercise."""
    return item.notebook[:2] if item.kind == "lesson" else item.key


def totals(rows, model: str, kind: str) -> tuple[int, int]:
    """(minutes of the items of `kind` that fit with `model`, how many do not fit)."""
    mine = [cells[model].minutes for item, cells in rows if item.kind == kind]
    return sum(m for m in mine if m is not None), sum(m is None for m in mine)


def cell_text(item: Item, c: Cell) -> str:
    """A table cell: the minutes (an optional part's: "+N" added), what a notebook leaves out, or "does not
    fit"."""
    if c.minutes is None:
        return "does not fit"
    sign = "+" if item.kind == "part" else ""
    return f"{sign}{c.minutes}" + (f" (without {c.leaves_out})" if c.leaves_out else "")


def total_text(rows, model: str, kind: str) -> str:
    minutes, out = totals(rows, model, kind)
    return f"**{minutes}**" + (f" ({out} do not fit)" if out else "")


def table(rows=None) -> str:
    """The Markdown table: each lesson, optional part and exercise x each model, in T4 minutes."""
    rows = rows or plan()
    head = ("| T4 minutes (projections, not measured on a T4) | steps trained | downloads | "
            + " | ".join(TITLES.values()) + " |")
    lines = [head, "|---|---:|---:|" + "---:|" * len(TITLES)]
    for item, cells in rows:
        lines.append(f"| {label(item)} | {item.steps} | {item.downloads} | "
                     + " | ".join(cell_text(item, cells[m]) for m in TITLES) + " |")
    for kind, name in (("lesson", "the lessons 00-07"), ("exercise", "the exercises")):
        lines.append(f"| **{name}** | | | " + " | ".join(total_text(rows, m, kind) for m in TITLES) + " |")
    return "\n".join(lines)


def day_table(plans=None) -> str:
    """The day plan: one row per day, one column per model, each cell the lessons (03) and exercises (03-1)
    of that day and its minutes."""
    plans = plans or day_plans()
    most = max(len(d) for d, _ in plans.values())
    lines = ["| day | " + " | ".join(TITLES.values()) + " |", "|---|" + "---|" * len(TITLES)]
    for n in range(most):
        cells = []
        for model in TITLES:
            their = plans[model][0]
            if n >= len(their):
                cells.append("")
                continue
            day = their[n]
            minutes = sum(m for _, m in day)
            names = ", ".join(short(i) for i, _ in day)
            over = f", more than the {DAY_MINUTES} min assumed" if minutes > DAY_MINUTES else ""
            cells.append(f"{names} ({minutes} min{over})")
        lines.append(f"| {n + 1} | " + " | ".join(cells) + " |")
    skips = [f"{TITLES[m]} skips what does not fit a free T4: {', '.join(short(i) for i in skipped)}."
             for m, (_, skipped) in plans.items() if skipped]
    return "\n".join(lines + ([""] + skips if skips else []))


def how_line() -> str:
    """One line on how the figures are made, with each model's checkpoint, download and step time."""
    every = models()
    base = every["gemma-2b"]
    rate = base["bytes"] / base["download_s"] / 1e6

    def model(m, title):
        return (f"{title} {m['bytes'] / 1e9:.1f} GB, {m['download_s'] / 60:.1f} min to download, "
                f"{m['step_s']:.1f} s a step in {'fp32' if m['compute'] == 4 else 'fp16'}")

    each = "; ".join(model(every[k], t) for k, t in TITLES.items())
    return ("How the projection is made: each gemma-2b estimate (the README's T4 column, each exercise's "
            "text) is split into its checkpoint downloads, its training (the table's steps, of four examples "
            "each) and the rest; a model keeps the rest and gets its own download and step time from the "
            f"course's planner, at {rate:.0f} MB/s: {each}. A time is for the notebook or the exercise in "
            "one runtime, and a notebook that runs without a part still counts it; \"does not fit\": it "
            "needs more memory than a free T4 runtime has.")


def assumptions() -> str:
    return (f"Assumptions, since Colab publishes neither figure: about {DAY_MINUTES // 60} hours of T4 a day "
            "on a free account, and a runtime that disconnects after some idle minutes. So each day below "
            "runs its notebooks one after another, each with its exercises in the same runtime, and "
            "disconnects each when done; an exercise that falls on a later day than its lesson opens a "
            f"fresh runtime and counts the install ({INSTALL_MINUTES} min) and the download again. A day "
            "that holds one long notebook or exercise alone may need more than the assumed quota. The "
            "optional parts (03's part 2, 05's GGUF export) are not in the days.")


def block() -> str:
    """docs/colab.md's generated block: how, the table, the assumptions, the day plan."""
    rows = plan()
    return "\n\n".join([how_line(), table(rows), assumptions(), day_table(day_plans(rows))])


def readme_line(rows=None) -> str:
    """The README's one line: the lessons' and the exercises' T4 hours per model (of what fits a free T4)."""
    rows = rows or plan()
    lessons = [f"{totals(rows, m, 'lesson')[0] / 60:.1f} h with {title}"
               + (" (what fits a free T4)" if totals(rows, m, "lesson")[1] else "")
               for m, title in TITLES.items()]
    exercises = [f"{totals(rows, m, 'exercise')[0] / 60:.1f}" for m in TITLES]
    return (f"On a free Colab T4 the lessons take about {lessons[0]}, {lessons[1]} and {lessons[2]}, the "
            f"exercises about {', '.join(exercises[:-1])} and {exercises[-1]} h more: projections, not "
            f"measured on a T4 ([a quota plan by day]({ANCHOR})).")


def write() -> None:
    from tools.markers import replace

    DOCS.write_text(replace(DOCS.read_text(), "quota plan", block()))
    README.write_text(replace(README.read_text(), "quota line", readme_line()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true",
                        help="write docs/colab.md's block and the README's line")
    args = parser.parse_args(argv)
    if args.write:
        write()
        print(f"wrote {DOCS.relative_to(ROOT)} (quota plan) and {README.relative_to(ROOT)} (quota line)")
    else:
        print(block() + "\n\n" + readme_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
