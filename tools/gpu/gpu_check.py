"""`make gpu-check`: the whole course headless on a CUDA GPU with the GPU profile's real settings.

For maintainers with a GPU (README, "What was verified"; CONTRIBUTING.md, "On a GPU"). It runs
every notebook and the one-page recipe with papermill on the embedded Gemma 3 270M, offline, on
CUDA, with what the GPU profile picks for this GPU's compute capability: NF4, paged 8-bit AdamW,
gradient checkpointing, bf16 from 8.0; below it (a T4) fp16, which Gemma 3 replaces by fp32
(config.gemma3_rule). `--precision t4` runs a T4's profile on a newer GPU: the embedded Gemma 3
in fp32, each kernel's allocator capped at what a T4 leaves the process.
`--precision fp16` runs a T4's fp16 on a bf16-capable GPU. Gemma 3 never computes in fp16,
so that arm runs a Gemma 1 (gemma-2b's architecture) in fp16 with the gradient scaler:
`--model` (a folder, or google/gemma-2b where the Hub and a token are there), else the smoke
run's tiny random Gemma 1, whose self-checks then judge that the numbers are sane, not what a
few steps learned (GEMMATE_SMOKE=1). It stops before the first notebook unless the arm really
computes in fp16. It prints per notebook the time, each kernel's peak allocated and reserved GPU
memory and pass or fail (a failed self-check stops the notebook, and the run), and keeps them with
the lines on held-out loss, the warnings and the trainer probe in gpu_check.json. `--dry-run`
runs anywhere: it builds every notebook's config and training arguments for a T4 (7.5), an A100
(8.0) and the fp16 arm, and checks those settings, without a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import torch

from gemmate_lib.config import course_config, gemma3_rule
from gemmate_lib.fit import FREE_COLAB
from gemmate_lib.guard_rails.errors import HardwareError
from gemmate_lib.guard_rails.files import repo_root, save_json, show_path
from gemmate_lib.hardware import DTYPES, Precision
from gemmate_lib.training import training_kwargs

# the embedded model on the GPU, with a token or without
PARAMS = {"model_name": "embedded", "dataset": "embedded"}
CARDS = {"T4 (7.5)": (7, 5), "A100 (8.0)": (8, 0)}
FP16_CARD = "T4 fp16 arm"  # --precision fp16: a T4's profile on a Gemma 1
DRY_RUN_GEMMA_1 = "google/gemma-2b"  # the dry run's Gemma 1: a name, never loaded


def fp16_arm(model: str | None, folder: Path) -> tuple[dict, dict]:
    """(notebook parameters, kernel environment) of `--precision fp16`: a T4's profile (GEMMATE_PROFILE=t4) on
    a Gemma 1, `model` or the smoke run's tiny random Gemma 1 built in `folder` (then GEMMATE_SMOKE=1)."""
    env = {"GEMMATE_PROFILE": "t4"}
    if model is None:
        sys.path.insert(0, str(repo_root() / "tests"))
        from learner_path import tiny_gemma

        model, env["GEMMATE_SMOKE"] = str(tiny_gemma(folder / "tiny-gemma-1")), "1"
    return {"model_name": model, "dataset": "embedded"}, env


def expected(cfg, capability: tuple[int, int]) -> dict[str, bool]:
    """The GPU profile's promises for one config: {check: holds}."""
    args = training_kwargs(cfg, repo_root() / "runs" / "gpu-check-dry", has_eval=True,
                           sft=cfg.task == "quotes")
    half = "fp16" if capability < (8, 0) else "bf16"
    # Gemma 3: fp32 for fp16
    want = gemma3_rule(Precision("cuda", DTYPES[half], ""), cfg.model.model_name).name
    mixed = {name: args[name] == (want == name) for name in ("fp16", "bf16")}
    return {"nf4": cfg.model.quantization == "nf4",
            f"compute {want}": cfg.precision.name == want and all(mixed.values()),
            "paged_adamw_8bit": args["optim"] == "paged_adamw_8bit",
            "gradient checkpointing": args["activation_checkpointing"],
            "on cuda": not args["use_cpu"] and cfg.precision.device == "cuda"}


def dry_run(notebooks: list[Path]) -> int:
    """Build each notebook's GPU config for a T4, an A100 and the fp16 arm; print and check the settings."""
    import papermill as pm

    failures = 0
    print(f"{'notebook':28} {'card':19} {'profile':13} checks")
    for nb in notebooks:
        declared = set(pm.inspect_notebook(str(nb)))
        params = {k: v for k, v in PARAMS.items() if k in declared}
        task = {"07": "temporal", "06": "methods"}.get(nb.name[:2], "quotes")
        # the fp16 arm: a T4's precision on a Gemma 1 (what --precision fp16 runs; Gemma 3 would be fp32)
        arms = [(card, capability, params) for card, capability in CARDS.items()]
        fp16 = fp16_arm(DRY_RUN_GEMMA_1, repo_root())[0]
        arms.append((FP16_CARD, CARDS["T4 (7.5)"], {k: v for k, v in fp16.items() if k in declared}))
        for card, capability, values in arms:
            dtype = torch.float16 if capability < (8, 0) else torch.bfloat16
            cfg = course_config(task, precision=Precision("cuda", dtype, f"{card}, dry run"), **values)
            checks = expected(cfg, capability)
            # 06 trains several methods, each with its own settings: its QLoRA arm is LoRA r=8 on the GPU
            # profile's NF4 and precision; its optimizer and checkpointing are every arm's (fused AdamW, none)
            if task == "methods":
                from gemmate_lib.methods import build_methods

                # the settings QLoRA's arm changes (its PEFT config and rate play no part in these checks)
                qlora = build_methods(cfg, "dry-run", {"qlora": None}, {"qlora": 2e-4}, ["qlora"])["qlora"]
                arm = cfg.replace(**qlora.settings)
                checks = {k: v for k, v in expected(arm, capability).items()
                          if k not in ("paged_adamw_8bit", "gradient checkpointing")}
            if card == FP16_CARD:
                checks["fp16 arm in fp16"] = cfg.precision.name == "fp16"
            failures += not all(checks.values())
            marks = ", ".join(f"{k} {'ok' if v else 'NO'}" for k, v in checks.items())
            print(f"{nb.stem:28} {card:19} {cfg.profile:13} {marks}")
    print(f"dry run: {'all configs as expected' if not failures else f'{failures} config(s) differ'}")
    return 1 if failures else 0


# Run at the start of each notebook's kernel (an IPython startup file): each kernel's own peak allocated and
# reserved GPU memory, kept across the notebooks' own reset_peak_memory_stats calls (the one-page recipe's
# memory lines, gemmate_lib/hardware.py), and under --precision t4 the allocator capped at what a T4 leaves
# the process.
KERNEL_START = """import json as _gpu_json

import torch as _gpu_torch

_gpu_peak = {{"allocated_mib": 0, "reserved_mib": 0}}


def _gpu_note():
    if _gpu_torch.cuda.is_initialized():
        for key, read in (("allocated_mib", _gpu_torch.cuda.max_memory_allocated),
                          ("reserved_mib", _gpu_torch.cuda.max_memory_reserved)):
            _gpu_peak[key] = max(_gpu_peak[key], read() >> 20)


def _gpu_reset(*args, _reset=_gpu_torch.cuda.reset_peak_memory_stats, **kwargs):
    _gpu_note()
    return _reset(*args, **kwargs)


_gpu_torch.cuda.reset_peak_memory_stats = _gpu_torch.cuda.memory.reset_peak_memory_stats = _gpu_reset
if {cap}:
    _total = _gpu_torch.cuda.get_device_properties(0).total_memory
    _gpu_torch.cuda.set_per_process_memory_fraction({cap} / _total)
    _gpu_peak["allocator_cap_gib"] = round({cap} / 2**30, 2)
"""
PEAK_CELL = '_gpu_note()\nprint("GPU_PEAK " + _gpu_json.dumps(_gpu_peak))'
HELD_OUT = re.compile(r"held-out|perplexity|year accuracy", re.IGNORECASE)


def notebook_params(nb: Path, arm: dict, run_dir: Path) -> dict:
    """The parameters of one notebook on the GPU: the arm's model and data where it declares them; the
    one-page recipe, which reads only Hub ids and folders, gets the arm's model as a folder (the embedded
    model's converted one), the embedded quotes as a .jsonl, and keeps its T4 values."""
    import papermill as pm

    if nb.name == "qlora_one_runtime.ipynb":
        from gemmate_lib.models import prepare_embedded
        from tools.runners.course import prepare_one_page_data

        model = arm["model_name"]
        return {"model_name": str(prepare_embedded(verbose=False)) if model == "embedded" else model,
                "dataset": str(prepare_one_page_data()), "output_dir": str(run_dir / "qlora_one_runtime"),
                "keep_on_drive": False}
    declared = set(pm.inspect_notebook(str(nb)))
    # 05's GGUF export off, as in Colab: a bare GPU machine has no llama.cpp (make drift runs the export)
    params = {k: v for k, v in {**arm, "export_gguf": False}.items() if k in declared}
    return {**params, "run_dir": str(run_dir)}


def read_record(executed: Path) -> dict:
    """What an executed notebook printed that the GPU record keeps: its kernel's peak GPU memory (MiB), the
    mixed-precision probe's report, its warnings, and its lines on held-out loss."""
    import nbformat

    from tools.gpu.gpu_probes import read_back

    report, warnings = read_back(executed)
    record = {"mixed_precision": report, "warnings": warnings, "held_out": [], "peak": None}
    for cell in nbformat.read(executed, as_version=4).cells if executed.exists() else []:
        for output in cell.get("outputs", []):
            for line in (output.get("text", "") if output.get("name") == "stdout" else "").splitlines():
                if line.startswith("GPU_PEAK "):
                    record["peak"] = json.loads(line.removeprefix("GPU_PEAK "))
                elif HELD_OUT.search(line) and len(record["held_out"]) < 12:
                    record["held_out"].append(line.strip()[:200])
    return record


def run(notebooks: list[Path], run_dir: Path, precision: str = "auto", model: str | None = None) -> int:
    """Run every notebook on the GPU; print time, peak GPU memory and pass/fail per notebook, and keep them
    with what read_record reads in run_dir/gpu_check.json (written after each notebook)."""
    import papermill as pm

    from tools.gpu.gpu_probes import MIXED_PRECISION_PROBE, T4_DTYPE, watch_memory

    sys.path.insert(0, str(repo_root() / "tests"))
    from learner_path import with_cells

    torch.cuda.init()
    arm, env = (PARAMS, {}) if precision != "fp16" else fp16_arm(model, run_dir)
    if precision == "t4":
        env["GEMMATE_PROFILE"] = "t4"
    # The kernels inherit these: offline (unless --model names a Hub model), and a T4's profile if asked for.
    if not model or Path(model).exists():
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    startup = run_dir / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    cap = FREE_COLAB["gpu_bytes"] if precision == "t4" else 0
    (startup / "00-gpu-check.py").write_text(KERNEL_START.format(cap=cap))
    env["IPYTHONDIR"] = str(run_dir / "ipython")
    os.environ.update(env)
    cfg = course_config(**arm)
    print(f"{torch.cuda.get_device_name(0)}: profile {cfg.profile}, model {cfg.model.model_name}, "
          f"compute {cfg.precision.name} ({cfg.precision.reason})"
          + (f", allocator capped at {cap / 2**30:.1f} GiB" if cap else ""), flush=True)
    if precision == "fp16" and cfg.precision.name != "fp16":
        raise HardwareError(f"the fp16 arm would compute in {cfg.precision.name} ({cfg.precision.reason})",
                            "pass --model a Gemma 1 (e.g. google/gemma-2b); Gemma 3 never computes in fp16")
    baseline = torch.cuda.mem_get_info()[1] - torch.cuda.mem_get_info()[0]
    rows, failed = {}, False
    for nb in notebooks:
        peak, stop = [0], threading.Event()
        watcher = threading.Thread(target=watch_memory, args=(stop, peak), daemon=True)
        watcher.start()
        probed = nb.stem in ("03_lora_sft", "qlora_one_runtime")  # make gpu-smoke's probe of the trainer
        after = [("trainer.train()", MIXED_PRECISION_PROBE)] if probed else []
        if precision in ("t4", "fp16") and nb.stem == "qlora_one_runtime":
            after.insert(0, ("compute_dtype, why = ", T4_DTYPE))
        start, status = time.time(), "pass"
        try:
            pm.execute_notebook(with_cells(nb, last=PEAK_CELL, after=after), str(run_dir / nb.name),
                                parameters=notebook_params(nb, arm, run_dir),
                                cwd=str(nb.parent), kernel_name="python3", progress_bar=False)
        except pm.PapermillExecutionError as err:
            status, failed = f"FAIL at cell {err.exec_count}: {err.ename}: {str(err.evalue)[:300]}", True
        stop.set()
        watcher.join()
        rows[nb.name] = {"seconds": round(time.time() - start, 1),
                         "device_peak_mib": round((peak[0] - baseline) / 2**20),
                         "status": status, **read_record(run_dir / nb.name)}
        kernel = rows[nb.name]["peak"] or {}
        print(f"{nb.stem:28} {rows[nb.name]['seconds']:7.0f} s  allocated {kernel.get('allocated_mib', '-')} "
              f"reserved {kernel.get('reserved_mib', '-')} MiB (device {rows[nb.name]['device_peak_mib']})  "
              f"{status}", flush=True)
        save_json(run_dir / "gpu_check.json", {"gpu": torch.cuda.get_device_name(0), "precision": precision,
                                               "torch": torch.__version__, "notebooks": rows})
        if status != "pass":
            break  # as make course: the next notebooks read what this one writes
    print(f"gpu check {'FAILED' if failed else 'passed'}: {torch.cuda.get_device_name(0)}, "
          f"{sum(r['seconds'] for r in rows.values()):.0f} s in all; details in {show_path(run_dir)}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="build and check every config; no GPU needed")
    parser.add_argument("--precision", choices=("auto", "t4", "fp16"), default="auto",
                        help="auto: this GPU's profile; t4: a T4's profile on the course's model (the "
                             "embedded Gemma 3 then computes in fp32), its allocator capped at a T4 size; "
                             "fp16: a T4's profile on a Gemma 1 (Gemma 3 computes in fp32 by the dtype rule)")
    parser.add_argument("--model", default=None,
                        help="with --precision fp16: the Gemma 1 to run (a folder, or google/gemma-2b with a "
                             "token and the Hub); default: the smoke run's tiny random Gemma 1")
    parser.add_argument("--only", nargs="+", metavar="PREFIX",
                        help="the notebooks whose names start so (e.g. 00 06 qlora); default: all, in order")
    parser.add_argument("--run-dir", type=Path, default=None, help="default: runs/gpu-check-<time>")
    args = parser.parse_args(argv)
    root = repo_root()
    notebooks = sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if args.dry_run:
        return dry_run(notebooks)
    if args.precision != "fp16" or args.model:  # a random model fails its pre-flight (gpu-smoke runs it)
        notebooks.append(root / "notebooks" / "qlora_one_runtime.ipynb")
    notebooks = [nb for nb in notebooks if not args.only or nb.name.startswith(tuple(args.only))]
    if not torch.cuda.is_available():
        raise HardwareError("make gpu-check needs a CUDA GPU and none is visible",
                            "run it on a GPU machine (a Colab T4 works), or `make gpu-check DRY_RUN=1` here")
    run_dir = args.run_dir or root / "runs" / time.strftime("gpu-check-%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run(notebooks, run_dir.resolve(), args.precision, args.model)


if __name__ == "__main__":
    from gemmate_cli.errors import run_cli

    sys.exit(run_cli(main))
