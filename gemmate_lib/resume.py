"""Runs that survive a disconnect (03_lora_sft teaches it; 07 and `gemmate train` use it): a Colab runtime
can be reclaimed mid-run ("shuts down, clearing all variables, files"), so a long training checkpoints its
adapter, optimizer, scheduler and random state every `save_steps` steps into the run folder (on Google Drive
in Colab), and running the notebook again resumes from the last complete checkpoint, where the run takes up
exactly as it would have gone on: the same batches, the same random draws (the learner's-path test holds a
resumed adapter to an uninterrupted run's, bitwise).

A checkpoint resumes only the run that wrote it: the run's settings (model, quantization, LoRA, training
arguments, data, GemmaTE's) are kept beside its checkpoints (RUN_FILE), and a rerun with any other setting
starts over, naming it, instead of resuming a run it is not (a naive resume changes the loss:
unslothai/unsloth issue 5037). A finished run is never resumed: a rerun trains again. Old checkpoints are
moved aside, never deleted."""
from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

STEP = re.compile(r"^checkpoint-(\d+)$")
RUN_FILE = "run_settings.json"  # beside the checkpoints: the settings of the run that wrote them
# TrainingArguments that name where things go, not how the run trains
WHERE = {"output_dir", "logging_dir", "run_name", "hub_token", "disable_tqdm", "report_to", "logging_steps",
         "save_steps", "save_total_limit", "save_strategy", "eval_steps", "eval_strategy", "push_to_hub"}
# PEFT config fields that name the base or the library, not how the adapter trains
ADAPTER_WHERE = {"base_model_name_or_path", "revision", "inference_mode", "peft_version"}


def complete_checkpoints(output_dir: str | Path) -> dict[int, Path]:
    """{step: folder} of the checkpoints in output_dir that were written to the end (their trainer_state.json,
    which the Trainer writes last, parses: a run killed mid-save leaves a folder without it)."""
    found = {}
    for folder in Path(output_dir).glob("checkpoint-*"):
        match = STEP.match(folder.name)
        with contextlib.suppress(OSError, ValueError):
            if match and folder.is_dir():
                json.loads((folder / "trainer_state.json").read_text())
                found[int(match.group(1))] = folder
    return dict(sorted(found.items()))


def _plain(value):
    """A setting as JSON keeps and compares it: a set as its sorted items, anything JSON lacks as its str."""
    return json.loads(json.dumps(
        value, default=lambda v: sorted(map(str, v)) if isinstance(v, (set, frozenset)) else str(v)))


def run_settings(args, model_name: str, texts, model=None, **extra) -> dict:
    """What makes a run the same run (03, 07 and the one-page recipe): the model, every training argument
    that decides how it trains (not where it writes), the training texts' hash, given the `model` its LoRA
    settings and quantization, and `extra` settings of a caller's own (GemmaTE's temporal settings)."""
    given = args.to_dict() if hasattr(args, "to_dict") else dict(args)
    digest = hashlib.sha1("\n\x00".join(map(str, texts)).encode()).hexdigest()
    settings = {"model": model_name, "data": digest,
                "args": {k: str(v) for k, v in sorted(given.items()) if k not in WHERE}}
    if model is not None:  # its PEFT configs and quantization (GemmaTE's wrapper: the PEFT model at .model)
        peft = getattr(model, "peft_config", None) or getattr(model.model, "peft_config", {})  # {}: none
        adapter = {name: {k: v for k, v in c.to_dict().items() if k not in ADAPTER_WHERE}
                   for name, c in peft.items()}
        quant = getattr(model.config, "quantization_config", None)
        settings.update(adapter=_plain(adapter), quantization=_plain(quant.to_dict() if quant else "none"))
    if extra:
        settings["extra"] = _plain(extra)
    return settings


def changed_settings(before: dict | None, settings: dict) -> list[str]:
    """The names of the settings that differ between two runs' `run_settings` ("the data", "the model", a
    training argument's, a LoRA setting's, "quantization", a GemmaTE setting's), in that order."""
    if before is None:
        return ["unknown settings"]

    def flat(value, prefix=""):
        if isinstance(value, dict):
            return {k: v for key, sub in value.items() for k, v in flat(sub, f"{prefix}{key}.").items()}
        return {prefix.rstrip("."): value}

    old, new = flat(before), flat(settings)
    differ = sorted((k for k in set(old) | set(new) if old.get(k) != new.get(k)),
                    key=lambda k: (not k.startswith(("data", "model")), k))
    whole = {"data": "the data", "model": "the model", "quantization": "quantization"}  # else the last part
    return list(dict.fromkeys(whole.get(k.split(".")[0], k.split(".")[-1]) for k in differ))


def _move_aside(folder: Path) -> Path:
    """Every checkpoint in `folder` into a new folder/previous-run[-N]/: not resumed, and never deleted (an
    earlier run's moved checkpoints stay where they were moved)."""
    aside, n = folder / "previous-run", 1
    while aside.exists():
        n += 1
        aside = folder / f"previous-run-{n}"
    aside.mkdir()
    for path in sorted(folder.glob("checkpoint-*")):
        path.rename(aside / path.name)
    return aside


class TrainingClock(TrainerCallback, ExportableState):
    """Seconds of training over every stretch of a run: the Trainer writes the seconds so far into each
    checkpoint's trainer_state.json (this is an ExportableState, saved with the step it belongs to), a resumed
    run starts its count there, and `seconds` is the whole run's at the end (the "is this run normal?" line
    divides it by every step)."""

    def __init__(self):
        self.start, self.before, self.seconds = None, 0.0, None

    def now(self) -> float:
        return self.before + (time.time() - self.start if self.start is not None else 0.0)

    def state(self) -> dict:
        return {"args": {}, "attributes": {"seconds": round(self.now(), 3)}}

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.time()
        # a resumed run's seconds so far; a checkpoint written without a clock (an older run) has none, and
        # no entry, which the Trainer's save expects: it gets one
        stored = state.stateful_callbacks.setdefault("TrainingClock", self.state())
        self.before = float(stored["attributes"]["seconds"]) if state.global_step else 0.0

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds = self.now()


def train_seconds(trainer, seconds: float) -> float:
    """The run's training seconds over every stretch (TrainingClock, which resume_point attached), or this
    stretch's `seconds` where no clock ran."""
    clock = next((c for c in trainer.callback_handler.callbacks if isinstance(c, TrainingClock)), None)
    return clock.seconds if clock is not None and clock.seconds is not None else seconds


def keep_trainable_dtypes(trainer) -> None:
    """A resumed run trains in the precision it was trained in: the Trainer reloads a PEFT checkpoint with
    peft's `load_adapter`, which (peft 0.21, `autocast_adapter_dtype=True`) widens bf16 adapter weights to
    fp32, where TRL had cast a 4-bit model's LoRA weights to bf16 (under bf16 compute): the optimizer would
    then be rebuilt in fp32 and the run go on differently. This puts each trainable weight back in the dtype
    it had before the load. It wraps the trainer's `_load_from_checkpoint`, private API of transformers (5.23,
    the course's pin; `make drift` runs it on the newest release)."""
    load = trainer._load_from_checkpoint

    def load_keeping_dtypes(*args, **kwargs):
        dtypes = {name: p.dtype for name, p in trainer.model.named_parameters() if p.requires_grad}
        load(*args, **kwargs)
        for name, param in trainer.model.named_parameters():
            if name in dtypes and param.dtype != dtypes[name]:
                param.data = param.data.to(dtypes[name])

    trainer._load_from_checkpoint = load_keeping_dtypes


def resume_point(output_dir: str | Path, settings: dict, trainer=None) -> str | None:
    """The checkpoint to resume from (None: start afresh), printing what it decided: this very run's (RUN_FILE
    holds the same run_settings) if it stopped before its last step; another run's or a finished one's are
    moved aside (_move_aside); then RUN_FILE records this run's settings. With `trainer`, a resume keeps its
    trainable dtypes (keep_trainable_dtypes), and a TrainingClock times every stretch (train_seconds)."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    found = complete_checkpoints(folder)
    saved = folder / RUN_FILE
    before = None
    with contextlib.suppress(ValueError):
        before = json.loads(saved.read_text()) if saved.is_file() else None
    last = json.loads((found[max(found)] / "trainer_state.json").read_text()) if found else {}
    if any(folder.glob("checkpoint-*")) and before != settings:
        what = ", ".join(changed_settings(before, settings)[:4])
        aside = _move_aside(folder)
        print(f"checkpoints of another run ({what} differ) moved to {aside.name}/: this run starts at step 0")
        found = {}
    elif found and last.get("global_step", 0) >= last.get("max_steps", float("inf")):
        aside = _move_aside(folder)
        print(f"the last run of these settings finished (its checkpoints moved to {aside.name}/): training "
              "again from step 0")
        found = {}
    saved.write_text(json.dumps(settings))
    if trainer is not None and not any(isinstance(c, TrainingClock)
                                       for c in trainer.callback_handler.callbacks):
        trainer.add_callback(TrainingClock())
    if not found:
        return None
    step = max(found)
    if trainer is not None:
        keep_trainable_dtypes(trainer)
    print(f"resuming from step {step}: a checkpoint of this same run (a disconnect, or a stop, cut it "
          f"short); delete {folder.name}/ to start over")
    return str(found[step])
