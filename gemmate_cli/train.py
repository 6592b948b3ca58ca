"""`gemmate train` (docs/command-line.md): 03's LoRA SFT from the config, with the checkpoint policy, resume,
W&B and remote storage. Every rank writes its weights' digest (DDP); rank 0 saves the adapter and metrics."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from gemmate_cli.settings import CommandConfig


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside `accelerate launch` / torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def checkpoint_kwargs(cfg: CommandConfig, has_eval: bool, save: bool = True) -> dict:
    """SFTConfig keywords of the command line's settings, on top of training.training_kwargs' (which never
    saves): the checkpoint policy (`save=False`: none, hpo's trials), W&B, and DDP's."""
    t, c = cfg.course.train, cfg.checkpoints
    strategy = c.save_strategy if save else "no"
    evaluate = has_eval and t.val_steps_freq > 0
    out = {"save_strategy": {"step": "steps", "epoch": "epoch", "no": "no"}[strategy]}
    if evaluate and c.save_strategy == "epoch":
        out["eval_strategy"] = "epoch"
    if strategy == "step":
        out["save_steps"] = t.val_steps_freq or t.steps_freq
    if evaluate and c.checkpoint_metric and strategy != "no":
        out |= {"metric_for_best_model": c.checkpoint_metric,
                "greater_is_better": c.checkpoint_metric_mode == "max"}
    if not c.save_optim and strategy != "no":
        out["save_only_model"] = True  # the Gemma 1.1 table's
    if cfg.command.use_wandb:
        out["report_to"] = "wandb"
        if cfg.command.wandb_run_name is not None:
            out["run_name"] = cfg.command.wandb_run_name
    if world()[1] > 1:
        out["ddp_find_unused_parameters"] = False
        if cfg.course.precision.device == "cpu":
            out["ddp_backend"] = "gloo"
    return out


def train_from_config(cfg: CommandConfig, save_checkpoints: bool = True) -> dict:
    """LoRA on quotes, SST-2 or SQuAD v2 (tasks.py) under the checkpoint policy; writes train_metrics.json."""
    from transformers import EarlyStoppingCallback

    from gemmate_cli.checkpoints import CheckpointPolicy, complete_checkpoints, resume_checkpoint
    from gemmate_cli.storage import StorageSync, download
    from gemmate_cli.tasks import evaluate_task, load_task, task_of
    from gemmate_lib.adapters import save_adapter
    from gemmate_lib.data import load_quotes
    from gemmate_lib.files import save_json
    from gemmate_lib.models import load_model, load_tokenizer
    from gemmate_lib.training import attach_lora, train

    rank, world_size = world()
    c = cfg.checkpoints
    out = Path(c.output_dir)
    if c.resume_from_checkpoint and c.load_from_storage and rank == 0:
        fetched = download(c.remote_path, out)
        print(f"downloaded {len(fetched)} checkpoint(s) from {c.remote_path}", flush=True)
    resume = resume_checkpoint(out, c.resume_option, c.checkpoint_path, c.checkpoint_metric,
                               c.checkpoint_metric_mode) if c.resume_from_checkpoint else None
    t, course = cfg.command, cfg.course
    if t.use_wandb:  # Weights & Biases logs offline into output_dir (`wandb sync` uploads later)
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.update(WANDB_PROJECT=t.wandb_project, WANDB_DIR=str(out.absolute()))
        if t.wandb_tags:
            os.environ["WANDB_TAGS"] = ",".join(t.wandb_tags)
    tokenizer = load_tokenizer(course.model.model_name)
    task = task_of(course.data.dataset)
    load = load_quotes if task == "quotes" else lambda *a: load_task(task, *a)
    d = course.data
    data = load(d.dataset, d.eval_fraction, d.data_seed, tokenizer, course.train.max_length)
    if rank == 0:
        print(data.report(), flush=True)
    model = load_model(course.model.model_name, course.precision, course.model.quantization,
                       course.model.attn_implementation)
    if world_size > 1:  # DDP: the model's own loss (fast_loss's help says so); the config keeps its value
        course = course.replace(fast_loss=False)
    model = attach_lora(model, course, tokenizer=tokenizer)
    callbacks = [CheckpointPolicy(out, c.keep_last_n, c.keep_best_n, c.checkpoint_metric,
                                  c.checkpoint_metric_mode)]
    if c.sync_to_storage:
        callbacks.append(StorageSync(out, c.remote_path))
    if c.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=c.early_stopping_patience))
    result = train(model, tokenizer, data.train, data.held_out, course, out, callbacks=callbacks,
                   resume_from_checkpoint=str(resume) if resume else None,
                   **checkpoint_kwargs(cfg, bool(data.held_out), save_checkpoints))
    digest = trainable_digest(result.model)
    (out / "ranks").mkdir(parents=True, exist_ok=True)
    save_json(out / "ranks" / f"rank{rank}.json",
              {"rank": rank, "world_size": world_size, "digest": digest, "step": result.steps})
    log = result.log
    last = {col: float(log[col].dropna().iloc[-1]) if col in log and log[col].notna().any() else None
            for col in ("loss", "eval_loss")}
    metrics = {"steps": result.steps, "seconds": round(result.seconds, 1), "world_size": world_size,
               "resumed_from": resume.name if resume else None, "trainable_digest": digest,
               "final_loss": last["loss"], "final_eval_loss": last["eval_loss"],
               "checkpoints_kept": [p.name for p in complete_checkpoints(out).values()], "config": cfg.flat()}
    if task != "quotes":
        metrics |= {"task": task, "task_metrics": evaluate_task(result.model, tokenizer, task, data.held_out)}
    if rank == 0:
        save_adapter(result.model, tokenizer, out / "adapter", course.model.model_name, overwrite=True)
        save_json(out / "train_metrics.json", metrics)
    return metrics


def trainable_digest(model) -> str:
    """sha256 of the trainable weights: equal across DDP ranks, equal across bitwise-identical runs."""
    digest = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            digest.update(name.encode())
            digest.update(p.detach().to("cpu").float().numpy().tobytes())
    return digest.hexdigest()
