"""`gemmate train` (docs/command-line.md): 03's LoRA SFT from the config, with the checkpoint policy, resume,
W&B and remote storage, read top to bottom in train_from_config: the data, the output_dir rule, the model,
training, saving, each one function call, defined below in that order. Every rank writes its weights' digest
(DDP); rank 0 saves the adapter and metrics. `gemmate train-te` (train_te.py) takes the same steps with the
shared ones here: one rule for an existing output_dir, one for final_loss, one train_metrics.json."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from gemmate_cli.settings import CommandConfig
from gemmate_lib.guard_rails.errors import ParameterError

FINISHED = ("train_metrics.json", "hpo_results.csv")  # what a training command that ran to its end leaves


def train_from_config(cfg: CommandConfig, save_checkpoints: bool = True, check_output: bool = True) -> dict:
    """`gemmate train` (and each of hpo's trials: no checkpoints, in the folder hpo checked): returns the
    metrics, also written to output_dir/train_metrics.json."""
    from gemmate_lib.models import load_tokenizer

    out = Path(cfg.checkpoints.output_dir)
    tokenizer = load_tokenizer(cfg.course.model.model_name)
    resume = checkpoint_to_resume(cfg, out)  # None unless resume_from_checkpoint
    log_to_wandb(cfg, out)
    task, data = load_data(cfg, tokenizer)  # before the model loads: a bad data file is the first error
    if check_output:
        check_output_dir(out, resuming=cfg.checkpoints.resume_from_checkpoint)
        same_run(cfg, out, run_settings(cfg, data), resume)
    model = load_base(cfg)
    result = train_lora(cfg, model, tokenizer, data, out, resume, save_checkpoints)
    metrics = lora_metrics(cfg, result, out, resume)
    if task != "quotes":
        from gemmate_cli.tasks import evaluate_task

        metrics |= {"task": task, "task_metrics": evaluate_task(result.model, tokenizer, task, data.held_out)}
    if world()[0] == 0:
        from gemmate_lib.adapters import save_adapter

        save_adapter(result.model, tokenizer, out / "adapter", cfg.course.model.model_name, overwrite=True)
    return save_metrics(out, metrics)


def checkpoint_to_resume(cfg: CommandConfig, out: Path) -> Path | None:
    """With resume_from_checkpoint: remote_path's checkpoints first downloaded into `out` (load_from_storage,
    rank 0), then the checkpoint that resume_option picks; None without."""
    from gemmate_cli.checkpoints import resume_checkpoint
    from gemmate_cli.storage import download

    c = cfg.checkpoints
    if not c.resume_from_checkpoint:
        return None
    if c.load_from_storage and world()[0] == 0:
        fetched = download(c.remote_path, out)
        print(f"downloaded {len(fetched)} checkpoint(s) from {c.remote_path}", flush=True)
    return resume_checkpoint(out, c.resume_option, c.checkpoint_path, c.checkpoint_metric,
                             c.checkpoint_metric_mode)


def log_to_wandb(cfg: CommandConfig, out: Path) -> None:
    """use_wandb: Weights & Biases logs offline into `out` (`wandb sync` uploads later)."""
    command = cfg.command
    if command.use_wandb:
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.update(WANDB_PROJECT=command.wandb_project, WANDB_DIR=str(out.absolute()))
        if command.wandb_tags:
            os.environ["WANDB_TAGS"] = ",".join(command.wandb_tags)


def load_data(cfg: CommandConfig, tokenizer) -> tuple:
    """(task, data): the quotes, SST-2 or SQuAD v2 (tasks.py, by the dataset's name), split; rank 0 prints the
    report."""
    from gemmate_cli.tasks import load_task, task_of
    from gemmate_lib.data import load_quotes

    d = cfg.course.data
    task = task_of(d.dataset)
    load = load_quotes if task == "quotes" else lambda *a: load_task(task, *a)
    data = load(d.dataset, d.eval_fraction, d.data_seed, tokenizer, cfg.course.train.max_length)
    if world()[0] == 0:
        print(data.report(), flush=True)
    return task, data


def check_output_dir(out: Path, resuming: bool) -> None:
    """The training commands' one rule for an existing output_dir: a new or empty folder, or one without a
    finished run (FINISHED), is written into; one that holds a finished run is refused unless this run resumes
    from it (resume_from_checkpoint: `gemmate train` only)."""
    finished = [name for name in FINISHED if (out / name).is_file()]
    if finished and not resuming:
        raise ParameterError(f"output_dir {out} already holds a finished run ({finished[0]})",
                             "pick another output_dir, or delete this one")


# what decides the weights a run trains: a resume with another value of any of them is another run (how
# often it logs, evaluates or saves, the device, dtype and attention kernel, the fast loss and checkpointing,
# which compute the same loss, and max_steps or num_epochs, which a resume may extend, are not)
DECIDES = {"model": ("model_name", "quantization"), "data": ("dataset", "eval_fraction", "data_seed"),
           "lora": ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_trainable_tokens"),
           "train": ("max_length", "learning_rate", "batch_size", "gradient_accumulation_steps",
                     "warmup_steps", "weight_decay", "optim", "seed", "group_by_length",
                     "completion_only_loss")}


def run_settings(cfg: CommandConfig, data) -> dict:
    """What makes a `gemmate train` run the same run, kept in each of its checkpoints (RecordSettings): the
    settings that decide what it trains (DECIDES) and the training texts' hash."""
    import json

    from gemmate_lib.config import config_summary

    summary = config_summary(cfg.course)
    texts = "\n\x00".join(row["text"] for row in data.train)
    return json.loads(json.dumps({"args": {group: {k: summary[group][k] for k in keys}
                                           for group, keys in DECIDES.items()},
                                  "data": hashlib.sha1(texts.encode()).hexdigest()}))


def same_run(cfg: CommandConfig, out: Path, settings: dict, resume: Path | None) -> None:
    """A checkpoint continues only the run that wrote it: resuming one whose run had other settings (recorded
    in it) is refused, naming what differs, since the Trainer would train on with the checkpoint's optimizer
    and schedule (its learning rate) and save that run's adapter as this one's; so is one past this run's
    max_steps (it would train nothing and save more steps as fewer), and a fresh run beside an earlier run's
    checkpoints, which it would rank and keep with its own. A longer max_steps continues the run."""
    import json

    from gemmate_lib.resume import RUN_FILE, changed_settings, complete_checkpoints

    if resume is None:
        if earlier := ", ".join(path.name for path in complete_checkpoints(out).values()):
            raise ParameterError(f"output_dir {out} holds checkpoints of an earlier run ({earlier}): a new "
                                 "run would keep and rank them with its own; a later resume could pick one",
                                 "resume that run (resume_from_checkpoint: true), or pick another output_dir")
        return
    recorded = Path(resume) / RUN_FILE
    if not recorded.is_file():
        print(f"{resume} does not record its run's settings (an older course's checkpoint): resumed as given")
    elif (before := json.loads(recorded.read_text())) != settings:
        raise ParameterError(f"{resume} is a checkpoint of a run of other settings "
                             f"({', '.join(changed_settings(before, settings)[:4])} differ): resuming it "
                             "would train on with its optimizer and schedule, and save its adapter as yours",
                             "resume with that run's settings, or train this one in another output_dir")
    step = json.loads((Path(resume) / "trainer_state.json").read_text())["global_step"]
    if 0 < cfg.course.train.max_steps < step:
        raise ParameterError(f"{resume} is past this run's end (step {step}, max_steps "
                             f"{cfg.course.train.max_steps}): resuming it would train nothing",
                             f"resume with max_steps {step} or more, or train this one in another output_dir")


def load_base(cfg: CommandConfig):
    """The base model as the config loads it (both training commands)."""
    from gemmate_lib.models import load_model

    model = cfg.course.model
    return load_model(model.model_name, cfg.course.precision, model.quantization, model.attn_implementation)


def check_targets(model, targets) -> None:
    """A YAML or flag `lora_target_modules` that names a layer the model lacks, as one line with the names it
    could take: PEFT raises only when no name matches, and without them. A string is "all-linear" or a
    regular expression on purpose (Gemma 4's text layers): not checked."""
    import torch

    if targets is None or isinstance(targets, str):
        return
    modules = dict(model.named_modules())  # a 4-bit Linear4bit is a torch Linear too
    linear = dict.fromkeys(n.rsplit(".", 1)[-1] for n, m in modules.items() if isinstance(m, torch.nn.Linear))
    for target in sorted(targets):
        if not any(name == target or name.endswith(f".{target}") for name in modules):
            raise ParameterError(f"lora_target_modules names {target!r}, which this model does not have",
                                 f"name some of its linear layers: {', '.join(linear)} (or all-linear)")


def train_lora(cfg: CommandConfig, model, tokenizer, data, out: Path, resume: Path | None,
               save_checkpoints: bool = True):
    """LoRA on `model`, trained by training.train under the checkpoint policy (early stopping and remote
    storage when asked), from `resume` if given; returns its TrainResult."""
    from transformers import EarlyStoppingCallback

    from gemmate_cli.checkpoints import CheckpointPolicy, RecordSettings
    from gemmate_cli.storage import StorageSync
    from gemmate_lib.training import attach_lora, lora_config, train

    c, course = cfg.checkpoints, cfg.course
    if world()[1] > 1:  # DDP: the model's own loss (fast_loss's help says so); the config keeps its value
        course = course.replace(fast_loss=False)
    peft_config = lora_config(course, tokenizer)
    check_targets(model, peft_config.target_modules)
    model = attach_lora(model, course, peft_config=peft_config)
    callbacks = [RecordSettings(run_settings(cfg, data)),
                 CheckpointPolicy(out, c.keep_last_n, c.keep_best_n, c.checkpoint_metric,
                                  c.checkpoint_metric_mode)]
    if c.sync_to_storage:
        callbacks.append(StorageSync(out, c.remote_path))
    if c.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=c.early_stopping_patience))
    return train(model, tokenizer, data.train, data.held_out, course, out, callbacks=callbacks,
                 resume_from_checkpoint=str(resume) if resume else None,
                 **checkpoint_kwargs(cfg, bool(data.held_out), save_checkpoints))


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


def lora_metrics(cfg: CommandConfig, result, out: Path, resume: Path | None) -> dict:
    """`gemmate train`'s metrics, after each rank wrote its weights' digest to ranks/rank<N>.json (the DDP
    ranks agree when the digests do)."""
    from gemmate_lib.guard_rails.files import save_json
    from gemmate_lib.resume import complete_checkpoints

    rank, world_size = world()
    digest = trainable_digest(result.model)
    (out / "ranks").mkdir(parents=True, exist_ok=True)
    save_json(out / "ranks" / f"rank{rank}.json",
              {"rank": rank, "world_size": world_size, "digest": digest, "step": result.steps})
    return {"steps": result.steps, "seconds": round(result.seconds, 1), "world_size": world_size,
            "resumed_from": resume.name if resume else None, "trainable_digest": digest,
            "final_loss": last_logged(result.log, "loss"),
            "final_eval_loss": last_logged(result.log, "eval_loss"),
            "checkpoints_kept": [p.name for p in complete_checkpoints(out).values()], "config": cfg.flat()}


def trainable_digest(model) -> str:
    """sha256 of the trainable weights: equal across DDP ranks, equal across bitwise-identical runs."""
    digest = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            digest.update(name.encode())
            digest.update(p.detach().to("cpu").float().numpy().tobytes())
    return digest.hexdigest()


def last_logged(log, column: str) -> float | None:
    """The last value the trainer logged in `column` of training.loss_log's table (its evaluation rows carry
    no training loss), None if it logged none: every command's final_loss and final_eval_loss."""
    if column not in log or not log[column].notna().any():
        return None
    return float(log[column].dropna().iloc[-1])


def save_metrics(out: Path, metrics: dict) -> dict:
    """output_dir/train_metrics.json, rank 0's (a finished run: check_output_dir's FINISHED); returns
    `metrics`."""
    from gemmate_lib.guard_rails.files import save_json

    if world()[0] == 0:
        save_json(out / "train_metrics.json", metrics)
    return metrics


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside `accelerate launch` / torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
