"""The config's one type checker and one validator (part of the one config family).

Taught in 00_setup (what a wrong parameter looks like). `coerce` turns a value into
its setting's type or raises a ParameterError naming the setting and the fix;
`validate` checks every value of a flat config before any model or data loads.
"""
from __future__ import annotations

import math
import types
import typing
from pathlib import Path

from .errors import ParameterError
from .settings import CHOICES, GROUPS, HINTS, OWNER


def _type_name(hint) -> str:
    return str(hint).replace("typing.", "") if typing.get_origin(hint) else hint.__name__


def coerce(name: str, value, from_text: bool = False):
    """`value` as the type of setting `name`, or a ParameterError naming it.

    Values from notebooks and YAML must already have the right type (papermill's
    `-p max_steps ten` arrives as the string "ten" and is refused); with `from_text`
    (command-line flags) strings are parsed: "8" -> 8, "true" -> True, "a,b" -> ("a", "b").
    """
    hint = HINTS[name]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    union = origin in (typing.Union, types.UnionType)
    if union and value is None and type(None) in args:
        return None
    for option in (a for a in args if a is not type(None)) if union else (hint,):
        try:
            return _coerce_one(value, option, from_text)
        except (TypeError, ValueError):
            continue
    default = getattr(GROUPS[OWNER[name]](), name)
    raise ParameterError(f"parameter {name}={value!r} has type {type(value).__name__}, but {name} must be "
                         f"{_type_name(hint)}",
                         f"pass a {_type_name(hint)}, e.g. {name}={default!r} (the default): papermill -p {name} ..., "
                         f"YAML `{name}: ...` or --{name} ...")


def _coerce_one(value, hint, from_text: bool):
    if typing.get_origin(hint) is tuple:
        if from_text and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
    elif hint is bool:
        if isinstance(value, bool):
            return value
        if from_text and isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_text and isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if from_text and isinstance(value, str):
            return float(value)
    elif hint is str and isinstance(value, str):
        return value
    raise TypeError(value)


def fail(name: str, value, must: str, fix: str):
    raise ParameterError(f"parameter {name}={value!r} {must}", fix)


def validate(flat: dict) -> None:
    """Raise ParameterError, naming the setting and the fix, for any value of a flat config that cannot work."""
    for name, options in CHOICES.items():
        if flat[name] not in options:
            names = ", ".join(str(o) for o in options)
            fail(name, flat[name], f"is not one of {names}", f"set {name} to one of: {names}")
    for name in ("max_length", "batch_size", "gradient_accumulation_steps", "steps_freq", "lora_r", "max_new_tokens",
                 "temporal_dim"):
        if flat[name] < 1:
            fail(name, flat[name], "must be at least 1", f"set {name} to a positive whole number")
    for name in ("keep_last_n", "keep_best_n", "early_stopping_patience", "val_steps_freq", "warmup_steps"):
        if flat[name] < 0:
            fail(name, flat[name], "must not be negative", f"set {name} to 0 or more")
    for name in ("learning_rate", "projection_learning_rate"):
        if not (math.isfinite(flat[name]) and 0 < flat[name] < 1):
            fail(name, flat[name], "must be a finite number in (0, 1)", f"typical values: 1e-4 to 3e-3 (e.g. {name}=2e-4)")
    for name in ("lora_alpha", "temporal_scale"):
        if not (math.isfinite(flat[name]) and flat[name] > 0):
            fail(name, flat[name], "must be a positive finite number", f"e.g. {name}={getattr(GROUPS[OWNER[name]](), name)}")
    if not 0 <= flat["lora_dropout"] < 1:
        fail("lora_dropout", flat["lora_dropout"], "must lie in [0, 1)", "e.g. lora_dropout=0.05, or 0 for none")
    if not 0 < flat["eval_fraction"] < 1:
        fail("eval_fraction", flat["eval_fraction"], "must lie between 0 and 1", "e.g. eval_fraction=0.1 (10% held out)")
    if not (math.isfinite(flat["weight_decay"]) and flat["weight_decay"] >= 0):
        fail("weight_decay", flat["weight_decay"], "must be a finite number >= 0", "e.g. weight_decay=0.0")
    for name in ("seed", "data_seed"):
        if not 0 <= flat[name] < 2**32:
            fail(name, flat[name], "must be a whole number in [0, 2**32)", f"e.g. {name}=42")
    if flat["max_steps"] == 0 or flat["max_steps"] < -1:
        fail("max_steps", flat["max_steps"], "must be at least 1, or -1 (train num_epochs)", "e.g. max_steps=40")
    if not math.isfinite(flat["num_epochs"]) or (flat["max_steps"] < 1 and flat["num_epochs"] <= 0):
        fail("num_epochs", flat["num_epochs"], "trains nothing or never ends (with max_steps -1)",
              "set max_steps >= 1, or a finite num_epochs > 0 with max_steps -1")
    if flat["temporal_dim"] < 4 or flat["temporal_dim"] % 2:
        fail("temporal_dim", flat["temporal_dim"], "must be even and at least 4", "use 32, 64 or 128")
    _check_paths(flat)
    _check_checkpoints(flat)


def _check_paths(flat: dict) -> None:
    """Files that must exist do; the output folder can be written."""
    import os

    dataset = flat["dataset"]
    if dataset.endswith((".jsonl", ".csv", ".json")) and not Path(dataset).is_file():
        raise ParameterError(f"parameter dataset={dataset!r}: no such file" + (" (it is a folder)" if Path(dataset).is_dir()
                                                                                else ""),
                             "check the path (relative paths start at the notebook's or command's folder), "
                             "or use dataset='embedded'")
    folder = Path(flat["output_dir"]).expanduser().absolute()
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ParameterError(f"parameter output_dir={flat['output_dir']!r} cannot be written ({existing} is "
                             f"{'not a folder' if existing and not existing.is_dir() else 'read-only'})",
                             "choose a folder you can write to, e.g. under your home folder")


def _check_checkpoints(flat: dict) -> None:
    needs_metric = {"keep_best_n": flat["keep_best_n"] > 0 and flat["save_strategy"] != "no",
                    "early_stopping_patience": flat["early_stopping_patience"] > 0,
                    "resume_option=best": flat["resume_from_checkpoint"] and flat["resume_option"] == "best"}
    for key, used in needs_metric.items():
        if used and not flat["checkpoint_metric"]:
            raise ParameterError(f"{key} ranks checkpoints, but checkpoint_metric is not set",
                                 "set checkpoint_metric: eval_loss (and val_steps_freq > 0), or keep_best_n: 0")
        if used and flat["val_steps_freq"] == 0:
            raise ParameterError(f"{key} needs evaluations, but val_steps_freq is 0", "set val_steps_freq >= 1")
    if flat["resume_from_checkpoint"]:
        if flat["resume_option"] == "path":
            path = flat["checkpoint_path"]
            if not path:
                raise ParameterError("resume_option='path' needs checkpoint_path",
                                     "set checkpoint_path to a checkpoint-<step> folder")
            if not Path(path).is_dir():
                raise ParameterError(f"parameter checkpoint_path={path!r} does not exist",
                                     "point it at an existing checkpoint-<step> folder inside an output_dir")
        if flat["keep_last_n"] + flat["keep_best_n"] == 0:
            raise ParameterError("keep_last_n and keep_best_n are both 0, so there is nothing to resume from",
                                 "set keep_last_n >= 1")
    storage = flat["storage_backend"] != "none" or flat["sync_to_storage"] or flat["load_from_storage"]
    if storage and not flat["remote_path"]:
        raise ParameterError("checkpoint storage is on (storage_backend / sync_to_storage / load_from_storage), "
                             "but remote_path is not set", "set remote_path, e.g. s3://bucket/run or a folder")
    if flat["use_wandb"]:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise ParameterError("use_wandb is true, but the wandb package is not installed",
                                 "pip install wandb (it logs offline here, WANDB_MODE=offline; `wandb sync` uploads "
                                 "later), or use_wandb: false")
    if flat["report_to"] != "none":
        import importlib.util

        if importlib.util.find_spec(flat["report_to"]) is None:
            raise ParameterError(f"parameter report_to={flat['report_to']!r}, but the package is not installed",
                                 f"pip install {flat['report_to']} (make install pins tensorboard), or report_to: none")
