"""Google Drive: `mount` and `flush_and_unmount`, recorded (one line each in $COLAB_SIM_LOG).

With $COLAB_SIM_DRIVE set (a folder standing for the files on Google's servers), they behave as Colab's do:
`mount` makes <mountpoint>/MyDrive show that folder, and `flush_and_unmount` takes it away again, so a path on
Drive kept from before the unmount (05's `adapter_dir` after a notebook's last cell) cannot be read until the
next `mount`; the files stay for the next mount, as they stay on Drive for the next runtime. Without it,
`mount` makes a plain folder and `flush_and_unmount` only records the call (the smoke run's behaviour)."""
import os
from pathlib import Path

_MOUNTED: list[Path] = []  # the MyDrive links this process made


def _log(line: str) -> None:
    if os.environ.get("COLAB_SIM_LOG"):
        with open(os.environ["COLAB_SIM_LOG"], "a") as f:
            f.write(line + "\n")


def mount(mountpoint: str, force_remount: bool = False, **_) -> None:
    my_drive = Path(mountpoint) / "MyDrive"
    store = os.environ.get("COLAB_SIM_DRIVE")
    if store:
        Path(store).mkdir(parents=True, exist_ok=True)
        my_drive.parent.mkdir(parents=True, exist_ok=True)
        if my_drive.is_symlink() and force_remount:
            my_drive.unlink()
        if not my_drive.is_symlink():
            my_drive.symlink_to(Path(store).absolute(), target_is_directory=True)
        _MOUNTED.append(my_drive)
    else:
        my_drive.mkdir(parents=True, exist_ok=True)
    _log(f"mount {mountpoint}")


def flush_and_unmount(timeout_ms: int = 24 * 3600 * 1000) -> None:
    # what this process mounted, and Colab's mount point, which an earlier process may have mounted
    for link in {*_MOUNTED, Path("/content/drive/MyDrive")}:
        if link.is_symlink() and os.environ.get("COLAB_SIM_DRIVE"):
            link.unlink()
    _MOUNTED.clear()
    _log("flush_and_unmount")
