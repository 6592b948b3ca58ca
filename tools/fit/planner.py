"""The planner: what each phase of the course needs (GPU memory, RAM, disk, T4 time) for a model, from its
config alone, built on gemmate_lib.fit's copies. The maintainers' tools size their records with it
(merge_shards and rehearse against docs/full-shape.json, holdout, quota, gpu_record); the notebooks print
gemmate_lib.fit's per-notebook line instead."""
from __future__ import annotations

from gemmate_lib.fit import (
    ACTIVATIONS,
    FIX,
    FREE_COLAB,
    GIB,
    LOAD_BASELINE,
    LOAD_WORKERS,
    TORCH_BASELINE,
    FitError,
    Shape,
    converted,
    export_ram,
    kernel_extra,
    lora_bytes,
    predicted_copy_bytes,
    shape_of,
)
from gemmate_lib.generations import generation_of

RESOURCE_UNITS = {"gpu": (GIB, "GiB of GPU memory"), "ram": (1e9, "GB of RAM"), "disk": (1e9, "GB of disk")}
SEED_T4_STEP_S = 2.69  # the seed notebook: gemma-2b, NF4, fp16, batch 1 x 4, 100 steps in 268.9 s on a T4


def predict(shape: Shape, compute_bytes: int, steps: int = 100, lora_r: int = 8) -> dict[str, dict]:
    """{phase: {"gpu", "ram", "disk", "seconds"}} (None where a phase does not use it); `compute_bytes`: 2, or
    4 (fp32: Gemma 3 and 4 on a T4). Disk counts what the path has written so far, the download included."""
    checkpoint, text = shape.parameters * shape.checkpoint_bytes, shape.text
    gguf_f16, gguf_q4 = text * 2, text * 0.65
    # a step's work follows the text weights (gemma-2b's 2.5 B), not a looked-up table; fp32 is ~4x slower
    flop_scale = (text - shape.per_layer) / 2.5e9 * (4 if compute_bytes == 4 else 1)
    whole = predicted_copy_bytes(shape, "whole", compute_bytes)
    nf4 = predicted_copy_bytes(shape, "nf4-fp32", compute_bytes)
    return {
        # the whole model in the compute dtype (01, 05's merge, 06)
        "load": {"gpu": whole["loading"], "disk": checkpoint, "seconds": checkpoint / 100e6,
                 "ram": LOAD_BASELINE + max(converted(shape, compute_bytes, LOAD_WORKERS), whole["host"])},
        # NF4 loads one tensor at a time (quantizing on the fly turns the thread pool off), then trains
        "nf4": {"gpu": max(nf4["loading"], nf4["gpu"] + lora_bytes(shape, lora_r) + ACTIVATIONS),
                "disk": checkpoint, "seconds": steps * SEED_T4_STEP_S * flop_scale,
                "ram": TORCH_BASELINE + max(converted(shape, compute_bytes), nf4["host"])},
        # the converter streams the merged files (f16, whatever the checkpoint holds), towers skipped unread
        # (TextModel.filter_tensors); a per-layer table's 0.13 bytes a value is calibrated on one row (E2B)
        "convert": {"gpu": None, "disk": checkpoint + 2 * shape.parameters + gguf_f16,
                    "seconds": text / 25e6, "ram": export_ram(shape)["convert"]},
        # the quantizer widens a tensor to fp32 and writes its quantized copy (measured bytes a value)
        "quantize": {"gpu": None, "disk": checkpoint + gguf_f16 + gguf_q4, "seconds": text / 20e6,
                     "ram": export_ram(shape)["quantize"]},
        # llama.cpp maps the file and copies the 4-bit layers it repacks for the CPU (measured)
        "verify": {"gpu": None, "disk": checkpoint + gguf_f16 + gguf_q4, "seconds": 60.0,
                   "ram": export_ram(shape)["verify"]},
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
                       f"this runtime ({runtime['gpu']}) has {runtime[f'{what}_bytes'] / scale:.1f}", FIX)


def plan_for(model: str, compute_bytes: int | None = None, token=None, **kwargs) -> dict[str, dict]:
    """The plan for a model folder or Hub id, from its config only (a few kB)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model, **({"token": token} if token else {}))
    if compute_bytes is None:
        compute_bytes = 4 if getattr(generation_of(config), "t4_dtype", None) == "fp32" else 2
    return predict(shape_of(config), compute_bytes, **kwargs)
