"""`make gpu-record`: what a lent GPU machine measures for "will it fit", in priority order (issue 66).

The course's GPU memory figures for gemma-2b, Gemma 3 1B and Gemma 4 E2B are predicted from their configs
(gemmate_lib/fit.py) and CPU measurements. This script measures them on a CUDA GPU, each part in its own
child process with its own time limit, writing gpu_record.json after each part, so that a lease cut short
still leaves what it measured:

1. full-shape/<model> (Gemma 4 E2B, then gemma-2b): the checkpoint built on the GPU machine at the real
   shapes with random weights (tools/fit/full_shape.py; nothing large travels), then the QLoRA path as the
   one-page recipe and 03/04 run it, under a T4's limits: the allocator capped at what a T4 leaves the
   process (fit.FREE_COLAB), compute capability reported as 7.5 and the T4 profile (GEMMATE_PROFILE=t4),
   every batch padded to max_length. Per phase (NF4 load, a few LoRA steps, held-out loss and a few
   generations) the peak allocated and reserved GPU memory, beside the planner's prediction for it.
2. embedded/t4 and 3. embedded/bf16: `make gpu-check` on the embedded real model (07 and the one-page recipe
   in the T4 profile; 03-05 in bf16). The embedded model's weights (a 253 MB GGUF) cannot travel to a bare
   GPU machine in the 64 MiB the device tool carries, and that machine reaches no registry: there the
   parts say so and are skipped.

Random weights prove memory and code paths, never quality: the self-checks that judge what training learned
are not run in part 1. `--dry-run` runs part 1's code on this CPU with the smoke run's tiny random Gemma 1
and no GPU (tests/test_gpu_record.py), so the script is rehearsed before a GPU is lent.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# (part, seconds allowed): the order is the priority; the whole fits one 10-minute device call
PART_SECONDS = {"full-shape/gemma-4-E2B": 280, "full-shape/gemma-2b": 180, "embedded/t4": 240,
                "embedded/bf16": 240}
STEPS = 3  # LoRA steps per full-shape model: enough for the optimizer's state and a step's activations
EVAL_ROWS = 16
T4_CAPABILITY = (7, 5)
MIB = 2**20


def peaks(torch, device: str) -> dict:
    """The peak allocated and reserved memory (MiB) since the last reset; empty on a CPU."""
    if device != "cuda":
        return {}
    return {"allocated_mib": round(torch.cuda.max_memory_allocated() / MIB),
            "reserved_mib": round(torch.cuda.max_memory_reserved() / MIB),
            "resident_mib": round(torch.cuda.memory_allocated() / MIB)}


def as_t4(torch) -> dict:
    """Cap the allocator at what a T4 leaves the process (fit.FREE_COLAB)."""
    from gemmate_lib.fit import FREE_COLAB

    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(FREE_COLAB["gpu_bytes"] / total)
    return {"allocator_cap_gib": round(FREE_COLAB["gpu_bytes"] / 2**30, 2)}


def t4_config(torch, device: str, **params):
    """The course's config as on a T4: the T4 profile (GEMMATE_PROFILE=t4: fp16, fp32 for Gemma 3 and 4) and
    compute capability 7.5 reported to the course while it picks. Only then: Triton, which bitsandbytes and
    torch use in training, compiles for the capability it reads, and sm_75 code does not run on this GPU
    (the first record's training stopped so: "no kernel image is available for execution on the device")."""
    from gemmate_lib.config import course_config

    os.environ["GEMMATE_PROFILE"] = "t4"
    real = torch.cuda.get_device_capability
    if device == "cuda":
        torch.cuda.get_device_capability = lambda device=None: T4_CAPABILITY
    try:
        return course_config("quotes", **params, **({} if device == "cuda" else {"device": "cpu"}))
    finally:
        torch.cuda.get_device_capability = real


def full_shape(name: str, work: Path, dry_run: bool) -> dict:
    """Part 1 for one model, in this process: build, then load, train and evaluate as the notebooks do."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from gemmate_lib import fit
    from gemmate_lib.data import load_quotes
    from gemmate_lib.evaluation import evaluate_model, held_out_loss
    from gemmate_lib.models import load_model
    from gemmate_lib.training import attach_lora, train
    from tools.fit import planner

    record: dict = {"model": name, "weights": "random (full shape)"}
    start = time.time()
    if dry_run:  # the smoke run's tiny random Gemma 1 stands in for the full-shape checkpoint
        sys.path.insert(0, str(ROOT / "tests"))
        from learner_path import tiny_gemma

        folder = tiny_gemma(work / "tiny-gemma-1")
        record["model"], record["weights"] = "tiny random Gemma 1 (dry run)", "random (tiny)"
    else:
        from tools.fit import full_shape as builder

        source = os.environ.get("GEMMATE_SMOKE_TOKENIZER")
        folder = builder.build(name, work / name, tokenizer_source=Path(source) if source else None,
                               device="cuda" if torch.cuda.is_available() else "cpu")
    record["build_seconds"] = round(time.time() - start, 1)
    device = "cuda" if torch.cuda.is_available() and not dry_run else "cpu"
    if device == "cuda":
        # the build drew its values on this GPU: its cached blocks (up to Gemma 4's 4.7 GB table) would count
        # under the T4 cap (the second record's E2B load ran out so, at 11.5 GiB allocated, 14.0 reserved)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        record["t4"] = as_t4(torch)
    cfg = t4_config(torch, device, model_name=str(folder), dataset="embedded", max_steps=STEPS,
                    val_steps_freq=0, save_steps=0, preflight=False)
    record["reason"] = cfg.precision.reason
    compute = 4 if cfg.precision.name == "fp32" else 2
    shape = fit.shape_of(AutoConfig.from_pretrained(folder))
    copy = fit.predicted_copy_bytes(shape, "nf4-fp32" if compute == 4 else "nf4", compute)
    plan = planner.predict(shape, compute, steps=STEPS)
    record.update(profile=cfg.profile, compute=cfg.precision.name, device=device, predicted_mib={
        "load": round(copy["loading"] / MIB), "copy": round(copy["gpu"] / MIB),
        "train": round(plan["nf4"]["gpu"] / MIB),
        **{nb: round(fit.notebook_need(nb, shape, compute).gpu / MIB)
           for nb in ("qlora_one_runtime", "03_lora_sft", "04_evaluation")}})
    phases = record["phases"] = {}

    def phase(label: str, began: float, **extra) -> None:
        phases[label] = {"seconds": round(time.time() - began, 1), **peaks(torch, device), **extra}
        print(f"  {name} {label}: {json.dumps(phases[label])}", flush=True)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    tokenizer = AutoTokenizer.from_pretrained(folder)
    data = load_quotes("embedded", tokenizer=tokenizer, max_length=cfg.train.max_length)
    label, began = "load", time.time()
    try:
        model = load_model(str(folder), cfg.precision, "nf4")
        phase(label, began)
        label, began = "train", time.time()
        model = attach_lora(model, cfg, quiet=True, tokenizer=tokenizer)
        result = train(model, tokenizer, data.train, [], cfg, work / f"{name}-out",
                       pad_to_multiple_of=cfg.train.max_length)  # every batch padded to max_length
        phase(label, began, steps=result.steps,
              seconds_per_step=round(result.seconds / max(result.steps, 1), 2))
        label, began = "evaluate", time.time()
        rows = data.held_out[:EVAL_ROWS]
        loss = held_out_loss(result.model, tokenizer, rows, max_length=cfg.train.max_length)
        evaluate_model(result.model, tokenizer, rows)
        phase(label, began, held_out_loss=round(loss, 3))
    except Exception as err:  # noqa: BLE001 - an out-of-memory under the T4 cap is a result: kept with its peak
        phase(label, began, error=f"{type(err).__name__}: {str(err)[:400]}")
    return record


def embedded(arm: str, work: Path) -> dict:
    """Parts 2 and 3: make gpu-check on the embedded real model, where its weights are on the machine."""
    try:
        from gemmate_lib.models import prepare_embedded

        prepare_embedded(verbose=False)
    except Exception as err:  # noqa: BLE001 - the reason is the record
        return {"skipped": f"the embedded model is not on this machine ({type(err).__name__}: "
                           f"{str(err)[:160]}); its 253 MB GGUF cannot travel in the device tool's 64 MiB"}
    argv = (["--precision", "t4", "--only", "07", "qlora"] if arm == "t4"
            else ["--only", "03", "04", "05"])
    run_dir = work / f"gpu-check-{arm}"
    code = subprocess.call([sys.executable, "-m", "tools.gpu.gpu_check", *argv, "--run-dir", str(run_dir)],
                           cwd=ROOT)
    record_file = run_dir / "gpu_check.json"
    return {"returncode": code, **(json.loads(record_file.read_text()) if record_file.exists() else {})}


def child(part: str, work: Path, out: Path, dry_run: bool) -> int:
    kind, name = part.split("/")
    record = full_shape(name, work, dry_run) if kind == "full-shape" else embedded(name, work)
    (out / f"{part.replace('/', '_')}.json").write_text(json.dumps(record, indent=1))
    return 0


GPU_RECORDS = ROOT / "docs" / "gpu-record.json"  # the committed records: each run's gpu_record.json, noted
PAGE = ROOT / "docs" / "full-shape.md"


def table(doc: dict) -> str:
    """docs/full-shape.md's GPU table: per model, the last record in which every phase ran, each phase's peak
    against the planner's figure for it (as recorded at the run) and the T4 cap."""
    latest = {}
    for run in doc["records"]:
        for part, record in run["parts"].items():
            phases = record.get("phases", {})
            ran = len(phases) == 3 and not any("error" in phase for phase in phases.values())
            if part.startswith("full-shape/") and ran:
                latest[record["model"]] = (run, record)
    lines = ["| model (compute) | phase | peak allocated (MiB) | peak reserved (MiB) | planner (MiB) | "
             "planner vs reserved | cap (MiB) |", "|---|---|---|---|---|---|---|"]
    for model, (_run, record) in latest.items():
        cap = round(record["t4"]["allocator_cap_gib"] * 1024)
        predicted, phases = record["predicted_mib"], record["phases"]
        highest = {k: max(p[k] for p in phases.values()) for k in ("allocated_mib", "reserved_mib")}
        rows = [("NF4 load", phases["load"], predicted["load"]),
                ("the copy after loading (resident)", {"allocated_mib": phases["load"]["resident_mib"],
                                                       "reserved_mib": None}, predicted["copy"]),
                (f"{phases['train']['steps']} LoRA steps, batches padded", phases["train"], None),
                ("held-out loss and generations", phases["evaluate"], None),
                ("the path's peak (planner: the nf4 phase)", highest, predicted["train"])]
        for label, measured, planned in rows:
            reserved = measured["reserved_mib"]
            against = reserved if reserved is not None else measured["allocated_mib"]
            error = f"{(planned - against) / against:+.0%}" if planned else "-"
            lines.append(f"| {model} ({record['compute']}) | {label} | {measured['allocated_mib']:,} | "
                         f"{'-' if reserved is None else f'{reserved:,}'} | "
                         f"{'-' if planned is None else f'{planned:,}'} | {error} | {cap:,} |")
    gpus = sorted({run["gpu"] for run in doc["records"]})
    lines.append(f"\nMeasured on {', '.join(gpus)} ({doc['records'][-1]['started'][:10]}), not on a T4.")
    return "\n".join(lines)


def write(out: Path, results: dict) -> None:
    (out / "gpu_record.json").write_text(json.dumps(results, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="part 1's code on this CPU with a tiny random Gemma; the other parts skipped")
    parser.add_argument("--only", nargs="+", choices=list(PART_SECONDS),
                        help="these parts (default: all, in order)")
    parser.add_argument("--out", type=Path, default=None, help="default: $OUT, else runs/gpu-record-<time>")
    parser.add_argument("--work", type=Path, default=None, help="checkpoints and outputs (default: /tmp)")
    parser.add_argument("--write", action="store_true",
                        help="rewrite docs/full-shape.md's GPU table from docs/gpu-record.json, run nothing")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.write:
        from tools.markers import replace

        PAGE.write_text(replace(PAGE.read_text(), "gpu table", table(json.loads(GPU_RECORDS.read_text()))))
        return 0
    out = args.out or Path(os.environ.get("OUT") or ROOT / "runs" / time.strftime("gpu-record-%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(os.environ.get("TMPDIR", "/tmp")) / "gemmate-gpu-record"
    work.mkdir(parents=True, exist_ok=True)
    bundle = ROOT / ".gpu-wheels" / "embedded-tokenizer.tar.gz"
    if bundle.exists() and not os.environ.get("GEMMATE_SMOKE_TOKENIZER"):  # a bare GPU machine: no model
        import tarfile

        with tarfile.open(bundle) as tar:
            tar.extractall(work / "tokenizer", filter="data")
        os.environ["GEMMATE_SMOKE_TOKENIZER"] = str(work / "tokenizer")
    if args.child:
        return child(args.child, work, out, args.dry_run)
    parts = args.only or (["full-shape/gemma-2b"] if args.dry_run else list(PART_SECONDS))
    results = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "dry_run": args.dry_run,
               "parts": {}}
    try:
        import torch

        results["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        results["torch"] = torch.__version__
    except Exception as err:  # noqa: BLE001 - recorded, the parts say the rest
        results["gpu"] = f"torch failed: {err}"
    for part in parts:
        began, limit = time.time(), PART_SECONDS[part]
        print(f"--- {part} (at most {limit} s)", flush=True)
        cmd = [sys.executable, "-m", "tools.gpu.gpu_record", "--child", part, "--out", str(out),
               "--work", str(work), *(["--dry-run"] if args.dry_run else [])]
        try:
            code = subprocess.run(cmd, cwd=ROOT, timeout=limit).returncode
        except subprocess.TimeoutExpired:
            code = "timed out"
        file = out / f"{part.replace('/', '_')}.json"
        results["parts"][part] = {"returncode": code, "seconds": round(time.time() - began, 1),
                                  **(json.loads(file.read_text()) if file.exists() else {})}
        write(out, results)
        print(f"--- {part}: {code} in {results['parts'][part]['seconds']} s", flush=True)
    failed = [p for p, r in results["parts"].items() if r["returncode"] not in (0,) and "skipped" not in r]
    for part, record in results["parts"].items():
        print(part, json.dumps({k: record.get(k) for k in ("returncode", "compute", "predicted_mib", "phases",
                                                              "build_seconds", "skipped") if k in record}))
    print(f"gpu record: {len(parts) - len(failed)} of {len(parts)} parts ran; in {out / 'gpu_record.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
