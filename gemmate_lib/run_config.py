"""The YAML config of `gemmate train | evaluate | generate | hpo` (the command line beyond notebooks).

Keys follow the Gemma 1.1 LoRA experiment's table where they apply. Taught in the
README ("Command line"); `gemmate_lib.cli` reads it. A file sets values, `--key value`
flags override the file, and an unknown key or a value of the wrong type stops with
a message naming the key and listing the valid ones.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .config import EMBEDDED, SEED_TARGET_MODULES
from .errors import ParameterError


@dataclass
class RunConfig:
    model_name: str = EMBEDDED  # "embedded", a Hub id (google/gemma-2b) or a model folder
    dataset: str = EMBEDDED  # "embedded", a Hub dataset id, or a .jsonl/.csv with quote and author
    output_dir: str = "runs/cli"  # checkpoints, adapter, metrics and logs go here
    max_length: int = 128  # tokens per example after truncation
    dtype: str = "auto"  # "auto" (by hardware), "bf16", "fp16" or "fp32"
    quantization: str = "none"  # "none" or "nf4" (QLoRA; needs a CUDA GPU to be useful)
    learning_rate: float = 2e-4  # peak learning rate of the LoRA weights
    batch_size: int = 8  # examples per micro-batch per process
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    gradient_checkpointing: bool = False  # recompute activations in backward (saves memory, ~30% slower)
    num_epochs: float = 1.0  # passes over the training set (ignored when max_steps > 0)
    max_steps: int = -1  # optimizer steps; -1 means use num_epochs
    warmup_steps: int = 2  # linear warm-up steps
    optim: str = "adamw_torch"  # optimizer name as TrainingArguments knows it (paged_adamw_8bit on GPUs)
    log_level: str = "warning"  # transformers log level: debug, info, warning, error
    report_to: str = "none"  # "none", "tensorboard" or "wandb" (wandb is optional and off by default)
    steps_freq: int = 10  # log, and save when save_strategy="step", every this many steps
    val_steps_freq: int = 10  # evaluate on the held-out split every this many steps (0: never)
    save_strategy: str = "step"  # "step" (every steps_freq) or "epoch"
    resume_from_checkpoint: bool = False  # continue an interrupted run in output_dir
    resume_option: str = "last"  # "last", "best" (by checkpoint_metric) or "path" (checkpoint_path)
    checkpoint_path: str | None = None  # the checkpoint folder for resume_option="path"
    checkpoint_metric: str | None = "eval_loss"  # metric that ranks checkpoints (None: no ranking)
    checkpoint_metric_mode: str = "min"  # "min" or "max": which direction of checkpoint_metric is better
    keep_last_n: int = 2  # keep this many most recent checkpoints
    keep_best_n: int = 1  # and this many best by checkpoint_metric (0: none)
    early_stopping_patience: int = 0  # stop after this many evaluations without improvement (0: off)
    seed: int = 42  # seed of the split, LoRA init and data order
    deterministic: bool = False  # deterministic algorithms: bitwise-repeatable runs and resumes on CPU
    eval_fraction: float = 0.1  # share of the dataset held out for evaluation
    fast_loss: bool = True  # LM head on labelled tokens only (single process; DDP uses the model's loss)
    group_by_length: bool = True  # batch quotes of similar length together (less padding); false: random order
    lora_r: int = 8  # LoRA rank
    lora_alpha: int = 16  # LoRA scaling numerator (update x alpha / r)
    lora_dropout: float = 0.0  # dropout on the LoRA input
    lora_target_modules: list[str] | str = field(default_factory=lambda: list(SEED_TARGET_MODULES))  # or "all-linear"
    lora_task_type: str = "CAUSAL_LM"  # PEFT task type
    adapter: str | None = None  # evaluate / generate: the adapter folder (default: output_dir/adapter)
    prompts: list[str] = field(default_factory=list)  # generate: prompts (default: the course's standard four)
    max_new_tokens: int = 40  # generate: tokens to generate per prompt


CHOICES = {"dtype": ("auto", "bf16", "fp16", "fp32"), "quantization": ("none", "nf4"),
           "log_level": ("debug", "info", "warning", "error", "critical"), "report_to": ("none", "tensorboard", "wandb"),
           "save_strategy": ("step", "epoch"), "resume_option": ("last", "best", "path"),
           "checkpoint_metric_mode": ("min", "max"), "lora_task_type": ("CAUSAL_LM",)}
VALID_KEYS = tuple(f.name for f in dataclasses.fields(RunConfig))


def _coerce(name: str, value, hint):
    """value converted to the field's type, or ParameterError naming the key."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    wanted = str(hint).replace("typing.", "") if origin else hint.__name__
    if origin in (typing.Union, __import__("types").UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(name, value, option)
            except ParameterError:
                continue
    elif origin is list:
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
    elif hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str and isinstance(value, str):
        return value
    raise ParameterError(f"config key {name!r} = {value!r} has the wrong type: {name} must be {wanted}",
                         f"write {name}: {getattr(RunConfig(), name)!r} (the default) or another {wanted}")


def _check(cfg: RunConfig) -> None:
    for name, options in CHOICES.items():
        if getattr(cfg, name) not in options:
            raise ParameterError(f"config key {name!r} = {getattr(cfg, name)!r} is not one of {options}",
                                 f"set {name} to one of: {', '.join(options)}")
    for name in ("max_length", "batch_size", "gradient_accumulation_steps", "steps_freq", "lora_r", "lora_alpha",
                 "max_new_tokens"):
        if getattr(cfg, name) < 1:
            raise ParameterError(f"config key {name!r} = {getattr(cfg, name)} must be at least 1", f"set {name} >= 1")
    for name in ("keep_last_n", "keep_best_n", "early_stopping_patience", "val_steps_freq", "warmup_steps"):
        if getattr(cfg, name) < 0:
            raise ParameterError(f"config key {name!r} = {getattr(cfg, name)} must not be negative", f"set {name} >= 0")
    if not 0 < cfg.learning_rate < 1:
        raise ParameterError(f"config key 'learning_rate' = {cfg.learning_rate} must lie in (0, 1)", "e.g. 2e-4")
    if not 0 <= cfg.lora_dropout < 1 or not 0 < cfg.eval_fraction < 1:
        raise ParameterError("config key 'lora_dropout' must lie in [0, 1) and 'eval_fraction' in (0, 1)",
                             "e.g. lora_dropout: 0.05, eval_fraction: 0.1")
    if cfg.max_steps < 1 and cfg.num_epochs <= 0:
        raise ParameterError("config keys 'max_steps' and 'num_epochs' train nothing", "set max_steps >= 1 or num_epochs > 0")
    needs_metric = {"keep_best_n": cfg.keep_best_n > 0, "early_stopping_patience": cfg.early_stopping_patience > 0,
                    "resume_option=best": cfg.resume_from_checkpoint and cfg.resume_option == "best"}
    for key, used in needs_metric.items():
        if used and not cfg.checkpoint_metric:
            raise ParameterError(f"config key {key!r} ranks checkpoints, but checkpoint_metric is not set",
                                 "set checkpoint_metric: eval_loss (and val_steps_freq > 0), or keep_best_n: 0")
        if used and cfg.val_steps_freq == 0:
            raise ParameterError(f"config key {key!r} needs evaluations, but val_steps_freq is 0",
                                 "set val_steps_freq to a divisor of steps_freq, e.g. equal to it")
    if cfg.keep_best_n and cfg.save_strategy == "step" and cfg.steps_freq % cfg.val_steps_freq:
        raise ParameterError(f"steps_freq={cfg.steps_freq} is not a multiple of val_steps_freq={cfg.val_steps_freq}: "
                             "some checkpoints would have no metric", "set val_steps_freq equal to steps_freq")
    if cfg.resume_from_checkpoint and cfg.resume_option == "path":
        if not cfg.checkpoint_path:
            raise ParameterError("config key 'resume_option' = 'path' needs 'checkpoint_path'",
                                 "set checkpoint_path to a checkpoint-<step> folder")
        if not Path(cfg.checkpoint_path).is_dir():
            raise ParameterError(f"config key 'checkpoint_path' = {cfg.checkpoint_path!r} does not exist",
                                 "point it at an existing checkpoint-<step> folder inside an output_dir")
    if cfg.report_to != "none":
        import importlib.util

        if importlib.util.find_spec(cfg.report_to) is None:
            raise ParameterError(f"config key 'report_to' = {cfg.report_to!r} but the package is not installed",
                                 f"pip install {cfg.report_to} (optional, not in requirements.txt), or report_to: none")
    if cfg.keep_last_n + cfg.keep_best_n == 0 and cfg.resume_from_checkpoint:
        raise ParameterError("keep_last_n and keep_best_n are both 0, so there is nothing to resume from",
                             "set keep_last_n >= 1")


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> RunConfig:
    """RunConfig from a YAML file (optional) and then overrides (from flags); every key is checked."""
    import yaml

    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ParameterError(f"config file {path} does not exist", "check the path given to --config")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ParameterError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}",
                                 "fix the YAML syntax (key: value per line)") from None
        if not isinstance(values, dict):
            raise ParameterError(f"config file {path} must hold key: value pairs", "see configs/cpu-quick.yaml")
    values = {**values, **(overrides or {})}
    hints = typing.get_type_hints(RunConfig)
    cfg = RunConfig()
    for name, value in values.items():
        if name not in hints:
            raise ParameterError(f"unknown config key {name!r}", f"valid keys: {', '.join(VALID_KEYS)}")
        setattr(cfg, name, _coerce(name, value, hints[name]))
    if isinstance(cfg.lora_target_modules, str) and cfg.lora_target_modules != "all-linear":
        cfg.lora_target_modules = [m.strip() for m in cfg.lora_target_modules.split(",") if m.strip()]
    _check(cfg)
    return cfg


def dump_config(cfg: RunConfig, path: str | Path) -> Path:
    """Write the config as YAML (what `gemmate hpo` writes for the best trial)."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    return path
