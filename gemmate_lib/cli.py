"""`gemmate train | evaluate | generate | hpo` (also `python -m gemmate_lib ...`): the course as commands.

Taught in the README ("Command line"). Each command reads a YAML config
(`--config configs/cpu-quick.yaml`, keys in run_config.py) and `--key value` flags that
override it. `train` keeps checkpoints by policy and resumes (checkpoints.py); run it
under `accelerate launch` for several processes (DDP). Errors print one message, no trace.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from .errors import GemmateError
from .run_config import RunConfig, load_config

COMMANDS = ("train", "evaluate", "generate", "hpo")


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside `accelerate launch` / torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _precision(cfg: RunConfig):
    from .hardware import pick_precision

    return pick_precision(dtype=None if cfg.dtype == "auto" else cfg.dtype)


def _lora(cfg: RunConfig):
    from .config import LoraSettings

    targets = cfg.lora_target_modules if isinstance(cfg.lora_target_modules, str) else tuple(cfg.lora_target_modules)
    return LoraSettings(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, target_modules=targets)


def sft_args(cfg: RunConfig, precision, has_eval: bool, save: bool = True):
    """TRL SFTConfig from a RunConfig: checkpoints every steps_freq (or epoch), evaluation every val_steps_freq."""
    from trl import SFTConfig

    evaluate = has_eval and cfg.val_steps_freq > 0
    return SFTConfig(
        output_dir=cfg.output_dir, max_steps=cfg.max_steps, num_train_epochs=cfg.num_epochs,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=max(cfg.batch_size, 8),
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps, lr_scheduler_type="linear", optim=cfg.optim, max_length=cfg.max_length,
        activation_checkpointing=cfg.gradient_checkpointing,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        bf16=precision.name == "bf16", fp16=precision.name == "fp16", use_cpu=precision.device == "cpu",
        logging_steps=cfg.steps_freq, eval_steps=cfg.val_steps_freq or None,
        eval_strategy=("steps" if cfg.save_strategy == "step" else "epoch") if evaluate else "no",  # a metric per save
        save_strategy=("steps" if cfg.save_strategy == "step" else "epoch") if save else "no",
        save_steps=cfg.steps_freq, save_total_limit=None, report_to=cfg.report_to, log_level=cfg.log_level,
        seed=cfg.seed, data_seed=cfg.seed, full_determinism=cfg.deterministic, dataset_text_field="text",
        dataloader_num_workers=0, disable_tqdm=False,
        ddp_backend="gloo" if precision.device == "cpu" and world()[1] > 1 else None, ddp_find_unused_parameters=False,
    )


def trainable_digest(model) -> str:
    """sha256 of the trainable weights: equal across DDP ranks, equal across bitwise-identical runs."""
    digest = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            digest.update(name.encode())
            digest.update(p.detach().to("cpu").float().numpy().tobytes())
    return digest.hexdigest()


def train(cfg: RunConfig, save_checkpoints: bool = True) -> dict:
    """Train LoRA on the quotes under the checkpoint policy; returns (and writes) train_metrics.json."""
    import datasets
    from transformers import set_seed

    from .checkpoints import CheckpointPolicy, complete_checkpoints, resume_checkpoint
    from .data import load_quotes, to_dataset
    from .hub import save_adapter
    from .models import load_model, load_tokenizer
    from .run import save_json
    from .training import _trainer_class, attach_lora, loss_log

    rank, world_size = world()
    out = Path(cfg.output_dir)
    resume = None
    if cfg.resume_from_checkpoint:
        resume = resume_checkpoint(out, cfg.resume_option, cfg.checkpoint_path, cfg.checkpoint_metric,
                                   cfg.checkpoint_metric_mode)
    precision = _precision(cfg)
    datasets.disable_progress_bars()
    set_seed(cfg.seed)
    data = load_quotes(cfg.dataset, cfg.eval_fraction, cfg.seed)
    tokenizer = load_tokenizer(cfg.model_name)
    model = load_model(cfg.model_name, precision, quantization=cfg.quantization)
    model = attach_lora(model, _lora(cfg), quantized=cfg.quantization == "nf4",
                        gradient_checkpointing=cfg.gradient_checkpointing)
    policy = CheckpointPolicy(out, cfg.keep_last_n, cfg.keep_best_n, cfg.checkpoint_metric,
                              cfg.checkpoint_metric_mode, cfg.early_stopping_patience)
    trainer = _trainer_class()(
        model=model, args=sft_args(cfg, precision, bool(data.held_out), save_checkpoints),
        train_dataset=to_dataset(data.train), eval_dataset=to_dataset(data.held_out) if data.held_out else None,
        processing_class=tokenizer, fast_loss=cfg.fast_loss and world_size == 1, callbacks=[policy],
    )
    start = time.time()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.time() - start
    log = loss_log(trainer)
    digest = trainable_digest(trainer.model)
    (out / "ranks").mkdir(parents=True, exist_ok=True)
    save_json(out / "ranks" / f"rank{rank}.json", {"rank": rank, "world_size": world_size, "digest": digest,
                                                    "step": trainer.state.global_step})
    metrics = {"steps": trainer.state.global_step, "seconds": round(seconds, 1), "world_size": world_size,
               "resumed_from": resume.name if resume else None, "trainable_digest": digest,
               "final_loss": float(log["loss"].dropna().iloc[-1]) if "loss" in log and log["loss"].notna().any() else None,
               "final_eval_loss": (float(log["eval_loss"].dropna().iloc[-1])
                                   if "eval_loss" in log and log["eval_loss"].notna().any() else None),
               "checkpoints_kept": [p.name for p in complete_checkpoints(out).values()],
               "config": dataclasses.asdict(cfg)}
    if rank == 0:
        save_adapter(trainer.model, tokenizer, out / "adapter", cfg.model_name, overwrite=True)
        save_json(out / "train_metrics.json", metrics)
    return metrics


def _load_tuned(cfg: RunConfig):
    from .hub import load_adapter
    from .models import load_model, load_tokenizer

    tokenizer = load_tokenizer(cfg.model_name)
    model = load_model(cfg.model_name, _precision(cfg), quantization=cfg.quantization)
    adapter = Path(cfg.adapter or Path(cfg.output_dir) / "adapter")
    if cfg.adapter != "none":
        model = load_adapter(model, adapter)
        if cfg.quantization == "none":
            model = model.merge_and_unload()
    return model, tokenizer


def evaluate(cfg: RunConfig) -> dict:
    """Metrics (05's, with 95% intervals) of the trained adapter on the held-out split; writes metrics.json."""
    from .data import load_quotes
    from .evaluation import evaluate_model, metrics_document
    from .run import save_json

    model, tokenizer = _load_tuned(cfg)
    data = load_quotes(cfg.dataset, cfg.eval_fraction, cfg.seed)
    result = evaluate_model(model, tokenizer, data.held_out, seed=cfg.seed)
    doc = metrics_document({"fine-tuned": result}, cfg.dataset, "held_out")
    save_json(Path(cfg.output_dir) / "metrics.json", doc)
    return doc


def generate(cfg: RunConfig):
    """Greedy completions of cfg.prompts (default: the four standard prompts) with the trained adapter."""
    from .generation import STANDARD_PROMPTS, generate as run_generate

    model, tokenizer = _load_tuned(cfg)
    return run_generate(model, tokenizer, cfg.prompts or STANDARD_PROMPTS, max_new_tokens=cfg.max_new_tokens)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gemmate", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("--config", help="YAML file of RunConfig keys (see configs/)")
    parser.add_argument("--n_trials", type=int, default=8, help="hpo: number of trials")
    parser.add_argument("--timeout", type=float, default=None, help="hpo: stop starting trials after this many s")
    for f in dataclasses.fields(RunConfig):
        parser.add_argument(f"--{f.name}", nargs="+" if f.name == "prompts" else None, default=None,
                            help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)
                 if getattr(args, f.name) is not None}
    try:
        cfg = load_config(args.config, overrides)
        if args.command == "train":
            result = {k: v for k, v in train(cfg).items() if k != "config"}
        elif args.command == "evaluate":
            result = {m: round(v["value"], 4) for m, v in evaluate(cfg)["models"]["fine-tuned"].items()}
        elif args.command == "generate":
            for row in generate(cfg).itertuples():
                print(f"--- {row.prompt}{row.completion}\n")
            return 0
        else:
            from .hpo import search

            result = search(cfg, args.n_trials, args.timeout)
    except GemmateError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if world()[0] == 0:
        print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
