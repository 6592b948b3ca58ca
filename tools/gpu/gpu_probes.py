"""What make gpu-smoke and make gpu-check both put into a notebook's kernel and read back: the
mixed-precision probe, a T4's dtype cell, the warnings, and the GPU memory watcher."""
from __future__ import annotations

import json
import re
import threading
import time

import torch

# run in the kernel of 03 and the one-page recipe right after their `trainer.train()`
MIXED_PRECISION_PROBE = """import json
import math

scaler = getattr(trainer.accelerator, "scaler", None)
trainable = sorted({str(p.dtype).removeprefix("torch.")
                    for p in trainer.model.parameters() if p.requires_grad})
lora_b = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
report = {"compute": "fp16" if trainer.args.fp16 else "bf16" if trainer.args.bf16 else "fp32",
          "trainable_dtypes": trainable, "optimizer_steps": trainer.state.global_step,
          "lora_B_moved": bool(lora_b) and any(p.detach().abs().max().item() > 0 for p in lora_b),
          "scaler": scaler is not None}
if scaler is not None:  # no growth before growth_interval (2000) steps: every halving is one skipped step
    report.update(scale=scaler.get_scale(), skipped=round(math.log2(scaler._init_scale / scaler.get_scale())))
print("MIXED_PRECISION " + json.dumps(report))
if trainer.args.fp16:
    assert scaler is not None, "fp16 compute without a gradient scaler"
    assert trainable == ["float32"], f"trainable weights in {trainable} under fp16: the scaler needs float32"
    assert report["skipped"] < report["optimizer_steps"], "the gradient scaler skipped every optimizer step"
    assert report["lora_B_moved"], "the LoRA B matrices never moved: no optimizer step reached them"
"""
PROBED = ("03_lora_sft", "qlora_one_runtime")
# The one-page recipe reads no GEMMATE_PROFILE: it picks its dtype from the GPU's compute capability, which a
# newer GPU does not report as a T4's 7.5 (faking it for the whole kernel makes Triton build kernels for 7.5,
# which an H200 cannot run). In a T4 arm (this fp16 one, make gpu-check's t4 and fp16) this cell, right after
# the page's dtype cell, takes what that cell picks on a T4, by its own rule.
T4_DTYPE = """# a T4 arm of make gpu-smoke or gpu-check: what a T4 (compute capability 7.5) picks
if model_type.startswith(("gemma3", "gemma4")):
    compute_dtype, why = torch.float32, "a T4 (7.5): no bf16, and Gemma 3 and 4 overflow in fp16"
else:
    compute_dtype, why = torch.float16, "a T4 (7.5): fp16 with loss scaling"
print(f"{model_type}: compute dtype {compute_dtype} ({why})")
"""


def arm_probes(name: str) -> dict[str, list[tuple[str, str]]]:
    """The cells make gpu-smoke inserts in arm `name` ("own" or "fp16"): {notebook stem: [(marker, source)]}
    for learner_path.run's probes."""
    probes = {stem: [("trainer.train()", MIXED_PRECISION_PROBE)] for stem in PROBED}
    if name == "fp16":
        probes["qlora_one_runtime"].insert(0, ("compute_dtype, why = ", T4_DTYPE))
    return probes


# a warning line in a notebook's stderr (Python's warnings, the loggers' WARNING)
WARNING = re.compile(r"\b\w*(Warning|WARNING|warn)\b")


def read_back(executed) -> tuple[dict | None, list[str]]:
    """(the probe's report or None, the distinct warning lines) of an executed notebook."""
    import nbformat

    report, warnings = None, []
    for cell in nbformat.read(executed, as_version=4).cells if executed.exists() else []:
        for output in cell.get("outputs", []):
            text = output.get("text", "") if output.get("output_type") == "stream" else ""
            for line in text.splitlines():
                if line.startswith("MIXED_PRECISION "):
                    report = json.loads(line.removeprefix("MIXED_PRECISION "))
                elif output.get("name") == "stderr" and WARNING.search(line):
                    line = re.sub(r"/\S+/(site-packages|dist-packages|\.gpu-site)/", "", line.strip())
                    if line not in warnings:
                        warnings.append(line)
    return report, warnings


def watch_memory(stop: threading.Event, peak: list[int]) -> None:
    """Device-wide used memory, sampled every 0.2 s (the notebook kernel is another process)."""
    while not stop.is_set():
        free, total = torch.cuda.mem_get_info()
        peak[0] = max(peak[0], total - free)
        time.sleep(0.2)
