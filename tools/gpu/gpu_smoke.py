"""`make gpu-smoke`: the learner's-path smoke run (tests/learner_path.py) on a CUDA GPU, in both precisions.

The CPU smoke run stands in for the GPU paths but cannot exercise them. On a GPU this runs every notebook in
the GPU profile, in the Colab-like kernel, on the smoke run's tiny random Gemma 1 (gemma-2b's architecture),
twice: in the GPU's own precision (bf16 from compute capability 8.0, e.g. an H100) and in a T4's (fp16
mixed precision with the gradient scaler and fp32 LoRA weights: GEMMATE_PROFILE=t4). Both use NF4 through
bitsandbytes' CUDA kernels, paged 8-bit AdamW on CUDA and gradient checkpointing (the GPU profile). It prints
per notebook what `make gpu-check` prints: time, peak GPU memory, pass or fail, and the warnings the
notebook printed (to set against the CPU smoke run's). Right after 03's and the one-page recipe's training
cell, a probe cell in their kernel reads the trainer: the trainable weights' dtypes, the gradient scaler's
steps skipped (under fp16 each overflow halves its scale, so the count is log2(initial scale / final scale)
while no growth interval has passed), and whether the LoRA B matrices, zero at the start, moved; under fp16 it
fails unless the weights are fp32 and not every step was skipped. On a bare GPU machine with no registry,
`make gpu-wheels` (run beforehand where the registry is reachable) brings what it lacks.
"""
from __future__ import annotations

import argparse
import json
import sys
import tarfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRECISIONS = {"own": "gpu", "fp16": "t4"}  # name -> GEMMATE_PROFILE for the notebooks' kernels
def main(argv: list[str] | None = None) -> int:
    import os

    import torch

    from gemmate_lib.guard_rails.errors import HardwareError
    from gemmate_lib.guard_rails.files import save_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS),
                        help="own: the GPU's own 16-bit precision; fp16: a T4's (default: both)")
    parser.add_argument("--only", nargs="+", metavar="STEM",
                        help="these notebooks only (e.g. qlora_one_runtime)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise HardwareError("make gpu-smoke needs a CUDA GPU and none is visible",
                            "run it on a GPU machine (CONTRIBUTING.md, 'On a GPU'); `make smoke` runs the "
                            "same notebooks on this CPU")
    sys.path.insert(0, str(ROOT / "tests"))
    os.environ["GEMMATE_SMOKE_COLAB_SITE"] = "0"  # no Colab torchao stand-in: a bare GPU machine lacks wheels
    from learner_path import run

    from tools.gpu.gpu_probes import arm_probes, read_back, watch_memory

    out = ROOT / "runs" / time.strftime("gpu-smoke-%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    bundle = ROOT / ".gpu-wheels" / "embedded-tokenizer.tar.gz"
    if bundle.exists():  # a bare GPU machine: no embedded model, the tokenizer came with the wheels
        with tarfile.open(bundle) as tar:
            tar.extractall(out / "tokenizer", filter="data")
        os.environ["GEMMATE_SMOKE_TOKENIZER"] = str(out / "tokenizer")
    capability = torch.cuda.get_device_capability()
    print(f"{torch.cuda.get_device_name(0)} (compute capability {capability[0]}.{capability[1]}), "
          f"torch {torch.__version__}", flush=True)
    results, failed = {}, False
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    notebooks += sorted(p for p in (ROOT / "notebooks").glob("*.ipynb") if not p.name[:2].isdigit())
    notebooks = [nb for nb in notebooks if not args.only or nb.stem in args.only]
    for name in args.precision:
        profile = PRECISIONS[name]
        print(f"--- precision: {name} (GEMMATE_PROFILE={profile})", flush=True)
        baseline = torch.cuda.mem_get_info()[1] - torch.cuda.mem_get_info()[0]
        rows = {}
        for nb in notebooks:
            peak, stop = [0], threading.Event()
            watcher = threading.Thread(target=watch_memory, args=(stop, peak), daemon=True)
            watcher.start()
            row = run(out / name, [nb], profile=profile, probes=arm_probes(name))[nb.stem]  # prints its line
            stop.set()
            watcher.join()
            row["peak_gpu_mib"] = round((peak[0] - baseline) / 2**20)
            row["mixed_precision"], row["warnings"] = read_back(out / name / nb.name)
            rows[nb.stem] = row
            print(f"{nb.stem:28} {row['seconds']:7.0f} s {row['peak_gpu_mib']:7d} MiB  {row['status']}",
                  flush=True)
            if row["mixed_precision"]:
                print(f"{'':28} {json.dumps(row['mixed_precision'])}", flush=True)
            if row["status"] != "pass":
                failed = True
                break
        results[name] = rows
    save_json(out / "gpu_smoke.json", {"gpu": torch.cuda.get_device_name(0), "capability": list(capability),
                                       "torch": torch.__version__, "precisions": results})
    print(f"gpu smoke {'FAILED' if failed else 'passed'}: {torch.cuda.get_device_name(0)}, "
          f"{', '.join(results)}; details in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    from gemmate_cli.errors import run_cli

    sys.exit(run_cli(main))
