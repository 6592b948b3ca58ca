"""`gemmate export RUN_DIR`'s GGUF files (docs/export.md): the fine-tune merged into a 16/32-bit base,
written by llama.cpp's converter and quantizer (gemmate_lib.export, as 05_save_and_push writes them out), all
or nothing, with an Ollama Modelfile; a run folder on Google Drive keeps one file.
tests/cli/test_cli_export.py holds 05's written-out export equal to `export_gguf`."""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

from gemmate_cli.gguf_file import template_note
from gemmate_lib import export
from gemmate_lib.guard_rails.errors import ModelLoadError, ParameterError
from gemmate_lib.guard_rails.files import atomic_folder, recover, show_path

QUANT_TYPES = ("q8_0", "q4_k_m")  # names of llama.cpp's LLAMA_FTYPE_MOSTLY_* file types (any of them works)
F16 = "f16"
BYTES_PER_WEIGHT = {F16: 2.0, "q8_0": 1.07, "q4_k_m": 0.65}  # about, per file (gemma-2b's Q4_K_M: ~1.6 GB)

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
        export.ftype(q)
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
    export.check_disk(target.parent, int(n_params * 2 * 2.1 + n_params * 1.1 * len(quant_types)))
    if target != run_dir / "gguf":  # Drive: room for the kept file, before the minutes of converting
        export.check_disk(run_dir, int(n_params * BYTES_PER_WEIGHT.get(keep, 2.0) * 1.05))
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
            export.sentencepiece_vocab(hf, tokenizer.name_or_path)
        f16 = tmp / "model-f16.gguf"
        result["convert_s"] = export.convert(hf, f16)
        shutil.rmtree(hf)
        result["quantize_s"] = {q: export.quantize(f16, tmp / f"model-{q}.gguf", q) for q in quant_types}
        with contextlib.suppress(ValueError, OSError):  # a file llama.cpp cannot read: the check says so
            result["ollama_note"] = template_note(tmp / kept)
        raw = getattr(generation_of(merged), "key", None) == "gemma4"  # Ollama ignores its TEMPLATE
        (tmp / "Modelfile").write_text(modelfile(kept, tokenizer.eos_token, max_new_tokens, raw_mode=raw,
                                                 note=None if raw else result["ollama_note"]))
    result["files"] = {path.name: path.stat().st_size for path in sorted(target.glob("*.gguf"))}
    if target != run_dir / "gguf":  # Drive: the kept file and its Modelfile, once it has the room for them
        size = (target / kept).stat().st_size
        export.check_disk(run_dir, int(size * 1.05) + 2**16)
        with atomic_folder(run_dir / "gguf", overwrite=True, what="GGUF file") as tmp:
            shutil.copyfile(target / kept, tmp / kept)
            shutil.copyfile(target / "Modelfile", tmp / "Modelfile")
        print(f"{kept} ({size / 2**30:.2f} GiB) is kept in the run folder's gguf/ on Google Drive; the other "
              f"GGUF files stay on this runtime's disk in {target} and go with the runtime")
    return result
