"""The one config of the course: typed settings, the profile that picks defaults, and one validator.

Taught in 00_setup (the profile) and 03_lora_sft (LoRA and training settings); the
`gemmate` command reads the same settings from YAML and flags (docs/command-line.md).

Every setting has one name, taken from the Gemma 1.1 LoRA experiment's config table
where it has one (`model_name`, `lora_r`, `learning_rate`, `batch_size`,
`gradient_accumulation_steps`, `seed`, `steps_freq`, `keep_last_n`, ...), so a seed-style
YAML file loads as it is. The settings live in a few groups (model, data, lora, train,
checkpoints, temporal, generate); names are unique across groups, so a flat
`name: value` (a notebook parameter, a YAML key or a `--flag`) always has one owner.

`course_config(**params)` is the profile function: defaults for this machine, then
the task's defaults, then the given values (None means "let the profile decide"),
then `validate`, before any model or data loads.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ParameterError
from .fsio import read_yaml
from .hardware import DTYPES, Precision, pick_precision
from .settings import (
    ALIASES,
    CHOICES,
    CPU_PROFILE,
    EMBEDDED,
    GROUPS,
    HUB_DATASET,
    HUB_MODEL,
    NULLABLE,
    OPTIMIZERS,
    OWNER,
    REFERENCE_MS,
    SEED_QLORA,
    SEED_TARGET_MODULES,
    TASK_DEFAULTS,
    VALID_KEYS,
    CheckpointSettings,
    DataSettings,
    GenerateSettings,
    LoraSettings,
    ModelSettings,
    TemporalSettings,
    TrainSettings,
)
from .validation import coerce, fail, validate

__all__ = ["CourseConfig", "course_config", "load_config", "dump_config", "config_summary", "coerce",
           "validate", "CHOICES", "EMBEDDED", "HUB_DATASET", "HUB_MODEL", "OPTIMIZERS", "OWNER", "REFERENCE_MS",
           "SEED_QLORA", "SEED_TARGET_MODULES", "TASK_DEFAULTS", "VALID_KEYS", "CheckpointSettings", "DataSettings",
           "GenerateSettings", "LoraSettings", "ModelSettings", "TemporalSettings", "TrainSettings"]


@dataclass
class CourseConfig:
    model: ModelSettings = field(default_factory=ModelSettings)  # which model and how it is loaded
    data: DataSettings = field(default_factory=DataSettings)  # the quotes (or your own file)
    lora: LoraSettings = field(default_factory=LoraSettings)  # the adapter
    train: TrainSettings = field(default_factory=TrainSettings)  # the training run
    checkpoints: CheckpointSettings = field(default_factory=CheckpointSettings)  # `gemmate train`: save and resume
    temporal: TemporalSettings = field(default_factory=TemporalSettings)  # GemmaTE (07, `gemmate train-te`)
    generate: GenerateSettings = field(default_factory=GenerateSettings)  # generation
    precision: Precision = field(default_factory=pick_precision)  # device and compute dtype, from model.device/dtype
    profile: str = "cpu-embedded"  # name of the profile that chose the defaults
    task: str = "quotes"  # "quotes" (LoRA SFT), "temporal" (GemmaTE) or "methods" (06): which task's defaults apply

    def flat(self) -> dict:
        """Every setting as one flat {name: value} dict (what YAML files and flags use)."""
        return {k: v for group in GROUPS for k, v in dataclasses.asdict(getattr(self, group)).items()}

    def get(self, name: str):
        """The value of one setting by its flat name."""
        return getattr(getattr(self, OWNER[name]), name)

    def replace(self, **values) -> CourseConfig:
        """A copy with some settings changed (flat names), type-checked and validated."""
        unknown = sorted(set(values) - set(OWNER))
        if unknown:
            raise ParameterError(f"unknown parameter {unknown[0]!r}", f"use one of: {', '.join(sorted(OWNER))}")
        groups = {group: getattr(self, group) for group in GROUPS}
        for name, value in values.items():
            groups[OWNER[name]] = dataclasses.replace(groups[OWNER[name]], **{name: coerce(name, value)})
        model, precision = groups["model"], self.precision
        if {"device", "dtype"} & set(values):
            precision = pick_precision(None if model.device == "auto" else model.device,
                                       None if model.dtype == "auto" else model.dtype)
            if "dtype" not in values:  # the profile's choice; a dtype the caller names is kept
                precision = gemma3_rule(precision, model.model_name)
        new = dataclasses.replace(self, **groups, precision=precision)
        validate(new.flat())
        return new


def course_config(task: str = "quotes", *, from_text: bool = False, precision: Precision | None = None,
                  **params) -> CourseConfig:
    """The profile function: defaults for this machine, then the task's, then `params`.

    No GPU: the embedded Gemma 3 270M, the offline quotes and CPU-tuned settings (no
    NF4, micro-batches of 8, no gradient checkpointing, no LoRA dropout, the fast
    loss; measured in benchmarks/sft_throughput.py). CUDA GPU: the seed notebook's
    QLoRA settings (NF4, batch 1 x accumulation 4, paged 8-bit AdamW); with a token
    also google/gemma-2b and Abirate/english_quotes. Unknown names are rejected with
    the list of valid ones; every value is type-checked and validated. `precision`
    replaces the hardware's own answer (`make gpu-check --dry-run` builds the T4 and A100
    configs on any machine with it).
    """
    if task not in TASK_DEFAULTS:
        raise ParameterError(f"task={task!r} is not known", f"use one of: {', '.join(TASK_DEFAULTS)}")
    unknown = sorted(set(params) - set(OWNER))
    if unknown:
        raise ParameterError(f"unknown parameter {unknown[0]!r}", f"use one of: {', '.join(sorted(VALID_KEYS))}")
    # None keeps the profile's value, except where None is itself a value (checkpoint_metric: null = no ranking).
    given = {k: coerce(k, v, from_text) for k, v in params.items() if v is not None or k in NULLABLE}
    device = given.get("device", "auto")
    if device not in CHOICES["device"]:
        fail("device", device, f"is not one of {', '.join(CHOICES['device'])}", "use device='auto', 'cpu' or 'cuda'")
    on_gpu = (precision or pick_precision(None if device == "auto" else device)).device == "cuda"
    # GEMMATE_PROFILE: "gpu" runs the GPU profile on a CPU (the smoke run of the learner's path), "t4" a T4's on any
    # GPU (make gpu-check --precision fp16); unset, the hardware decides.
    forced = os.environ.get("GEMMATE_PROFILE", "auto")
    if forced not in ("auto", "gpu", "t4"):
        raise ParameterError(f"GEMMATE_PROFILE={forced!r} is not known", "unset it, or set it to 'gpu' or 't4'")
    values, profile = dict(CPU_PROFILE), "cpu-embedded"
    if on_gpu or forced != "auto":
        from .hf_token import get_token

        values, profile = dict(SEED_QLORA), "gpu-embedded" if on_gpu else "gpu-on-cpu"
        if not on_gpu:  # a 16-bit load and compute dtype, standing in for a T4's fp16 (bf16: this CPU has no fp16 AMP)
            values["dtype"] = "bf16"
        elif forced == "t4":
            values["dtype"] = "fp16"
        if get_token():
            values.update(model_name=HUB_MODEL, dataset=HUB_DATASET)
            profile = "gpu-hub" if on_gpu else profile
    values.update(TASK_DEFAULTS[task])
    values.update(given)
    groups = {group: cls() for group, cls in GROUPS.items()}
    for name, value in values.items():
        setattr(groups[OWNER[name]], name, coerce(name, value))
    dtype = groups["model"].dtype
    if dtype not in CHOICES["dtype"]:
        fail("dtype", dtype, f"is not one of {', '.join(CHOICES['dtype'])}", "use dtype='auto', 'bf16', 'fp16' or 'fp32'")
    precision = precision or pick_precision(None if device == "auto" else device, None if dtype == "auto" else dtype)
    if "dtype" not in given:  # the profile's choice; a dtype the caller names is kept
        precision = gemma3_rule(precision, groups["model"].model_name)
    cfg = CourseConfig(**groups, precision=precision, profile=profile, task=task)
    validate(cfg.flat())
    return cfg


def is_gemma3(model_name: str) -> bool:
    """True for Gemma 3 models: the embedded default, a folder whose config says so, or a Hub id with gemma-3."""
    if model_name == EMBEDDED:
        return True
    config = Path(model_name) / "config.json"
    if config.is_file():
        import json

        try:
            return str(json.loads(config.read_text()).get("model_type", "")).startswith("gemma3")
        except ValueError:
            return False
    return "gemma-3" in model_name.lower()


def gemma3_rule(precision: Precision, model_name: str) -> Precision:
    """fp32 instead of fp16 for Gemma 3: its activations overflow fp16 (transformers issue 36822).

    A T4 has no bf16, so Gemma 3 computes in fp32 there, as Unsloth does; Gemma 1 (gemma-2b)
    keeps fp16 with loss scaling. bf16 has fp32's range and is kept. Applied to the
    profile's choice only: an explicit `dtype="fp16"` is what the caller asked for.
    """
    if precision.name != "fp16" or not is_gemma3(model_name):
        return precision
    return Precision(precision.device, DTYPES["fp32"],
                     f"{precision.reason}; but Gemma 3 overflows in fp16 (transformers issue 36822), so it computes "
                     "in fp32 here")


def load_config(path: str | Path | None = None, overrides: dict | None = None, task: str = "quotes") -> CourseConfig:
    """A CourseConfig from a YAML file (optional), then `--key value` overrides (parsed from text)."""
    values: dict = {}
    if path is not None:
        values = read_yaml(path, "--config")
        values = {ALIASES.get(k, k): v for k, v in values.items()}  # e.g. the Gemma 1.1 table's dataset_id
    unknown = sorted(set(values) - set(OWNER))
    if unknown:
        raise ParameterError(f"unknown config key {unknown[0]!r} in {Path(path).name}",
                             f"valid keys: {', '.join(VALID_KEYS)}")
    typed = {k: coerce(k, v) for k, v in values.items()}
    typed.update({k: coerce(k, v, from_text=True) if k in OWNER else v for k, v in (overrides or {}).items()})
    return course_config(task, **typed)


def dump_config(cfg: CourseConfig, path: str | Path) -> Path:
    """Write every setting as flat YAML, which `load_config` reads back (what `gemmate hpo` writes)."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.flat().items()}
    path.write_text(yaml.safe_dump(flat, sort_keys=False))
    return path


def config_summary(cfg: CourseConfig) -> dict:
    """A JSON-ready view of the config for printing and the manifest."""
    out = {"profile": cfg.profile, "task": cfg.task, "device": cfg.precision.device, "dtype": cfg.precision.name}
    for group in GROUPS:
        values = dataclasses.asdict(getattr(cfg, group))
        out[group] = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
    return out
