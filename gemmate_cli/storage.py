"""Remote checkpoint storage for `gemmate train` (docs/gemma11-experiment.md): `remote_path` is any fsspec URL
(s3://, gs://, hf://, memory://) or a folder; trainer_state.json goes up last, so completeness rules match."""
from __future__ import annotations

from pathlib import Path

import fsspec
from transformers import TrainerCallback

from gemmate_lib.guard_rails.errors import ParameterError
from gemmate_lib.resume import STEP

LAST = "trainer_state.json"  # written last by Trainer, uploaded last here


def remote_fs(remote_path: str):
    """(filesystem, root path) for an fsspec URL; one clear error when its package is missing."""
    try:
        return fsspec.core.url_to_fs(remote_path)
    except (ImportError, ValueError) as err:
        raise ParameterError(f"remote_path={remote_path!r} cannot be opened: {err}",
                             "install the filesystem's package (s3fs for "
                             "s3://, gcsfs for gs://) or use a folder") from None


def upload(folder: Path, remote_path: str) -> None:
    """Copy one checkpoint folder to remote_path/<its name>, trainer_state.json last."""
    fs, root = remote_fs(remote_path)
    files = sorted((f for f in folder.rglob("*") if f.is_file()), key=lambda f: f.name == LAST)
    for f in files:
        target = f"{root}/{folder.name}/{f.relative_to(folder).as_posix()}"
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(f), target)


def remote_checkpoints(remote_path: str) -> list[str]:
    """Names of the checkpoint-<step> folders under remote_path that have their trainer_state.json."""
    fs, root = remote_fs(remote_path)
    if not fs.exists(root):
        return []
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
    return sorted((n for n in names if STEP.match(n) and fs.exists(f"{root}/{n}/{LAST}")),
                  key=lambda n: int(STEP.match(n).group(1)))


def download(remote_path: str, output_dir: str | Path) -> list[str]:
    """Fetch the complete remote checkpoints that output_dir lacks; returns their names."""
    fs, root = remote_fs(remote_path)
    fetched = []
    for name in remote_checkpoints(remote_path):
        local = Path(output_dir) / name
        if (local / LAST).exists():
            continue
        for remote_file in sorted(fs.find(f"{root}/{name}"), key=lambda p: p.endswith(LAST)):
            rel = remote_file.split(f"{name}/", 1)[1]
            (local / rel).parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(remote_file, str(local / rel))
        fetched.append(name)
    return fetched


class StorageSync(TrainerCallback):
    """After each save (and the keep-last/best policy): upload the new checkpoint, mirror deletions."""

    def __init__(self, output_dir: str | Path, remote_path: str):
        self.output_dir, self.remote_path = Path(output_dir), remote_path

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return control
        folder = self.output_dir / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            upload(folder, self.remote_path)
        fs, root = remote_fs(self.remote_path)
        for name in remote_checkpoints(self.remote_path):
            if not (self.output_dir / name).is_dir():
                fs.rm(f"{root}/{name}", recursive=True)
        return control
