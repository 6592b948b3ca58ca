"""Is my run normal? (03_lora_sft, 04_evaluation and 07_temporal_encoding print `normal_line` near their end.)
A learner's held-out loss, Author-line share or seconds per step mean little alone: this module compares them,
read from the run's own files, with the bands in reference_bands.json beside it (measured from real runs
over several seeds by `python -m tools.runners.reference_runs`). A band is kept per notebook, model, runtime
(device and compute dtype) and the settings that decide the figures (COMPARED_SETTINGS): runs that differ in
any of them are never compared, and where no run was measured the line says so. Seconds and memory also need
the same machine. For a figure outside its band the line says what to check (FIGURES): a run that "trained
but learned nothing" shows as a held-out loss far above its band."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from gemmate_lib.hardware import cpu_bf16_units

BANDS = Path(__file__).with_name("reference_bands.json")  # measured by tools/runners/reference_runs.py


@dataclass(frozen=True)
class Figure:
    label: str  # the words the line uses
    digits: int  # decimals shown
    machine: bool  # seconds and memory: compared on the same machine only
    above: str  # what to check when the figure is above its band ("fine: ..." where that is no fault)
    below: str  # ... and below it
    unit: str = ""


LOSS_HIGH = ("a run that trained but learned little: a mask that labels nothing (the gradient tripwire's "
             "line), the learning rate, the KV cache path (the pre-flight's first line), or other data than "
             "the settings say")
LEAK = "held-out rows in the training data (another data_seed, or a dataset with duplicates)"
SLOW = ("another job on the cores (a second notebook or a test run), bf16 on a CPU without native bf16 "
        "(emulated: use fp32), the GPU not used (the model on the CPU), or a shared machine slower today "
        "(00's matmul time against the committed 00's)")
MEMORY = ("a second copy of the model held (a cell run twice, a model not freed: del it, gc.collect(), "
          "torch.cuda.empty_cache()), or a larger batch than the settings say")
FINE = "fine: a faster or quieter machine"
TIME = ("timestamps not reaching the model (the collator's timestamps, remove_unused_columns=False), the "
        "projection's learning rate, too few epochs")
NOT_THIS_03 = "a 03 run that learned little (its held-out loss line)"
FIGURES = {
    "held_out_loss": Figure("held-out loss", 3, False, LOSS_HIGH, LEAK),
    "perplexity": Figure("held-out perplexity", 2, False, "an adapter that is not this run's 03 (the run "
                         f"folder's, or adapter_repo's), or {NOT_THIS_03}", LEAK),
    "format_share": Figure("Author-line share", 3, False, "fine: more learned than measured",
                           f"an adapter that is not loaded or not this run's, or {NOT_THIS_03}"),
    "year_accuracy": Figure("exact-year accuracy", 3, False,
                            "the note text giving the year away (see the constant-timestamp figure)", TIME),
    "year_accuracy_constant": Figure("exact-year accuracy with a constant timestamp", 3, False,
                                     "the note text giving the year away", "fine: closer to chance"),
    "python_accuracy": Figure("Python-release accuracy", 3, False, "fine: more learned",
                              TIME + " (python_epochs)"),
    "seconds_per_step": Figure("seconds per step", 2, True, SLOW, FINE),
    "peak_memory_gib": Figure("peak memory", 2, True, MEMORY, FINE, " GiB")}
PER_NOTEBOOK = {"03_lora_sft": ("held_out_loss", "seconds_per_step", "peak_memory_gib"),
                "04_evaluation": ("format_share", "perplexity", "peak_memory_gib"),
                "07_temporal_encoding": ("year_accuracy", "year_accuracy_constant", "python_accuracy",
                                         "seconds_per_step", "peak_memory_gib")}
COMPARED_SETTINGS = tuple((group, name) for group, names in (
    ("model", ("quantization", "attn_implementation")), ("data", ("dataset", "eval_fraction", "data_seed")),
    ("lora", ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_trainable_tokens")),
    ("train", ("max_length", "learning_rate", "batch_size", "gradient_accumulation_steps",
               "gradient_checkpointing", "num_epochs", "max_steps", "warmup_steps", "weight_decay", "optim",
               "val_steps_freq", "deterministic", "fast_loss", "group_by_length", "completion_only_loss")),
) for name in names)
TEMPORAL_SETTINGS = (("temporal", "temporal_min_period"), ("temporal", "temporal_max_period"))
NOT_SETTINGS = ("seed",)  # 07's settings record the seed: bands span seeds


def machine(device: str) -> str:
    """This machine as the bands name it: the GPU's name, or the CPU's cores and bf16 units."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    units = cpu_bf16_units()
    return f"{os.cpu_count()}-core CPU " + (f"with {units}" if units else "without native bf16")


def _settings(config: dict, keys=COMPARED_SETTINGS) -> dict:
    return {name: config.get(group, {}).get(name) for group, name in keys}


def run_record(notebook: str, run_dir: str | os.PathLike, cfg) -> dict | str:
    """What `notebook`'s run in `run_dir` is compared by: model, runtime, machine, settings and figures, read
    from the run's files (manifest.json, loss_log.csv; 07's training settings also from its `cfg`); or why
    there is nothing to compare yet."""
    if notebook not in PER_NOTEBOOK:
        raise ValueError(f"no reference figures for {notebook}: one of {', '.join(PER_NOTEBOOK)}")
    try:
        entries = json.loads((Path(run_dir) / "manifest.json").read_text()).get("notebooks", {})
    except (OSError, ValueError):
        entries = {}
    entry = entries.get(notebook)
    if entry is None:
        return f"this run folder's manifest has no {notebook} entry yet (its save cell writes it)"
    trained = entries.get("03_lora_sft", {}).get("config")
    if notebook == "07_temporal_encoding":  # its config's training settings, then those the run recorded
        from gemmate_lib.config import config_summary

        settings = _settings(config_summary(cfg), COMPARED_SETTINGS + TEMPORAL_SETTINGS)
        settings |= {k: v for k, v in entry.get("settings", {}).items() if k not in NOT_SETTINGS}
        figures = {"year_accuracy": entry["year_accuracy_true"],
                   "year_accuracy_constant": entry["year_accuracy_constant"],
                   "python_accuracy": entry["python_releases"]["test"]["accuracy"],
                   "seconds_per_step": entry["train_seconds"] / max(entry["steps"], 1)}
    elif not trained:
        return "this run folder does not say how 03_lora_sft trained the adapter (run 03 into it)"
    elif notebook == "04_evaluation":
        tuned = entry["metrics"]["fine-tuned"]
        settings = _settings(trained) | {"split": entry.get("split"), "n_examples": entry.get("n_examples")}
        figures = {"format_share": tuned["format_compliance"], "perplexity": tuned["perplexity"]}
    else:
        import pandas as pd

        try:
            log = pd.read_csv(Path(run_dir) / "loss_log.csv")
        except OSError:
            return "no loss_log.csv in this run folder (section 4 writes it)"
        evals = log.dropna(subset=["eval_loss"])
        if not len(evals):
            return "the trainer logged no held-out loss (eval_strategy)"
        steps = trained["train"]["max_steps"] if trained["train"]["max_steps"] > 0 else int(log.step.max())
        settings = _settings(trained)
        figures = {"held_out_loss": float(evals.eval_loss.iloc[-1]),
                   "seconds_per_step": entry["train_seconds"] / max(steps, 1)}
    figures["peak_memory_gib"] = entry.get("peak_memory_gib")
    precision = cfg.precision
    return {"notebook": notebook, "model": cfg.model.model_name,
            "runtime": {"device": precision.device, "dtype": precision.name},
            "machine": machine(precision.device), "settings": settings,
            "figures": {k: figures[k] for k in PER_NOTEBOOK[notebook]}}


def load_bands(path: str | os.PathLike = BANDS) -> list[dict]:
    try:
        return json.loads(Path(path).read_text()).get("bands", [])
    except (OSError, ValueError):
        return []


def figure_text(value: float, figure: Figure) -> str:
    return f"{value:.{figure.digits}f}{figure.unit}"


def _differing(mine: dict, theirs: dict) -> list[str]:
    return [k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]


def _figure_line(name: str, value, band: dict) -> tuple[str, bool]:
    """One figure's words against its band, and whether it is outside on the side that needs a check."""
    figure = FIGURES[name]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{figure.label}: not recorded", False
    shown = f"{figure.label} {figure_text(value, figure)}"
    if name not in band["figures"]:  # measured, but left out of the band (tools/runners/reference_runs.py)
        return f"{shown}: no band ({band.get('left_out', {}).get(name, 'not measured')})", False
    low, high = band["figures"][name]["low"], band["figures"][name]["high"]
    span = f"{low:.{figure.digits}f}-{figure_text(high, figure)}"
    if low <= value <= high:
        return f"{shown} inside {span}", False
    side, check = ("ABOVE", figure.above) if value > high else ("BELOW", figure.below)
    if check.startswith("fine"):
        return f"{shown} {side} {span} ({check})", False
    return f"{shown} {side} {span} (check: {check})", True


def judge_run(record: dict, bands: list[dict]) -> str:
    """One line: each figure of `record` inside or outside its band, what to check for one outside, or that no
    measured run matches this model, runtime and settings."""
    nb, runtime = record["notebook"], record["runtime"]
    where = f"{runtime['dtype']} on a {record['machine']}"
    model = "the embedded Gemma 3 270M" if record["model"] == "embedded" else record["model"]
    same_runtime = [b for b in bands if b["notebook"] == nb and b["model"] == record["model"]
                    and b["runtime"] == runtime]
    if not same_runtime:
        return f"{nb}: no reference for {model} in {where} yet: bands come from measured runs only"
    matched = [b for b in same_runtime if b["settings"] == record["settings"]]
    if not matched:
        mine = record["settings"]
        theirs = min(same_runtime, key=lambda b: len(_differing(mine, b["settings"])))["settings"]
        diff = [f"{k} {mine.get(k)!r} (measured: {theirs.get(k)!r})" for k in _differing(mine, theirs)]
        differ = ", ".join(diff[:3]) + (f" and {len(diff) - 3} more" if len(diff) > 3 else "")
        return (f"{nb}: no reference for {model} in {where} with these settings ({differ}): bands come from "
                "measured runs only, and runs with other settings are never compared")
    band = next((b for b in matched if b["machine"] == record["machine"]), matched[0])
    other_machine = band["machine"] != record["machine"]
    lines = [_figure_line(name, value, band) for name, value in record["figures"].items()
             if not (FIGURES[name].machine and other_machine)]
    parts, outside = [text for text, _ in lines], sum(bad for _, bad in lines)
    skipped = [FIGURES[name].label for name in record["figures"] if FIGURES[name].machine and other_machine]
    if skipped:
        parts.append(f"{' and '.join(skipped)}: no reference for a {record['machine']} (measured on a "
                     f"{band['machine']})")
    seeds = band.get("seeds", [])
    runs = f"{len(seeds)} measured runs (seeds {', '.join(map(str, seeds))}, {band.get('date', 'undated')})"
    verdict = (f"against the bands of {runs}: normal" if not outside else
               f"{outside} outside the bands of {runs}: not normal")
    return f"{nb} ({model}, {where}): " + "; ".join(parts) + f"; {verdict}"


def normal_line(notebook: str, run_dir: str | os.PathLike, cfg, bands: str | os.PathLike = BANDS) -> str:
    """The notebook's line: this run's figures (its own files) against the bands measured for the same model,
    runtime and settings."""
    record = run_record(notebook, run_dir, cfg)
    if isinstance(record, str):
        return f"{notebook}: nothing to compare yet: {record}"
    return judge_run(record, load_bands(bands))
