"""The command line's own settings (docs/command-line.md): checkpoints, W&B, train-te's data,
evaluate / generate; YAML in and out (`--config`, `gemmate hpo`)."""
from __future__ import annotations

from pathlib import Path

from gemmate_lib.config import HINTS, OWNER, CourseConfig, check_names, coerce, course_config, plain_values
from gemmate_lib.errors import ParameterError

ALIASES = {"dataset_id": "dataset"}  # docs/gemma11-experiment.md's names that the course spells differently
FIXED = {"lora_task_type": "CAUSAL_LM"}  # YAML keys with one possible value: accepted, and nothing to set


def load_config(path: str | Path | None = None, overrides: dict | None = None,
                task: str = "quotes") -> CourseConfig:
    """A CourseConfig from a YAML file (optional), then `--key value` overrides (parsed from text)."""
    values: dict = {}
    if path is not None:
        values = {ALIASES.get(k, k): v for k, v in read_yaml(path, "--config").items()}  # e.g. dataset_id
        for key, only in FIXED.items():
            if values.pop(key, only) != only:
                raise ParameterError(f"{key} in {Path(path).name} can only be {only!r}",
                                     f"delete the line {key}:")
        check_names(values, "config key", f" in {Path(path).name}")
    # PyYAML reads a number without a dot, such as 1e-4, as a string: for a float setting it is a number
    typed = {k: coerce(k, v, from_text=isinstance(v, str) and HINTS[k] is float) for k, v in values.items()}
    typed.update({k: coerce(k, v, from_text=True) if k in OWNER else v for k, v in (overrides or {}).items()})
    return course_config(task, **typed)


def dump_config(cfg: CourseConfig, path: str | Path) -> Path:
    """Write every setting as flat YAML, which `load_config` reads back (what `gemmate hpo` writes)."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(plain_values(cfg.flat()), sort_keys=False))
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
