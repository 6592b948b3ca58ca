"""The exercises of notebooks 00-07, 28 of them: what each one's run must show (its check, registered with
gemmate_lib.exercises.judging's `exercise` decorator, which also says how a check judges), and
`exercise_check`, the call of every exercise's check cell. Thresholds marked `# calibrate` are the margins
`make exercises` reports (docs/exercises.md)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from gemmate_lib.exercises.judging import (
    Exercise,
    InRuns,
    exercise_spec,
    facts,
    judge_exercise,
    less,
    more,
    read_csv,
    read_json,
    rounded,
    shaped,
    trained_steps,
)

EXERCISES: dict[str, Exercise] = {}  # "03-2" -> its check, registered below by `exercise`


def exercise(name: str, results: tuple[str, ...] | str, how_to_run: str, expectation: str,
             folders: tuple[str, ...] = (), lesson: tuple[str, ...] = (),
             parameters: tuple[tuple[str, dict], ...] = ()) -> Callable:
    """Register the function it decorates as exercise `name`'s `passed(ex, lesson)` (exercise_spec says what
    it is given and returns)."""

    def register(passed: Callable) -> Callable:
        EXERCISES[name] = exercise_spec(name, passed, results, how_to_run, expectation, folders, lesson,
                                        parameters)
        return passed

    return register


# ---- exercise 00-3's helper ----


def model_on_disk(model_name: str) -> bool:
    """True when `model_name`'s weights are on this machine already, so a load reads them from disk instead of
    fetching them: a local folder; the embedded model once converted (00, section 5); a Hub model whose weight
    files are all in the Hugging Face cache (a fresh Colab runtime has none: its first load downloads them).
    Exercise 00-3 records it beside each load's time."""
    from gemmate_lib.config import EMBEDDED

    if model_name == EMBEDDED:
        from gemmate_lib.models import cache_dir

        return (cache_dir() / "gemma-3-270m" / "model.safetensors").is_file()
    if Path(model_name).is_dir():
        return True
    from huggingface_hub import try_to_load_from_cache

    def cached(filename):
        found = try_to_load_from_cache(model_name, filename)
        return found if isinstance(found, str) else None

    index = cached("model.safetensors.index.json")
    if index:
        shards = set(json.loads(Path(index).read_text()).get("weight_map", {}).values())
        return bool(shards) and all(cached(shard) for shard in shards)
    return cached("model.safetensors") is not None


# ---- the 28 exercises: what each run must show ----


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


WARM_SPREAD = 2.0  # calibrate: the later two loads (files on disk, code imported) at most this ratio apart
MODEL_CLASSES = ("ForCausalLM", "ForConditionalGeneration")  # what load_model returns; a tokenizer is none


@exercise("00-3", "load_seconds.json", "run solution 3 above",
          "three loads of the model (not its tokenizer), each recorded with whether the weights were on disk "
          "before it; the later two (on disk) close together; a load that had to fetch them (a fresh "
          "runtime's first) slower than both")
def _00_3(loads):  # per load: {"seconds", "on_disk", "checked_at", "started_at", "loaded"}
    seconds = [float(load["seconds"]) for load in loads]
    on_disk = [bool(load["on_disk"]) for load in loads]
    loaded = [str(load["loaded"]) for load in loads]  # the class of what was timed
    # when the disk was looked at: after the load started, the answer says nothing about that load (it is on
    # disk by then, always)
    late = [i for i, load in enumerate(loads, 1) if float(load["checked_at"]) > float(load["started_at"])]
    fetched = [s for s, disk in zip(seconds, on_disk) if not disk]
    found = "; ".join(f"load {i}: {s:.1f} s ({'on disk' if d else 'fetched'})"
                      for i, (s, d) in enumerate(zip(seconds, on_disk), 1))
    if len(loads) != 3 or not all(on_disk[1:]):
        return False, found + " (three loads are needed, the later two with the files on disk)"
    if not all(name.endswith(MODEL_CLASSES) for name in loaded):
        return False, found + f" (timed {sorted(set(loaded))}: the model's load is the one to time)"
    if late:
        return False, found + (f" (load {late[0]}'s on-disk state was read after the load started: read it "
                               "before, when it can still be False)")
    warm = seconds[1:]
    margins = [less(max(warm) / max(min(warm), 1e-9), WARM_SPREAD, "x", "later loads' times apart",
                    strict=False)]
    if fetched:
        margins.append(more(fetched[0] / max(max(warm), 1e-9), 1.0, "x",
                            "the fetching load over the slowest later one"))
    else:
        found += " (the files were on disk already: the one-off cost was paid earlier in this runtime)"
    return True, found, margins


@exercise("01-1", "scales_mib.json", "run solution 1 above",
          "without double quantization the scales take more memory (about 3 bytes more per block of 64)")
def _01_1(scales):  # {"True": MiB with double quantization, "False": without}
    found = f"{rounded(scales['True'])} MiB double-quantized, {rounded(scales['False'])} without"
    return True, found, [more(scales["False"] - scales["True"], 0, "MiB", "scales' growth")]


@exercise("01-2", "held_out_loss.json", "run solutions 1 and 2 above",
          "NF4 keeps the held-out loss closer to the unquantized model's than FP4")
def _01_2(loss):
    gap = abs(loss["FP4"] - loss["unquantized"]) - abs(loss["NF4"] - loss["unquantized"])
    return True, ", ".join(f"{k} {rounded(v)}" for k, v in loss.items()), [
        more(gap, 0, "nats", "FP4's loss change less NF4's")]


MOST_SAVED = 0.5  # calibrate: the MLP-only model keeps more than this share of NF4's memory saving


@exercise("01-3", "points.json", "run solutions 1 and 3 above",
          "the MLP-only model lies between the other two on both axes, strictly in memory, and keeps most of "
          "NF4's memory saving (the MLP holds most of the linear weights)")
def _01_3(points):  # {variant: [MiB, held-out loss]}
    full, everywhere, mlp = points["unquantized"], points["NF4 everywhere"], points["NF4 on the MLP only"]
    # strictly between in memory: skipping no module (or every one) lands exactly on an end
    memory = min(mlp[0] - min(full[0], everywhere[0]), max(full[0], everywhere[0]) - mlp[0])
    loss = min(mlp[1] - min(full[1], everywhere[1]), max(full[1], everywhere[1]) - mlp[1])
    # skipping the MLP instead (NF4 on attention only) also lies between, but keeps the smaller share
    kept = (full[0] - mlp[0]) / max(full[0] - everywhere[0], 1e-9)
    return True, "; ".join(f"{k}: {rounded(v[0])} MiB, loss {rounded(v[1])}" for k, v in points.items()), [
        more(memory, 0, "MiB", "distance in memory to the nearer end"),
        more(kept, MOST_SAVED, "share", "share of NF4's memory saving kept"),
        more(loss, 0, "nats", "distance in loss to the nearer end", strict=False)]


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
          "two or more prompts of your own in the Quote: format, without an Author: line of their own, "
          "generated as the lesson generates; the Author: lines the base model writes are what it does, "
          "reported, not judged")
def _02_2(ex, lesson):
    from gemmate_lib.text_generation import STANDARD_PROMPTS, has_author_line

    rows = read_csv(ex[0], "generations.csv", keep_default_na=False)
    prompts, completions = rows["prompt"].astype(str), rows["completion"].astype(str)
    # a prompt that ends in "Author:" already asks for the name: the model would only complete the line
    own = [p for p in prompts if p.startswith("Quote:") and p not in STANDARD_PROMPTS and "Author:" not in p]
    authored = [has_author_line(p + c) for p, c in zip(prompts, completions)]
    as_generated = [str(a) == str(b) for a, b in zip(authored, rows["author_line"])]  # generate()'s own table
    ok = len(rows) >= 2 and len(own) == len(rows) and all(as_generated)
    return (
        ok,
        f"{len(own)} of {len(rows)} prompts your own in the Quote: format without an Author: line; "
        f"{sum(authored)} got an Author: line",
    )


LOOPING = 0.2  # calibrate: a greedy text with this share of its 4-word runs repeated counts as looping


@exercise("02-3", "sampling.json", "run solution 3 above",
          "two or more different continuations for every prompt (sampling is on), and, on the prompts whose "
          "greedy text loops, fewer repeated phrases on average than greedy")
def _02_3(results):  # per prompt: distinct continuations, samples, repeated shares greedy and sampled
    distinct = [r["distinct"] for r in results]
    looping = [r for r in results if r["greedy"] >= LOOPING]
    found = (f"distinct continuations {distinct} of {[r['samples'] for r in results]}; greedy loops on "
             f"{len(looping)} of {len(results)} prompts")
    if not results or any(r["samples"] < 5 for r in results):
        return False, found + " (five samples per prompt are needed)"
    margins = [more(min(distinct), 1, "texts", "fewest different continuations of a prompt")]
    if looping:
        greedy = sum(r["greedy"] for r in looping) / len(looping)
        sampled = sum(r["sampled"] for r in looping) / len(looping)
        found += f": repeated share greedy {rounded(greedy)}, sampled {rounded(sampled)} on them"
        margins.append(more(greedy - sampled, 0, "share", "fewer repeats than greedy where greedy loops"))
    else:
        found += " (no loop to compare within this limit)"
    return True, found, margins


def _adapter_weights(folder):
    from safetensors import safe_open

    with safe_open(str(Path(folder) / "adapter" / "adapter_model.safetensors"), "pt") as weights:
        return sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())


def _authored(folder):
    from gemmate_lib.text_generation import has_author_line

    after = read_csv(folder, "generations_after.csv", keep_default_na=False)
    return sum(has_author_line(str(p) + str(c)) for p, c in zip(after["prompt"], after["completion"]))


LOSS_LEVEL = 0.15  # calibrate: r = 2's final held-out loss ends within this many nats of the lesson's r = 8


@exercise("03-1", ("adapter/adapter_model.safetensors", "loss_log.csv", "generations_after.csv"),
          "the loss log, adapter and generations of sections 4 and 5",
          "lora_r the only setting changed, to 2: a quarter of the lesson's adapter weights; the final "
          "held-out loss level with the lesson's; Author: lines on as many prompts as the lesson's, or one "
          "fewer", lesson=("adapter/adapter_model.safetensors", "loss_log.csv", "generations_after.csv"),
          parameters=(("03_lora_sft", {"lora_r": 2, "compare": False, "run_dir": "runs/ex03_1"}),))
def _03_1(ex, lesson):
    mine, theirs = _adapter_weights(ex[0]), _adapter_weights(lesson)
    logs = [read_csv(f, "loss_log.csv").dropna(subset=["eval_loss"]) for f in (ex[0], lesson)]
    gap = abs(logs[0]["eval_loss"].iloc[-1] - logs[1]["eval_loss"].iloc[-1])  # the final held-out losses
    authored = [_authored(f) for f in (ex[0], lesson)]
    ok = 4 * mine == theirs
    return ok, (
        f"{mine:,} adapter weights (the lesson's {theirs:,}), held-out loss "
        f"{rounded(gap)} apart, Author: lines {authored[0]} (the lesson {authored[1]})"
    ), [less(gap, LOSS_LEVEL, "nats", "final held-out losses apart"),
        more(authored[0], authored[1] - 1, "prompts", "Author: lines", strict=False)]


@exercise("03-2", ("manifest.json", "adapter"),
          "section 1's drop report, kept in section 5's manifest, and the adapter",
          "a run on your own file, whose section 1 dropped the row with the empty author",
          parameters=(("03_lora_sft", {"dataset": InRuns("ex03_2/my_quotes.jsonl"), "compare": False,
                                       "run_dir": "runs/ex03_2"}),))
def _03_2(ex, lesson):
    from gemmate_lib.config import EMBEDDED, HUB_DATASET

    run = facts(ex[0], "03_lora_sft")
    dataset = run["config"]["data"]["dataset"]
    dropped = run.get("dropped_rows") or {}
    ok = dataset not in (EMBEDDED, HUB_DATASET) and any("empty author" in reason for reason in dropped)
    return ok, f"dataset {dataset!r}; dropped {dict(dropped) or 'nothing'}"


@exercise("03-3", ("manifest.json", "loss_masking.csv"), "section 6's loss_masking.csv",
          "more steps in ex03_3b than in ex03_3a, and section 6's whole-text gap larger after them",
          folders=("ex03_3a", "ex03_3b"),
          parameters=tuple(("03_lora_sft", {"max_steps": steps, "compare": True, "compare_steps": 2,
                                            "chat_steps": 0, "run_dir": f"runs/ex03_3{x}"})
                           for x, steps in (("a", 10), ("b", 30))))
def _03_3(ex, lesson):
    steps = [trained_steps(f) for f in ex]
    losses = [read_csv(f, "loss_masking.csv", index_col="setting")["held_out_loss_text"] for f in ex]
    gaps = [loss.iloc[1] - loss.iloc[0] for loss in losses]  # completion only, less the whole text
    ok = None not in steps and steps[0] < steps[1]
    return ok, f"steps {steps}, whole-text gaps {[rounded(g) for g in gaps]}", [
        more(gaps[1] - gaps[0], 0, "nats", "growth of the whole-text gap")]


# ---- break it on purpose (03-4 to 03-6, 05-4): a batch or a copy of the model broken the way real runs
# break, and the course's check that must catch it. Each solution records the fault it made, measured on what
# it broke (a wrong attempt, a batch left whole, shows there), and what the check said: for the pre-flight,
# the line that stopped it (`PreflightError.verdict`), None where it passed ----

LABEL_LINES = ("share of labelled tokens", "no row all masked")  # the pre-flight's lines on a mask's labels
END_LINE = "end token inside the mask"
CACHE_LINE = "logits with and without the KV cache"
CACHE_FAULT = 0.1  # a broken path: its logits this share of their largest away from a sound one's, or more
# (the pre-flight's widest tolerance; a sound model's two passes agree to rounding)


def _stopped(run: dict, lines: tuple[str, ...], fault: str) -> tuple[bool, str]:
    """(whether the pre-flight stopped at one of `lines`, which names the fault, what it stopped at) from a
    fault exercise's record: `stopped_by` is the line that stopped it, None where it passed the fault."""
    stop = run["stopped_by"]
    if stop is None:
        return False, f"the pre-flight passed {fault}: not caught"
    stop = shaped(stop, dict, "stopped_by")
    said = f"the pre-flight stopped at {stop['check']!r}: {stop['value']} (expected {stop['expected']})"
    if stop["check"] not in lines:
        return False, said + f" (not a line that names this fault: {' or '.join(map(repr, lines))})"
    return True, said


@exercise("03-4", "fault.json", "run solution 4 above",
          "a batch whose every label is -100 (no token labelled), stopped by the pre-flight at its share of "
          "labelled tokens (or a row all masked), not at a loss line")
def _03_4(run):  # {"labelled", "tokens", "rows", "stopped_by": the line that stopped the pre-flight, or None}
    run = shaped(run, dict, "fault.json")
    found = f"{run['labelled']} of {run['tokens']} tokens labelled in {run['rows']} rows"
    if not (int(run["rows"]) > 0 and int(run["labelled"]) == 0):
        return False, found + " (the fault: every label -100, none left)"
    caught, said = _stopped(run, LABEL_LINES, "a batch that labels nothing")
    return caught, f"{found}; {said}"


@exercise("03-5", "fault.json", "run solution 5 above",
          "a batch whose rows hold no end token (<eos>), their other tokens still labelled, stopped by the "
          "pre-flight at its end-token line")
def _03_5(run):  # {"rows", "rows_with_end", "labelled", "stopped_by"}
    run = shaped(run, dict, "fault.json")
    found = f"{run['rows_with_end']} of {run['rows']} rows hold <eos>, {run['labelled']} tokens labelled"
    if not (int(run["rows"]) > 0 and int(run["rows_with_end"]) == 0):
        return False, found + " (the fault: no row holds its end token)"
    if int(run["labelled"]) == 0:  # nothing labelled at all: 03-4's fault, which other lines name
        return False, found + " (every label is gone too: only the end token is to go)"
    caught, said = _stopped(run, (END_LINE,), "rows without <eos>")
    return caught, f"{found}; {said}"


@exercise("03-6", "fault.json", "run solution 6 above",
          "a copy of the model whose logits without the cache differ from those with it (by at least "
          f"{CACHE_FAULT:g} of their largest) while those with the cache stay the sound copy's (less than "
          f"{CACHE_FAULT:g} from them): only the uncached path broken, stopped by the pre-flight at its KV "
          "cache line")
def _03_6(run):  # {"gap": relative, uncached against cached logits on one row, "cached_gap": relative, the
    # cached logits against the same copy's before the fault, "stopped_by"}
    run = shaped(run, dict, "fault.json")
    gap, cached_gap = float(run["gap"]), float(run["cached_gap"])
    found = (f"logits with and without the cache {rounded(gap)} apart, with the cache {rounded(cached_gap)} "
             "from the sound copy's (shares of their largest)")
    if not gap >= CACHE_FAULT:  # NaN too
        return False, found + " (the fault: the two paths disagree; here they agree)"
    if not cached_gap < CACHE_FAULT:  # noise on every pass breaks both paths: not the fault of a broken cache
        return False, found + " (the fault: only the uncached path broken; here the cached one is broken too)"
    caught, said = _stopped(run, (CACHE_LINE,), "a model whose two paths disagree")
    return caught, f"{found}; {said}", [
        more(gap, CACHE_FAULT, "share", "the two paths apart", strict=False),
        less(cached_gap, CACHE_FAULT, "share", "the cached path from the sound copy's")]


@exercise("04-1", ("manifest.json", "metrics.json"),
          "the manifest of 03's section 5 and the metrics.json of 04's section 5",
          "03 trained fewer steps than the lesson's, nothing else changed; perplexity strictly between the "
          "baseline and the lesson's run, format compliance above the baseline",
          lesson=("manifest.json", "metrics.json"),
          parameters=(("03_lora_sft", {"max_steps": 20, "compare": False, "run_dir": "runs/ex04_1"}),
                      ("04_evaluation", {"run_dir": "runs/ex04_1"})))
def _04_1(ex, lesson):
    short, full = (read_json(f, "metrics.json")["models"] for f in (ex[0], lesson))
    steps, lesson_steps = trained_steps(ex[0]), trained_steps(lesson)

    def value(models, model="fine-tuned", metric="perplexity"):
        return models[model][metric]["value"]

    fmt = "format_compliance"
    ok = None not in (steps, lesson_steps) and steps < lesson_steps
    return ok, (
        f"03 trained {steps} steps (the lesson {lesson_steps}); perplexity "
        f"baseline {rounded(value(full, 'baseline'))}, this run {rounded(value(short))}, "
        f"lesson {rounded(value(full))}; format {rounded(value(short, metric=fmt))} against the baseline's "
        f"{rounded(value(full, 'baseline', fmt))}"
    ), [
        # log-perplexities: a held-out loss difference per token, in nats; the three thresholds: # calibrate
        more(math.log(value(short)) - math.log(value(full)), 0, "nats", "log-perplexity above the lesson's"),
        more(math.log(value(full, "baseline")) - math.log(value(short)), 0, "nats",
             "log-perplexity below the baseline's"),
        more(value(short, metric=fmt) - value(full, "baseline", fmt), 0, "share", "format gain"),
    ]


OWN_QUOTES = 5  # quotes of your own at least: fewer say nothing about naming authors


@exercise("04-2", "own_quotes.json", "run solution 2 on a .jsonl of your quotes",
          f"at least {OWN_QUOTES} quotes of your own file evaluated with the fine-tuned model (its "
          "adapter on, not inside disable_adapter()) and split by author in training (train_authors given: "
          "every row whose author 03 trained on counted as seen); where some authors were in training and "
          "some not, the seen ones not named right significantly less often")
def _04_2(run):  # {"file", "rows", "adapter_on", "by_author_in_training": {"True": [right, rows], ...},
    # "rows_seen_in_training": the rows whose author is in train_authors, counted apart from evaluate_model}
    from gemmate_lib.config import EMBEDDED, HUB_DATASET
    from gemmate_lib.stats import wilson

    counts = shaped(run["by_author_in_training"], dict, "by_author_in_training")
    right, rows = (sum(c[i] for c in counts.values()) for i in (0, 1))
    own = str(run["file"]) not in (EMBEDDED, HUB_DATASET)  # a file of yours, not the course's quotes
    tuned = run["adapter_on"] is True  # False inside `with tuned.disable_adapter():`: the base model answered
    found = f"{right} of {rows} right in {Path(str(run['file'])).name}; by author in training: {counts}"
    if not tuned:
        return False, found + " (evaluated with the adapter off: the base model, not the fine-tune)"
    if not own or rows != run["rows"] or rows < OWN_QUOTES:
        return False, found
    seen, split = int(run["rows_seen_in_training"]), counts.get("True", [0, 0])[1]
    if split != seen:  # evaluate_model without train_authors counts every author as unseen
        return False, found + (f" ({seen} of your rows have an author 03 trained on, the evaluation counted "
                               f"{split}: pass train_authors to evaluate_model)")
    if not all(counts.get(k, [0, 0])[1] for k in ("True", "False")):
        return True, found + " (only one kind of author: nothing to compare)"
    seen_high = wilson(*counts["True"])[1]
    unseen_low = wilson(*counts["False"])[0]  # the seen share's 95% upper end reaches the unseen's lower end
    return True, found, [more(seen_high - unseen_low, 0, "share", "seen authors' upper 95% end over the "
                                                                   "unseen ones' lower end", strict=False)]


@exercise("04-3", "widths.json", "run solution 3",
          "both models resampled with the same quotes (paired); ten times the quotes narrow the interval "
          "about threefold (one over the square root of the size)")
def _04_3(widths):  # {size: {"width": w, "baseline": its picks, "fine-tuned": its picks}}
    widths = shaped(widths, dict, "widths.json")
    paired = all(len(w["baseline"]) == int(size) and list(w["baseline"]) == list(w["fine-tuned"])
                 for size, w in widths.items())
    width = {size: w["width"] for size, w in widths.items()}
    ratio = width["30"] / max(width["300"], 1e-12)
    found = f"widths {width}, {rounded(ratio)} times narrower"
    if not paired:
        found += " (each model resampled with its own picks: the pairs are broken)"
    return paired, found, [  # sqrt(10) = 3.2
        more(ratio, 2, "x", "narrowing", strict=False), less(ratio, 5, "x", "narrowing", strict=False)]


COARSE = {"fp32": 0, "fp16": 1, "bf16": 2}  # significant bits 24, 11, 8: coarser to the right
MERGE_TOLERANCE = {"fp32": 5e-3, "fp16": 0.5, "bf16": 2.0}  # 05's section 3: the merge check's, per dtype
# what a merge exercise (05-1, 05-4) compared its merged model with, recorded as "reference_vs_section_3": the
# largest |logit difference| between that unmerged model's logits and section 3's (`reference`, the 16/32-bit
# model in section 3's dtype); 0 when it compared with section 3's logits, which measures the other dtype or
# the 4-bit base as well as the merge
SECTION_3S_LOGITS = ("compared with section 3's logits (the unmerged model in section 3's dtype), not with "
                     "the same model before merging: that measures the other precision as well as the merge")


@exercise("05-1", "merge.json", "run solution 1",
          "two dtypes, each merge compared with its own unmerged model in its dtype (not with section 3's "
          "logits): the coarser one's merge differs more; where one of the two is fp32, the other past the "
          "fp32 tolerance")
def _05_1(run):  # {"diffs": {dtype: largest |logit difference|}, "reference_vs_section_3": see above}
    run = shaped(run, dict, "merge.json")
    diffs = shaped(run["diffs"], dict, "merge.json's diffs")
    if len(diffs) != 2 or not set(diffs) <= set(COARSE):
        return False, f"{sorted(diffs)}: two different dtypes of {sorted(COARSE)} are needed"
    apart = float(run["reference_vs_section_3"])
    found = f"{diffs}; its reference {apart:.3g} from section 3's logits"
    if not apart > 0:  # NaN too
        return False, f"{found} ({SECTION_3S_LOGITS})"
    coarse, fine = sorted(diffs, key=COARSE.get, reverse=True)
    margins = [more(diffs[coarse] / max(diffs[fine], 1e-12), 1, "x", f"{coarse}'s difference over {fine}'s")]
    if fine == "fp32":
        margins.append(more(diffs[coarse], MERGE_TOLERANCE["fp32"], "logits",
                            f"{coarse}'s difference, the fp32 tolerance"))
    return True, found, margins


def _adapter_trained(folder) -> bool:
    """Whether the LoRA adapter in `folder`/adapter has moved from where LoRA starts, B = 0 (so that B·A adds
    nothing to the base model until training changes it)."""
    from safetensors import safe_open

    with safe_open(str(Path(folder) / "adapter" / "adapter_model.safetensors"), "pt") as weights:
        b = [name for name in weights.keys() if "lora_B" in name]
        return bool(b) and any(bool(weights.get_tensor(name).any()) for name in b)


LESSON_ADAPTERS = ("quotes", "reverse")  # 05's section 6: 03's adapter and the reverse format's


def texts_digest(rows: list[dict]) -> str:
    """Exercise 05-2's helper: one fingerprint (SHA-256) of the texts `rows` train on (each row's "text", in
    order), which the solution records for each adapter, so that the check tells a third adapter trained on
    texts of its own from one trained on the lesson's."""
    import hashlib

    return hashlib.sha256("\n".join(str(r["text"]) for r in rows).encode("utf-8")).hexdigest()


@exercise("05-2", ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "generations.json",
                   "trained_on.json"),
          "run solution 2",
          "a third adapter, trained (its LoRA B matrices no longer all zero) on texts of its own, not the "
          "lesson's (03's quotes, section 6's reverse format), beside the lesson's two on one base: three "
          "different continuations")
def _05_2(ex, lesson):
    written = shaped(read_json(ex[0], "generations.json"), dict, "generations.json")  # {adapter: its text}
    # {adapter: texts_digest of what it trained on}: the lesson's two and the third
    trained_on = shaped(read_json(ex[0], "trained_on.json"), dict, "trained_on.json")
    trained = _adapter_trained(ex[0])
    state = "trained" if trained else "never trained (its B matrices are all zero, as LoRA starts)"
    found = (f"{len(set(written.values()))} different continuations from adapters {sorted(written)}; the "
             f"third {state}")
    third = [name for name in trained_on if name not in LESSON_ADAPTERS]
    if len(third) != 1 or not set(LESSON_ADAPTERS) <= set(trained_on):
        return False, f"{found}; trained_on.json names {sorted(trained_on)}: the lesson's two and a third"
    repeats = [name for name in LESSON_ADAPTERS if trained_on[name] == trained_on[third[0]]]
    if repeats:
        found += (f"; the third trained on the texts of the lesson's {repeats[0]!r} adapter (train it on "
                  "texts in a format of its own)")
    return len(written) == 3 and len(set(written.values())) == 3 and trained and not repeats, found


SAME_WEIGHTS = 0.9  # the merged model's memory at least this share of the adapter model's: one precision
TIMED_RUNS = 2  # timed runs per model at least, after a warm-up: one cold timing also times the first call's
# set-up (kernels, caches, memory), and a CPU's times wobble


@exercise("05-3", "timing.json", "run solution 3",
          "the merged model (no LoRA layers left, the adapter model's weights in the same precision) "
          "generates faster than the adapter on its base, each timed after a warm-up, the fastest of "
          f"{TIMED_RUNS} or more timed runs")
def _05_3(timing):
    timing = shaped(timing, dict, "timing.json")
    # how each was timed: {"adapter": timed runs, "merged": ...}, {"adapter": a warm-up ran first, ...}
    runs = {k: int(timing[f"timed_runs_{k}"]) for k in ("adapter", "merged")}
    warm = {k: timing[f"warm_up_{k}"] is True for k in ("adapter", "merged")}
    cold = [k for k in runs if runs[k] < TIMED_RUNS or not warm[k]]
    if cold:
        after = "after" if warm[cold[0]] else "without"
        return False, str(timing) + (f" (the {cold[0]} timed {runs[cold[0]]} time(s), {after} a warm-up: "
                                     f"time each after a warm-up, the fastest of {TIMED_RUNS} or more runs)")
    # what was timed: the adapter's LoRA layers, then none once merged
    merged = timing["lora_layers_adapter"] > 0 and timing["lora_layers_merged"] == 0
    # the same base weights in memory, less the LoRA matrices: a 4-bit base against a 16-bit merged copy
    # (or 32 against 16 bits) times the precisions, not the merge
    memory = timing["merged_mib"] / max(timing["adapter_mib"], 1e-9)
    same = SAME_WEIGHTS <= memory <= 1
    speedup = more(timing["adapter"] / max(timing["merged"], 1e-9), 1, "x", "adapter's time over merged")
    found = str(timing) + ("" if same else f" (the merged model holds {rounded(memory)}x the adapter model's "
                                           "memory: another precision, not the same weights merged)")
    return merged and same, found, [speedup]


@exercise("05-4", "fault.json", "run solution 4",
          "the adapter merged into a 4-bit base, compared as section 3 compares (logits merged and not, in "
          "the merge's dtype, against its tolerance; the 4-bit model before merging, not section 3's "
          "logits): a difference at or past the tolerance, which fails section 3's check")
def _05_4(run):  # {"base_4bit": read from the model, "dtype", "diff", "tolerance", "reference_vs_section_3"}
    run = shaped(run, dict, "fault.json")
    dtype, diff, tolerance = str(run["dtype"]), float(run["diff"]), float(run["tolerance"])
    four_bit = run["base_4bit"] is True
    apart = float(run["reference_vs_section_3"])
    found = (f"{'a 4-bit' if four_bit else 'a 16/32-bit'} base in {dtype}: largest |logit difference| "
             f"{diff:.3g}, tolerance {tolerance:g}; its reference {apart:.3g} from section 3's logits")
    if not four_bit:
        return False, found + " (the fault: a 4-bit base; this one is not)"
    if not apart > 0:  # NaN too
        return False, f"{found} ({SECTION_3S_LOGITS})"
    if tolerance != MERGE_TOLERANCE.get(dtype):
        return False, found + f" (section 3's tolerance for {dtype} is {MERGE_TOLERANCE.get(dtype)})"
    return True, found, [more(diff / tolerance, 1, "x", "the 4-bit merge's difference over the tolerance",
                              strict=False)]


def _method_table(folder, column="held_out_loss_text"):
    return read_csv(folder, "methods.csv", index_col="method")[column]


STEP_TIME = 1.5  # calibrate: seconds per step stay within this ratio of the lesson's


@exercise("06-1", ("manifest.json", "methods.csv"), "section 3's methods.csv",
          "more steps than the lesson's, methods it ran too, at its batch size and rates; seconds per step "
          f"within {STEP_TIME}x of the lesson's, and every held-out loss below its value after the lesson's "
          "steps", lesson=("manifest.json", "methods.csv"),
          parameters=(("06_compare_methods", {"methods": ["lora_r8", "qlora"], "steps": 12,
                                              "run_dir": "runs/ex06_1"}),))
def _06_1(ex, lesson):
    short, longer = _method_table(lesson), _method_table(ex[0])
    speed = _method_table(ex[0], "seconds_per_step") / _method_table(lesson, "seconds_per_step")
    runs = [facts(f, "06_compare_methods") for f in (ex[0], lesson)]
    steps = [r.get("steps") for r in runs]
    both = [k for k in longer.index if k in short.index]
    same = (runs[0].get("batch_size") == runs[1].get("batch_size")
            and all(runs[0].get("rates", {}).get(k) == runs[1].get("rates", {}).get(k) for k in both))
    ok = None not in steps and steps[0] > steps[1] and len(both) == len(longer) > 0 and same
    each = (f"{k}: loss {rounded(short[k])} -> {rounded(longer[k])}, {rounded(speed[k])}x the time per step"
            for k in both)
    return ok, f"{steps[0]} steps (the lesson {steps[1]}); " + ", ".join(each), [
        *(more(short[k] - longer[k], 0, "nats", f"{k}'s held-out loss fall") for k in both),  # calibrate
        *(less(max(speed[k], 1 / speed[k]), STEP_TIME, "x", f"{k}'s step time against the lesson's",
               strict=False) for k in both)]


@exercise("06-2", ("manifest.json", "methods.csv"), "section 3's methods.csv",
          "trainable weights scale with the rank (2, 8, 128) at the same steps, and the held-out loss lower "
          "at rank 128 than at rank 2", folders=("ex06_2a", "ex06_2b"),
          parameters=tuple(("06_compare_methods", {"methods": ["lora_r8", "lora_r32"], "other_rank": rank,
                                                   "steps": 12, "run_dir": f"runs/ex06_2{x}"})
                           for x, rank in (("a", 2), ("b", 128))))
def _06_2(ex, lesson):
    low, high = (_method_table(f, "trainable") for f in ex)  # "lora_r32" is the other rank: 2, then 128
    loss_low, loss_high = _method_table(ex[0]), _method_table(ex[1])
    runs = [facts(f, "06_compare_methods") for f in ex]
    ok = (
        [r.get("other_rank") for r in runs] == [2, 128]
        and runs[0].get("steps") == runs[1].get("steps")
        and low["lora_r32"] * 4 == low["lora_r8"]
        and high["lora_r32"] == 16 * high["lora_r8"]
    )
    return ok, (
        f"ranks {[r.get('other_rank') for r in runs]}, steps {[r.get('steps') for r in runs]}; trainable "
        f"{low['lora_r32']:,} / {low['lora_r8']:,} / {high['lora_r32']:,}; held-out loss "
        f"{rounded(loss_low['lora_r32'])} / {rounded(loss_low['lora_r8'])} / {rounded(loss_high['lora_r32'])}"
    ), [more(loss_low["lora_r32"] - loss_high["lora_r32"], 0, "nats",  # calibrate
             "rank 2's loss over rank 128's")]


@exercise("06-3", ("manifest.json", "methods.csv"), "section 3's methods.csv",
          "rates rising from run a to c for both methods; LoRA's held-out loss lower at ten times its "
          "default rate than at a tenth of it (prompt tuning's is reported: its good rates lie in a narrower "
          "band)",
          folders=("ex06_3a", "ex06_3b", "ex06_3c"),
          parameters=tuple(("06_compare_methods", {"methods": ["prompt", "lora_r8"], "rates": rates,
                                                   "run_dir": f"runs/ex06_3{x}"})
                           for x, rates in (("a", {"prompt": 3e-3, "lora_r8": 2e-5}), ("b", None),
                                            ("c", {"prompt": 3e-1, "lora_r8": 2e-3}))))
def _06_3(ex, lesson):
    rates = [facts(f, "06_compare_methods").get("rates", {}) for f in ex]
    by_rate = [_method_table(f) for f in ex]
    keys = ("prompt", "lora_r8")
    rising = all(k in r for r in rates for k in keys) and all(
        rates[0][k] < rates[1][k] < rates[2][k] for k in keys
    )
    found = "; ".join(f"{k}: rates {[r.get(k) for r in rates]}, losses {[rounded(b[k]) for b in by_rate]}"
                      for k in keys)
    return rising, found, [
        more(by_rate[0]["lora_r8"] - by_rate[2]["lora_r8"], 0, "nats",  # calibrate
             "LoRA's loss at a tenth over ten times")]


TRUE, CONSTANT = "temporal_after_val_true.csv", "temporal_after_val_constant.csv"
YEAR_HOLDS = 0.1  # calibrate: year accuracy at tau 0.25 at most this much below the lesson's
NEAR_CHANCE = 0.15  # calibrate: the constant timestamp's year accuracy at most this (chance: 1/14 years)


def _val(folder, name, column="year_ok"):
    return read_csv(folder, name)[column].mean()


SECTIONS_07 = "section 6's validation tables and section 10's manifest"


@exercise("07-1", ("manifest.json", TRUE, CONSTANT), SECTIONS_07,
          "a smaller tau than the lesson's, nothing else changed; year accuracy held, month+year accuracy "
          "lower, the constant timestamp near chance", lesson=("manifest.json", TRUE),
          parameters=(("07_temporal_encoding", {"temporal_scale": 0.25, "run_dir": "runs/ex07_1"}),))
def _07_1(ex, lesson):
    tau = [facts(f, "07_temporal_encoding").get("temporal_scale") for f in (ex[0], lesson)]
    year, month = ([_val(f, TRUE, column) for f in (ex[0], lesson)] for column in ("year_ok", "month_ok"))
    ok = None not in tau and tau[0] < tau[1]
    return ok, (
        f"tau {tau[0]} (the lesson {tau[1]}); "
        f"year {rounded(year[0])} (lesson {rounded(year[1])}), "
        f"month+year {rounded(month[0])} (lesson {rounded(month[1])}), "
        f"constant {rounded(_val(ex[0], CONSTANT))}"
    ), [more(year[0] - year[1], -YEAR_HOLDS, "share", "year accuracy change", strict=False),
        more(month[1] - month[0], 0, "share", "month+year accuracy drop"),  # calibrate
        less(_val(ex[0], CONSTANT), NEAR_CHANCE, "share", "constant timestamp's year accuracy", strict=False)]


@exercise("07-2", ("manifest.json", TRUE, CONSTANT), SECTIONS_07,
          "fewer notes (150 < 300 < the lesson's), nothing else changed; true-timestamp year accuracy lower "
          "at 150 notes than the lesson's; the constant timestamp near chance in both",
          folders=("ex07_2a", "ex07_2b"), lesson=("manifest.json", TRUE),
          parameters=tuple(("07_temporal_encoding", {"n_train": n, "run_dir": f"runs/ex07_2{x}"})
                           for x, n in (("a", 150), ("b", 300))))
def _07_2(ex, lesson):
    notes = [facts(f, "07_temporal_encoding").get("n_train") for f in (*ex, lesson)]
    year = [_val(f, TRUE) for f in (*ex, lesson)]  # 150, 300, then the lesson's notes
    ok = None not in notes and notes[0] < notes[1] < notes[2]
    constant = max(_val(f, CONSTANT) for f in ex)
    return ok, (f"notes {notes}; true-timestamp year accuracy "
                f"{[rounded(y) for y in year]}, constant at most {rounded(constant)}"), [
        more(year[2] - year[0], 0, "share", "the lesson's year accuracy over 150 notes'"),  # calibrate
        less(constant, NEAR_CHANCE, "share", "constant timestamp's year accuracy", strict=False)]


@exercise("07-3", ("manifest.json", "temporal_extrapolation.csv"),
          "section 7's temporal_extrapolation.csv and section 10's manifest",
          "extrapolation from 2024 (last_year = 2023), and exact years 2024 to 2026 at most 0.1 right",
          parameters=(("07_temporal_encoding", {"last_year": 2023, "run_dir": "runs/ex07_3"}),))
def _07_3(ex, lesson):
    far = read_csv(ex[0], "temporal_extrapolation.csv")
    first = int(far["true_year"].min())  # last_year + 1
    exact = far[far["true_year"] >= 2024]["year_ok"].mean()
    found = f"extrapolation from {first} (last_year {first - 1}); 2024-2026 exact {rounded(exact)}"
    exact_margin = less(exact, 0.1, "share", "exact years 2024-2026", strict=False)  # calibrate
    return first == 2024, found, [exact_margin]


def exercise_check(name: str) -> str:
    """The check cell of exercise `name` ("03-2"): find its run folders (runs/ex03_2; on Drive in Colab)
    and the lesson's run folder, then print PASS, FAIL, NOT RUN YET, or why results from another model cannot
    be judged, with what the run shows (judging.judge_exercise)."""
    return judge_exercise(name, EXERCISES[name])


# ---- will an exercise fit this runtime? (the line each notebook prints before its exercises) ----

# Exercises whose check reads a 16/32-bit copy of the model: where that copy does not fit (Gemma 4 E2B on a
# free T4), no 4-bit variant answers them
NEEDS_WHOLE_COPY = {
    "05-1": "05's merge (a 16/32-bit copy)", "05-3": "05's merge (a 16/32-bit copy)",
    "05-4": "05's merge (a 16/32-bit copy)",
    "06-1": "LoRA r=8 on a 16/32-bit base beside QLoRA", "06-2": "two LoRA ranks on a 16/32-bit base",
    "06-3": "LoRA r=8 on a 16/32-bit base beside prompt tuning",
}


def exercise_runs(name: str) -> list[tuple[str, dict]]:
    """(notebook stem, parameters) of each run exercise `name` makes: a rerun exercise's runs, or its lesson
    with the solution run after it (`exercise`: the part the smoke run's ledger measured it as)."""
    from gemmate_lib.fit import measured

    spec = EXERCISES[name]
    if spec.parameters:
        return [(stem, dict(params)) for stem, params in spec.parameters]
    stem = next(nb for nb in measured()["notebooks"] if nb.startswith(name[:2] + "_"))
    return [(stem, {"exercise": name})]


def exercise_fit(name: str, shape, compute_bytes: int, runtime: dict, data: dict | None = None,
                 cpu: bool = False) -> dict:
    """Whether exercise `name` runs on `runtime` with a model of `shape`, from the measured copies of its
    runs (gemmate_lib.fit.notebook_need): {"fits", "gpu", "ram", "why"}. A run that fits only without its
    16/32-bit part counts as fitting unless the exercise reads that part (NEEDS_WHOLE_COPY, or a 16/32-bit
    copy its own solution loads)."""
    from gemmate_lib import fit

    data = data or fit.measured()
    gpu = ram = 0.0
    for stem, params in exercise_runs(name):
        parts = fit.parts_of(stem, params)
        need = fit.notebook_need(stem, shape, compute_bytes, data, cpu, parts,
                                 lora_r=fit.trained_rank(params))
        answer = fit.fit_answer(need, runtime)
        own = [m for m in data["notebooks"][stem]["moments"] if m.get("part") == f"exercise {name}"]
        whole_copies = (not fit.copy_kind(k)[0] for m in own for k in m["copies"])
        needs_whole = name in NEEDS_WHOLE_COPY or any(whole_copies)
        if answer == "no":
            return {"fits": False, "gpu": need.gpu, "ram": need.ram,
                    "why": f"{stem[:2]} itself needs about {need.gpu / fit.GIB:.1f} GiB"}
        if answer != "yes" and needs_whole:
            what = NEEDS_WHOLE_COPY.get(name, "a 16/32-bit copy of the model")
            return {"fits": False, "gpu": need.gpu, "ram": need.ram,
                    "why": f"it needs {what}: about {need.gpu / fit.GIB:.1f} GiB"}
        whole = answer == "yes"
        gpu, ram = max(gpu, need.gpu if whole else need.gpu_without_whole), max(
            ram, need.ram if whole else need.ram_without_whole)
    return {"fits": True, "gpu": gpu, "ram": ram, "why": ""}


def fit_lines(prefix: str, cfg, runtime: dict | None = None) -> str:
    """One line per exercise of notebook `prefix` ("05"): does it run on this runtime with cfg's model? From
    the config alone (a few kB) and the measured copies, before any exercise runs; printed above the
    exercises, so a learner skips what cannot run here instead of finding out mid-way."""
    from transformers import AutoConfig

    from gemmate_lib import fit
    from gemmate_lib.models import resolve_model

    runtime = runtime or fit.runtime_here()
    where, hub = resolve_model(cfg.model.model_name)
    shape = fit.shape_of(AutoConfig.from_pretrained(where, **({"token": hub["token"]} if hub.get("token")
                                                                else {})))
    cpu = cfg.precision.device == "cpu"
    if cpu:
        runtime = {**runtime, "gpu_bytes": None}
    place = (f"{runtime['gpu']} ({runtime['gpu_bytes'] / fit.GIB:.1f} GiB)" if runtime["gpu_bytes"]
             else "this CPU")
    lines = []
    for name in (n for n in EXERCISES if n.startswith(prefix + "-")):
        answer = exercise_fit(name, shape, cfg.precision.dtype.itemsize, runtime, cpu=cpu)
        memory = (f"{answer['gpu'] / fit.GIB:.1f} GiB of GPU memory, " if runtime["gpu_bytes"] else "") + (
            f"{answer['ram'] / 1e9:.1f} GB of RAM")
        if answer["fits"]:
            lines.append(f"exercise {name}: fits {place} with {cfg.model.model_name} (peak about {memory}, "
                         "estimates)")
        else:
            lines.append(f"exercise {name}: does not fit {place} with {cfg.model.model_name}: "
                         f"{answer['why']} (an estimate). Skip it here, or do it with google/gemma-3-1b-pt "
                         f"as the course's model (00), or on {fit.BIGGER}")
    return "\n".join(lines)
