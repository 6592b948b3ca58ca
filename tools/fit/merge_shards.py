"""Merge a LoRA adapter into a downloaded base checkpoint file by file, without loading the model
(tools/fit/rehearse.py, docs/full-shape.md), and the planner's estimate of that merge: a phase of this tool,
not of a notebook (05 merges in memory, the planner's load phase), so planner.predict leaves it out."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch

from gemmate_lib.adapters import check_adapter_files
from gemmate_lib.guard_rails.errors import ModelLoadError
from gemmate_lib.guard_rails.files import atomic_folder, show_path
from gemmate_lib.hardware import freed_memory_returned

PEFT_BASELINE = 0.31e9  # Python with torch, transformers and peft, before its work (measured)


def merge_need(shape) -> dict:
    """The merge phase of a model of `shape` (a gemmate_lib.fit.Shape), as planner.predict gives the others:
    merge_shards into f16 reads one adapted weight (2 bytes a value), widens it to fp32 (4), rounds (2) and
    writes it (2); or the 64 MiB chunks that pass in f16 (read, converted, written: about four)."""
    checkpoint = shape.parameters * shape.checkpoint_bytes
    return {"gpu": None, "disk": checkpoint + shape.parameters * 2, "seconds": checkpoint / 150e6,
            "ram": PEFT_BASELINE + max(shape.largest_adapted * 10, 4 * 2**26)}


def phases(shape, compute_bytes: int) -> dict[str, dict]:
    """Every phase the rehearsal measures: the planner's (planner.predict), with this tool's merge after the
    4-bit training."""
    from tools.fit.planner import predict

    plan = predict(shape, compute_bytes)
    order = ("load", "nf4", "merge")
    return {"load": plan["load"], "nf4": plan["nf4"], "merge": merge_need(shape)} | {
        phase: need for phase, need in plan.items() if phase not in order}


def merge_shards(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path,
                 dtype: torch.dtype | None = None) -> Path:
    """Merge a LoRA adapter into a downloaded base checkpoint file by file, without loading the model
    (docs/full-shape.md measures it at full size): each output shard is its input shard with the adapted
    weights replaced by W + (alpha/r)·B·A (in fp32, rounded once), in `dtype` (None: the base's own, other
    weights copied byte for byte; torch.float16: what llama.cpp's converter reads). Other weights pass 64 MiB
    at a time: the peak memory is about one adapted weight in fp32, not the model (Gemma 4 E2B: ~19 GiB)."""
    from safetensors.torch import load_file

    base_dir, adapter_dir = Path(base_dir), Path(adapter_dir)
    config = json.loads((check_adapter_files(adapter_dir) / "adapter_config.json").read_text())
    lora = load_file(str(adapter_dir / "adapter_model.safetensors"))
    pairs = {k.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight"): k
             for k in lora if k.endswith(".lora_A.weight")}
    files = sorted(base_dir.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"no safetensors weights in {show_path(base_dir)}",
                             "pass the folder of a downloaded base model (config.json and *.safetensors)")
    names = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
    codes = {t: n for n, t in names.items()}
    merged, chunk = 0, 2**26  # 64 MiB, a multiple of every dtype's size
    with atomic_folder(out_dir, overwrite=True, what="merged model") as tmp, freed_memory_returned():
        for file in files:
            with open(file, "rb") as src, open(tmp / file.name, "wb") as dst:
                size = int.from_bytes(src.read(8), "little")
                header = json.loads(src.read(size))
                entries = sorted((v["data_offsets"], k) for k, v in header.items() if k != "__metadata__")
                source = {key: names[header[key]["dtype"]] for _, key in entries}
                to = {key: dtype or source[key] for key in source}
                out_header, offset = {"__metadata__": header.get("__metadata__", {"format": "pt"})}, 0
                for _, key in entries:  # the same tensors in the same order, in the output dtype
                    nbytes = math.prod(header[key]["shape"]) * to[key].itemsize
                    out_header[key] = {**header[key], "dtype": codes[to[key]],
                                       "data_offsets": [offset, offset + nbytes]}
                    offset += nbytes
                text = json.dumps(out_header).encode()
                text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
                dst.write(len(text).to_bytes(8, "little") + text)
                for (begin, end), key in entries:
                    src.seek(8 + size + begin)
                    if key in pairs:
                        weight = torch.frombuffer(bytearray(src.read(end - begin)), dtype=source[key]).float()
                        a, b = lora[pairs[key]].float(), lora[pairs[key].replace("lora_A", "lora_B")].float()
                        weight = weight.view(header[key]["shape"]).addmm_(
                            b, a, alpha=config["lora_alpha"] / config["r"])
                        dst.write(weight.to(to[key]).contiguous().view(torch.uint8).numpy().tobytes())
                        merged += 1
                        continue
                    for start in range(begin, end, chunk):
                        raw = src.read(min(chunk, end - start))
                        if to[key] != source[key]:
                            raw = torch.frombuffer(bytearray(raw), dtype=source[key]).to(to[key])
                            raw = raw.view(torch.uint8).numpy().tobytes()
                        dst.write(raw)
        if merged != len(pairs):
            raise ModelLoadError(f"the adapter in {show_path(adapter_dir)} has {len(pairs)} LoRA layers but "
                                 f"{merged} matched weights in {show_path(base_dir)}",
                                 "merge into the base model the adapter was trained on "
                                 "(gemmate.json names it)")
        for extra in base_dir.iterdir():
            if extra.is_file() and extra.suffix in (".json", ".model", ".jinja"):
                shutil.copy(extra, tmp / extra.name)
        if dtype is not None:
            cfg = json.loads((tmp / "config.json").read_text())
            for field in {"dtype", "torch_dtype"} & set(cfg) or {"dtype"}:  # transformers 5 writes "dtype"
                cfg[field] = str(dtype).removeprefix("torch.")
            (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
    return Path(out_dir)
