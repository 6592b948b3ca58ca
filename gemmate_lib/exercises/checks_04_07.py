"""The checks of the 12 exercises of notebooks 04_evaluation to 07_temporal_encoding, registered with
judging's `exercise`. `# calibrate` marks the margins `make exercises` reports (docs/exercises.md)."""

from __future__ import annotations

import math
from pathlib import Path

from gemmate_lib.exercises.judging import exercise, facts, less, more, read_csv, read_json, rounded, shaped


@exercise("04-1", ("manifest.json", "metrics.json"),
          "the manifest of 03's section 5 and the metrics.json of 04's section 5",
          "03 trained fewer steps than the lesson's, nothing else changed; perplexity strictly between the "
          "baseline and the lesson's run, format compliance above the baseline",
          lesson=("manifest.json", "metrics.json"),
          parameters=(("03_lora_sft", {"max_steps": 20, "compare": False, "run_dir": "runs/ex04_1"}),
                      ("04_evaluation", {"run_dir": "runs/ex04_1"})))
def _04_1(ex, lesson):
    short, full = (read_json(f, "metrics.json")["models"] for f in (ex[0], lesson))
    steps, lesson_steps = (facts(f, "03_lora_sft").get("config", {}).get("train", {}).get("max_steps")
                           for f in (ex[0], lesson))

    def value(models, model="fine-tuned", metric="perplexity"):
        return models[model][metric]["value"]

    fmt = "format_compliance"
    return None not in (steps, lesson_steps) and steps < lesson_steps, (
        f"03 trained {steps} steps (the lesson {lesson_steps}); perplexity "
        f"baseline {rounded(value(full, 'baseline'))}, this run {rounded(value(short))}, "
        f"lesson {rounded(value(full))}; format {rounded(value(short, metric=fmt))} against the baseline's "
        f"{rounded(value(full, 'baseline', fmt))}"), [
        # log-perplexities: a held-out loss difference per token, in nats; the three thresholds: # calibrate
        more(math.log(value(short)) - math.log(value(full)), 0, "nats", "log-perplexity above the lesson's"),
        more(math.log(value(full, "baseline")) - math.log(value(short)), 0, "nats",
             "log-perplexity below the baseline's"),
        more(value(short, metric=fmt) - value(full, "baseline", fmt), 0, "share", "format gain")]


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
    found = f"{right} of {rows} right in {Path(str(run['file'])).name}; by author in training: {counts}"
    if run["adapter_on"] is not True:  # inside `with tuned.disable_adapter():` the base model answered
        return False, found + " (evaluated with the adapter off: the base model, not the fine-tune)"
    if str(run["file"]) in (EMBEDDED, HUB_DATASET) or rows != run["rows"] or rows < OWN_QUOTES:
        return False, found  # the course's quotes, not a file of yours, or too few
    seen, split = int(run["rows_seen_in_training"]), counts.get("True", [0, 0])[1]
    if split != seen:  # evaluate_model without train_authors counts every author as unseen
        return False, found + (f" ({seen} of your rows have an author 03 trained on, the evaluation counted "
                               f"{split}: pass train_authors to evaluate_model)")
    if not all(counts.get(k, [0, 0])[1] for k in ("True", "False")):
        return True, found + " (only one kind of author: nothing to compare)"
    gap = wilson(*counts["True"])[1] - wilson(*counts["False"])[0]  # seen's upper 95% end, unseen's lower
    return True, found, [more(gap, 0, "share", "seen authors' upper 95% end over the unseen ones' lower end",
                              strict=False)]


@exercise("04-3", "widths.json", "run solution 3",
          "both models resampled with the same quotes (paired); ten times the quotes narrow the interval "
          "about threefold (one over the square root of the size)", shape=dict)
def _04_3(widths):  # {size: {"width": w, "baseline": its picks, "fine-tuned": its picks}}
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
# a merge exercise's (05-1, 05-4) "reference_vs_section_3": the largest |logit difference| between the
# unmerged model it compared with and section 3's `reference`; 0 when it compared with section 3's logits
SECTION_3S_LOGITS = ("compared with section 3's logits (the unmerged model in section 3's dtype), not with "
                     "the same model before merging: that measures the other precision as well as the merge")
LESSON_ADAPTERS = ("quotes", "reverse")  # 05's section 6: 03's adapter and the reverse format's
SAME_WEIGHTS = 0.9  # the merged model's memory at least this share of the adapter model's: one precision
TIMED_RUNS = 2  # timed runs per model at least, after a warm-up (a cold one times the first call's set-up)


@exercise("05-1", "merge.json", "run solution 1",
          "two dtypes, each merge compared with its own unmerged model in its dtype (not with section 3's "
          "logits): the coarser one's merge differs more; where one of the two is fp32, the other past the "
          "fp32 tolerance", shape=dict)
def _05_1(run):  # {"diffs": {dtype: largest |logit difference|}, "reference_vs_section_3": see above}
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


@exercise("05-2", ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "generations.json",
                   "trained_on.json"), "run solution 2",
          "a third adapter, trained (its LoRA B matrices no longer all zero) on texts of its own, not the "
          "lesson's (03's quotes, section 6's reverse format), beside the lesson's two on one base: three "
          "different continuations")
def _05_2(ex, lesson):
    from safetensors import safe_open

    written = read_json(ex[0], "generations.json", dict)  # {adapter: its text}
    trained_on = read_json(ex[0], "trained_on.json", dict)  # {adapter: SHA-256 of the texts it trained on}
    # LoRA starts at B = 0 (B·A adds nothing to the base model): trained once a B matrix has moved from there
    with safe_open(str(Path(ex[0]) / "adapter" / "adapter_model.safetensors"), "pt") as weights:
        b = [name for name in weights.keys() if "lora_B" in name]
        trained = bool(b) and any(bool(weights.get_tensor(name).any()) for name in b)
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


@exercise("05-3", "timing.json", "run solution 3",
          "the merged model (no LoRA layers left, the adapter model's weights in the same precision) "
          "generates faster than the adapter on its base, each timed after a warm-up, the fastest of "
          f"{TIMED_RUNS} or more timed runs", shape=dict)
def _05_3(timing):
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
    # the same weights: a 4-bit base against a 16-bit merged copy times the precisions, not the merge
    memory = timing["merged_mib"] / max(timing["adapter_mib"], 1e-9)
    same = SAME_WEIGHTS <= memory <= 1
    found = str(timing) + ("" if same else f" (the merged model holds {rounded(memory)}x the adapter model's "
                                           "memory: another precision, not the same weights merged)")
    return merged and same, found, [
        more(timing["adapter"] / max(timing["merged"], 1e-9), 1, "x", "adapter's time over merged")]


@exercise("05-4", "fault.json", "run solution 4",
          "the adapter merged into a 4-bit base, compared as section 3 compares (logits merged and not, in "
          "the merge's dtype, against its tolerance; the 4-bit model before merging, not section 3's "
          "logits): a difference at or past the tolerance, which fails section 3's check", shape=dict)
def _05_4(run):  # {"base_4bit": read from the model, "dtype", "diff", "tolerance", "reference_vs_section_3"}
    dtype, diff, tolerance = str(run["dtype"]), float(run["diff"]), float(run["tolerance"])
    four_bit, apart = run["base_4bit"] is True, float(run["reference_vs_section_3"])
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
    ok = ([r.get("other_rank") for r in runs] == [2, 128] and runs[0].get("steps") == runs[1].get("steps")
          and low["lora_r32"] * 4 == low["lora_r8"] and high["lora_r32"] == 16 * high["lora_r8"])
    return ok, (
        f"ranks {[r.get('other_rank') for r in runs]}, steps {[r.get('steps') for r in runs]}; trainable "
        f"{low['lora_r32']:,} / {low['lora_r8']:,} / {high['lora_r32']:,}; held-out loss "
        f"{rounded(loss_low['lora_r32'])} / {rounded(loss_low['lora_r8'])} / {rounded(loss_high['lora_r32'])}"
    ), [more(loss_low["lora_r32"] - loss_high["lora_r32"], 0, "nats",  # calibrate
             "rank 2's loss over rank 128's")]


@exercise("06-3", ("manifest.json", "methods.csv"), "section 3's methods.csv",
          "rates rising from run a to c for both methods; LoRA's held-out loss lower at ten times its "
          "default rate than at a tenth of it (prompt tuning's is reported: its good rates lie in a narrower "
          "band)", folders=("ex06_3a", "ex06_3b", "ex06_3c"),
          parameters=tuple(("06_compare_methods", {"methods": ["prompt", "lora_r8"], "rates": rates,
                                                   "run_dir": f"runs/ex06_3{x}"})
                           for x, rates in (("a", {"prompt": 3e-3, "lora_r8": 2e-5}), ("b", None),
                                            ("c", {"prompt": 3e-1, "lora_r8": 2e-3}))))
def _06_3(ex, lesson):
    rates = [facts(f, "06_compare_methods").get("rates", {}) for f in ex]
    by_rate = [_method_table(f) for f in ex]
    keys = ("prompt", "lora_r8")
    rising = (all(k in r for r in rates for k in keys)
              and all(rates[0][k] < rates[1][k] < rates[2][k] for k in keys))
    found = "; ".join(f"{k}: rates {[r.get(k) for r in rates]}, losses {[rounded(b[k]) for b in by_rate]}"
                      for k in keys)
    return rising, found, [
        more(by_rate[0]["lora_r8"] - by_rate[2]["lora_r8"], 0, "nats",  # calibrate
             "LoRA's loss at a tenth over ten times")]


TRUE, CONSTANT = "temporal_after_val_true.csv", "temporal_after_val_constant.csv"
YEAR_HOLDS = 0.15  # year accuracy at tau 0.1 at most this below the lesson's (seeds 42, 1, 2: -0.11..+0.04)
NEAR_CHANCE = 0.15  # calibrate: the constant timestamp's year accuracy at most this (chance: 1/14 years)
SECTIONS_07 = "section 6's validation tables and section 10's manifest"


def _val(folder, name, column="year_ok"):
    return read_csv(folder, name)[column].mean()


@exercise("07-1", ("manifest.json", TRUE, CONSTANT), SECTIONS_07,
          "a smaller tau than the lesson's, nothing else changed; year accuracy held, month+year accuracy "
          "lower, the constant timestamp near chance", lesson=("manifest.json", TRUE),
          parameters=(("07_temporal_encoding", {"temporal_scale": 0.1, "run_dir": "runs/ex07_1"}),))
def _07_1(ex, lesson):
    tau = [facts(f, "07_temporal_encoding").get("temporal_scale") for f in (ex[0], lesson)]
    year, month = ([_val(f, TRUE, column) for f in (ex[0], lesson)] for column in ("year_ok", "month_ok"))
    return None not in tau and tau[0] < tau[1], (
        f"tau {tau[0]} (the lesson {tau[1]}); year {rounded(year[0])} (lesson {rounded(year[1])}), "
        f"month+year {rounded(month[0])} (lesson {rounded(month[1])}), "
        f"constant {rounded(_val(ex[0], CONSTANT))}"), [
        more(year[0] - year[1], -YEAR_HOLDS, "share", "year accuracy change", strict=False),
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
    exact = far[far["true_year"] >= 2024]["year_ok"].mean()  # calibrate: at most 0.1
    found = f"extrapolation from {first} (last_year {first - 1}); 2024-2026 exact {rounded(exact)}"
    return first == 2024, found, [less(exact, 0.1, "share", "exact years 2024-2026", strict=False)]
