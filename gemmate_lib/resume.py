"""Runs that survive a disconnect (03_lora_sft teaches it; 07 and `gemmate train` use it): a Colab runtime
can be reclaimed mid-run ("shuts down, clearing all variables, files"), so a long training checkpoints its
adapter, optimizer, scheduler and random state every `save_steps` steps into the run folder (on Google Drive
in Colab), and running the notebook again resumes from the last complete checkpoint, where the run takes up
exactly as it would have gone on: the same batches, the same random draws (the learner's-path test holds a
resumed adapter to an uninterrupted run's, bitwise).

A checkpoint resumes only the run that wrote it: the run's settings (model, training arguments, data) are kept
beside its checkpoints (RUN_FILE), and a rerun with other settings starts over, saying so, instead of resuming
a run it is not (a naive resume changes the loss: unslothai/unsloth issue 5037)."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

STEP = re.compile(r"^checkpoint-(\d+)$")
RUN_FILE = "run_settings.json"  # beside the checkpoints: the settings of the run that wrote them
# TrainingArguments that name where things go, not how the run trains
WHERE = {"output_dir", "logging_dir", "run_name", "hub_token", "disable_tqdm", "report_to", "logging_steps",
         "save_steps", "save_total_limit", "save_strategy", "eval_steps", "eval_strategy", "push_to_hub"}


def complete_checkpoints(output_dir: str | Path) -> dict[int, Path]:
    """{step: folder} of the checkpoints in output_dir that were written to the end (their trainer_state.json,
    which the Trainer writes last, parses: a run killed mid-save leaves a folder without it)."""
    found = {}
    for folder in Path(output_dir).glob("checkpoint-*"):
        match = STEP.match(folder.name)
        try:
            if match and folder.is_dir():
                json.loads((folder / "trainer_state.json").read_text())
                found[int(match.group(1))] = folder
        except (OSError, ValueError):
            pass
    return dict(sorted(found.items()))


def run_settings(args, model_name: str, texts) -> dict:
    """What makes a run the same run: the model, the training arguments that decide how it trains (not where
    it writes), and the training texts (their hash)."""
    given = args.to_dict() if hasattr(args, "to_dict") else dict(args)
    digest = hashlib.sha1("\n\x00".join(map(str, texts)).encode()).hexdigest()[:16]
    return {"model": model_name, "data": digest,
            "args": {k: str(v) for k, v in sorted(given.items()) if k not in WHERE}}


def _move_aside(folder: Path) -> Path:
    """Every checkpoint in `folder` into folder/previous-run/ (emptied first): not resumed, not lost."""
    aside = folder / "previous-run"
    shutil.rmtree(aside, ignore_errors=True)
    aside.mkdir()
    for path in sorted(folder.glob("checkpoint-*")):
        path.rename(aside / path.name)
    return aside


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
    """The checkpoint to resume from (None: start afresh), printing what it decided. A checkpoint of this very
    run (RUN_FILE holds the same settings) that it left before its last step resumes; checkpoints of another
    run (other settings: a changed parameter), or of one that finished (running the notebook again trains
    again), are moved aside to `previous-run/`, so they are neither resumed nor lost; then RUN_FILE records
    this run's settings. With `trainer`, a resume keeps its trainable weights' dtypes
    (keep_trainable_dtypes)."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    found = complete_checkpoints(folder)
    saved = folder / RUN_FILE
    before = json.loads(saved.read_text()) if saved.is_file() else None
    last = json.loads((found[max(found)] / "trainer_state.json").read_text()) if found else {}
    if any(folder.glob("checkpoint-*")) and before != settings:
        old = (before or {}).get("args", {})
        changed = sorted(k for k in settings["args"] if old.get(k) != settings["args"][k])
        other = "the model" if (before or {}).get("model") != settings["model"] else "the data"
        what = (", ".join(changed[:4]) or other) if before else "unknown settings"
        aside = _move_aside(folder)
        print(f"checkpoints of another run ({what} differ) moved to {aside.name}/: this run starts at step 0")
        found = {}
    elif found and last.get("global_step", 0) >= last.get("max_steps", float("inf")):
        aside = _move_aside(folder)
        print(f"the last run of these settings finished (its checkpoints moved to {aside.name}/): training "
              "again from step 0")
        found = {}
    saved.write_text(json.dumps(settings, indent=1))
    if not found:
        return None
    step = max(found)
    if trainer is not None:
        keep_trainable_dtypes(trainer)
    print(f"resuming from step {step}: a checkpoint of this same run (a disconnect, or a stop, cut it "
          f"short); delete {folder.name}/ to start over")
    return str(found[step])
