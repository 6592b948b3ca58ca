"""Paths, and files and folders written all or nothing (every notebook): `<name>.partial`, the old folder
renamed to `<name>.backup`, the new one into place, the backup deleted; `recover` finishes a cut-off write."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from gemmate_lib.guard_rails.errors import GemmateError, SaveError


def repo_root() -> Path:
    """The course repository (the folder with pyproject.toml and gemmate_lib/), else the current folder."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").exists() and (folder / "gemmate_lib").is_dir():
            return folder
    return here


def show_path(path: str | os.PathLike) -> str:
    """A path as a reader should see it: relative to the repository or to ~, never a machine's own path."""
    path = Path(path).resolve()
    for base, label in ((repo_root(), ""), (Path.home().resolve(), "~/")):
        if path.is_relative_to(base):
            return f"{label}{path.relative_to(base)}"
    return path.name


def recover(target: str | os.PathLike) -> Path:
    """Finish or undo an interrupted atomic write of `target` (returned): a backup without target is restored
    (the new folder never got into place); a backup beside a target, and any `.partial`, are deleted."""
    target = Path(target)
    backup = target.with_name(target.name + ".backup")
    if backup.exists() and not target.exists():
        backup.rename(target)
    shutil.rmtree(backup, ignore_errors=True)
    shutil.rmtree(target.with_name(target.name + ".partial"), ignore_errors=True)
    return target


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike, overwrite: bool = False, what: str = "folder"):
    """Yield a temporary folder to write into; on success it replaces `target` in one rename. On any error the
    temporary folder is removed and `target` left as it was; an OSError becomes a SaveError."""
    target = recover(target)
    if target.exists() and not overwrite:
        raise SaveError(f"a {what} already exists in {show_path(target)}",
                        "pass overwrite=True to replace it, or choose another folder")
    partial, backup = target.with_name(target.name + ".partial"), target.with_name(target.name + ".backup")
    try:
        partial.mkdir(parents=True)
        yield partial
        for path in (p for p in partial.rglob("*") if p.is_file()):  # on disk before the rename publishes it
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        if target.exists():
            target.rename(backup)
        partial.rename(target)
        shutil.rmtree(backup, ignore_errors=True)
    except (GemmateError, KeyboardInterrupt, SystemExit):
        shutil.rmtree(partial, ignore_errors=True)
        raise
    except Exception as err:  # noqa: BLE001 - OSError, or e.g. tokenizers' "No space left on device"
        shutil.rmtree(partial, ignore_errors=True)
        if backup.exists() and not target.exists():
            backup.rename(target)
        reason = getattr(err, "strerror", None) or " ".join(str(err).split())[:200] or type(err).__name__
        raise SaveError(f"could not write the {what} to {show_path(target)}: {reason}",
                        "choose a writable folder (e.g. under your home folder) with free space") from err


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically (temporary file, flush, rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise SaveError(f"could not write {show_path(path)}: {err.strerror or err}",
                        "choose a writable folder with free space") from err
    return path


def save_json(path: str | os.PathLike, data) -> Path:
    """Write JSON atomically."""
    return write_text(path, json.dumps(data, indent=2, default=str) + "\n")
