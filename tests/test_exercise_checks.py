"""Every exercise's check (00-07, 28 of them) held to what the learner does. For each: the files its printed
solution writes (written here as the solution and the notebook write them: the same writers, names and
shapes) make the check say PASS, every margin it prints at or above its threshold; a variant that skips the
exercise's point (the setting left at the lesson's value, the module list forgotten, the same dtype twice,
...) makes it say FAIL; results from another model never say PASS; and the notebook's own check cell still
gives its verdict after every name the notebook and the solutions bind has been rebound (the solution of 06-3
rebinds `losses`, 07-2's `val`). Hand-written files, no model: a second each."""

from __future__ import annotations

import ast
import hashlib
import io
import json
import math
import os
import re
import time
from pathlib import Path

import pandas as pd
import pytest
import safetensors
import torch
from safetensors.torch import save_file

from gemmate_lib import exercises
from gemmate_lib.exercises import checks_04_07, judging
from gemmate_lib.guard_rails import files, run_folder
from tools.runners.exercises import parse_verdict

ROOT = Path(__file__).resolve().parents[1]
MODEL, OTHER = "embedded", "google/gemma-3-1b-pt"  # the model the lesson runs; the one a learner switches to


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """A course folder in tmp_path ($GEMMATE_RUNS_ROOT): exercises' folders under runs/, the lesson's run
    folder runs/lesson; this process runs MODEL, as a notebook's kernel does after its setup cell."""
    monkeypatch.setenv(run_folder.RUNS_ROOT, str(tmp_path))
    monkeypatch.setattr(run_folder, "git_revision", lambda: "test")
    monkeypatch.setenv("GEMMATE_RUN_DIR", str(tmp_path / "runs" / "lesson"))
    monkeypatch.setitem(run_folder._KERNEL, "model_name", MODEL)
    return tmp_path / "runs"


def folder(runs: Path, name: str) -> Path:
    """The run folder `name` as a solution or a notebook makes it (an exercise's records its origin)."""
    path = run_folder.get_run_dir(f"runs/{name}")
    assert path == runs / name
    return path


# ---- what each solution (and, for reruns, the notebook) writes ----


def manifest(path: Path, notebook: str, **facts):
    run_folder.update_manifest(path, notebook, **facts)  # as the notebook's save cell does


def config03(max_steps=40, lora_r=8, dataset="embedded"):
    """03's manifest entry `config`, as its save cell writes it: config_summary of the run's course_config."""
    from gemmate_lib.config import config_summary, course_config

    return config_summary(course_config(max_steps=max_steps, lora_r=lora_r, dataset=dataset))


def adapter(path: Path, r: int, b: float = 0.0):
    """An adapter's files; `b`: its B matrices' entries (0, as LoRA starts, until trained)."""
    (path / "adapter").mkdir(parents=True, exist_ok=True)
    save_file(
        {"q.lora_A.weight": torch.zeros(r, 16), "q.lora_B.weight": torch.full((16, r), b)},
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
    manifest(path, "04_evaluation", n_examples=33, split="held_out")


RATES = {"full": 5e-5, "prompt": 3e-2, "prefix": 1e-2, "ia3": 3e-3}  # 06's; LoRA and QLoRA 2e-4


def methods(path: Path, rows: dict, steps=4, rates=None, other_rank=32, batch_size=4, given=None):
    """06's methods.csv and the manifest line its save cell writes; rows: {key: (trainable, loss, s/step)};
    `given`: the parameters cell's values that differ from the lesson's (None each there)."""
    pd.DataFrame(
        [
            {"setting": k, "method": k, "trainable": t, "held_out_loss_text": loss, "seconds_per_step": s,
             "format_compliance": 0.5, "saved_mib": t * 4 / 2**20, "training_peak_mib": 100 + t * 16 / 2**20}
            for k, (t, loss, s) in rows.items()
        ]
    ).set_index("setting").to_csv(path / "methods.csv")
    manifest(
        path,
        "06_compare_methods",
        methods=list(rows),
        steps=steps,
        batch_size=batch_size,
        other_rank=other_rank,
        rates=rates or {k: RATES.get(k, 2e-4) for k in rows},
        settings={"dataset": None, "methods": None, "steps": None, "batch_size": None, "other_rank": 32,
                  "rates": None, "seed": None, "data_seed": None, "format_quotes": None, "start_losses": True,
                  **(given or {})},
    )


def temporal(
    path: Path, year, month, constant, n_train=600, tau=1.0, far_years=(2021, 2027), far_ok=0.0, epochs=2.0,
    learning_rate=3e-4,
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
    steps = math.ceil(epochs * (n_train // 8))  # the Trainer's: passes times whole batches of 8 per pass
    settings = {"n_train": n_train, "n_test": 200, "num_epochs": epochs, "learning_rate": learning_rate,
                "projection_learning_rate": 3e-3, "temporal_scale": tau, "temporal_dim": 64, "seed": 42}
    manifest(path, "07_temporal_encoding", seed=42, n_train=n_train, n_test=200, temporal_scale=tau,
             temporal_dim=64, steps=steps, settings=settings)


def stopped(check: str, value: str, expected: str) -> dict:
    """What a fault exercise's solution records of the pre-flight's line that stopped it: the first line of
    the PreflightError and its `verdict`."""
    from gemmate_lib.preflight import PreflightLine

    line = PreflightLine(check, False, value, expected, "what it means", "what to do")
    return {"line": f"pre-flight check failed: {check} is {value} (expected {expected}): what it means",
            **vars(line)}


SHARE = stopped("share of labelled tokens", "0%", ">= 5%")
END = stopped("end token inside the mask", "0 of 8 rows", "all 8 rows")
CACHE = stopped("logits with and without the KV cache", "1", "<= 0.1")
NAN_LOSS = stopped("loss with gradient checkpointing on", "nan", "<= 0.001")


STANDARD = [
    "Quote: Imagination is more",
    "Quote: A Woman is like a tea bag",
    "Quote: Be yourself;",
    "Quote: So many books,",
]


def write(runs: Path, name: str, variant: str | None = None):
    """The files exercise `name`'s solution writes; `variant` names a way of skipping its point (or, in
    PASSING, another honest outcome that must pass)."""
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
        loads = {  # (seconds, weights on disk)
            "all cached": [(3.6, True), (3.2, True), (3.0, True)],  # a rerun in the same runtime: passes
            "two loads": [(41.5, False), (3.2, True)],
            "later fetched": [(41.5, False), (40.2, False), (3.0, True)],
            "wild later loads": [(41.5, False), (3.0, True), (9.0, True)],
            # model_on_disk asked after each load: on disk every time, a fresh runtime's fetch included
            "checked after": [(41.5, True), (3.2, True), (3.0, True)],
            "tokenizer timed": [(0.4, False), (0.2, True), (0.2, True)],  # load_tokenizer three times
        }.get(v, [(41.5, False), (3.2, True), (3.0, True)])
        records, clock = [], 100.0  # time.perf_counter() as the solution reads it
        for s, disk in loads:
            checked = clock + s + 0.1 if v == "checked after" else clock  # before the load starts, or after
            loaded = "GemmaTokenizerFast" if v == "tokenizer timed" else "Gemma3ForCausalLM"
            records.append({"on_disk": disk, "checked_at": checked, "started_at": clock, "seconds": s,
                            "loaded": loaded})
            clock += s + 1
        files.save_json(folder(runs, "ex00_3") / "load_seconds.json", records)
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
        # forgetting llm_int8_skip_modules: NF4 everywhere; skipping every linear layer: the unquantized
        # model; skipping the MLP's names (gate, up, down) instead: NF4 on attention only, a third saved
        mlp = {"no skip": [390.0, 4.37], "skips all": [540.0, 4.24], "skips the MLP": [495.0, 4.28]}.get(
            v, [455.0, 4.30])
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
        asking = ["Quote: The best way to predict the future is to create it.\nAuthor:",  # the model only
                  "Quote: Be yourself; everyone else is already taken.\nAuthor:"]  # adds the name
        prompts = {"standard prompts": STANDARD[:2], "one prompt": ["Quote: Be yourself, everyone"],
                   "author in the prompt": asking}.get(
            v, ["Quote: The best way to predict the future is", "Quote: Be yourself, everyone"])
        # "authored": the base model wrote an Author: line on both (it may): its behaviour is not judged
        completions = {"authored": [" to create it.\nAuthor: Peter Drucker",
                                    " else is taken.\nAuthor: Oscar Wilde"],
                       "author in the prompt": [" Peter Drucker", " Oscar Wilde"]}.get(
            v, [" to create it. The best way", " else is taken"])
        completions = completions[:len(prompts)]
        pd.DataFrame(
            {
                "prompt": prompts,
                "completion": completions,
                "author_line": [v in ("authored", "author in the prompt")] * len(prompts),
                "new_tokens": [12] * len(prompts),
            }
        ).to_csv(folder(runs, "ex02_2") / "generations.csv", index=False)
    elif name == "02-3":
        distinct = 1 if v == "greedy" else 5
        greedy = 0.0 if v == "no loops" else 0.5  # "no loops": nothing to compare, which passes
        sampled = {"greedy": 0.5, "more loops": 0.6}.get(v, 0.1)
        files.save_json(
            folder(runs, "ex02_3") / "sampling.json",
            [{"prompt": p, "distinct": distinct, "samples": 5, "greedy": greedy, "sampled": sampled}
             for p in STANDARD],
        )
    elif name == "03-1":
        lesson03(folder(runs, "lesson"))
        r = 8 if v == "r unchanged" else 2
        lesson03(folder(runs, "ex03_1"), r=r, eval_loss=3.0 if v == "loss far off" else 2.55,
                 steps=60 if v == "steps changed too" else 40)
    elif name == "03-2":
        lesson03(folder(runs, "lesson"))
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
        lesson03(folder(runs, "lesson"))
        for x, steps, gap in (("a", 10, 0.4), ("b", 10 if v == "steps unchanged" else 30, 0.9)):
            path = folder(runs, f"ex03_3{x}")
            lesson03(path, steps=steps, r=2 if v == "lora_r left from 03-1" and x == "b" else 8)
            masking(path, gap)
    elif name == "03-4":  # every label -100; "labels kept": the batch left whole, which the pre-flight passes
        stop = {"labels kept": None, "not caught": None, "loss line": NAN_LOSS,
                "row all masked": stopped("no row all masked", "8 of 8 rows", "0")}.get(v, SHARE)
        files.save_json(folder(runs, "ex03_4") / "fault.json",
                        {"labelled": 170 if v == "labels kept" else 0, "tokens": 170, "rows": 8,
                         "stopped_by": stop})
    elif name == "03-5":  # each row's <eos> turned to padding, the rest labelled
        stop = {"end kept": None, "not caught": None, "all masked": SHARE, "cache line": CACHE}.get(v, END)
        files.save_json(folder(runs, "ex03_5") / "fault.json",
                        {"rows": 8, "rows_with_end": 8 if v == "end kept" else 0,
                         "labelled": 0 if v == "all masked" else 162, "stopped_by": stop})
    elif name == "03-6":  # the uncached logits noised: a relative gap of about 5 (measured on the embedded)
        stop = {"sound model": None, "not caught": None, "end line": END}.get(v, CACHE)
        # "every pass noised": the noise on the cached path too, which the pre-flight's line sees the same
        cached_gap = 4.9 if v == "every pass noised" else 0.0  # the cached logits against the sound copy's
        files.save_json(folder(runs, "ex03_6") / "fault.json",
                        {"gap": 0.0 if v == "sound model" else 5.2, "cached_gap": cached_gap,
                         "stopped_by": stop})
    elif name == "04-1":
        lesson03(lesson := folder(runs, "lesson"), steps=40)
        metrics(lesson, 120.0, 12.0, 0.0, 1.0)
        lesson03(ex := folder(runs, "ex04_1"), steps=40 if v == "lesson's steps" else 20,
                 r=4 if v == "rank changed too" else 8)
        # a rerun at the lesson's steps lands near the lesson's perplexity, on a GPU a little above it
        tuned = {"lesson's steps": 12.3, "ties the lesson": 12.0}.get(v, 19.0)
        metrics(ex, 120.0, tuned, 0.0, 0.0 if v == "no format" else 0.97)
    elif name == "04-2":
        mine = folder(runs, "ex04_2") / "my_quotes.jsonl"
        counts = {"seen far worse": {"True": [0, 20], "False": [15, 20]},
                  "all unseen": {"False": [3, 8]},  # no author of the file was in training: passes
                  "three quotes": {"True": [1, 2], "False": [0, 1]}}.get(v, {"True": [2, 5], "False": [1, 5]})
        seen = counts.get("True", [0, 0])[1]  # the rows whose author is in train_authors
        if v == "no train_authors":  # evaluate_model(tuned, tokenizer, rows): every author counted unseen
            counts = {"False": [sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())]}
        files.save_json(mine.parent / "own_quotes.json",
                        {"file": "embedded" if v == "course quotes" else str(mine),
                         "rows": sum(c[1] for c in counts.values()), "by_author_in_training": counts,
                         "adapter_on": v != "adapter off",  # "adapter off": inside tuned.disable_adapter()
                         "rows_seen_in_training": seen})
    elif name == "04-3":
        widths = ({"30": 0.2, "100": 0.2, "300": 0.2} if v == "one size"
                  else {"30": 0.31, "100": 0.17, "300": 0.1})
        drawn = {}
        for size, width in widths.items():
            pick = [(7 * i) % 50 for i in range(int(size))]
            # "separate picks": each model resampled with its own draw of quotes, so the pairs are broken
            other = [(11 * i + 3) % 50 for i in range(int(size))] if v == "separate picks" else pick
            drawn[size] = {"width": width, "baseline": pick, "fine-tuned": other}
        files.save_json(folder(runs, "ex04_3") / "widths.json", drawn)
    elif name == "05-1":
        diffs = {"fp32": 2e-5} if v == "one dtype" else {"fp32": 2e-5, "bf16": 0.4}
        # "section 3's logits": the bf16 merge compared with section 3's fp32 `reference`, not with its own
        # unmerged model in bf16: the difference holds bf16's rounding of the whole model
        apart = 0.0 if v == "section 3's logits" else 0.35
        files.save_json(folder(runs, "ex05_1") / "merge.json",
                        {"diffs": diffs, "reference_vs_section_3": apart})
    elif name == "05-2":
        path = folder(runs, "ex05_2")
        adapter(path, 8, b=0.0 if v == "never trained" else 0.01)  # saved before a step: B as LoRA starts
        said = " Quote: Imagination is more" if v == "same adapter" else " Imagination is more important"
        files.save_json(
            path / "generations.json",
            {"quotes": " Quote: Imagination is more", "reverse": " Einstein", "said": said},
        )
        texts = {k: [{"text": f"{k} {n}"} for n in range(3)] for k in ("quotes", "reverse", "said")}
        if v == "lesson's texts":  # the third adapter trained on the lesson's own rows, their texts unchanged
            texts["said"] = texts["quotes"]
        digest = {k: hashlib.sha256("\n".join(r["text"] for r in t).encode()).hexdigest()
                  for k, t in texts.items()}
        files.save_json(path / "trained_on.json", digest)  # as solution 2 writes it
    elif name == "05-3":
        merged_layers = 182 if v == "not merged" else 0
        # the adapter on the lesson's 4-bit base against a 16-bit merged copy; or the 32-bit adapter model
        # against the 16-bit merged copy 05 saved
        mib = {"4-bit against 16-bit": (390.0, 540.0), "32 against 16 bits": (1080.0, 540.0)}.get(
            v, (545.5, 540.0))  # (the adapter model's MiB, the merged model's)
        # "one cold timing": each model timed once, without a warm-up
        runs_each, warm = (1, False) if v == "one cold timing" else (2, True)
        files.save_json(
            folder(runs, "ex05_3") / "timing.json",
            {"adapter": 9.1, "lora_layers_adapter": 182, "adapter_mib": mib[0], "merged": 8.2,
             "lora_layers_merged": merged_layers, "merged_mib": mib[1], "timed_runs_adapter": runs_each,
             "warm_up_adapter": warm, "timed_runs_merged": runs_each, "warm_up_merged": warm},
        )
    elif name == "05-4":  # measured on the embedded model after 03's 40 steps: 14.5 in NF4, 3.8e-5 in fp32
        four_bit, diff = {"16-bit base": (False, 3.8e-5),  # the lesson's merge: no fault made
                          "within tolerance": (True, 1e-3)}.get(v, (True, 14.5))  # made, not caught
        # "section 3's logits": the 4-bit merge compared with section 3's 16/32-bit `reference`, not with the
        # 4-bit model before merging: it measures the base's rounding to 4 bits as well as the merge
        apart = 0.0 if v == "section 3's logits" else 12.0
        files.save_json(folder(runs, "ex05_4") / "fault.json",
                        {"base_4bit": four_bit, "dtype": "fp32", "diff": diff,
                         "tolerance": 2.0 if v == "another tolerance" else 5e-3,
                         "reference_vs_section_3": apart})
    elif name == "06-1":
        methods(folder(runs, "lesson"), {"full": (268_000_000, 3.4, 2.0), "lora_r8": (1_400_000, 3.9, 1.0),
                                         "qlora": (1_400_000, 4.0, 1.5)})
        slower = 2.0 if v == "slower steps" else 1.0
        steps = 4 if v == "steps unchanged" else 12
        longer = {"lora_r8": (1_400_000, 3.89 if steps == 4 else 3.2, 1.1 * slower),
                  "qlora": (1_400_000, 3.99 if steps == 4 else 3.3, 1.6)}
        methods(folder(runs, "ex06_1"), longer, steps=steps, batch_size=8 if v == "batch changed" else 4)
    elif name == "06-2":
        methods(folder(runs, "lesson"), {"lora_r8": (1_400_000, 3.9, 1.0)})
        high = 128 if v != "rank unchanged" else 32
        methods(
            folder(runs, "ex06_2a"),
            {"lora_r8": (1_400_000, 3.9, 1.0), "lora_r32": (350_000, 4.0, 1.0)},
            other_rank=2, steps=12, given={"other_rank": 2, "steps": 12, "methods": ["lora_r8", "lora_r32"],
                                           "seed": 1 if v == "seed changed too" else None},
        )
        methods(
            folder(runs, "ex06_2b"),
            {"lora_r8": (1_400_000, 3.9, 1.0),
             "lora_r32": (1_400_000 * high // 8, 4.1 if v == "loss reversed" else 3.6, 1.2)},
            other_rank=high, steps=12,
            given={"other_rank": high, "steps": 12, "methods": ["lora_r8", "lora_r32"]},
        )
    elif name == "06-3":
        methods(folder(runs, "lesson"), {"lora_r8": (1_400_000, 3.9, 1.0)})
        for x, times, loss in (("a", 0.1, 4.2), ("b", 1, 3.9), ("c", 10, 3.5)):
            times = 1 if v == "rates unchanged" else times
            lora = 4.0 if v == "lora flat" else loss
            prompt = loss + 1 if v != "prompt diverges" else {"a": 5.0, "b": 4.8, "c": 9.0}[x]  # still passes
            methods(
                folder(runs, f"ex06_3{x}"),
                {"prompt": (9_000, prompt, 1.0), "lora_r8": (1_400_000, lora, 1.0)},
                rates={"prompt": 3e-2 * times, "lora_r8": 2e-4 * times},
                given={"methods": ["prompt", "lora_r8"],
                       "rates": {"prompt": 3e-2 * times, "lora_r8": 2e-4 * times},
                       **({"steps": 12} if v == "steps left from 06-2" else {})},
            )
    elif name == "07-1":
        temporal(folder(runs, "lesson"), 0.95, 0.30, 0.07)
        tau = 1.0 if v == "tau unchanged" else 0.25
        year = 0.7 if v == "year collapsed" else 0.93
        # tau left at 1.0: month+year accuracy as the lesson's, on a GPU a little lower or higher by chance
        temporal(folder(runs, "ex07_1"), year, 0.28 if v == "tau unchanged" else 0.12, 0.08, tau=tau,
                 n_train=300 if v == "n_train changed too" else 600,
                 epochs=3.0 if v == "num_epochs too" else 2.0,
                 learning_rate=1e-3 if v == "learning_rate too" else 3e-4)
    elif name == "07-2":
        temporal(folder(runs, "lesson"), 0.95, 0.30, 0.07)
        n = (600, 600) if v == "n_train unchanged" else (150, 300)
        temporal(folder(runs, "ex07_2a"), 0.95 if v == "no drop" else 0.60, 0.1, 0.07, n_train=n[0],
                 epochs=3.0 if v == "num_epochs too" else 2.0,
                 learning_rate=1e-3 if v == "learning_rate too" else 3e-4)
        temporal(folder(runs, "ex07_2b"), 0.85, 0.2, 0.07, n_train=n[1])
    elif name == "07-3":
        temporal(folder(runs, "lesson"), 0.95, 0.30, 0.07)
        first = 2021 if v == "last_year unchanged" else 2024
        temporal(folder(runs, "ex07_3"), 0.95, 0.3, 0.07, far_years=(first, 2027), far_ok=0.0,
                 n_train=300 if v == "n_train left from 07-2" else 600)
    else:
        raise KeyError(name)


SKIPPED = {  # exercise: the variants that skip its point (or do it wrong)
    "00-1": "no dtype",
    "00-2": "two",
    "00-3": ("two loads", "later fetched", "wild later loads", "checked after", "tokenizer timed"),
    "01-1": "same",
    "01-2": "nf4 twice",
    "01-3": ("no skip", "skips all", "skips the MLP"),
    "02-1": "same limit",
    "02-2": ("standard prompts", "one prompt", "author in the prompt"),
    "02-3": ("greedy", "more loops"),
    "03-1": ("r unchanged", "steps changed too", "loss far off"),
    "03-2": "default data",
    "03-3": ("steps unchanged", "lora_r left from 03-1"),
    "03-4": ("labels kept", "not caught", "loss line"),
    "03-5": ("end kept", "not caught", "all masked", "cache line"),
    "03-6": ("sound model", "not caught", "end line", "every pass noised"),
    "04-1": ("lesson's steps", "ties the lesson", "rank changed too", "no format"),
    "04-2": ("seen far worse", "course quotes", "three quotes", "adapter off", "no train_authors"),
    "04-3": ("one size", "separate picks"),
    "05-1": ("one dtype", "section 3's logits"),
    "05-2": ("same adapter", "never trained", "lesson's texts"),
    "05-3": ("not merged", "4-bit against 16-bit", "32 against 16 bits", "one cold timing"),
    "05-4": ("16-bit base", "within tolerance", "another tolerance", "section 3's logits"),
    "06-1": ("steps unchanged", "batch changed", "slower steps"),
    "06-2": ("rank unchanged", "loss reversed", "seed changed too"),
    "06-3": ("rates unchanged", "lora flat", "steps left from 06-2"),
    "07-1": ("tau unchanged", "n_train changed too", "num_epochs too", "learning_rate too", "year collapsed"),
    "07-2": ("n_train unchanged", "num_epochs too", "learning_rate too", "no drop"),
    "07-3": ("last_year unchanged", "n_train left from 07-2"),
}
# honest outcomes that the model, the cache or the data decide, not the learner: each must pass (the issue's
# cases: 00-3 rerun in the same runtime, 02-2's base model writing Author: lines, 04-2 with no author seen in
# training, 02-3 where greedy never loops, 06-3's soft prompt diverging at ten times its rate)
PASSING = {"00-3": "all cached", "02-2": "authored", "02-3": "no loops", "04-2": "all unseen",
           "06-3": "prompt diverges", "03-4": "row all masked"}
NAMES = sorted(judging.EXERCISES)


def test_every_exercise_of_the_course_has_a_check_and_a_test():
    assert len(NAMES) == 28 and set(NAMES) == set(SKIPPED)


@pytest.mark.parametrize("name", NAMES)
def test_the_solutions_files_pass(runs, name, capsys):
    write(runs, name)
    line = exercises.exercise_check(name)
    assert line.startswith(f"exercise {name}: PASS"), line
    verdict = parse_verdict(line)
    assert verdict["verdict"] == "PASS" and all(value >= 0 for value, _, _ in verdict["margins"]), line


@pytest.mark.parametrize("name, variant", sorted(PASSING.items()))
def test_an_outcome_the_model_or_the_cache_decides_still_passes(runs, name, variant):
    """00-3 failed a rerun in the same runtime (the cache decided), 04-2 a file with no author seen in
    training (the case its own text predicts), 02-2 a base model that writes Author: lines: the learner did
    the work."""
    write(runs, name, variant)
    line = exercises.exercise_check(name)
    assert line.startswith(f"exercise {name}: PASS"), line


VARIANTS = [(name, v) for name, vs in SKIPPED.items() for v in ((vs,) if isinstance(vs, str) else vs)]


@pytest.mark.parametrize("name, variant", VARIANTS)
def test_skipping_the_point_fails(runs, name, variant):
    write(runs, name, variant)
    line = exercises.exercise_check(name)
    assert line.startswith(f"exercise {name}: FAIL"), line
    assert "could not be read" not in line  # judged on what the run shows, not stopped by its shape


# what a learner's files may hold instead: valid JSON of each kind (a CSV with one column of that name), and
# text that is neither JSON nor a table pandas can read
SHAPES = ["[]", "{}", "null", '"text"', "7", '[{"a": 1}]', "not json, \"broken"]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", NAMES)
def test_results_in_another_shape_fail_and_never_stop_the_notebook(runs, name, shape):
    """05-1 stopped with a ValueError when one dtype was used twice: a check gives a verdict. Only a learner's
    file in another shape gives it: the check's rule reads it without an error of its own."""
    write(runs, name)
    for path in (runs / f for f in judging.EXERCISES[name].folders):
        for result in path.rglob("*.*"):
            if result.name != run_folder.ORIGIN:
                result.write_text(shape)
    line = exercises.exercise_check(name)
    assert line.startswith(f"exercise {name}: FAIL"), line


LEARNERS = {  # errors a learner's file causes in a rule, by what the file holds
    "no file": lambda: Path("/nowhere/metrics.json").read_text(),
    "not JSON": lambda: json.loads("{'single': quotes}"),
    "a key missing": lambda: {}["fp32"],
    "an entry missing": lambda: [][0],
    "another type": lambda: json.loads("[1, 2]")["fp32"],
    "a bad value": lambda: float("n/a"),
    "a broken table": lambda: pd.read_csv(io.StringIO('a,b\n"1,2\n')),  # a quote never closed
    "a damaged safetensors file": lambda: safetensors.safe_open(__file__, "pt"),
}


@pytest.mark.parametrize("what", sorted(LEARNERS))
def test_what_a_learner_wrote_wrong_gives_fail_with_the_reason(what):
    line = judging.exercise_verdict("05-1", "two dtypes", True, LEARNERS[what])
    assert line.startswith("exercise 05-1: FAIL") and "the results could not be read (" in line, line


RULE_BUGS = {  # errors of a check's own rule: the course's mistake, never the learner's FAIL
    "a name the rule misspelt": (NameError, lambda: undefined_name),  # noqa: F821
    "a method the value lacks": (AttributeError, lambda: (0.5).items()),
    "its arithmetic": (ZeroDivisionError, lambda: 1 / 0),
    "an import": (ImportError, lambda: __import__("gemmate_lib.no_such_module")),
}


@pytest.mark.parametrize("what", sorted(RULE_BUGS))
def test_a_bug_in_a_checks_rule_raises_instead_of_failing_the_learner(what):
    error, rule = RULE_BUGS[what]
    with pytest.raises(error):
        judging.exercise_verdict("05-1", "two dtypes", True, rule)


def test_a_bug_in_a_registered_check_surfaces_from_its_check_cell(runs, monkeypatch):
    """Through the notebook's own call: the learner's files are right, the rule breaks."""
    write(runs, "04-3")
    monkeypatch.setattr(checks_04_07, "rounded", lambda x: x.round())  # no float.round(): a bug
    with pytest.raises(AttributeError):
        exercises.exercise_check("04-3")


@pytest.mark.parametrize("name", NAMES)
def test_not_run_yet_before_the_exercise(runs, name):
    assert exercises.exercise_check(name).startswith(f"exercise {name}: NOT RUN YET")


# ---- results of another model never pass ----


@pytest.mark.parametrize("name", NAMES)
def test_results_of_another_model_never_pass(runs, name, monkeypatch):
    """Exercise folders persist on Drive: a course redone with another model showed PASS for last week's."""
    write(runs, name)
    monkeypatch.setitem(run_folder._KERNEL, "model_name", OTHER)  # the lesson now runs another model
    line = exercises.exercise_check(name)
    assert line.startswith(f"exercise {name}: FROM ANOTHER MODEL (ran on {MODEL}, the lesson now runs "
                           f"{OTHER}): run it again"), line


@pytest.mark.parametrize("name", NAMES)
def test_a_folder_opened_again_on_another_model_does_not_pass_on_the_old_results(runs, name, monkeypatch):
    """A solution that reads an exercise's folder (get_run_dir) records the new model in it; the results in it
    are still the old model's, and their times say so."""
    write(runs, name)
    past = time.time() - 600
    for path in (runs / f for f in judging.EXERCISES[name].folders):
        for result in path.rglob("*"):
            os.utime(result, (past, past))  # written last week, on MODEL
    monkeypatch.setitem(run_folder._KERNEL, "model_name", OTHER)
    for f in judging.EXERCISES[name].folders:
        assert run_folder.stamp_origin(runs / f)["before"]["model"] == MODEL  # as get_run_dir(f) does
    line = exercises.exercise_check(name)
    assert line.startswith(f"exercise {name}: FROM ANOTHER MODEL"), line
    assert f"on {MODEL}, not on {OTHER}" in line, line


@pytest.mark.parametrize("name", NAMES)
def test_results_without_a_record_of_their_model_do_not_pass(runs, name):
    write(runs, name)
    for f in judging.EXERCISES[name].folders:
        (runs / f / run_folder.ORIGIN).unlink()
    line = exercises.exercise_check(name)
    assert line.startswith(f"exercise {name}: MODEL UNKNOWN"), line


def test_runs_of_one_exercise_on_two_models_do_not_pass(runs, monkeypatch):
    """No model in this process and none kept by 00: the runs must still agree with each other."""
    write(runs, "06-2")
    monkeypatch.delitem(run_folder._KERNEL, "model_name")
    assert exercises.exercise_check("06-2").startswith("exercise 06-2: PASS")
    origin = json.loads((runs / "ex06_2b" / run_folder.ORIGIN).read_text())
    (runs / "ex06_2b" / run_folder.ORIGIN).write_text(json.dumps({**origin, "model": OTHER}))
    line = exercises.exercise_check("06-2")
    assert line.startswith(f"exercise 06-2: FROM ANOTHER MODEL (its runs ran on {MODEL} and {OTHER})"), line


COMPARING = [name for name in NAMES if judging.EXERCISES[name].lesson]


def test_every_rerun_exercise_compares_its_settings_with_the_lesson():
    reruns = [name for name in NAMES if judging.EXERCISES[name].parameters]
    assert COMPARING == reruns == ["03-1", "03-2", "03-3", "04-1", "06-1", "06-2", "06-3", "07-1", "07-2",
                                   "07-3"]


@pytest.mark.parametrize("name, variant", [("03-3", "lora_r left from 03-1"),
                                           ("06-3", "steps left from 06-2"),
                                           ("07-3", "n_train left from 07-2"), ("06-2", "seed changed too")])
def test_a_setting_left_from_an_earlier_exercise_fails_naming_it(runs, name, variant):
    """The issue's wrong attempts: a setting an earlier exercise changed, never set back."""
    write(runs, name, variant)
    line = exercises.exercise_check(name)
    key = {"03-3": "lora_r", "06-3": "steps", "07-3": "n_train", "06-2": "seed"}[name]
    assert line.startswith(f"exercise {name}: FAIL") and f"also changed {key} (" in line, line


@pytest.mark.parametrize("name", COMPARING)
def test_a_comparison_with_a_lesson_run_on_another_model_does_not_pass(runs, name):
    write(runs, name)
    path = runs / "lesson" / "manifest.json"
    manifest = json.loads(path.read_text())
    for entry in manifest["notebooks"].values():
        entry["model"] = OTHER
    path.write_text(json.dumps(manifest))
    line = exercises.exercise_check(name)
    assert line.startswith(f"exercise {name}: FROM ANOTHER MODEL (ran on {MODEL}, the lesson's run of "
                           f"{name[:2]} on {OTHER})"), line


def test_without_a_model_in_this_process_the_check_reads_the_lesson_s_model_choice(runs, monkeypatch):
    """A kernel that ran no course_config (a check cell run alone): 00's model_choice.json decides."""
    write(runs, "02-1")
    monkeypatch.delitem(run_folder._KERNEL, "model_name")
    assert exercises.exercise_check("02-1").startswith("exercise 02-1: PASS")
    run_folder.remember_model(runs / "lesson", OTHER)
    assert exercises.exercise_check("02-1").startswith("exercise 02-1: FROM ANOTHER MODEL")


def test_an_exercise_folder_records_its_model_and_lesson_run(runs):
    lesson = folder(runs, "lesson")
    manifest(lesson, "00_setup", seed=42)
    origin = json.loads((folder(runs, "ex02_1") / run_folder.ORIGIN).read_text())
    assert origin["exercise"] == "02-1" and origin["model"] == MODEL
    assert origin["lesson_run"] == {"folder": str(lesson), "created": json.loads(
        (lesson / "manifest.json").read_text())["created"]}
    assert not (lesson / run_folder.ORIGIN).exists()  # the lesson's folder is no exercise's
    assert json.loads((lesson / "manifest.json").read_text())["notebooks"]["00_setup"]["model"] == MODEL


# ---- what the texts name ----


def exercise_texts(prefix: str) -> str:
    """The markdown of notebook `prefix`'s exercises (from its "## Exercises" heading on)."""
    cells = notebook_cells(prefix)
    start = next(i for i, c in enumerate(cells) if "## Exercises" in "".join(c["source"]))
    return "\n".join("".join(c["source"]) for c in cells[start:] if c["cell_type"] == "markdown")


RERUNS = [name for name in NAMES if judging.EXERCISES[name].parameters]


@pytest.mark.parametrize("name", RERUNS)
def test_a_rerun_exercises_text_names_its_parameters_and_the_sections_its_check_reads(name):
    """07-1 said to stop at section 6, but its check reads the manifest that section 10 writes."""
    spec, text = judging.EXERCISES[name], exercise_texts(name[:2])
    for stem, params in spec.parameters:
        for key, value in params.items():
            assert judging.parameters_text({key: value}) in text, (name, stem, key)
        assert (ROOT / "notebooks" / f"{stem}.ipynb").exists()
    assert f"The check reads {spec.reads}" in text, name


def parameters_cell_names(stem: str) -> set[str]:
    """Every name the notebook's parameters cell assigns (`first_year, last_year = 2007, 2020` too, which
    papermill's inspect_notebook leaves out; its injected cell sets them all the same)."""
    cells = json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text())["cells"]
    cell = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def test_a_rerun_exercises_parameters_are_its_notebooks_parameters():
    for name in RERUNS:
        for stem, params in judging.EXERCISES[name].parameters:
            declared = parameters_cell_names(stem)
            assert set(params) <= declared, (name, set(params) - declared)
            assert params["run_dir"].startswith("runs/ex" + name.replace("-", "_")), name


def test_a_verdict_line_is_read_back_with_its_margins():
    line = judging.exercise_verdict("06-2", "the loss falls", True, lambda: (True, "3.9 / 3.6", [
        judging.more(0.31, 0, "nats", "rank 2's loss over rank 128's"),
        judging.less(1.2, 1.5, "x", "step time", strict=False)]))
    assert parse_verdict(line) == {"name": "06-2", "verdict": "PASS", "margins": [
        (0.31, "nats", "rank 2's loss over rank 128's 0.31, needs > 0"),
        (0.3, "x", "step time 1.2, needs <= 1.5")]}
    failed = judging.exercise_verdict("06-2", "the loss falls", True, lambda: (True, "", [
        judging.more(-0.2, 0, "nats", "fall")]))
    assert parse_verdict(failed)["verdict"] == "FAIL"  # a margin below its threshold fails
    not_run = parse_verdict("exercise 03-1: NOT RUN YET (set lora_r)")
    assert not_run["verdict"] == "NOT RUN YET"
    assert parse_verdict("PASS the adapter is saved") == {}


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


# ---- the faults to break on purpose ----


def test_05_4_judges_by_the_tolerances_of_05s_merge_check():
    """05-4 holds a 4-bit merge's difference to the tolerance that section 3 uses for the merge's dtype: the
    course's check, not one of the exercise's own."""
    sources = ["".join(c["source"]) for c in notebook_cells("05") if c["cell_type"] == "code"]
    found = [m for s in sources for m in re.findall(r"tolerance = (\{[^}]*\})\[merge_precision\.name\]", s)]
    assert len(found) == 1 and ast.literal_eval(found[0]) == checks_04_07.MERGE_TOLERANCE


NOT_MADE = [("03-4", "labels kept"), ("03-5", "end kept"), ("03-6", "sound model"), ("05-4", "16-bit base")]


@pytest.mark.parametrize("name, fault", NOT_MADE)
def test_a_fault_not_made_fails_saying_so_whatever_the_check_said(runs, name, fault):
    write(runs, name, fault)
    line = exercises.exercise_check(name)
    assert line.startswith(f"exercise {name}: FAIL") and "(the fault: " in line, line
