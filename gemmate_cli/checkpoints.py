"""Checkpoint policy for `gemmate train` (docs/command-line.md): keep the last N and the best N, resume from a
complete checkpoint (its trainer_state.json, written last, parses; Trainer's own may pick a cut-off one)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from transformers import TrainerCallback

from gemmate_lib.guard_rails.errors import ParameterError
from gemmate_lib.resume import RUN_FILE, complete_checkpoints


def checkpoint_metric(folder: Path, metric: str) -> float | None:
    """The value of `metric` logged at the checkpoint's own step (None if it was not evaluated there)."""
    state = json.loads((folder / "trainer_state.json").read_text())
    step = state["global_step"]
    values = [e[metric] for e in state["log_history"] if e.get("step") == step and metric in e]
    return values[-1] if values else None


def select_kept(checkpoints: dict[int, Path], keep_last_n: int, keep_best_n: int, metric: str | None,
                mode: str = "min") -> set[int]:
    """Steps to keep: the keep_last_n most recent, plus the keep_best_n best by metric."""
    steps = sorted(checkpoints)
    keep = set(steps[-keep_last_n:]) if keep_last_n else set()
    if keep_best_n and metric:
        scored = [(v, s) for s in steps if (v := checkpoint_metric(checkpoints[s], metric)) is not None]
        scored.sort(key=lambda vs: (vs[0] if mode == "min" else -vs[0], vs[1]))
        keep |= {s for _, s in scored[:keep_best_n]}
    return keep


def resume_checkpoint(output_dir: str | Path, option: str, path: str | None = None, metric: str | None = None,
                      mode: str = "min") -> Path:
    """The checkpoint folder to resume from: the last one, the best one by metric, or a given path."""
    if option == "path":
        folder = Path(path or "")
        if not (folder / "trainer_state.json").is_file():
            raise ParameterError(f"config key 'checkpoint_path' = {path!r} "
                                 f"is not a complete checkpoint folder",
                                 "point it at a checkpoint-<step> folder that has trainer_state.json")
        return folder
    checkpoints = complete_checkpoints(output_dir)
    if not checkpoints:
        raise ParameterError(f"resume_from_checkpoint is true but {output_dir} holds no complete checkpoint",
                             "set resume_from_checkpoint: false to start afresh, or fix output_dir")
    if option == "last":
        return checkpoints[max(checkpoints)]
    if not (best := select_kept(checkpoints, 0, 1, metric, mode)):
        raise ParameterError(f"no checkpoint in {output_dir} has a logged {metric!r}",
                             "use resume_option: last, or evaluate at "
                             "every save (val_steps_freq = steps_freq)")
    return checkpoints[best.pop()]


class RecordSettings(TrainerCallback):
    """After every save, before the policy and the upload: the run's settings (train.run_settings) into the
    checkpoint, so that a resume from it, from any folder or remote storage, knows the run it continues."""

    def __init__(self, settings: dict):
        self.settings = settings

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            (folder / RUN_FILE).write_text(json.dumps(self.settings))
        return control


class CheckpointPolicy(TrainerCallback):
    """After every save: delete checkpoints that are neither among the last N nor the best N."""

    def __init__(self, output_dir: str | Path, keep_last_n: int, keep_best_n: int, metric: str | None,
                 mode: str = "min"):
        self.output_dir, self.keep_last_n, self.keep_best_n = Path(output_dir), keep_last_n, keep_best_n
        self.metric, self.mode = metric, mode

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return control
        checkpoints = complete_checkpoints(self.output_dir)
        keep = select_kept(checkpoints, self.keep_last_n, self.keep_best_n, self.metric, self.mode)
        for step, folder in checkpoints.items():
            if step not in keep:
                shutil.rmtree(folder, ignore_errors=True)
        return control
