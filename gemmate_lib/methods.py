"""Fine-tuning methods side by side (06_compare_methods; 03's short comparisons use the same `train_arm`):
full fine-tuning, LoRA at two ranks, QLoRA, prompt and prefix tuning, IA3, each a PEFT config plus the
settings it changes, chiefly its learning rate. 06 writes out every PEFT config and learning rate
(`build_methods` takes them) and one QLoRA arm by hand."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gemmate_lib.config import CourseConfig
from gemmate_lib.evaluation import example_nll_by_part, format_generations
from gemmate_lib.guard_rails.errors import HardwareError, ParameterError
from gemmate_lib.hardware import Precision, free_memory
from gemmate_lib.training import attach_lora, train

METHODS = ("full", "lora_r8", "lora_r32", "qlora", "prompt", "prefix", "ia3")  # every method 06 can train
DEFAULT_METHODS = METHODS[:-1]  # what 06 trains unless told, on a CPU: IA3 is the optional seventh
GPU_DEFAULT_METHODS = tuple(k for k in DEFAULT_METHODS if k != "full")  # a T4's: no full fine-tuning
NAMES = {"full": "full fine-tuning", "lora_r8": "LoRA r={r}", "lora_r32": "LoRA r={wide}",  # the table's
         "qlora": "QLoRA (NF4, r={r})", "prompt": "prompt tuning", "prefix": "prefix tuning", "ia3": "IA3"}


@dataclass
class Method:
    key: str  # short id, one of METHODS, and the run folder's subfolder (lora_r32's is lora_r<other_rank>)
    name: str  # what the table and the plots show
    peft_config: object | None  # the PEFT config; None for full fine-tuning (no adapter: every weight trains)
    settings: dict = field(default_factory=dict)  # course settings it changes (learning_rate, ...)
    starts_unchanged: bool = True  # the base model until trained (LoRA's B = 0); not prompt/prefix tuning


def build_methods(cfg: CourseConfig, model_path: str, configs: dict, learning_rates: dict, keys=None,
                  other_rank: int = 32, rates: dict | None = None) -> dict[str, Method]:
    """The methods in `keys` (a list or "a,b"; None: DEFAULT_METHODS under the CPU profile,
    GPU_DEFAULT_METHODS under the GPU ones) from 06's written-out PEFT `configs` and `learning_rates` (section
    2), each with the settings it changes. `other_rank`: lora_r32's rank; `rates`: e.g. {"prompt": 3e-3}."""
    from gemmate_lib.fit import FitError

    if keys is None:
        keys = GPU_DEFAULT_METHODS if cfg.profile.startswith("gpu") else DEFAULT_METHODS
        try:
            if cfg.precision.device == "cuda":
                check_fits(cfg, model_path, keys, other_rank)
        except FitError:  # the profile's list is what a T4 runs with gemma-2b; E2B's 16/32-bit copy isn't
            keys = ["qlora"]
            print("methods=None: a 16/32-bit copy of this model does not fit this GPU (06's fit line above), "
                  'so only QLoRA runs: methods=["qlora"]; the others need a bigger GPU (an L4 or A100)')
    keys = [k.strip() for k in keys.split(",")] if isinstance(keys, str) else list(keys)  # papermill: a,b
    unknown = [k for k in keys if k not in METHODS]
    if unknown:
        raise ParameterError(f"unknown method {unknown[0]!r}", f"use some of: {', '.join(METHODS)}")
    if {"lora_r8", "lora_r32"} <= set(keys) and other_rank == cfg.lora.lora_r:
        raise ParameterError(f"other_rank = {other_rank} is the rank of "
                             f"LoRA r={cfg.lora.lora_r} already in methods",
                             "choose another rank (e.g. 2 or 32), or drop lora_r32 from methods")
    cfg.replace(lora_r=other_rank)  # a wrong other_rank: one ParameterError
    if missing := [k for k in keys if k not in configs or k not in learning_rates]:
        raise ParameterError(f"section 2 wrote out no config or learning rate for {missing[0]!r}",
                             "run section 2's cell again (it defines written_out and learning_rates)")
    if "lora_r32" in keys and getattr(configs["lora_r32"], "r", other_rank) != other_rank:
        raise ParameterError(f"other_rank = {other_rank}, but section 2's lora_wide has r = "
                             f"{configs['lora_r32'].r}", "run section 2's cell again for this other_rank")
    rates = dict(rates or {})
    for key, value in rates.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key not in keys or not number or not 0 < value < 1:
            raise ParameterError(f"rates[{key!r}] = {value!r}",
                                 "give a learning rate between 0 and 1 (e.g. 3e-3) for "
                                 f"one of the methods that run: {', '.join(keys)}")
    # each method's own settings, not the GPU profile's QLoRA recipe (prefix tuning cannot run checkpointed)
    plain = dict(quantization="none", optim="adamw_torch_fused", gradient_checkpointing=False)
    check_fits(cfg, model_path, keys, other_rank)
    return {k: Method(f"lora_r{other_rank}" if k == "lora_r32" else k,
                      NAMES[k].format(r=cfg.lora.lora_r, wide=other_rank), configs[k],
                      {**plain, "learning_rate": rates.get(k, learning_rates[k]),
                       **({"quantization": "nf4"} if k == "qlora" else {})},
                      starts_unchanged=k not in ("prompt", "prefix")) for k in keys}


def check_fits(cfg: CourseConfig, model_path: str, keys, other_rank: int = 32) -> None:
    """From the model's config alone: full fine-tuning must fit this machine, and on a GPU the arms without
    NF4 need a 16/32-bit copy to fit (06's fit line: Gemma 4 E2B's is ~19 GiB in fp32); else HardwareError or
    FitError, whose fix names QLoRA alone where its 4-bit copy fits."""
    from transformers import AutoConfig

    from gemmate_lib import fit

    if "full" in keys:
        check_full_finetuning(fit.shape_of(AutoConfig.from_pretrained(model_path)).parameters,
                              cfg.precision.device)
    if cfg.precision.device == "cuda" and set(keys) - {"qlora"}:
        model = cfg.replace(model_name=model_path)  # the model the arms load (06: cfg's, resolved)
        fits = fit.notebook_fit("06_compare_methods", model, other_rank=other_rank)  # FitError: not even NF4
        if not fits.whole_copies:
            raise fit.FitError(fits.line, fit.FIX + ', or methods=["qlora"] alone (NF4 fits)')


def full_finetuning_gib(n_params: int) -> float:
    """GiB that full fine-tuning with AdamW needs before any activation: 16 bytes per weight (fp32 weight,
    gradient and AdamW's two moments; autocast adds a 16-bit copy of the weights while a step runs)."""
    return n_params * 16 / 2**30


def check_full_finetuning(n_params: int, device: str) -> float:
    """Raise HardwareError when full fine-tuning cannot fit this machine's memory; return the GiB it needs."""
    need = full_finetuning_gib(n_params)
    if device == "cuda":
        have, where = torch.cuda.get_device_properties(0).total_memory / 2**30, "this GPU"
    else:
        have, where = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, "this machine's RAM"
    if need > 0.9 * have:
        raise HardwareError(f"full fine-tuning of {n_params / 1e9:.1f} B weights needs ~{need:.0f} GiB "
                            f"for weights, gradients and AdamW's moments; {where} has {have:.0f} GiB",
                            "that is why LoRA and QLoRA exist; on a bigger "
                            "GPU (or the embedded 270M model) it runs")
    return need


def measure(model, tokenizer, rows: list[dict], max_length: int = 128, format_check: bool | int = False,
            nll: dict | None = None) -> dict:
    """Held-out loss on the whole text and the completion; optionally format compliance on every row
    (`format_check=True`) or the first `format_check` rows. `nll`: example_nll_by_part's, if already had."""
    nll = nll or example_nll_by_part(model, tokenizer, rows, ("text", "completion"), max_length)
    out = {f"held_out_loss_{part}": round(sum(s for s, _ in v) / sum(n for _, n in v), 3)
           for part, v in nll.items()}
    if format_check:
        ok = format_generations(model, tokenizer, rows if format_check is True else rows[:format_check])[2]
        out["format_compliance"] = round(sum(ok) / len(ok), 3)
    return out


@dataclass
class Arm:
    name: str  # what this arm trains, e.g. "QLoRA (NF4, paged 8-bit AdamW, checkpointing)"
    summary: dict  # the numbers of the comparison table
    log: object  # the trainer's loss log (pandas DataFrame)
    model: object = None  # the trained model, when keep_model=True
    held_out_nll: list = None  # per held-out row: (summed NLL, tokens) of its text (06's paired intervals)


def train_arm(name: str, cfg: CourseConfig, tokenizer, train_rows: list[dict], eval_rows: list[dict],
              output_dir, format_check: bool | int = False, keep_model: bool = False, adapter="lora",
              save_dir=None, start_loss: bool = False, callbacks=None) -> Arm:
    """Load a fresh model as `cfg` says, add `adapter` ("lora": the course's; a PEFT config; None: full
    fine-tuning), train `cfg.train.max_steps` steps, measure. `save_dir`: save what trained and report its
    size. `start_loss`: also the held-out loss before training (06: prompt and prefix tuning change it)."""
    from gemmate_lib.models import count_parameters, footprint_mib, load_model  # looked up now: tests fake it

    precision = cfg.precision  # full fine-tuning: fp32 master weights (pure bf16 rounds its updates away)
    if adapter is None and precision.dtype != torch.float32:
        precision = Precision(precision.device, torch.float32, f"{precision.reason}; full fine-tuning "
                              f"keeps fp32 master weights ({precision.name} autocast)")

    def fresh():
        model = load_model(cfg.model.model_name, precision, cfg.model.quantization)
        if adapter is None:
            try:
                check_full_finetuning(count_parameters(model)[1], cfg.precision.device)  # stop before OOM
            except HardwareError:
                del model  # the error's traceback keeps this frame alive: drop the weights (~5 GB) first
                free_memory()
                raise
            return model
        return attach_lora(model, cfg, quiet=True, peft_config=None if adapter == "lora" else adapter)

    model = fresh()
    trainable, total = count_parameters(model)
    result = train(model, tokenizer, train_rows, [], cfg, output_dir, callbacks=callbacks, measure_cost=True,
                   unwrap=False)
    model = result.model
    weights_mib = round(footprint_mib(model))  # as trained: full fine-tuning's fp32 master weights
    if precision is not cfg.precision:
        model.to(cfg.precision.dtype)  # measured and saved in the compute dtype, as the other methods are
    nll = example_nll_by_part(model, tokenizer, eval_rows, ("text", "completion"), cfg.train.max_length)
    summary = {"setting": name, "trainable": trainable, "trainable_share": trainable / total,
               "weights_mib": weights_mib, "training_peak_mib": round(result.peak_mib),
               "seconds_per_step": round(result.seconds_per_step, 3),
               **measure(model, tokenizer, eval_rows, cfg.train.max_length, format_check, nll)}
    if save_dir is not None:
        model.save_pretrained(save_dir)  # safetensors: the adapter only, or every weight for full fine-tuning
        saved = sum(p.stat().st_size for p in Path(save_dir).rglob("*.safetensors"))
        summary["saved_mib"] = round(saved / 2**20, 2)
    arm = Arm(name, summary, result.log, model if keep_model else None, nll["text"])
    del model, result
    free_memory()
    # on a second, identically seeded copy, after training: a pass before it would hide ~1 GB of the peak
    if start_loss:
        summary["held_out_loss_start"] = measure(fresh(), tokenizer, eval_rows,
                                                 cfg.train.max_length)["held_out_loss_text"]
        free_memory()
    return arm
