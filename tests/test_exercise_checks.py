"""Every exercise's check (00-07, 24 of them) held to what the learner does. For each: the files its printed
solution writes (written here as the solution and the notebook write them: the same writers, names and
shapes) make the check say PASS; a variant that skips the exercise's point (the setting left at the lesson's
value, the module list forgotten, the same dtype twice, ...) makes it say FAIL; and the notebook's own check
cell still gives its verdict after every name the notebook and the solutions bind has been rebound (the
solution of 06-3 rebinds `losses`, 07-2's `val`). Hand-written files, no model: a second each."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from gemmate_lib import exercises, files, run_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """A course folder in tmp_path: exercises' folders under runs/, the lesson's run folder runs/lesson."""
    monkeypatch.setattr(run_folder, "repo_root", lambda: tmp_path)
    monkeypatch.setattr(run_folder, "git_revision", lambda: "test")
    monkeypatch.setenv("GEMMATE_RUN_DIR", str(tmp_path / "runs" / "lesson"))
    return tmp_path / "runs"


def folder(runs: Path, name: str) -> Path:
    path = runs / name
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---- what each solution (and, for reruns, the notebook) writes ----


def manifest(path: Path, notebook: str, **facts):
    run_folder.update_manifest(path, notebook, **facts)  # as the notebook's save cell does


def config03(max_steps=40, lora_r=8, dataset="embedded"):
    """03's manifest entry `config`, as its save cell writes it: config_summary of the run's course_config."""
    from gemmate_lib.config import config_summary, course_config

    return config_summary(course_config(max_steps=max_steps, lora_r=lora_r, dataset=dataset))


def adapter(path: Path, r: int):
    (path / "adapter").mkdir(parents=True, exist_ok=True)
    save_file(
        {"q.lora_A.weight": torch.zeros(r, 16), "q.lora_B.weight": torch.zeros(16, r)},
        str(path / "adapter" / "adapter_model.safetensors"),
    )
    (path / "adapter" / "adapter_config.json").write_text(json.dumps({"r": r}))


def lesson03(path: Path, r=8, eval_loss=2.50, steps=40, authored=4, dataset="embedded", dropped=None):
    adapter(path, r)
    pd.DataFrame({"step": [10, 20, 40], "loss": [3.0, 2.6, 2.4], "eval_loss": [None, 2.9, eval_loss]}).to_csv(
        path / "loss_log.csv", index=False
    )
    prompts = [
        "Quote: Imagination is more",
        "Quote: A Woman is like",
        "Quote: Be yourself;",
        "Quote: So many",
    ]
    pd.DataFrame(
        {
            "prompt": prompts,
            "completion": [" important.\nAuthor: A" if i < authored else " and so on" for i in range(4)],
            "author_line": [i < authored for i in range(4)],
        }
    ).to_csv(path / "generations_after.csv", index=False)
    manifest(path, "03_lora_sft", seed=42, config=config03(steps, r, dataset), dropped_rows=dropped or {})


def masking(path: Path, gap: float):
    pd.DataFrame(
        {
            "setting": ["whole text", "completion only"],
            "held_out_loss_text": [2.5, 2.5 + gap],
            "held_out_loss_completion": [2.35, 2.36],
        }
    ).to_csv(path / "loss_masking.csv", index=False)


def metrics(path: Path, ppl_base, ppl_tuned, fmt_base, fmt_tuned):
    def m(v):
        return {"value": v, "ci95": None}

    files.save_json(
        path / "metrics.json",
        {
            "schema_version": 2,
            "models": {
                "baseline": {"perplexity": m(ppl_base), "format_compliance": m(fmt_base)},
                "fine-tuned": {"perplexity": m(ppl_tuned), "format_compliance": m(fmt_tuned)},
            },
        },
    )


def methods(path: Path, rows: dict, steps=4, rates=None, other_rank=32):
    """06's methods.csv and the manifest line its save cell writes; rows: {key: (trainable, loss, s/step)}."""
    pd.DataFrame(
        [
            {"setting": k, "method": k, "trainable": t, "held_out_loss_text": loss, "seconds_per_step": s}
            for k, (t, loss, s) in rows.items()
        ]
    ).set_index("setting").to_csv(path / "methods.csv")
    manifest(
        path,
        "06_compare_methods",
        methods=list(rows),
        steps=steps,
        batch_size=4,
        other_rank=other_rank,
        rates=rates or {"prompt": 3e-2, "lora_r8": 2e-4},
    )


def temporal(
    path: Path, year, month, constant, n_train=600, tau=1.0, far_years=(2021, 2027), far_ok=0.0
):
    n = 100
    pd.DataFrame(
        {"year_ok": [i < year * n for i in range(n)], "month_ok": [i < month * n for i in range(n)]}
    ).to_csv(path / "temporal_after_val_true.csv", index=False)
    pd.DataFrame({"year_ok": [i < constant * n for i in range(n)], "month_ok": [False] * n}).to_csv(
        path / "temporal_after_val_constant.csv", index=False
    )
    years = [y for y in range(*far_years) for _ in range(10)]
    pd.DataFrame(
        {
            "true_year": years,
            "year_ok": [i % 10 < far_ok * 10 for i in range(len(years))],
            "year_within_1": [False] * len(years),
        }
    ).to_csv(path / "temporal_extrapolation.csv", index=False)
    manifest(path, "07_temporal_encoding", seed=42, n_train=n_train, temporal_scale=tau)


STANDARD = [
    "Quote: Imagination is more",
    "Quote: A Woman is like a tea bag",
    "Quote: Be yourself;",
    "Quote: So many books,",
]


def write(runs: Path, name: str, variant: str | None = None):
    """The files exercise `name`'s solution writes; `variant` names a way of skipping its point."""
    v = variant
    if name == "00-1":
        files.save_json(
            folder(runs, "ex00_1") / "changed.json",
            {"ok": ["model.dtype", "dtype"], "no dtype": [], "more": ["model.dtype", "lora.lora_r"]}.get(
                v, ["model.dtype", "dtype"]
            ),
        )
    elif name == "00-2":
        messages = [
            "learning_rate=5 ... Fix: use 2e-4",
            "batch_size=0 ... Fix: 1 or more",
            "dataset='nowhere.jsonl' does not exist. Fix: a path",
        ]
        files.save_json(folder(runs, "ex00_2") / "messages.json", messages[:2] if v == "two" else messages)
    elif name == "00-3":
        files.save_json(
            folder(runs, "ex00_3") / "load_seconds.json",
            [3.1, 3.2, 3.0] if v == "all cached" else [41.5, 3.2, 3.0],
        )
    elif name == "01-1":
        files.save_json(
            folder(runs, "ex01_1") / "scales_mib.json", {"True": 1.6, "False": 1.6 if v == "same" else 6.3}
        )
    elif name == "01-2":
        fp4 = 4.37 if v == "nf4 twice" else 4.61
        files.save_json(
            folder(runs, "ex01_2") / "held_out_loss.json", {"unquantized": 4.24, "NF4": 4.37, "FP4": fp4}
        )
    elif name == "01-3":
        # forgetting llm_int8_skip_modules: NF4 everywhere; skipping every linear layer: the unquantized model
        mlp = {"no skip": [390.0, 4.37], "skips all": [540.0, 4.24]}.get(v, [455.0, 4.30])
        files.save_json(
            folder(runs, "ex01_3") / "points.json",
            {"unquantized": [540.0, 4.24], "NF4 everywhere": [390.0, 4.37], "NF4 on the MLP only": mlp},
        )
    elif name == "02-1":
        short = [" important than knowledge", " tea bag, you", " everyone else is", " books, so little"]
        long = [s + " and more and more" for s in short]
        tokens = ([40] * 4, [40] * 4) if v == "same limit" else ([10] * 4, [40] * 4)
        if v == "same limit":
            short = long
        files.save_json(
            folder(runs, "ex02_1") / "texts.json",
            {"prompts": STANDARD, "10": short, "80": long, "tokens_10": tokens[0], "tokens_80": tokens[1]},
        )
    elif name == "02-2":
        prompts = (
            STANDARD[:2]
            if v == "standard prompts"
            else ["Quote: The best way to predict the future is", "Quote: Be yourself, everyone"]
        )
        pd.DataFrame(
            {
                "prompt": prompts,
                "completion": [" to create it. The best way", " else is taken"],
                "author_line": [False, False],
            }
        ).to_csv(folder(runs, "ex02_2") / "generations.csv", index=False)
    elif name == "02-3":
        distinct = 1 if v == "greedy" else 5
        files.save_json(
            folder(runs, "ex02_3") / "sampling.json",
            [
                {"prompt": p, "distinct": distinct, "greedy": 0.5, "sampled": 0.5 if v == "greedy" else 0.1}
                for p in STANDARD
            ],
        )
    elif name == "03-1":
        lesson03(folder(runs, "lesson"))
        lesson03(folder(runs, "ex03_1"), r=8 if v == "r unchanged" else 2, eval_loss=2.55)
    elif name == "03-2":
        path = folder(runs, "ex03_2")
        own = v != "default data"
        rows = [{"quote": f"Example quote number {n}.", "author": f"Author {n}"} for n in range(10)]
        rows.append({"quote": "A quote nobody signed.", "author": ""})  # solution 2's file
        (path / "my_quotes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        from tiny import make_tiny_tokenizer

        from gemmate_lib.data import clean_rows

        dropped = clean_rows(rows, make_tiny_tokenizer(), 128)[1]  # section 1's drop report on that file
        lesson03(path, dataset=str(path / "my_quotes.jsonl") if own else "embedded", authored=0,
                 dropped=dropped if own else {"duplicate quote (exact)": 4})
    elif name == "03-3":
        for x, steps, gap in (("a", 10, 0.4), ("b", 10 if v == "steps unchanged" else 30, 0.9)):
            path = folder(runs, f"ex03_3{x}")
            lesson03(path, steps=steps)
            masking(path, gap)
    elif name == "04-1":
        lesson03(lesson := folder(runs, "lesson"), steps=40)
        metrics(lesson, 120.0, 12.0, 0.0, 1.0)
        lesson03(ex := folder(runs, "ex04_1"), steps=40 if v == "lesson's steps" else 20)
        # a rerun at the lesson's steps lands near the lesson's perplexity, on a GPU a little above it
        metrics(ex, 120.0, {"lesson's steps": 12.3, "ties the lesson": 12.0}.get(v, 19.0), 0.0, 0.97)
    elif name == "04-2":
        counts = {"True": [2, 5], "False": [1, 5]} if v != "seen worse" else {"True": [0, 5], "False": [2, 5]}
        files.save_json(folder(runs, "ex04_2") / "own_quotes.json", counts)
    elif name == "04-3":
        files.save_json(
            folder(runs, "ex04_3") / "widths.json",
            {"30": 0.2, "100": 0.2, "300": 0.2} if v == "one size" else {"30": 0.31, "100": 0.17, "300": 0.1},
        )
    elif name == "05-1":
        diffs = {"fp32": 2e-5, "bf16": 0.4}
        files.save_json(folder(runs, "ex05_1") / "merge.json", {"fp32": 2e-5} if v == "one dtype" else diffs)
    elif name == "05-2":
        path = folder(runs, "ex05_2")
        adapter(path, 8)
        said = " Quote: Imagination is more" if v == "same adapter" else " Imagination is more important"
        files.save_json(
            path / "generations.json",
            {"quotes": " Quote: Imagination is more", "reverse": " Einstein", "said": said},
        )
    elif name == "05-3":
        merged_layers = 182 if v == "not merged" else 0
        files.save_json(
            folder(runs, "ex05_3") / "timing.json",
            {"adapter": 9.1, "lora_layers_adapter": 182, "merged": 8.2, "lora_layers_merged": merged_layers},
        )
    elif name == "06-1":
        methods(folder(runs, "lesson"), {"full": (268_000_000, 3.4, 2.0), "lora_r8": (1_400_000, 3.9, 1.0)})
        if v == "steps unchanged":
            methods(
                folder(runs, "ex06_1"), {"full": (268_000_000, 3.39, 2.1), "lora_r8": (1_400_000, 3.89, 1.0)}
            )
        else:
            methods(
                folder(runs, "ex06_1"),
                {"full": (268_000_000, 3.0, 2.1), "lora_r8": (1_400_000, 3.2, 1.1)},
                steps=12,
            )
    elif name == "06-2":
        high = 128 if v != "rank unchanged" else 32
        methods(
            folder(runs, "ex06_2a"),
            {"lora_r8": (1_400_000, 3.9, 1.0), "lora_r32": (350_000, 4.0, 1.0)},
            other_rank=2,
        )
        methods(
            folder(runs, "ex06_2b"),
            {"lora_r8": (1_400_000, 3.9, 1.0), "lora_r32": (1_400_000 * high // 8, 3.6, 1.2)},
            other_rank=high,
        )
    elif name == "06-3":
        for x, times, loss in (("a", 0.1, 4.2), ("b", 1, 3.9), ("c", 10, 3.5)):
            times = 1 if v == "rates unchanged" else times
            methods(
                folder(runs, f"ex06_3{x}"),
                {"prompt": (9_000, loss + 1, 1.0), "lora_r8": (1_400_000, loss, 1.0)},
                rates={"prompt": 3e-2 * times, "lora_r8": 2e-4 * times},
            )
    elif name == "07-1":
        temporal(folder(runs, "lesson"), 0.95, 0.30, 0.07)
        tau = 1.0 if v == "tau unchanged" else 0.25
        # tau left at 1.0: month+year accuracy as the lesson's, on a GPU a little lower or higher by chance
        temporal(folder(runs, "ex07_1"), 0.93, 0.28 if v == "tau unchanged" else 0.12, 0.08, tau=tau)
    elif name == "07-2":
        temporal(folder(runs, "lesson"), 0.95, 0.30, 0.07)
        n = (600, 600) if v == "n_train unchanged" else (150, 300)
        temporal(folder(runs, "ex07_2a"), 0.60, 0.1, 0.07, n_train=n[0])
        temporal(folder(runs, "ex07_2b"), 0.85, 0.2, 0.07, n_train=n[1])
    elif name == "07-3":
        first = 2021 if v == "last_year unchanged" else 2024
        temporal(folder(runs, "ex07_3"), 0.95, 0.3, 0.07, far_years=(first, 2027), far_ok=0.0)
    else:
        raise KeyError(name)


SKIPPED = {  # exercise: the variants that skip its point (or do it wrong)
    "00-1": "no dtype",
    "00-2": "two",
    "00-3": "all cached",
    "01-1": "same",
    "01-2": "nf4 twice",
    "01-3": ("no skip", "skips all"),
    "02-1": "same limit",
    "02-2": "standard prompts",
    "02-3": "greedy",
    "03-1": "r unchanged",
    "03-2": "default data",
    "03-3": "steps unchanged",
    "04-1": ("lesson's steps", "ties the lesson"),
    "04-2": "seen worse",
    "04-3": "one size",
    "05-1": "one dtype",
    "05-2": "same adapter",
    "05-3": "not merged",
    "06-1": "steps unchanged",
    "06-2": "rank unchanged",
    "06-3": "rates unchanged",
    "07-1": "tau unchanged",
    "07-2": "n_train unchanged",
    "07-3": "last_year unchanged",
}
NAMES = sorted(exercises.EXERCISES)


def test_every_exercise_of_the_course_has_a_check_and_a_test():
    assert len(NAMES) == 24 and set(NAMES) == set(SKIPPED)


@pytest.mark.parametrize("name", NAMES)
def test_the_solutions_files_pass(runs, name, capsys):
    write(runs, name)
    line = exercises.exercise_check(name)
    assert line.startswith(f"exercise {name}: PASS"), line


VARIANTS = [(name, v) for name, vs in SKIPPED.items() for v in ((vs,) if isinstance(vs, str) else vs)]


@pytest.mark.parametrize("name, variant", VARIANTS)
def test_skipping_the_point_fails(runs, name, variant):
    write(runs, name, variant)
    line = exercises.exercise_check(name)
    assert line.startswith(f"exercise {name}: FAIL"), line
    assert "could not be read" not in line  # judged on what the run shows, not stopped by its shape


@pytest.mark.parametrize("name", NAMES)
def test_results_in_another_shape_fail_and_never_stop_the_notebook(runs, name):
    """05-1 stopped with a ValueError when one dtype was used twice: a check gives a verdict."""
    write(runs, name)
    for path in (runs / f for f in exercises.EXERCISES[name].folders):
        for result in path.rglob("*.*"):
            result.write_text("[]")  # valid JSON, and a CSV with one column named "[]"
    line = exercises.exercise_check(name)
    assert line.startswith(f"exercise {name}: FAIL"), line


@pytest.mark.parametrize("name", NAMES)
def test_not_run_yet_before_the_exercise(runs, name):
    assert exercises.exercise_check(name).startswith(f"exercise {name}: NOT RUN YET")


# ---- the notebook's check cells ----


def notebook_cells(stem_prefix: str) -> list[dict]:
    path = next((ROOT / "notebooks").glob(f"{stem_prefix}_*.ipynb"))
    return json.loads(path.read_text())["cells"]


def check_cells() -> dict[str, str]:
    """{exercise: the source of the code cell that checks it}, from the eight notebooks."""
    found = {}
    for nb in range(8):
        for cell in notebook_cells(f"{nb:02d}"):
            source = "".join(cell["source"])
            for name in re.findall(r'exercise_check\("(\d\d-\d)"\)', source):
                assert cell["cell_type"] == "code" and name.startswith(f"{nb:02d}-")
                found[name] = source
    return found


def bound_names(prefix: str) -> set[str]:
    """Every name the notebook's code cells and its solutions' code bind (assignments, defs, imports)."""
    sources = []
    for cell in notebook_cells(prefix):
        text = "".join(cell["source"])
        if cell["cell_type"] == "code":
            sources.append(
                "\n".join(line for line in text.splitlines() if not line.lstrip().startswith(("!", "%")))
            )
        sources += re.findall(r"```python\n(.*?)```", text, re.S)
    names = set()
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


class Rebound:
    """What a solution left behind under a name: anything but what a check may expect."""

    def __getattr__(self, name):
        raise TypeError("a check used a name from the notebook")

    def __call__(self, *args, **kwargs):
        raise TypeError("a check used a name from the notebook")


def test_every_exercise_has_one_check_cell_named_as_its_exercise():
    cells = check_cells()
    assert sorted(cells) == NAMES
    for name, source in cells.items():
        assert source.startswith(f"# exercise {name}: check"), source.splitlines()[0]


@pytest.mark.parametrize("name", NAMES)
def test_the_check_cell_gives_its_verdict_after_the_solutions_rebound_every_name(runs, name, capsys):
    """06-3's solution rebinds `losses` and 07-2's `val`: both checks stopped with a TypeError."""
    write(runs, name)
    namespace = {n: Rebound() for n in bound_names(name[:2])}
    namespace.pop("__builtins__", None)
    assert {"losses", "val", "json", "pd", "run_folder"} & set(namespace)  # the names that broke checks
    exec(compile(check_cells()[name], f"check {name}", "exec"), namespace)
    assert capsys.readouterr().out.startswith(f"exercise {name}: PASS")
