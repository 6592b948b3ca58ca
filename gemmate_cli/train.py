"""`gemmate train` (docs/command-line.md): 03's LoRA SFT from the config, with the checkpoint policy, resume,
W&B and remote storage. Every rank writes its weights' digest (DDP); rank 0 saves the adapter and metrics.
Also the one skeleton of the training commands (TrainingCommand), which `gemmate train-te` (train_te.py)
follows too, with one rule for an existing output_dir and one for final_loss."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from gemmate_cli.settings import CommandConfig
from gemmate_lib.housekeeping.errors import ParameterError

FINISHED = ("train_metrics.json", "hpo_results.csv")  # what a training command that ran to its end leaves


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside `accelerate launch` / torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def checkpoint_kwargs(cfg: CommandConfig, has_eval: bool, save: bool = True) -> dict:
    """SFTConfig keywords of the command line's settings, on top of training.training_kwargs': the checkpoint
    policy (`save=False`: none, hpo's trials; CheckpointPolicy keeps what it keeps, not the notebooks' last
    one only), W&B, and DDP's."""
    t, c = cfg.course.train, cfg.checkpoints
    strategy = c.save_strategy if save else "no"
    evaluate = has_eval and t.val_steps_freq > 0
    out = {"save_strategy": {"step": "steps", "epoch": "epoch", "no": "no"}[strategy],
           "save_total_limit": None}
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


def check_output_dir(out: Path, resuming: bool) -> None:
    """The training commands' one rule for an existing output_dir: a new or empty folder, or one without a
    finished run (FINISHED), is written into; one that holds a finished run is refused unless this run resumes
    from it (resume_from_checkpoint: `gemmate train` only)."""
    finished = [name for name in FINISHED if (out / name).is_file()]
    if finished and not resuming:
        raise ParameterError(f"output_dir {out} already holds a finished run ({finished[0]})",
                             "pick another output_dir, or delete this one")


def last_logged(log, column: str) -> float | None:
    """The last value the trainer logged in `column` of training.loss_log's table (its evaluation rows carry
    no training loss), None if it logged none: every command's final_loss and final_eval_loss."""
    if column not in log or not log[column].notna().any():
        return None
    return float(log[column].dropna().iloc[-1])


class TrainingCommand:
    """The skeleton of `gemmate train` and `gemmate train-te` (`run`): the tokenizer and the data first, so a
    bad data file is the first error; then the output_dir rule (check_output_dir), the model, training through
    training.train, the command's own saving, and train_metrics.json, rank 0's. A command fills in the three
    steps: `prepare` the data, `train_model` (wrap the model, train), `finish` (save; the metrics in its
    order)."""

    resumes = False  # whether the command can resume from its output_dir, which the rule then allows

    def __init__(self, cfg: CommandConfig):
        self.cfg = cfg

    def prepare(self, tokenizer) -> None:
        """Read or build the data and print its report (before the model loads); may replace self.cfg."""
        raise NotImplementedError

    def train_model(self, model, tokenizer, out: Path):
        """Wrap `model` (LoRA, GemmaTE) and train it through training.train; returns its TrainResult."""
        raise NotImplementedError

    def finish(self, result, tokenizer, out: Path, common: dict) -> dict:
        """Save what the command keeps; returns its metrics, in its own key order, built on `common` (steps,
        seconds, final_loss)."""
        raise NotImplementedError

    def run(self, check_output: bool = True) -> dict:
        """Train and return the metrics (also output_dir/train_metrics.json). `check_output=False`: output_dir
        is part of a run that checked its own (hpo's trials)."""
        from gemmate_lib.housekeeping.files import save_json
        from gemmate_lib.models import load_model, load_tokenizer

        out = Path(self.cfg.checkpoints.output_dir)
        tokenizer = load_tokenizer(self.cfg.course.model.model_name)
        self.prepare(tokenizer)
        if check_output:
            check_output_dir(out, resuming=self.resumes and self.cfg.checkpoints.resume_from_checkpoint)
        course = self.cfg.course
        model = load_model(course.model.model_name, course.precision, course.model.quantization,
                           course.model.attn_implementation)
        result = self.train_model(model, tokenizer, out)
        common = {"steps": result.steps, "seconds": round(result.seconds, 1),
                  "final_loss": last_logged(result.log, "loss")}
        metrics = self.finish(result, tokenizer, out, common)
        if world()[0] == 0:
            save_json(out / "train_metrics.json", metrics)
        return metrics


class LoraTraining(TrainingCommand):
    """`gemmate train`: LoRA on quotes, SST-2 or SQuAD v2 (tasks.py) under the checkpoint policy, resuming
    from output_dir when asked (its checkpoints, or remote_path's)."""

    resumes = True

    def __init__(self, cfg: CommandConfig, save_checkpoints: bool = True):
        super().__init__(cfg)
        self.save_checkpoints = save_checkpoints

    def prepare(self, tokenizer) -> None:
        from gemmate_cli.checkpoints import resume_checkpoint
        from gemmate_cli.storage import download
        from gemmate_cli.tasks import load_task, task_of
        from gemmate_lib.data import load_quotes

        c, command, out = self.cfg.checkpoints, self.cfg.command, Path(self.cfg.checkpoints.output_dir)
        if c.resume_from_checkpoint and c.load_from_storage and world()[0] == 0:
            fetched = download(c.remote_path, out)
            print(f"downloaded {len(fetched)} checkpoint(s) from {c.remote_path}", flush=True)
        self.resume = resume_checkpoint(out, c.resume_option, c.checkpoint_path, c.checkpoint_metric,
                                        c.checkpoint_metric_mode) if c.resume_from_checkpoint else None
        if command.use_wandb:  # Weights & Biases logs offline into output_dir (`wandb sync` uploads later)
            os.environ.setdefault("WANDB_MODE", "offline")
            os.environ.update(WANDB_PROJECT=command.wandb_project, WANDB_DIR=str(out.absolute()))
            if command.wandb_tags:
                os.environ["WANDB_TAGS"] = ",".join(command.wandb_tags)
        d = self.cfg.course.data
        self.task = task_of(d.dataset)
        load = load_quotes if self.task == "quotes" else lambda *a: load_task(self.task, *a)
        self.data = load(d.dataset, d.eval_fraction, d.data_seed, tokenizer, self.cfg.course.train.max_length)
        if world()[0] == 0:
            print(self.data.report(), flush=True)

    def train_model(self, model, tokenizer, out: Path):
        from transformers import EarlyStoppingCallback

        from gemmate_cli.checkpoints import CheckpointPolicy
        from gemmate_cli.storage import StorageSync
        from gemmate_lib.training import attach_lora, train

        c, course = self.cfg.checkpoints, self.cfg.course
        if world()[1] > 1:  # DDP: the model's own loss (fast_loss's help says so); the config keeps its value
            course = course.replace(fast_loss=False)
        model = attach_lora(model, course, tokenizer=tokenizer)
        callbacks = [CheckpointPolicy(out, c.keep_last_n, c.keep_best_n, c.checkpoint_metric,
                                      c.checkpoint_metric_mode)]
        if c.sync_to_storage:
            callbacks.append(StorageSync(out, c.remote_path))
        if c.early_stopping_patience:
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=c.early_stopping_patience))
        return train(model, tokenizer, self.data.train, self.data.held_out, course, out, callbacks=callbacks,
                     resume_from_checkpoint=str(self.resume) if self.resume else None,
                     **checkpoint_kwargs(self.cfg, bool(self.data.held_out), self.save_checkpoints))

    def finish(self, result, tokenizer, out: Path, common: dict) -> dict:
        from gemmate_cli.tasks import evaluate_task
        from gemmate_lib.adapters import save_adapter
        from gemmate_lib.housekeeping.files import save_json
        from gemmate_lib.resume import complete_checkpoints

        rank, world_size = world()
        digest = trainable_digest(result.model)
        (out / "ranks").mkdir(parents=True, exist_ok=True)
        save_json(out / "ranks" / f"rank{rank}.json",
                  {"rank": rank, "world_size": world_size, "digest": digest, "step": result.steps})
        metrics = {"steps": common["steps"], "seconds": common["seconds"], "world_size": world_size,
                   "resumed_from": self.resume.name if self.resume else None, "trainable_digest": digest,
                   "final_loss": common["final_loss"],
                   "final_eval_loss": last_logged(result.log, "eval_loss"),
                   "checkpoints_kept": [p.name for p in complete_checkpoints(out).values()],
                   "config": self.cfg.flat()}
        if self.task != "quotes":
            metrics |= {"task": self.task,
                        "task_metrics": evaluate_task(result.model, tokenizer, self.task, self.data.held_out)}
        if rank == 0:
            save_adapter(result.model, tokenizer, out / "adapter", self.cfg.course.model.model_name,
                         overwrite=True)
        return metrics


def train_from_config(cfg: CommandConfig, save_checkpoints: bool = True, check_output: bool = True) -> dict:
    """`gemmate train` (and each of hpo's trials: no checkpoints, in the folder hpo checked): writes
    train_metrics.json."""
    return LoraTraining(cfg, save_checkpoints).run(check_output)


def trainable_digest(model) -> str:
    """sha256 of the trainable weights: equal across DDP ranks, equal across bitwise-identical runs."""
    digest = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            digest.update(name.encode())
            digest.update(p.detach().to("cpu").float().numpy().tobytes())
    return digest.hexdigest()
