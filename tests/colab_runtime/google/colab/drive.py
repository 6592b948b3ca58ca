"""Google Drive: mount makes the folder, flush_and_unmount is recorded (one line each in $COLAB_SIM_LOG)."""
import os
from pathlib import Path


def _log(line: str) -> None:
    if os.environ.get("COLAB_SIM_LOG"):
        with open(os.environ["COLAB_SIM_LOG"], "a") as f:
            f.write(line + "\n")


def mount(mountpoint: str, force_remount: bool = False, **_) -> None:
    (Path(mountpoint) / "MyDrive").mkdir(parents=True, exist_ok=True)
    _log(f"mount {mountpoint}")


def flush_and_unmount(timeout_ms: int = 24 * 3600 * 1000) -> None:
    _log("flush_and_unmount")
