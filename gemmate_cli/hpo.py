"""`gemmate hpo`: a small Optuna search over learning rate, LoRA r / alpha / dropout and batch size
(docs/command-line.md). Each trial is a short `gemmate train` without checkpoints, scored by held-out loss."""
from __future__ import annotations

import time
from pathlib import Path

from gemmate_cli.settings import CommandConfig, dump_config
from gemmate_cli.train import check_output_dir, train_from_config
from gemmate_lib.guard_rails.errors import ParameterError

# what the search varies, over which values: the learning rate log-uniform, dropout uniform, the rest a choice
SPACE = {"learning_rate": (5e-5, 1e-3), "lora_r": (4, 8, 16), "lora_alpha": (8, 16, 32),
         "lora_dropout": (0.0, 0.1), "batch_size": (4, 8)}
FLOATS = ("learning_rate", "lora_dropout")  # ranges; the others are choices


def search(cfg: CommandConfig, n_trials: int = 8, timeout: float | None = None) -> dict:
    """Run the study; writes hpo_results.csv and best_config.yaml (`gemmate train --config` takes it)."""
    import optuna

    if n_trials < 1:
        raise ParameterError(f"n_trials={n_trials} must be at least 1", "pass --n_trials 8 (or more)")
    if cfg.course.train.val_steps_freq == 0:
        raise ParameterError("hpo scores trials by held-out loss, but val_steps_freq is 0",
                             "set val_steps_freq >= 1")
    out = Path(cfg.checkpoints.output_dir)
    check_output_dir(out, resuming=False)  # once, for the whole search: its trials are in its own folder
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial):
        values = {name: trial.suggest_float(name, *space, log=name == "learning_rate") if name in FLOATS
                  else trial.suggest_categorical(name, space) for name, space in SPACE.items()}
        steps = cfg.course.train.max_steps if cfg.course.train.max_steps > 0 else 10
        trial_cfg = cfg.replace(**values, output_dir=str(out / "trials" / f"trial-{trial.number}"),
                                val_steps_freq=steps, resume_from_checkpoint=False)
        start = time.time()
        metrics = train_from_config(trial_cfg, save_checkpoints=False, check_output=False)
        trial.set_user_attr("seconds", round(time.time() - start, 1))
        if metrics["final_eval_loss"] is None:
            raise ParameterError("a trial logged no held-out loss",
                                 "set max_steps to a multiple of val_steps_freq")
        return metrics["final_eval_loss"]

    sampler = optuna.samplers.TPESampler(seed=cfg.course.train.seed)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    study.optimize(objective, n_trials=n_trials, timeout=timeout)
    table = study.trials_dataframe(attrs=("number", "value", "params", "user_attrs", "state"))
    table = table.rename(columns={"value": "eval_loss"}).sort_values("eval_loss")
    table.to_csv(out / "hpo_results.csv", index=False)
    dump_config(cfg.replace(**study.best_params), out / "best_config.yaml")
    print(table.to_string(index=False))
    return {"best_eval_loss": study.best_value, "best_params": study.best_params, "trials": len(study.trials),
            "results": str(out / "hpo_results.csv"), "best_config": str(out / "best_config.yaml")}
