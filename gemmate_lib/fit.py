"""Will it fit? Before any weight is downloaded, estimate what a notebook needs on this runtime from the
model's config alone (its shapes on the meta device): each notebook prints its line (`notebook_fit`), 00_setup
every notebook's: the model copies it holds at once, as measured (MEASURED_COPIES), at this model's size.
FitError names a runtime that fits. tools/fit/ measures them (docs/full-shape.md); its planner (planner.py)
sizes each phase for the maintainers' records."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from gemmate_lib.generations import SEED_TARGETS, TOWERS
from gemmate_lib.guard_rails.errors import LAST_FIT, GemmateError

GIB = 2**30
NF4_BYTES = 4.127 / 8  # bytes a weight in NF4: 4 bits, plus double-quantized absmax scales (blocksize 64)
# A free Colab runtime: a T4 (14.6 GiB, less the CUDA context), 12.7 GB of RAM, 70 GB of disk (assumed)
CUDA_CONTEXT = 0.6 * GIB  # the CUDA context and cuBLAS workspaces that no tensor accounts for
FREE_COLAB = {"gpu": "T4", "gpu_bytes": 14.6 * GIB - CUDA_CONTEXT, "ram_bytes": 12.7e9, "disk_bytes": 70e9}
BIGGER = "an L4 (22.5 GB) or A100 (40 GB) Colab runtime"
FIX = f"switch to {BIGGER}, or choose a smaller model (google/gemma-3-1b-pt)"  # a FitError's
# A process's memory before its work (measured): Python with torch, llama.cpp's converter, its quantizer
TORCH_BASELINE, CONVERTER_BASELINE, LLAMA_BASELINE = 0.15e9, 0.75e9, 0.05e9
LOAD_BASELINE = 0.27e9  # a process that loads through models.load_model: torch, transformers, the loader
VERIFY_CONTEXT = 0.26e9  # llama.cpp's context and compute buffers for a short prompt (measured)
LOAD_WORKERS = 2  # transformers 5.23's whole-model load: min(4, CPUs) threads (GLOBAL_WORKERS); Colab has 2
ACTIVATIONS = 0.5 * GIB  # batch 1 x 128 tokens with checkpointing; TRL's fused head builds no logits
TRAINED_BYTES = 4 + 4 + 2 * 4  # a weight LoRA trains, under fp32 AdamW (06): weight, gradient, two moments
MEASURED_COPIES = Path(__file__).with_name("notebook_copies.json")  # written by tools/fit/notebook_fit.py


class FitError(GemmateError, RuntimeError):
    """A phase of the course will not fit this runtime (problem says which, fix names a runtime that fits)."""


@dataclass
class Shape:
    """What decides memory: parameter counts of a model, from its config on the meta device."""

    parameters: int  # every weight once (a tied LM head counts once)
    quantized: int  # weights NF4 stores in 4 bits (transformers' rule: Linear layers but the LM head)
    text: int  # the text model's weights (what the GGUF file holds; Gemma 4's towers go to another file)
    largest: int  # elements of the largest tensor
    largest_adapted: int  # elements of the largest weight LoRA adapts
    adapted_sides: int = 0  # in + out features summed over the layers LoRA adapts: x the rank = its weights
    per_layer: int = 0  # elements of a per-layer embedding table (Gemma 4), 0 without one: kept on the CPU
    largest_but_table: int = 0  # elements of the largest tensor other than that table
    repacked: int = 0  # 4-bit text weights llama.cpp's CPU backend repacks (where hidden size % 256 == 0)
    sizes: tuple[int, ...] = ()  # every tensor's elements in the order transformers loads them (by name)
    checkpoint_bytes: int = 2  # bytes a value in the checkpoint (the Hub's Gemmas: bf16)


def shape_of(config) -> Shape:
    """The Shape of a transformers config, via the model class its checkpoint loads as, on the meta device."""
    import torch
    import transformers
    from transformers.core_model_loading import dot_natural_key
    from transformers.quantizers.base import get_keys_to_not_convert

    cls = getattr(transformers, (config.architectures or ["AutoModelForCausalLM"])[0], None)
    with torch.device("meta"):
        model = cls(config) if cls is not None else transformers.AutoModelForCausalLM.from_config(config)
    skip = set(get_keys_to_not_convert(model))
    params = dict(model.named_parameters())  # named_parameters lists a tied weight once
    linear = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in skip}
    in_text = lambda name: not any(tower in name for tower in TOWERS)
    text_linear = {n: m for n, m in linear.items() if in_text(n)}
    adapted = [m.weight.shape for n, m in text_linear.items() if n.rsplit(".", 1)[-1] in SEED_TARGETS]
    table = {n for n in params if "per_layer" in n and "embed" in n}
    aligned = config.get_text_config().hidden_size % 256 == 0
    stored = str(getattr(config, "dtype", None) or "bfloat16").removeprefix("torch.")
    return Shape(parameters=sum(p.numel() for p in params.values()),
                 quantized=sum(m.weight.numel() for m in linear.values()),
                 text=sum(p.numel() for n, p in params.items() if in_text(n)),
                 largest=max(p.numel() for p in params.values()),
                 largest_adapted=max(o * i for o, i in adapted), adapted_sides=sum(o + i for o, i in adapted),
                 per_layer=sum(params[n].numel() for n in table),
                 largest_but_table=max(p.numel() for n, p in params.items() if n not in table),
                 repacked=sum(m.weight.numel() for m in text_linear.values()) if aligned else 0,
                 sizes=tuple(params[n].numel() for n in sorted(params, key=dot_natural_key)),
                 checkpoint_bytes=4 if stored == "float32" else 2)


def runtime_here() -> dict:
    """This machine as a runtime: its GPU (None without CUDA), its RAM and the free disk for downloads."""
    import os
    import shutil

    import torch
    from huggingface_hub.constants import HF_HUB_CACHE

    downloads = Path(HF_HUB_CACHE)  # where the Hub's downloads go: its nearest folder that exists
    folder = next(p for p in (downloads, *downloads.parents) if p.exists())
    here = {"gpu": None, "gpu_bytes": None, "disk_bytes": shutil.disk_usage(folder).free,
            "ram_bytes": os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")}
    if torch.cuda.is_available():
        here |= {"gpu": torch.cuda.get_device_name(0),
                 "gpu_bytes": torch.cuda.get_device_properties(0).total_memory - CUDA_CONTEXT}
    return here


def converted(shape: Shape, load_bytes: int, workers: int = 1) -> float:
    """Peak host bytes while torch converts tensors to the load dtype on the CPU: `workers` threads take them
    in name order, each reading one (time: its checkpoint bytes), then holding it converted (its new size)."""
    if load_bytes == 4 and shape.checkpoint_bytes == 4:
        return 0.0
    free_at = [0.0] * workers  # when each thread takes its next tensor
    held = []  # (from, until, bytes) of every converted buffer
    for n in shape.sizes or (shape.largest,):
        k = min(range(workers), key=free_at.__getitem__)
        start = free_at[k] + n * shape.checkpoint_bytes
        free_at[k] = start + n * load_bytes
        held.append((start, free_at[k], n * load_bytes))
    return max(sum(b for s, e, b in held if s <= t < e) for t, _, _ in held)


def predicted_copy_bytes(shape: Shape, kind: str, compute_bytes: int) -> dict[str, float]:
    """One copy of the model, {"gpu", "host", "loading"} in bytes. `kind`: "nf4" (linear layers in 4 bits) or
    "whole"; "-fp32": the other weights in fp32 (k-bit preparation). A per-layer table (Gemma 4) moves to the
    CPU in 16 bits after the load ("host", models.lookup_tables_to_cpu); "loading": the GPU peak before."""
    four_bit = kind.startswith("nf4")
    packed = shape.quantized * NF4_BYTES if four_bit else 0
    unpacked = shape.parameters - (shape.quantized if four_bit else 0)
    gpu = packed + (unpacked - shape.per_layer) * (4 if kind.endswith("fp32") else compute_bytes)
    return {"gpu": gpu, "host": shape.per_layer * 2, "loading": packed + unpacked * compute_bytes}


def lora_bytes(shape: Shape, lora_r: int = 8) -> float:
    """What training a rank-`lora_r` LoRA adds: A (r x in) and B (out x r) on each adapted layer."""
    return lora_r * shape.adapted_sides * TRAINED_BYTES


def export_ram(shape: Shape) -> dict[str, float]:
    """Host bytes of each process of 05's GGUF export, beside the kernel: llama.cpp's converter streams the
    merged files (a per-layer table's 0.13 bytes a value calibrated on one row, E2B), its quantizer widens a
    tensor to fp32 and writes its quantized copy, and its check maps the file and copies the 4-bit layers it
    repacks for the CPU (each measured: docs/full-shape.md)."""
    return {"convert": CONVERTER_BASELINE + shape.per_layer * 0.13,
            "quantize": LLAMA_BASELINE + max(shape.largest_but_table * 5.4, shape.per_layer * 2.7),
            "verify": LLAMA_BASELINE + VERIFY_CONTEXT + shape.repacked * 0.45}


# A notebook's optional parts: {part: (what the line calls it, do these parameters run it?)}; an exercise's
# solution is a part too ("exercise 05-2")
PART_PARAMETERS = {
    "compare": ("part 2 (compare=True)", lambda p: bool(p.get("compare"))),  # 03's sections 6 and 7
    # 03's chat run (section 8): chat_steps, whose None means 40 when part 2 runs
    "chat": ("the chat run (chat_steps)",
             lambda p: bool(p["chat_steps"] if p.get("chat_steps") is not None else p.get("compare"))),
    "export_gguf": ("the GGUF export (export_gguf=True)", lambda p: bool(p.get("export_gguf"))),  # 05
}


def parts_of(notebook: str, params: dict) -> frozenset[str]:
    """The optional parts that `notebook` runs with `params` (its parameters; `exercise`: "05-2")."""
    found = {part for part, (_, runs) in PART_PARAMETERS.items() if runs(params)}
    return frozenset(found | ({f"exercise {params['exercise']}"} if params.get("exercise") else set()))


def trained_rank(params: dict) -> int:
    """The highest LoRA rank a notebook's parameters train: `lora_r` (8 unless given), 06's `other_rank`."""
    return max(params.get("lora_r") or 8, params.get("other_rank") or 0)


def parts_text(parts) -> str:
    """The parts as a line names them, in PART_PARAMETERS' order, then the exercises."""
    order = [p for p in PART_PARAMETERS if p in parts] + sorted(p for p in parts if p not in PART_PARAMETERS)
    return ", ".join(PART_PARAMETERS[p][0] if p in PART_PARAMETERS else p for p in order)


@cache
def measured() -> dict:
    """The copies each notebook holds at once, measured (MEASURED_COPIES)."""
    return json.loads(MEASURED_COPIES.read_text())


def kernel_extra(data: dict | None = None) -> float:
    """What a notebook's kernel holds before its first load (libraries, tokenizer, data) beyond torch's."""
    return max((data or measured())["kernel_bytes"] - TORCH_BASELINE, 0.0)


def moment_need(moment: dict, shape: Shape, compute_bytes: int, data: dict | None = None,
                cpu: bool = False, lora_r: int = 8) -> dict[str, float]:
    """{"gpu", "ram"} at a notebook's measured moment: its copies (the loading one at its peak), LoRA when it
    trains, the kernel, a child (05's reload; "child_phases": 05's export); `cpu`: each copy whole, in RAM."""
    data = data or measured()
    gpu, ram = 0.0, TORCH_BASELINE + kernel_extra(data)
    for i, kind in enumerate(moment["copies"]):
        copy = predicted_copy_bytes(shape, "whole" if cpu else kind, compute_bytes)
        loading = i == moment.get("loading")
        gpu += copy["loading"] if loading else copy["gpu"]
        ram += copy["host"]
        if loading:
            workers = 1 if kind.startswith("nf4") else LOAD_WORKERS  # NF4 loads one tensor at a time
            ram += max(converted(shape, compute_bytes, workers) - copy["host"], 0)
    if moment.get("child"):
        ram += LOAD_BASELINE
    if phases := data.get("child_phases", {}).get(moment.get("part")):  # run beside the kernel
        ram += max(need for phase, need in export_ram(shape).items() if phase in phases)
    if moment.get("training"):
        gpu += lora_bytes(shape, lora_r) + ACTIVATIONS
    return {"gpu": 0.0, "ram": ram + gpu} if cpu else {"gpu": gpu, "ram": ram}


@dataclass
class NotebookNeed:
    copies: int  # most model copies alive at once
    gpu: float  # peak GPU bytes (0 where no model loads)
    ram: float  # peak host RAM bytes
    gpu_without_whole: float  # the same without the parts that hold a whole 16/32-bit copy
    ram_without_whole: float
    without_whole: str  # what the notebook leaves out when a whole copy does not fit ("" when it holds none)


def notebook_need(notebook: str, shape: Shape, compute_bytes: int, data: dict | None = None,
                  cpu: bool = False, parts: frozenset[str] = frozenset(), lora_r: int = 8) -> NotebookNeed:
    """`notebook`'s peak for a model of `shape` over its moments on its default path and in `parts`."""
    data = data or measured()
    entry, idle = data["notebooks"][notebook], {"gpu": 0.0, "ram": TORCH_BASELINE + kernel_extra(data)}
    moments = [m for m in entry["moments"] if m.get("part") is None or m["part"] in parts]
    needs = [(moment_need(m, shape, compute_bytes, data, cpu, lora_r),
              any(not k.startswith("nf4") for k in m["copies"])) for m in moments] or [(idle, False)]
    without = [n for n, whole in needs if not whole]
    # where every moment holds a whole copy, nothing is left to run without it: no "fits without" then
    leaves_out = entry.get("without_whole", "") if without and any(w for _, w in needs) else ""
    without = without or [idle]
    return NotebookNeed(copies=max((len(m["copies"]) for m in moments), default=0),
                        gpu=max(n["gpu"] for n, _ in needs), ram=max(n["ram"] for n, _ in needs),
                        gpu_without_whole=max(n["gpu"] for n in without),
                        ram_without_whole=max(n["ram"] for n in without), without_whole=leaves_out)


def fit_answer(need: NotebookNeed, runtime: dict = FREE_COLAB) -> str:
    """"yes", "without <its 16/32-bit part>" or "no" for a notebook on `runtime` (GPU and RAM)."""
    def fits(gpu, ram):
        return (runtime["gpu_bytes"] is None or gpu <= runtime["gpu_bytes"]) and ram <= runtime["ram_bytes"]

    if fits(need.gpu, need.ram):
        return "yes"
    if need.without_whole and fits(need.gpu_without_whole, need.ram_without_whole):
        return f"without {need.without_whole}"
    return "no"


def learner_shape(cfg, runtime: dict | None = None) -> tuple[Shape, dict, str]:
    """cfg's model's Shape from its config (a few kB), the runtime to judge (this machine unless given; no GPU
    limit where cfg computes on the CPU) and how a line names it."""
    from transformers import AutoConfig

    from gemmate_lib.models import resolve_model

    runtime = runtime or runtime_here()
    if cfg.precision.device == "cpu":  # the 16/32-bit profile: the copies live in RAM
        runtime = {**runtime, "gpu_bytes": None}
    where, hub = resolve_model(cfg.model.model_name)
    config = AutoConfig.from_pretrained(where, **({"token": hub["token"]} if hub.get("token") else {}))
    place = f"{runtime['gpu']} ({runtime['gpu_bytes'] / GIB:.1f} GiB)" if runtime["gpu_bytes"] else "this CPU"
    return shape_of(config), runtime, place


def peak_text(gpu: float, ram: float, runtime: dict, joint: str = " and") -> str:
    """A peak as a line says it: GPU memory only where the runtime's GPU limits it."""
    on_gpu = f"{gpu / GIB:.1f} GiB of GPU memory{joint} " if runtime["gpu_bytes"] else ""
    return on_gpu + f"{ram / 1e9:.1f} GB of RAM"


@dataclass
class NotebookFit:
    line: str  # what the notebook prints before its download
    whole_copies: bool  # its parts that hold a whole 16/32-bit copy fit here
    need: NotebookNeed | None = None  # the estimate the line states
    runtime: dict | None = None  # the runtime it was judged against


def notebook_fit(notebook: str, cfg, runtime: dict | None = None, **params) -> NotebookFit:
    """Will `notebook` fit with cfg's model, in the parts its parameters `params` run? FitError where even its
    4-bit parts will not; `.whole_copies` False where only its 16/32-bit parts will not (they then skip)."""
    shape, runtime, place = learner_shape(cfg, runtime)
    parts = parts_of(notebook, params)
    need = notebook_need(notebook, shape, cfg.precision.dtype.itemsize, cpu=cfg.precision.device == "cpu",
                         parts=parts, lora_r=trained_rank(params))
    answer = fit_answer(need, runtime)
    with_parts = parts_text(parts)
    line = (f"{notebook}{' with ' + with_parts if with_parts else ''}, {cfg.model.model_name} on {place}: "
            f"at most {need.copies} model cop{'y' if need.copies == 1 else 'ies'} at once")
    said = f"{line}, peak about {peak_text(need.gpu, need.ram, runtime)} (estimates)"
    LAST_FIT.update(notebook=notebook, line=said)
    if answer == "no":
        raise FitError(f"{said}: will not fit", FIX)
    if answer == "yes":
        return NotebookFit(f"{said}: fits", True, need, runtime)
    part = need.without_whole
    return NotebookFit(f"{line}; {part} would peak at about {peak_text(need.gpu, need.ram, runtime)}, more "
                       f"than this runtime has: it fits without {part}, peak about "
                       f"{peak_text(need.gpu_without_whole, need.ram_without_whole, runtime)} (estimates); "
                       f"{part} needs {BIGGER}", False, need, runtime)
