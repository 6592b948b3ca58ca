"""`gemmate train` (docs/command-line.md): 03's LoRA SFT from the config, with the checkpoint policy, resume,
W&B and remote storage. Every rank writes its weights' digest (DDP); rank 0 saves the adapter and metrics."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from gemmate_lib.config import CourseConfig


def train_from_config(cfg: CourseConfig, save_checkpoints: bool = True) -> dict:
    """LoRA on quotes, SST-2 or SQuAD v2 (tasks.py) under the checkpoint policy; writes train_metrics.json."""
    from transformers import EarlyStoppingCallback

    from gemmate_cli.checkpoints import CheckpointPolicy, complete_checkpoints, resume_checkpoint
    from gemmate_cli.storage import StorageSync, download
    from gemmate_cli.tasks import evaluate_task, load_task, task_of
    from gemmate_lib.adapters import save_adapter
    from gemmate_lib.data import load_quotes
    from gemmate_lib.files import save_json
    from gemmate_lib.models import load_model, load_tokenizer
    from gemmate_lib.training import attach_lora, train, world

    rank, world_size = world()
    c = cfg.checkpoints
    out = Path(c.output_dir)
    if c.resume_from_checkpoint and c.load_from_storage and rank == 0:
        fetched = download(c.remote_path, out)
        print(f"downloaded {len(fetched)} checkpoint(s) from {c.remote_path}", flush=True)
    resume = resume_checkpoint(out, c.resume_option, c.checkpoint_path, c.checkpoint_metric,
                               c.checkpoint_metric_mode) if c.resume_from_checkpoint else None
    t = cfg.train
    if t.use_wandb:  # Weights & Biases logs offline into output_dir (`wandb sync` uploads later)
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.update(WANDB_PROJECT=t.wandb_project, WANDB_DIR=str(out.absolute()))
        if t.wandb_tags:
            os.environ["WANDB_TAGS"] = ",".join(t.wandb_tags)
    tokenizer = load_tokenizer(cfg.model.model_name)
    task = task_of(cfg.data.dataset)
    load = load_quotes if task == "quotes" else lambda *a: load_task(task, *a)
    data = load(cfg.data.dataset, cfg.data.eval_fraction, cfg.data.data_seed, tokenizer, cfg.train.max_length)
    if rank == 0:
        print(data.report(), flush=True)
    model = load_model(cfg.model.model_name, cfg.precision, cfg.model.quantization,
                       cfg.model.attn_implementation)
    model = attach_lora(model, cfg, tokenizer=tokenizer)
    callbacks = [CheckpointPolicy(out, c.keep_last_n, c.keep_best_n, c.checkpoint_metric,
                                  c.checkpoint_metric_mode)]
    if c.sync_to_storage:
        callbacks.append(StorageSync(out, c.remote_path))
    if c.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=c.early_stopping_patience))
    result = train(model, tokenizer, data.train, data.held_out, cfg, out, callbacks=callbacks,
                   save=None if save_checkpoints else False,
                   resume_from_checkpoint=str(resume) if resume else None)
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
        save_adapter(result.model, tokenizer, out / "adapter", cfg.model.model_name, overwrite=True)
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
