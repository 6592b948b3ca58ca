"""The checks of the 16 exercises of notebooks 00_setup to 03_lora_sft, registered with judging's `exercise`:
thresholds marked `# calibrate` are the margins `make exercises` reports (docs/exercises.md)."""

from __future__ import annotations

import math
from pathlib import Path

from gemmate_lib.exercises.judging import InRuns, exercise, facts, less, more, read_csv, rounded, shaped


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
    # the disk looked at after the load started says nothing about that load (it is on disk by then)
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
    return ok, (f"{len(own)} of {len(rows)} prompts your own in the Quote: format without an Author: line; "
                f"{sum(authored)} got an Author: line")


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
        greedy, sampled = (sum(r[k] for r in looping) / len(looping) for k in ("greedy", "sampled"))
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
    found = (f"{mine:,} adapter weights (the lesson's {theirs:,}), held-out loss {rounded(gap)} apart, "
             f"Author: lines {authored[0]} (the lesson {authored[1]})")
    return 4 * mine == theirs, found, [
        less(gap, LOSS_LEVEL, "nats", "final held-out losses apart"),
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
    steps = [facts(f, "03_lora_sft").get("config", {}).get("train", {}).get("max_steps") for f in ex]
    losses = [read_csv(f, "loss_masking.csv", index_col="setting")["held_out_loss_text"] for f in ex]
    gaps = [loss.iloc[1] - loss.iloc[0] for loss in losses]  # completion only, less the whole text
    ok = None not in steps and steps[0] < steps[1]
    return ok, f"steps {steps}, whole-text gaps {[rounded(g) for g in gaps]}", [
        more(gaps[1] - gaps[0], 0, "nats", "growth of the whole-text gap")]


# ---- break it on purpose (03-4 to 03-6, 05-4): each solution records the fault it made, measured on what it
# broke, and the pre-flight line that stopped it (`PreflightError.verdict`), None where it passed ----

LABEL_LINES = ("share of labelled tokens", "no row all masked")  # the pre-flight's lines on a mask's labels
END_LINE = "end token inside the mask"
CACHE_LINE = "logits with and without the KV cache"
CACHE_FAULT = 0.1  # a broken path's logits this share of their largest from a sound one's (widest tolerance)


def _stopped(run: dict, lines: tuple[str, ...], fault: str, found: str) -> tuple[bool, str]:
    """A fault exercise's verdict once it made the fault (`found`): whether the pre-flight stopped at one of
    `lines`, which name the fault, and `found` with what it stopped at."""
    if run["stopped_by"] is None:
        return False, f"{found}; the pre-flight passed {fault}: not caught"
    stop = shaped(run["stopped_by"], dict, "stopped_by")
    said = f"the pre-flight stopped at {stop['check']!r}: {stop['value']} (expected {stop['expected']})"
    if stop["check"] not in lines:
        return False, f"{found}; {said} (not a line that names this fault: {' or '.join(map(repr, lines))})"
    return True, f"{found}; {said}"


@exercise("03-4", "fault.json", "run solution 4 above",
          "a batch whose every label is -100 (no token labelled), stopped by the pre-flight at its share of "
          "labelled tokens (or a row all masked), not at a loss line", shape=dict)
def _03_4(run):  # {"labelled", "tokens", "rows", "stopped_by": the line that stopped the pre-flight, or None}
    found = f"{run['labelled']} of {run['tokens']} tokens labelled in {run['rows']} rows"
    if not (int(run["rows"]) > 0 and int(run["labelled"]) == 0):
        return False, found + " (the fault: every label -100, none left)"
    return _stopped(run, LABEL_LINES, "a batch that labels nothing", found)


@exercise("03-5", "fault.json", "run solution 5 above",
          "a batch whose rows hold no end token (<eos>), their other tokens still labelled, stopped by the "
          "pre-flight at its end-token line", shape=dict)
def _03_5(run):  # {"rows", "rows_with_end", "labelled", "stopped_by"}
    found = f"{run['rows_with_end']} of {run['rows']} rows hold <eos>, {run['labelled']} tokens labelled"
    if not (int(run["rows"]) > 0 and int(run["rows_with_end"]) == 0):
        return False, found + " (the fault: no row holds its end token)"
    if int(run["labelled"]) == 0:  # nothing labelled at all: 03-4's fault, which other lines name
        return False, found + " (every label is gone too: only the end token is to go)"
    return _stopped(run, (END_LINE,), "rows without <eos>", found)


@exercise("03-6", "fault.json", "run solution 6 above",
          "a copy of the model whose logits without the cache differ from those with it (by at least "
          f"{CACHE_FAULT:g} of their largest) while those with the cache stay the sound copy's (less than "
          f"{CACHE_FAULT:g} from them): only the uncached path broken, stopped by the pre-flight at its KV "
          "cache line", shape=dict)
def _03_6(run):  # {"gap": uncached vs cached logits, "cached_gap": cached vs the sound copy's, "stopped_by"}
    gap, cached_gap = float(run["gap"]), float(run["cached_gap"])
    found = (f"logits with and without the cache {rounded(gap)} apart, with the cache {rounded(cached_gap)} "
             "from the sound copy's (shares of their largest)")
    if not gap >= CACHE_FAULT:  # NaN too
        return False, found + " (the fault: the two paths disagree; here they agree)"
    if not cached_gap < CACHE_FAULT:  # noise on every pass breaks both paths: not the fault of a broken cache
        return False, found + " (the fault: only the uncached path broken; here the cached one is broken too)"
    caught, found = _stopped(run, (CACHE_LINE,), "a model whose two paths disagree", found)
    return caught, found, [
        more(gap, CACHE_FAULT, "share", "the two paths apart", strict=False),
        less(cached_gap, CACHE_FAULT, "share", "the cached path from the sound copy's")]
