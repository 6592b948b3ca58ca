"""Will it fit? Before any weight is downloaded, estimate what the course's path needs for the learner's model
on the runtime at hand, from the model's config alone (its shapes on the meta device, counted with
transformers' own NF4 rules). 00_setup prints its phases (`plan_for`, `report`, `require_fit`: a load, a 4-bit
training, the GGUF export); each notebook prints its line before its download (`notebook_fit`): the model
copies it holds at once, read from what the smoke run measured (MEASURED_COPIES, written by
tools/fit/notebook_fit.py), times each copy's footprint at this model's shape. Where something will not fit,
FitError says what is needed and a runtime that has it. tools/fit/ measures what these rest on and holds them
to it (docs/full-shape.md); the one-page recipe writes the same arithmetic out.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from gemmate_lib.generations import SEED_TARGETS, TOWERS, generation_of
from gemmate_lib.housekeeping.errors import LAST_FIT, GemmateError

GIB = 2**30
NF4_BYTES = 4.127 / 8  # bytes a weight in NF4: 4 bits, plus double-quantized absmax scales (blocksize 64)
# A free Colab runtime: one T4 (15 GB: 14.6 GiB for the process, less the CUDA context), 12.7 GB of RAM, and
# its disk (70 GB free: an assumption, at least what a T4 runtime leaves on /content)
CUDA_CONTEXT = 0.6 * GIB  # the CUDA context and cuBLAS workspaces that no tensor accounts for
FREE_COLAB = {"gpu": "T4", "gpu_bytes": 14.6 * GIB - CUDA_CONTEXT, "ram_bytes": 12.7e9, "disk_bytes": 70e9}
BIGGER = "an L4 (22.5 GB) or A100 (40 GB) Colab runtime"
RESOURCE_UNITS = {"gpu": (GIB, "GiB of GPU memory"), "ram": (1e9, "GB of RAM"), "disk": (1e9, "GB of disk")}
# Resident memory of the processes before their work (measured here): Python with torch and safetensors (a
# load), llama.cpp's converter (with what it holds for the vocabulary), llama.cpp's quantizer. A notebook's
# kernel holds more (libraries, tokenizer, data), measured in the smoke run (MEASURED_COPIES' "kernel_bytes")
# and used for the phases that run inside it.
TORCH_BASELINE, CONVERTER_BASELINE, LLAMA_BASELINE = 0.15e9, 0.75e9, 0.05e9
# a process that loads through the library's load_model with nothing to convert: Python, torch, transformers
# and the loader's own bookkeeping (measured: make rehearse's load phase on a tiny random Gemma 1 and Gemma 3)
LOAD_BASELINE = 0.27e9
VERIFY_CONTEXT = 0.26e9  # llama.cpp's context and compute buffers for a short prompt (measured)
SEED_T4_STEP_S = 2.69  # the seed notebook: gemma-2b, NF4, fp16, batch 1 x 4, 100 steps in 268.9 s on a T4
LOAD_WORKERS = 2  # transformers 5.23's whole-model load: min(4, CPUs) threads (GLOBAL_WORKERS); Colab has 2
ACTIVATIONS = 0.5 * GIB  # batch 1 x 128 tokens with checkpointing; TRL's fused head builds no logits
TRAINED_BYTES = 4 + 4 + 2 * 4  # a weight LoRA trains, under fp32 AdamW (06): weight, gradient, two moments
# the copies each notebook holds at once, measured (written by tools/fit/notebook_fit.py)
MEASURED_COPIES = Path(__file__).with_name("notebook_copies.json")


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

    folder = Path(HF_HUB_CACHE)  # where the Hub's downloads go
    while not folder.exists():
        folder = folder.parent
    here = {"gpu": None, "gpu_bytes": None, "disk_bytes": shutil.disk_usage(folder).free,
            "ram_bytes": os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        here |= {"gpu": torch.cuda.get_device_name(0), "gpu_bytes": props.total_memory - CUDA_CONTEXT}
    return here


def converted(shape: Shape, load_bytes: int, workers: int = 1) -> float:
    """Host bytes a load holds at once while it converts tensors to the load dtype. Each tensor is read from
    the memory-mapped checkpoint (file pages, not counted), then, when the dtype changes, converted on the CPU
    before its copy to the GPU (torch converts a CPU->GPU copy there), its buffer living while written and
    copied. `workers` threads take the tensors in name order, each reading one (time as its checkpoint bytes)
    then holding its buffer (time as its converted bytes): the largest sum of buffers held at one moment.
    2 bytes means fp16 (a T4; a bf16 checkpoint converts); only fp32 from fp32 checkpoints is unconverted."""
    if load_bytes == 4 and shape.checkpoint_bytes == 4:
        return 0.0
    sizes = shape.sizes or (shape.largest,)
    free_at = [0.0] * workers  # when each thread takes its next tensor
    held = []  # (from, until, bytes) of every converted buffer
    for n in sizes:
        k = min(range(workers), key=free_at.__getitem__)
        start = free_at[k] + n * shape.checkpoint_bytes  # read from the mapped file first
        free_at[k] = start + n * load_bytes
        held.append((start, free_at[k], n * load_bytes))
    starts = sorted(start for start, _, _ in held)
    return max(sum(b for s, e, b in held if s <= t < e) for t in starts)


def predicted_copy_bytes(shape: Shape, kind: str, compute_bytes: int) -> dict[str, float]:
    """One copy of the model as a notebook holds it, {"gpu", "host", "loading"} in bytes. `kind`: "nf4" (the
    linear layers in 4 bits, every other weight in the compute dtype; after k-bit preparation in fp32:
    "nf4-fp32") or "whole" (every weight in the compute dtype; "whole-fp32": fp32). A per-layer embedding
    table (Gemma 4) moves to the CPU in 16 bits after the load (models.lookup_tables_to_cpu): "host"; until
    then the load holds it on the GPU in the compute dtype: "loading", the copy's GPU peak while it loads.
    (tools/fit/notebook_fit.py writes only these four kinds into MEASURED_COPIES, and checks them.)"""
    n, q, table = shape.parameters, shape.quantized, shape.per_layer
    four_bit, fp32 = kind.startswith("nf4"), kind.endswith("fp32")
    packed = q * NF4_BYTES if four_bit else 0
    unpacked = n - (q if four_bit else 0)
    gpu = packed + (unpacked - table) * (4 if fp32 else compute_bytes)
    return {"gpu": gpu, "host": table * 2, "loading": packed + unpacked * compute_bytes}


def lora_bytes(shape: Shape, lora_r: int = 8) -> float:
    """What training a rank-`lora_r` LoRA adds to its copy (whose frozen weights predicted_copy_bytes counts):
    A (r x in) and B (out x r) on each adapted layer, TRAINED_BYTES a weight (paged 8-bit AdamW: less)."""
    return lora_r * shape.adapted_sides * TRAINED_BYTES


def predict(shape: Shape, compute_bytes: int, steps: int = 100, lora_r: int = 8) -> dict[str, dict]:
    """{phase: {"gpu", "ram", "disk", "seconds"}} in bytes and seconds (None where a phase does not use it).
    `compute_bytes`: 2 for fp16/bf16, 4 for fp32 (Gemma 3 and 4 on a T4). GPU: the phase's peak (a load holds
    a per-layer table on the GPU until it moves to the CPU). RAM is one process's peak; disk counts what the
    path has written so far (the downloaded checkpoint stays in the Hub cache)."""
    n, text = shape.parameters, shape.text
    checkpoint = n * shape.checkpoint_bytes
    merged = n * 2  # the merge writes f16, the converter's own type, whatever the checkpoint holds
    gguf_f16, gguf_q4 = text * 2, text * 0.65
    # a step's work follows the weights it multiplies: the text model's (gemma-2b's 2.5 B: the seed's step),
    # not a per-layer table that is only looked up, nor towers a text run never calls; fp32 ~4x slower
    flop_scale = (text - shape.per_layer) / 2.5e9 * (4 if compute_bytes == 4 else 1)
    whole = predicted_copy_bytes(shape, "whole", compute_bytes)
    nf4 = predicted_copy_bytes(shape, "nf4-fp32", compute_bytes)
    return {
        # the whole model in the compute dtype (01's and 06's 16/32-bit copies, 05's merge): tensors converted
        # on the CPU by the loader's threads, then the per-layer table, which stays on the CPU
        "load": {"gpu": whole["loading"], "disk": checkpoint, "seconds": checkpoint / 100e6,
                 "ram": LOAD_BASELINE + max(converted(shape, compute_bytes, LOAD_WORKERS), whole["host"])},
        # NF4 loads one tensor at a time (quantizing on the fly turns the pool off); then k-bit preparation
        # (fp32), LoRA with its gradients and optimizer state, and the activations of training
        "nf4": {"gpu": max(nf4["loading"], nf4["gpu"] + lora_bytes(shape, lora_r) + ACTIVATIONS),
                "disk": checkpoint, "seconds": steps * SEED_T4_STEP_S * flop_scale,
                "ram": TORCH_BASELINE + max(converted(shape, compute_bytes), nf4["host"])},
        # the converter streams an f16 checkpoint from its mapped files (the merge writes f16; bf16 it would
        # widen): its own memory, plus ~0.13 bytes a value of a per-layer table (E2B's one row: a calibration,
        # not understood further); towers cost nothing, skipped unread (TextModel.filter_tensors; Gemma 3 4B)
        "convert": {"gpu": None, "disk": checkpoint + merged + gguf_f16, "seconds": text / 25e6,
                    "ram": CONVERTER_BASELINE + shape.per_layer * 0.13},
        # the quantizer widens an f16 tensor to fp32 and writes its quantized copy: about 5.4 bytes a value;
        # Gemma 4's per-layer table takes about 2.7 (both measured)
        "quantize": {"gpu": None, "disk": checkpoint + gguf_f16 + gguf_q4, "seconds": text / 20e6,
                     "ram": LLAMA_BASELINE + max(shape.largest_but_table * 5.4, shape.per_layer * 2.7)},
        # llama.cpp maps the file (not counted), holds a small context and copies the 4-bit layers it repacks
        # for the CPU: ~0.45 bytes a weight at hidden sizes % 256 == 0 (gemma-2b, E2B; measured), none at 1152
        "verify": {"gpu": None, "disk": checkpoint + gguf_f16 + gguf_q4, "seconds": 60.0,
                   "ram": LLAMA_BASELINE + VERIFY_CONTEXT + shape.repacked * 0.45},
    }


def report(plan: dict[str, dict], runtime: dict = FREE_COLAB) -> str:
    """The plan as a table against the runtime's limits, every figure marked as an estimate."""
    gpu = f"{runtime['gpu']}: {runtime['gpu_bytes'] / GIB:.1f} GiB" if runtime["gpu"] else "no GPU"
    head = f"{'phase':9s} {'GPU GiB':>8s} {'RAM GB':>7s} {'disk GB':>8s} {'T4 time':>8s}"
    rows = [f"{head}   (estimates; {gpu}, "
            f"RAM {runtime['ram_bytes'] / 1e9:.1f} GB, disk {runtime['disk_bytes'] / 1e9:.0f} GB free)"]
    for phase, need in plan.items():
        gpu = "-" if need["gpu"] is None else f"{need['gpu'] / GIB:.1f}"
        over = problems({phase: need}, runtime)
        rows.append(f"{phase:9s} {gpu:>8s} {_need(phase, need, 'ram') / 1e9:7.1f} {need['disk'] / 1e9:8.1f} "
                    f"{need['seconds'] / 60:6.0f} m   {'over: ' + ', '.join(over) if over else 'fits'}")
    return "\n".join(rows)


def _need(phase: str, need: dict, what: str):
    """A phase's need against the runtime: the load and the 4-bit training run inside the notebook kernel."""
    extra = kernel_extra() if what == "ram" and phase in ("load", "nf4") else 0
    return None if need[what] is None else need[what] + extra


def _over(plan: dict[str, dict], runtime: dict):
    """(phase, "gpu" / "ram" / "disk", need) for every need above the runtime's limit, in the plan's order."""
    for phase, need in plan.items():
        for what in ("gpu", "ram", "disk"):
            value, limit = _need(phase, need, what), runtime[f"{what}_bytes"]
            if value is not None and limit is not None and value > limit:
                yield phase, what, value


def problems(plan: dict[str, dict], runtime: dict = FREE_COLAB) -> list[str]:
    """"<phase> GPU" etc. for every phase that needs more than the runtime has."""
    return [f"{phase} {what.upper() if what != 'disk' else what}" for phase, what, _ in _over(plan, runtime)]


def require_fit(plan: dict[str, dict], runtime: dict = FREE_COLAB) -> None:
    """FitError naming the first phase that will not fit."""
    for phase, what, value in _over(plan, runtime):
        scale, unit = RESOURCE_UNITS[what]
        raise FitError(f"the {phase} phase needs about {value / scale:.1f} {unit} (an estimate); "
                       f"this runtime ({runtime['gpu']}) has {runtime[f'{what}_bytes'] / scale:.1f}",
                       f"switch to {BIGGER}, or choose a smaller model (google/gemma-3-1b-pt)")


def plan_for(model: str, compute_bytes: int | None = None, token=None, **kwargs) -> dict[str, dict]:
    """The plan for a model folder or Hub id (`models.resolve_model` gives it), as 00_setup prints it: the
    phases a learner's path runs. Its config only is read (a few kB), never its weights."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model, **({"token": token} if token else {}))
    if compute_bytes is None:
        generation = generation_of(config)
        compute_bytes = 4 if generation is not None and generation.t4_dtype == "fp32" else 2
    return predict(shape_of(config), compute_bytes, **kwargs)


# ---------------------------------------------------------------------------------------------- per notebook

# A notebook's optional parts: the moments measured in their cells (tools/fit/notebook_fit.PARTS) count only
# when the notebook's parameters run them. {part: (what the line calls it, runs it with these parameters?)}
# An exercise's solution is a part too ("exercise 05-2"): it runs after the lesson, in the lesson's kernel.
PARTS = {
    "compare": ("part 2 (compare=True)", lambda p: bool(p.get("compare"))),  # 03's sections 6 and 7
    # 03's chat run (section 8): chat_steps, whose None means 40 when part 2 runs
    "chat": ("the chat run (chat_steps)",
             lambda p: bool(p["chat_steps"] if p.get("chat_steps") is not None else p.get("compare"))),
    "export_gguf": ("the GGUF export (export_gguf=True)", lambda p: bool(p.get("export_gguf"))),  # 05
}


def parts_of(notebook: str, params: dict) -> frozenset[str]:
    """The optional parts that `notebook` runs with `params` (its parameters cell's names; `exercise`: an
    exercise's solution run after the lesson, "05-2")."""
    found = {part for part, (_, runs) in PARTS.items() if runs(params)}
    if params.get("exercise"):
        found.add(f"exercise {params['exercise']}")
    return frozenset(found)


def trained_rank(params: dict) -> int:
    """The highest LoRA rank a notebook's parameters train: `lora_r` (8 unless given), 06's `other_rank`."""
    return max(params.get("lora_r") or 8, params.get("other_rank") or 0)


def parts_text(parts) -> str:
    """The parts as a line names them, in PARTS' order, then the exercises."""
    order = sorted(parts, key=lambda p: (list(PARTS).index(p) if p in PARTS else len(PARTS), p))
    return ", ".join(PARTS[p][0] if p in PARTS else p for p in order)


@cache
def measured() -> dict:
    """The copies each notebook holds at once, measured (MEASURED_COPIES)."""
    return json.loads(MEASURED_COPIES.read_text())


def kernel_extra(data: dict | None = None) -> float:
    """What a notebook's kernel holds before its first load (libraries, tokenizer, data) beyond torch's."""
    return max((data or measured())["kernel_bytes"] - TORCH_BASELINE, 0.0)


def moment_need(moment: dict, shape: Shape, compute_bytes: int, data: dict | None = None,
                cpu: bool = False, lora_r: int = 8) -> dict[str, float]:
    """{"gpu", "ram"} at one measured moment of a notebook: its copies' footprints (the one it is loading at
    its load peak, with the load's conversion on the CPU), plus lora_bytes at `lora_r` and activations when it
    trains, plus the kernel's own memory, plus a child process's: one that loads a copy of its own (05's
    fresh reload: LOAD_BASELINE) or runs a planner's phase (the data's "child_phases" per part: llama.cpp's
    converter in 05's export). `cpu`: the CPU profile, where copies are 16/32-bit ("whole", an upper bound
    for 01's 4-bit ones) and live in RAM."""
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
    phases = data.get("child_phases", {}).get(moment.get("part"))
    if phases:
        plan = predict(shape, compute_bytes)
        ram += max(plan[phase]["ram"] for phase in phases)
    if moment.get("training"):
        gpu += lora_bytes(shape, lora_r) + ACTIVATIONS
    return {"gpu": 0.0, "ram": ram + gpu} if cpu else {"gpu": gpu, "ram": ram}


@dataclass
class NotebookNeed:
    copies: int  # most model copies alive at once
    gpu: float  # peak GPU bytes (None-free: 0 where no model loads)
    ram: float  # peak host RAM bytes
    gpu_without_whole: float  # the same without the parts that hold a whole 16/32-bit copy
    ram_without_whole: float
    without_whole: str  # what the notebook leaves out when a whole copy does not fit ("" when it holds none)


def notebook_need(notebook: str, shape: Shape, compute_bytes: int, data: dict | None = None,
                  cpu: bool = False, parts: frozenset[str] = frozenset(), lora_r: int = 8) -> NotebookNeed:
    """What `notebook` needs at its peak for a model of `shape` computing in `compute_bytes`, from its
    measured moments on its default path and in the optional `parts` it runs (`data`: the measured copies,
    MEASURED_COPIES unless given; `cpu`, `lora_r`: moment_need's)."""
    data = data or measured()
    entry, idle = data["notebooks"][notebook], {"gpu": 0.0, "ram": TORCH_BASELINE + kernel_extra(data)}
    moments = [m for m in entry["moments"] if m.get("part") is None or m["part"] in parts]
    needs = [(moment_need(m, shape, compute_bytes, data, cpu, lora_r),
              any(not k.startswith("nf4") for k in m["copies"])) for m in moments] or [(idle, False)]
    without = [n for n, whole in needs if not whole]
    holds_whole = any(whole for _, whole in needs)
    # where every moment holds a whole copy, nothing is left to run without it: no "fits without" then
    leaves_out = entry.get("without_whole", "") if holds_whole and without else ""
    without = without or [idle]
    return NotebookNeed(copies=max((len(m["copies"]) for m in moments), default=0),
                        gpu=max(n["gpu"] for n, _ in needs), ram=max(n["ram"] for n, _ in needs),
                        gpu_without_whole=max(n["gpu"] for n in without),
                        ram_without_whole=max(n["ram"] for n in without),
                        without_whole=leaves_out)


def fit_answer(need: NotebookNeed, runtime: dict = FREE_COLAB) -> str:
    """"yes", "without <its 16/32-bit part>" or "no" for a notebook on `runtime` (GPU and RAM)."""
    def fits(gpu, ram):
        return (runtime["gpu_bytes"] is None or gpu <= runtime["gpu_bytes"]) and ram <= runtime["ram_bytes"]

    if fits(need.gpu, need.ram):
        return "yes"
    if need.without_whole and fits(need.gpu_without_whole, need.ram_without_whole):
        return f"without {need.without_whole}"
    return "no"


@dataclass
class NotebookFit:
    line: str  # what the notebook prints before its download
    whole_copies: bool  # its parts that hold a whole 16/32-bit copy fit here
    need: NotebookNeed | None = None  # the estimate the line states
    runtime: dict | None = None  # the runtime it was judged against


def notebook_fit(notebook: str, cfg, runtime: dict | None = None, **params) -> NotebookFit:
    """Before any weight is downloaded: will `notebook` fit this runtime with cfg's model, on its default path
    and in the optional parts that `params` (the notebook's parameters: compare, chat_steps, export_gguf;
    `exercise`: an exercise's solution; lora_r, other_rank: trained_rank) run? Reads the model's config only
    (a few kB), prints nothing; the notebook prints `.line`. Stops (FitError) when even its 4-bit parts will
    not fit, naming a runtime that fits; `.whole_copies` is False when only its 16/32-bit parts (01's
    comparison, 03's section 7, 05's merge, 06's 16/32-bit arms) will not, and those parts then say so and
    skip. The line names no property of the machine beyond the GPU its verdict is for (not RAM, not disk)."""
    from transformers import AutoConfig

    from gemmate_lib.models import resolve_model

    runtime = runtime or runtime_here()
    where, hub = resolve_model(cfg.model.model_name)
    config = AutoConfig.from_pretrained(where, **({"token": hub["token"]} if hub.get("token") else {}))
    cpu = cfg.precision.device == "cpu"  # the 16/32-bit profile: the copies live in RAM
    if cpu:
        runtime = {**runtime, "gpu_bytes": None}
    parts = parts_of(notebook, params)
    need = notebook_need(notebook, shape_of(config), cfg.precision.dtype.itemsize, cpu=cpu, parts=parts,
                         lora_r=trained_rank(params))
    answer = fit_answer(need, runtime)
    where_to = (f"{runtime['gpu']} ({runtime['gpu_bytes'] / GIB:.1f} GiB)" if runtime["gpu_bytes"]
                else "this CPU")
    with_parts = parts_text(parts)

    def peak(gpu, ram):
        on_gpu = f"{gpu / GIB:.1f} GiB of GPU memory and " if runtime["gpu_bytes"] else ""
        return on_gpu + f"{ram / 1e9:.1f} GB of RAM"

    line = (f"{notebook}{' with ' + with_parts if with_parts else ''}, {cfg.model.model_name} on {where_to}: "
            f"at most {need.copies} model cop{'y' if need.copies == 1 else 'ies'} at once")
    LAST_FIT.update(notebook=notebook, line=f"{line}, peak about {peak(need.gpu, need.ram)} (estimates)")
    if answer == "no":
        raise FitError(f"{line}, peak about {peak(need.gpu, need.ram)} (estimates): will not fit",
                       f"switch to {BIGGER}, or choose a smaller model (google/gemma-3-1b-pt)")
    if answer == "yes":
        return NotebookFit(f"{line}, peak about {peak(need.gpu, need.ram)} (estimates): fits", True, need,
                           runtime)
    return NotebookFit(f"{line}; {need.without_whole} would peak at about {peak(need.gpu, need.ram)}, more "
                       f"than this runtime has: it fits without {need.without_whole}, peak about "
                       f"{peak(need.gpu_without_whole, need.ram_without_whole)} (estimates); "
                       f"{need.without_whole} needs {BIGGER}", False, need, runtime)
