"""The check cell that ends every exercise (00-07): it says PASS, FAIL or NOT RUN YET against the exercise's
expectation, from the exercise's own run folder, so a learner knows whether what they did matched.

A check reads only files: what the exercise's run wrote (its manifest, its tables) and, where it compares, the
lesson's run folder. It reads no name from the notebook, so a solution that reuses a name (`losses`, `val`)
cannot break it, and it judges what the learner did, not what the model does anyway: a rerun that leaves the
exercise's setting at the lesson's value (the same steps, the same `n_train`, no skipped modules) says FAIL.

A check never stops the notebook: the lesson runs top to bottom before any exercise is tried, and an exercise
not tried yet is not a failure. The self-check (gemmate_lib.selfcheck) is the cell that stops a notebook."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def check(
    name: str, expectation: str, ran: bool, passed: Callable[[], bool] | bool, how_to_run: str = ""
) -> str:
    """Print and return one verdict line for exercise `name`:
    - "NOT RUN YET" when `ran` is False (e.g. its run folder has no results), with `how_to_run`;
    - else "PASS" or "FAIL" by `passed` (a bool, or a callable evaluated only once the exercise ran, so it may
      read files the run writes), followed by the expectation it was judged against. The callable may return
      `(ok, found)`: `found` (what the run shows) follows the verdict. A callable that raises (a file the
      learner wrote in another shape) gives FAIL with the reason, never an error."""
    if not ran:
        line = f"exercise {name}: NOT RUN YET" + (f" ({how_to_run})" if how_to_run else "")
    else:
        try:
            result = passed() if callable(passed) else passed
            ok, found = result if isinstance(result, tuple) else (result, "")
        except Exception as err:  # noqa: BLE001 - a check gives a verdict, it never stops the notebook
            ok, found = False, f"the results could not be read ({type(err).__name__}: {err})"
        line = f"exercise {name}: {'PASS' if ok else 'FAIL'}, expected: {expectation}"
        line += f"; found: {found}" if found else ""
    print(line)
    return line


def has_results(run_dir: str | Path, *names: str) -> bool:
    """True when every file `names` exists in `run_dir` (the exercise's run folder): the exercise ran."""
    folder = Path(run_dir)
    return folder.is_dir() and all((folder / name).exists() for name in names)


# ---- reading a run folder ----


def read_json(folder: Path, name: str):
    return json.loads((Path(folder) / name).read_text())


def read_csv(folder: Path, name: str, **kwargs):
    import pandas as pd

    return pd.read_csv(Path(folder) / name, **kwargs)


def facts(folder: Path, notebook: str) -> dict:
    """What `notebook` recorded in the folder's manifest.json (its parameters, results); {} if nothing."""
    path = Path(folder) / "manifest.json"
    return json.loads(path.read_text()).get("notebooks", {}).get(notebook, {}) if path.exists() else {}


def trained_steps(folder: Path) -> int | None:
    """03's max_steps for the run in `folder`, from its manifest."""
    return facts(folder, "03_lora_sft").get("config", {}).get("train", {}).get("max_steps")


# ---- the 24 exercises: what each run must show ----


@dataclass(frozen=True)
class Exercise:
    expectation: str  # what the run must show, as the check prints it
    folders: tuple[str, ...]  # the exercise's run folders, under runs/
    results: tuple[str, ...]  # files each of them holds once the exercise ran
    passed: Callable  # (exercise folders, lesson folder) -> (ok, what it found)
    how_to_run: str
    lesson: tuple[str, ...] = ()  # files the lesson's run folder must hold, when the check compares with it


EXERCISES: dict[str, Exercise] = {}


def exercise(name: str, results: tuple[str, ...] | str, how_to_run: str, expectation: str,
             folders: tuple[str, ...] = (), lesson: tuple[str, ...] = ()) -> Callable:
    """Register the function it decorates as exercise `name`'s `passed(ex, lesson)`: given the exercise's run
    folders (`folders` under runs/, by default the one of its name: ex03_2 for "03-2") in that order and the
    lesson's run folder, it returns (ok, what it found). Where `results` is one JSON file, not a tuple, the
    function is given that file's content instead."""

    def register(passed: Callable) -> Callable:
        own = folders or ("ex" + name.replace("-", "_"),)
        one = isinstance(results, str)
        check = (lambda ex, _: passed(read_json(ex[0], results))) if one else passed
        files = (results,) if one else results
        EXERCISES[name] = Exercise(expectation, own, files, check, how_to_run, lesson)
        return passed

    return register


def _r(x: float) -> float:
    return round(float(x), 3)


@exercise("00-1", "changed.json", "run solution 1 above",
          "only the dtype settings change: model.dtype, and the compute dtype unless it was fp32 already")
def _00_1(names):
    changed = set(names)
    return {"model.dtype"} <= changed <= {"model.dtype", "dtype"}, f"changed {sorted(changed)}"


@exercise("00-2", "messages.json", "run solution 2 above",
          "three ParameterErrors, each naming its parameter and a Fix:")
def _00_2(messages):
    wanted = ("learning_rate", "batch_size", "dataset")
    ok = len(messages) == 3 and all(name in m and "Fix:" in m for name, m in zip(wanted, messages))
    return ok, f"{len(messages)} messages"


@exercise("00-3", "load_seconds.json", "run solution 3 above",
          "the first load is the slowest of the three")
def _00_3(seconds):
    return len(seconds) == 3 and seconds[0] > max(seconds[1:]), f"loads of {[_r(s) for s in seconds]} s"


@exercise("01-1", "scales_mib.json", "run solution 1 above",
          "without double quantization the scales take more memory (about 3 bytes more per block of 64)")
def _01_1(scales):  # {"True": MiB with double quantization, "False": without}
    found = f"{_r(scales['True'])} MiB double-quantized, {_r(scales['False'])} without"
    return scales["False"] > scales["True"], found


@exercise("01-2", "held_out_loss.json", "run solutions 1 and 2 above",
          "NF4 keeps the held-out loss closer to the unquantized model's than FP4")
def _01_2(loss):
    ok = abs(loss["NF4"] - loss["unquantized"]) < abs(loss["FP4"] - loss["unquantized"])
    return ok, ", ".join(f"{k} {_r(v)}" for k, v in loss.items())


@exercise("01-3", "points.json", "run solutions 1 and 3 above",
          "the MLP-only model lies between the other two on both axes, strictly in memory")
def _01_3(points):  # {variant: [MiB, held-out loss]}
    full, everywhere, mlp = points["unquantized"], points["NF4 everywhere"], points["NF4 on the MLP only"]
    # strictly between in memory: skipping no module (or every one) lands exactly on an end
    memory = min(full[0], everywhere[0]) < mlp[0] < max(full[0], everywhere[0])
    loss = min(full[1], everywhere[1]) <= mlp[1] <= max(full[1], everywhere[1])
    return memory and loss, "; ".join(f"{k}: {_r(v[0])} MiB, loss {_r(v[1])}" for k, v in points.items())


@exercise("02-1", "texts.json", "run solution 1 above",
          "texts of at most 10 and of more new tokens, each 10-token text the start of the longer one")
def _02_1(runs):  # prompts, each limit's completions and new-token counts
    short, long = runs["10"], runs["80"]
    ten, eighty = max(runs["tokens_10"]), max(runs["tokens_80"])  # really 10 and 80 new tokens
    starts = sum(b.startswith(a) for a, b in zip(short, long))
    ok = len(short) == len(long) == len(runs["prompts"]) > 0 and ten <= 10 < eighty and starts == len(short)
    return ok, (f"at most {ten} and {eighty} new tokens; "
                f"{starts} of {len(short)} short texts start the long one")


@exercise("02-2", ("generations.csv",), "run solution 2 above",
          "prompts of your own in the Quote: format; the base model writes an Author: line rarely or "
          "never (at most one of two)")
def _02_2(ex, lesson):
    from gemmate_lib.text_generation import STANDARD_PROMPTS, has_author_line

    rows = read_csv(ex[0], "generations.csv", keep_default_na=False)
    own = [p for p in rows.prompt if p.startswith("Quote:") and p not in STANDARD_PROMPTS]
    authored = sum(has_author_line(p + c) for p, c in zip(rows.prompt, rows.completion))
    ok = len(rows) >= 2 and len(own) == len(rows) and authored <= max(1, len(rows) // 4)
    return (
        ok,
        f"{len(own)} of {len(rows)} prompts your own in the Quote: format; {authored} got an Author: line",
    )


@exercise("02-3", "sampling.json", "run solution 3 above",
          "4 or 5 distinct continuations per prompt, and fewer repeated phrases than greedy on most prompts")
def _02_3(results):
    fewer_loops = sum(r["sampled"] < r["greedy"] for r in results)
    ok = bool(results) and all(r["distinct"] >= 4 for r in results) and fewer_loops > len(results) / 2
    return ok, (
        f"distinct continuations {[r['distinct'] for r in results]}; "
        f"fewer repeats than greedy on {fewer_loops} of {len(results)} prompts"
    )


def _adapter_weights(folder):
    import math

    from safetensors import safe_open

    with safe_open(str(Path(folder) / "adapter" / "adapter_model.safetensors"), "pt") as weights:
        return sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())


@exercise("03-1", ("adapter/adapter_model.safetensors", "loss_log.csv", "generations_after.csv"),
          'lora_r = 2, compare = False, run_dir = "runs/ex03_1", after the lesson\'s own run',
          "a quarter of the lesson's adapter weights, the final held-out loss within 0.15 of the "
          "lesson's, and an Author: line for at least 3 of the 4 prompts",
          lesson=("adapter/adapter_model.safetensors", "loss_log.csv"))
def _03_1(ex, lesson):
    from gemmate_lib.text_generation import has_author_line

    mine, theirs = _adapter_weights(ex[0]), _adapter_weights(lesson)
    logs = [read_csv(f, "loss_log.csv").dropna(subset=["eval_loss"]) for f in (ex[0], lesson)]
    gap = abs(logs[0].eval_loss.iloc[-1] - logs[1].eval_loss.iloc[-1])  # the final held-out losses
    after = read_csv(ex[0], "generations_after.csv", keep_default_na=False)
    authored = sum(has_author_line(p + c) for p, c in zip(after.prompt, after.completion))
    return (
        4 * mine == theirs and gap < 0.15 and authored >= 3,
        f"{mine:,} adapter weights (the lesson's {theirs:,}), held-out loss {_r(gap)} apart, "
        f"{authored} Author: lines",
    )


@exercise("03-2", ("manifest.json", "adapter"), 'dataset = your file, run_dir = "runs/ex03_2"',
          "a run on your own file, whose section 1 dropped the row with the empty author")
def _03_2(ex, lesson):
    from gemmate_lib.config import EMBEDDED, HUB_DATASET

    run = facts(ex[0], "03_lora_sft")
    dataset = run["config"]["data"]["dataset"]
    dropped = run.get("dropped_rows") or {}
    ok = dataset not in (EMBEDDED, HUB_DATASET) and any("empty author" in reason for reason in dropped)
    return ok, f"dataset {dataset!r}; dropped {dict(dropped) or 'nothing'}"


@exercise("03-3", ("manifest.json", "loss_masking.csv"), "both runs of exercise 3, into ex03_3a and ex03_3b",
          "more steps in ex03_3b than in ex03_3a, and section 6's whole-text gap larger after them",
          folders=("ex03_3a", "ex03_3b"))
def _03_3(ex, lesson):
    steps = [trained_steps(f) for f in ex]
    losses = [read_csv(f, "loss_masking.csv", index_col="setting").held_out_loss_text for f in ex]
    gaps = [loss.iloc[1] - loss.iloc[0] for loss in losses]  # completion only, less the whole text
    ok = None not in steps and steps[0] < steps[1] and gaps[1] > gaps[0]
    return ok, f"steps {steps}, whole-text gaps {[_r(g) for g in gaps]}"


@exercise("04-1", ("manifest.json", "metrics.json"),
          'run 03, then this notebook, with run_dir = "runs/ex04_1" and max_steps = 20 in 03',
          "03 trained fewer steps than the lesson's; perplexity strictly between the baseline and the "
          "lesson's run, format compliance above the baseline",
          lesson=("manifest.json", "metrics.json"))
def _04_1(ex, lesson):
    short, full = (read_json(f, "metrics.json")["models"] for f in (ex[0], lesson))
    steps, lesson_steps = trained_steps(ex[0]), trained_steps(lesson)

    def value(models, model="fine-tuned", metric="perplexity"):
        return models[model][metric]["value"]

    fmt = "format_compliance"
    ok = (
        None not in (steps, lesson_steps) and steps < lesson_steps
        and value(full) < value(short) < value(full, "baseline")  # perplexity strictly between
        and value(short, metric=fmt) > value(full, "baseline", fmt)
    )
    return ok, (
        f"03 trained {steps} steps (the lesson {lesson_steps}); perplexity baseline "
        f"{_r(value(full, 'baseline'))}, this run {_r(value(short))}, lesson {_r(value(full))}; format "
        f"{_r(value(short, metric=fmt))} against the baseline's {_r(value(full, 'baseline', fmt))}"
    )


@exercise("04-2", "own_quotes.json", "run solution 2 on a .jsonl of your quotes",
          "fewer than half of the authors right; authors seen in training named right at least as often")
def _04_2(counts):  # {"True": [right, rows], "False": ...}: author in training?
    right, rows = (sum(c[i] for c in counts.values()) for i in (0, 1))
    share = {seen: c[0] / c[1] for seen, c in counts.items() if c[1]}
    ok = rows > 0 and right < rows / 2 and share.get("True", 0) >= share.get("False", 0)
    return ok, f"{right} of {rows} right; by author in training: {counts}"


@exercise("04-3", "widths.json", "run solution 3",
          "ten times the quotes narrow the interval about threefold (one over the square root of the size)")
def _04_3(widths):
    ratio = widths["30"] / widths["300"]
    return 2 <= ratio <= 5, f"widths {widths}, {_r(ratio)} times narrower"  # sqrt(10) = 3.2


COARSE = {"fp32": 0, "fp16": 1, "bf16": 2}  # significant bits 24, 11, 8: coarser to the right


@exercise("05-1", "merge.json", "run solution 1",
          "two dtypes: the coarser one's merge differs more; against fp32, past the fp32 tolerance")
def _05_1(diffs):  # {dtype: largest |logit difference|}
    if len(diffs) != 2 or not set(diffs) <= set(COARSE):
        return False, f"{sorted(diffs)}: two different dtypes of {sorted(COARSE)} are needed"
    coarse, fine = sorted(diffs, key=COARSE.get, reverse=True)
    return diffs[coarse] > diffs[fine] and (fine != "fp32" or diffs[coarse] > 5e-3), str(diffs)


@exercise("05-2", ("adapter/adapter_config.json", "generations.json"), "run solution 2",
          "three adapters on one base, three different continuations")
def _05_2(ex, lesson):
    written = read_json(ex[0], "generations.json")  # {adapter: its continuation}
    return (
        len(written) == 3 and len(set(written.values())) == 3,
        f"{len(set(written.values()))} different continuations from adapters {sorted(written)}",
    )


@exercise("05-3", "timing.json", "run solution 3",
          "the merged model (no LoRA layers left) generates faster than the adapter on its base")
def _05_3(timing):
    # what was timed: the adapter's LoRA layers, then none once merged
    merged = timing["lora_layers_adapter"] > 0 and timing["lora_layers_merged"] == 0
    return merged and timing["merged"] < timing["adapter"], str(timing)


def _method_table(folder, column="held_out_loss_text"):
    return read_csv(folder, "methods.csv", index_col="method")[column]


@exercise("06-1", ("manifest.json", "methods.csv"),
          'methods = ["full", "lora_r8"], steps = 12, run_dir = "runs/ex06_1", then run the notebook',
          "more steps than the lesson's; seconds per step within 1.5x of the lesson's, and every "
          "held-out loss below its 4-step value",
          lesson=("manifest.json", "methods.csv"))
def _06_1(ex, lesson):
    short, longer = _method_table(lesson), _method_table(ex[0])
    speed = _method_table(ex[0], "seconds_per_step") / _method_table(lesson, "seconds_per_step")
    steps = facts(ex[0], "06_compare_methods").get("steps"), facts(lesson, "06_compare_methods").get("steps")
    both = [k for k in longer.index if k in short.index]
    ok = (
        None not in steps
        and steps[0] > steps[1]
        and bool(both)
        and all(longer[k] < short[k] and 1 / 1.5 <= speed[k] <= 1.5 for k in both)
    )
    each = (f"{k}: loss {_r(short[k])} -> {_r(longer[k])}, {_r(speed[k])}x the time per step" for k in both)
    return ok, f"{steps[0]} steps (the lesson {steps[1]}); " + ", ".join(each)


@exercise("06-2", ("methods.csv",), 'other_rank = 2 into "runs/ex06_2a", then 128 into "runs/ex06_2b"',
          "trainable weights scale with the rank, and the loss falls as the rank rises (2, 8, 128)",
          folders=("ex06_2a", "ex06_2b"))
def _06_2(ex, lesson):
    low, high = (_method_table(f, "trainable") for f in ex)  # "lora_r32" is the other rank: 2, then 128
    loss_low, loss_high = _method_table(ex[0]), _method_table(ex[1])
    ok = (
        low["lora_r32"] * 4 == low["lora_r8"]
        and high["lora_r32"] == 16 * high["lora_r8"]
        and loss_low["lora_r32"] > loss_low["lora_r8"] > loss_high["lora_r32"]
    )
    return ok, (
        f"trainable {low['lora_r32']:,} / {low['lora_r8']:,} / {high['lora_r32']:,}; held-out loss "
        f"{_r(loss_low['lora_r32'])} / {_r(loss_low['lora_r8'])} / {_r(loss_high['lora_r32'])}"
    )


@exercise("06-3", ("manifest.json", "methods.csv"), 'the three runs into "runs/ex06_3a", "b" and "c"',
          "rates rising from run a to c; both held-out losses lower at ten times the default rate than "
          "at a tenth of it", folders=("ex06_3a", "ex06_3b", "ex06_3c"))
def _06_3(ex, lesson):
    rates = [facts(f, "06_compare_methods").get("rates", {}) for f in ex]
    by_rate = [_method_table(f) for f in ex]
    keys = ("prompt", "lora_r8")
    rising = all(k in r for r in rates for k in keys) and all(
        rates[0][k] < rates[1][k] < rates[2][k] for k in keys
    )
    ok = rising and all(by_rate[0][k] > by_rate[2][k] for k in keys)
    return ok, "; ".join(
        f"{k}: rates {[r.get(k) for r in rates]}, losses {[_r(b[k]) for b in by_rate]}" for k in keys
    )


TRUE, CONSTANT = "temporal_after_val_true.csv", "temporal_after_val_constant.csv"


def _val(folder, name, column="year_ok"):
    return read_csv(folder, name)[column].mean()


@exercise("07-1", ("manifest.json", TRUE, CONSTANT),
          'temporal_scale = 0.25, run_dir = "runs/ex07_1", then run the notebook',
          "a smaller tau than the lesson's; year accuracy within 0.1 of the lesson's, month+year lower, "
          "the constant timestamp at most 0.15", lesson=("manifest.json", TRUE))
def _07_1(ex, lesson):
    tau = [facts(f, "07_temporal_encoding").get("temporal_scale") for f in (ex[0], lesson)]
    year, month = ([_val(f, TRUE, column) for f in (ex[0], lesson)] for column in ("year_ok", "month_ok"))
    ok = (
        None not in tau
        and tau[0] < tau[1]
        and year[0] >= year[1] - 0.1
        and month[0] < month[1]
        and _val(ex[0], CONSTANT) <= 0.15
    )
    return ok, (
        f"tau {tau[0]} (the lesson {tau[1]}); year {_r(year[0])} (lesson {_r(year[1])}), month+year "
        f"{_r(month[0])} (lesson {_r(month[1])}), constant {_r(_val(ex[0], CONSTANT))}"
    )


@exercise("07-2", ("manifest.json", TRUE, CONSTANT),
          'n_train = 150 into "runs/ex07_2a", then 300 into "runs/ex07_2b"',
          "fewer notes (150 < 300 < the lesson's), no better true-timestamp accuracy; constant near chance",
          folders=("ex07_2a", "ex07_2b"), lesson=("manifest.json", TRUE))
def _07_2(ex, lesson):
    notes = [facts(f, "07_temporal_encoding").get("n_train") for f in (*ex, lesson)]
    year = [_val(f, TRUE) for f in (*ex, lesson)]  # 150, 300, then the lesson's notes
    ok = (
        None not in notes
        and notes[0] < notes[1] < notes[2]
        and year[0] <= year[1] <= year[2]
        and all(_val(f, CONSTANT) <= 0.15 for f in ex)
    )
    return ok, f"notes {notes}, true-timestamp year accuracy {[_r(y) for y in year]}"


@exercise("07-3", ("temporal_extrapolation.csv",),
          'last_year = 2023, run_dir = "runs/ex07_3", then run the notebook',
          "extrapolation from 2024 (last_year = 2023), and exact years 2024 to 2026 at most 0.1 right")
def _07_3(ex, lesson):
    far = read_csv(ex[0], "temporal_extrapolation.csv")
    first = int(far.true_year.min())  # last_year + 1
    exact = far[far.true_year >= 2024].year_ok.mean()
    found = f"extrapolation from {first} (last_year {first - 1}); 2024-2026 exact {_r(exact)}"
    return first == 2024 and exact <= 0.1, found


def exercise_check(name: str) -> str:
    """The check cell of exercise `name` ("03-2"): find its run folders (runs/ex03_2; on Drive in Colab)
    and the lesson's run folder, then print PASS, FAIL or NOT RUN YET with what the run shows."""
    from gemmate_lib import run_folder

    spec = EXERCISES[name]
    ex = [run_folder.get_run_dir(f"runs/{folder}", create=False) for folder in spec.folders]
    lesson = run_folder.get_run_dir(create=False)  # the lesson's run folder (the default one)
    ran = all(has_results(f, *spec.results) for f in ex)
    if spec.lesson:
        ran = ran and lesson not in ex and has_results(lesson, *spec.lesson)
    return check(name, spec.expectation, ran, lambda: spec.passed(ex, lesson), spec.how_to_run)
