"""The command line's config (docs/command-line.md): the notebooks' settings (gemmate_lib.config) plus the
ones only the commands read (checkpoints, W&B, train-te's data, evaluate / generate), one flat `name: value`
set of them in YAML (`--config`, `gemmate hpo`'s best_config.yaml) and flags, in the notebooks' one
registry (config.Settings: the fields, their types and one check); parser.py parses flags and YAML into it."""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

from gemmate_lib import config
from gemmate_lib.config import CourseConfig, Settings, course_config, setting
from gemmate_lib.guard_rails.errors import ParameterError

GROUP_TITLE = "{} settings (a YAML key or a flag; default: the profile's)"  # `gemmate --help`'s group titles
for _name, _group in config.GROUPS.items():  # HfArgumentParser's title of each of the notebooks' groups
    _group._argument_group_name = GROUP_TITLE.format(_name)


@dataclass
class CommandSettings:
    """The settings that only the commands read (W&B, train-te's data, evaluate / generate); --help shows them
    after the notebooks' groups."""
    _argument_group_name = GROUP_TITLE.format("the commands' own")
    use_wandb: bool = setting(False,
        "log to Weights & Biases, offline (WANDB_MODE=offline): the switch of the Gemma 1.1 experiment "
        "(docs/gemma11-experiment.md)")
    wandb_project: str = setting("gemmate", "with use_wandb: the project name")
    wandb_run_name: str | None = setting(None, "with use_wandb: the run's name (None: wandb picks one)")
    wandb_tags: list[str] = setting((), "with use_wandb: tags of the run")
    timestamp_unit: str | None = setting(None, "what bare numbers in the data's timestamps are (None: ms)",
                                         (None, "s", "ms", "us", "ns"))
    temporal_task: str = setting("file", "train-te's data: 'file' (dataset, a JSONL), or 07's tasks, "
                                 "built in and evaluated after training",
                                 ("file", "dated_notes", "python_releases"))
    adapter: str | None = setting(None,
        "`gemmate evaluate / generate`: the adapter folder (default: output_dir/adapter)")
    prompts: list[str] = setting((),
        "`gemmate generate`: prompts (default: the course's four standard prompts)")


@dataclass
class CheckpointSettings:
    """Where the commands save, which checkpoints `gemmate train` keeps, and how it resumes."""
    _argument_group_name = GROUP_TITLE.format("checkpoint")

    output_dir: str = setting("runs/cli",
        "`gemmate` commands: checkpoints, adapter, metrics and logs go here")
    save_format: str = setting("safetensors", "train-te: 'pt' also writes model.pt, a merged PyTorch state "
                               "dict, which the GemmaTE guide's loader reads (docs/gemmate-temporal.md)",
                               ("safetensors", "pt"))
    save_strategy: str = setting("step", "'step' (at every evaluation), 'epoch' or "
                                 "'no'; notebooks save the adapter themselves", ("step", "epoch", "no"))
    resume_from_checkpoint: bool = setting(False, "continue an interrupted run in output_dir")
    resume_option: str = setting("last",
        "'last', 'best' (by checkpoint_metric) or 'path' (checkpoint_path)", ("last", "best", "path"))
    checkpoint_path: str | None = setting(None, "the checkpoint folder for resume_option='path'")
    checkpoint_metric: str | None = setting("eval_loss", "metric that ranks checkpoints (None: no ranking)")
    checkpoint_metric_mode: str = setting("min",
        "'min' or 'max': which direction of checkpoint_metric is better", ("min", "max"))
    keep_last_n: int = setting(2, "keep this many most recent checkpoints")
    keep_best_n: int = setting(1, "and this many best by checkpoint_metric (0: none)")
    early_stopping_patience: int = setting(0, "stop after this many evaluations without improvement (0: off)")
    save_optim: bool = setting(True,
        "checkpoints keep optimizer, scheduler and RNG state (needed to resume exactly)")
    storage_backend: str = setting("none", "'fsspec': checkpoints can go to remote_path (s3://, gs://, "
                                   "hf://, memory://, a folder); sync_/load_from_storage choose when",
                                   ("none", "fsspec"))
    sync_to_storage: bool = setting(False, "upload each checkpoint to remote_path right after it is saved")
    load_from_storage: bool = setting(False,
        "on resume, first download remote_path's checkpoints into output_dir")
    remote_path: str | None = setting(None,
        "an fsspec URL or folder for the checkpoints, e.g. s3://bucket/gemma-sst2")


SETTINGS = Settings({**config.GROUPS, "command": CommandSettings, "checkpoints": CheckpointSettings})
ORDER = list(SETTINGS.owner)  # every setting: --help's, YAML's and train_metrics.json's order
CLI_TASK_DEFAULTS = {"temporal": {"save_strategy": "no"}}  # train-te saves no checkpoints
ALIASES = {"dataset_id": "dataset"}  # docs/gemma11-experiment.md's names that the course spells differently
FIXED = {"lora_task_type": "CAUSAL_LM"}  # YAML keys with one possible value: accepted, and nothing to set


@dataclass
class CommandConfig:
    """A command's config: the notebooks' CourseConfig and the commands' own settings; flat() lists every
    setting in ORDER, as --help and YAML files do."""

    course: CourseConfig  # the notebooks' settings, built and checked by config.course_config
    command: CommandSettings = field(default_factory=CommandSettings)  # what only the commands read
    checkpoints: CheckpointSettings = field(default_factory=CheckpointSettings)  # save and resume

    def flat(self) -> dict:
        """Every setting as one flat {name: value} dict, in ORDER (what YAML files and flags use)."""
        return {name: self.get(name) for name in ORDER}

    def get(self, name: str):
        """The value of one setting by its flat name."""
        if name in config.SETTINGS.owner:
            return self.course.get(name)
        return getattr(self.checkpoints if SETTINGS.owner[name] == "checkpoints" else self.command, name)

    def replace(self, **values) -> CommandConfig:
        """A copy with some settings changed (flat names), type-checked and validated."""
        SETTINGS.check_names(values)
        notebooks = {k: v for k, v in values.items() if k in config.SETTINGS.owner}
        course = self.course.replace(**notebooks) if notebooks else self.course
        own = {k: SETTINGS.coerce(k, v) for k, v in values.items() if k not in config.SETTINGS.owner}
        new = CommandConfig(course, *split_own(own, self.command, self.checkpoints))
        check_command_settings(new.flat())
        return new


def split_own(values: dict, command: CommandSettings, checkpoints: CheckpointSettings) -> tuple:
    """(command, checkpoints) with `values` (the commands' own settings, typed) set in them."""
    mine = {name for name, group in SETTINGS.owner.items() if group == "checkpoints"}
    return (dataclasses.replace(command, **{k: v for k, v in values.items() if k not in mine}),
            dataclasses.replace(checkpoints, **{k: v for k, v in values.items() if k in mine}))


def command_config(task: str = "quotes", **params) -> CommandConfig:
    """config.course_config for the notebooks' settings in `params` (typed already), the commands' defaults
    (for `task`) and values for the others; every one checked, the library's rules first."""
    SETTINGS.check_names(params)
    course = course_config(task, **{k: v for k, v in params.items() if k in config.SETTINGS.owner})
    given = {k: SETTINGS.coerce(k, v) for k, v in params.items()
             if k not in config.SETTINGS.owner and (v is not None or k in SETTINGS.nullable)}
    own = CLI_TASK_DEFAULTS.get(task, {}) | given
    cfg = CommandConfig(course, *split_own(own, CommandSettings(), CheckpointSettings()))
    check_command_settings(cfg.flat())
    return cfg


def check_command_settings(flat: dict) -> None:
    """The commands' rules (the library's are config.validate's): counts not negative, output_dir writable,
    the checkpoint policy complete, remote storage and W&B usable."""
    for name in ("keep_last_n", "keep_best_n", "early_stopping_patience"):
        if flat[name] < 0:
            config.fail(name, flat[name], "must not be negative", f"set {name} to 0 or more")
    folder = Path(flat["output_dir"]).expanduser().absolute()
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ParameterError(f"parameter output_dir={flat['output_dir']!r} cannot be written ({existing} is "
                             f"{'not a folder' if existing and not existing.is_dir() else 'read-only'})",
                             "choose a folder you can write to, e.g. under your home folder")
    needs_metric = {"keep_best_n": flat["keep_best_n"] > 0 and flat["save_strategy"] != "no",
                    "early_stopping_patience": flat["early_stopping_patience"] > 0,
                    "resume_option=best": flat["resume_from_checkpoint"] and flat["resume_option"] == "best"}
    for key, used in needs_metric.items():
        if used and not flat["checkpoint_metric"]:
            raise ParameterError(f"{key} ranks checkpoints, but checkpoint_metric is not set",
                                 "set checkpoint_metric: eval_loss (and val_steps_freq > 0), "
                                 "or keep_best_n: 0")
        if used and flat["val_steps_freq"] == 0:
            raise ParameterError(f"{key} needs evaluations, but val_steps_freq is 0",
                                 "set val_steps_freq >= 1")
    if flat["resume_from_checkpoint"]:
        if flat["resume_option"] == "path":
            path = flat["checkpoint_path"]
            if not path:
                raise ParameterError("resume_option='path' needs checkpoint_path",
                                     "set checkpoint_path to a checkpoint-<step> folder")
            if not Path(path).is_dir():
                raise ParameterError(f"parameter checkpoint_path={path!r} does not exist",
                                     "point it at an existing checkpoint-<step> folder inside an output_dir")
        if flat["keep_last_n"] + flat["keep_best_n"] == 0:
            raise ParameterError("keep_last_n and keep_best_n are both 0, so there is nothing to resume from",
                                 "set keep_last_n >= 1")
    if (flat["sync_to_storage"] or flat["load_from_storage"]) and flat["storage_backend"] == "none":
        raise ParameterError("sync_to_storage / load_from_storage need remote checkpoint storage, but "
                             "storage_backend is 'none'", "set storage_backend: fsspec (and remote_path)")
    if flat["storage_backend"] != "none" and not flat["remote_path"]:
        raise ParameterError(f"storage_backend is {flat['storage_backend']!r}, but remote_path is not set",
                             "set remote_path, e.g. s3://bucket/run or a folder")
    if flat["use_wandb"] and importlib.util.find_spec("wandb") is None:
        raise ParameterError("use_wandb is true, but the wandb package is not installed",
                             "pip install wandb (it logs offline here, WANDB_MODE=offline; "
                             "`wandb sync` uploads later), or use_wandb: false")


def read_config(path: str | Path) -> dict:
    """The `name: value` settings of the YAML file given to --config, every key checked: the experiment's
    names as the course's (ALIASES), FIXED keys dropped, an unknown key one ParameterError."""
    values = {ALIASES.get(k, k): v for k, v in read_yaml(path, "--config").items()}  # e.g. dataset_id
    for key, only in FIXED.items():
        if values.pop(key, only) != only:
            raise ParameterError(f"{key} in {Path(path).name} can only be {only!r}",
                                 f"delete the line {key}:")
    SETTINGS.check_names(values, "config key", f" in {Path(path).name}")
    return values


def dump_config(cfg: CommandConfig, path: str | Path) -> Path:
    """Write every setting as flat YAML, which `--config` reads back (what `gemmate hpo` writes)."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.flat().items()}  # YAML: no tuples
    path.write_text(yaml.safe_dump(flat, sort_keys=False))
    return path


def read_yaml(path: str | Path, what: str) -> dict:
    """`name: value` pairs from a YAML file, with one clear error for a missing or malformed file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ParameterError(f"{what} file {path} does not exist", f"check the path given to {what}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    except UnicodeDecodeError:
        raise ParameterError(f"{what} file {path} is not UTF-8 text", "save it as UTF-8") from None
    except yaml.YAMLError as err:
        raise ParameterError(f"{what} file {path} is not valid YAML: {str(err).splitlines()[0]}",
                             "fix the YAML syntax (one `key: value` per line)") from None
    if not isinstance(values, dict):
        raise ParameterError(f"{what} file {path} must hold `key: value` pairs", "see configs/cpu-quick.yaml")
    return values
