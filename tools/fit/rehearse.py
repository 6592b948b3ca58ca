"""`make rehearse`: the learner's path at full shape, on a CPU, against a free Colab runtime's limits. For
each model (tools/fit/full_shape.py builds its checkpoint once, random weights at the real shapes; the
embedded Gemma 3 270M is its real folder), each phase runs in a child process; a watcher sums the resident
anonymous memory (RssAnon) of the whole process tree every 20 ms and stops it above Colab's RAM.
`prlimit`/`ulimit` would count the memory-mapped checkpoint as used and refuse loads Colab allows, so they are
not used. Peak RAM, peak disk (the checkpoint plus everything written so far) and time go into
docs/full-shape.json and the tables in docs/full-shape.md; it exits 1 if a phase the course offers goes over.

Phases (the host side of what the notebooks and the one-page recipe do on a T4):
- load: a whole 16/32-bit copy (01's comparison, 05's merge base, 06's arms), through the library's own
  `load_model`, with transformers' own loader and its thread pool; only the copy to the GPU is stood in for,
  at the one boundary (`core_model_loading._materialize_copy`): the tensor is read and converted on the host
  as torch does for a CPU->GPU copy with a dtype change, then handed off. The per-layer table that
  `lookup_tables_to_cpu` brings back to the CPU (Gemma 4) is then read from the checkpoint, in bf16.
- nf4: the host side of the NF4 load (02-05, the one-page recipe): an imitation, tensor by tensor as the
  loader goes with quantization on (every tensor converted to the compute dtype on the host).
- copy: one 4-bit copy as a notebook holds it, loaded with `load_model(..., "nf4")` on the CPU and prepared
  for k-bit training: its bytes on the compute device and on the CPU (the bytes of a tensor do not depend on
  the device); for Gemma 4 E2B also a few LoRA steps on short sequences, to show the path runs at that size.
- merge: the adapter merged tensor by tensor from the shards into an f16 sharded copy
  (tools/fit/merge_shards.py).
- convert, quantize, verify: the GGUF export (llama.cpp's converter in its own process, its quantizer, then
  llama.cpp loading the file and generating a few tokens).

Random weights: the figures are memory, disk and time, never quality. No GPU here: no GPU measurements.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

COLAB_RAM = 12.7e9  # a free Colab runtime's system RAM ("12.7 GB" in its resources panel), in bytes
COLAB_DISK = 70e9   # what a free T4 runtime leaves free on /content, at least (an assumption, not measured)
FREE_T4_GPU = 14.0 * 2**30  # what a T4 leaves the process (gemmate_lib.fit.FREE_COLAB)
PHASES = ("load", "nf4", "copy", "merge", "convert", "quantize", "verify")
DOCS = Path(__file__).resolve().parents[2] / "docs"


def machine_ram() -> float:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def rss_anon(pid: int) -> int:
    """Resident anonymous memory of `pid` and all its descendants, in bytes (0 for processes gone)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += next(int(line.split()[1]) * 1024 for line in status.splitlines()
                          if line.startswith("RssAnon:"))
            for task in Path(f"/proc/{p}/task").iterdir():
                children = (task / "children").read_text().split()
                stack.extend(int(c) for c in children)
        except (OSError, StopIteration, ValueError):
            continue
    return total


def folder_bytes(*folders: Path) -> int:
    total = 0
    for folder in folders:
        for root, _, files in os.walk(folder):
            for name in files:
                try:
                    total += os.stat(os.path.join(root, name)).st_size
                except OSError:
                    pass
    return total


def watch(cmd: list[str], limit: float, disk_folders=(), env=None, poll: float = 0.02) -> dict:
    """Run `cmd`, sampling its tree's RssAnon every `poll` s; stop the tree above `limit` bytes.
    {"peak_ram", "peak_disk", "seconds", "returncode", "stopped", "tail"}."""
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    peak_ram = peak_disk = 0
    stopped, last_disk = False, 0.0
    while proc.poll() is None:
        peak_ram = max(peak_ram, rss_anon(proc.pid))
        if peak_ram > limit and not stopped:
            stopped = True
            os.killpg(proc.pid, 9)
        if disk_folders and time.time() - last_disk > 0.5:
            peak_disk, last_disk = max(peak_disk, folder_bytes(*disk_folders)), time.time()
        time.sleep(poll)
    reader.join(timeout=5)
    if disk_folders:
        peak_disk = max(peak_disk, folder_bytes(*disk_folders))
    return {"peak_ram": peak_ram, "peak_disk": peak_disk, "seconds": round(time.time() - start, 1),
            "returncode": proc.returncode, "stopped": stopped, "tail": "".join(lines[-10:])[-2000:]}


# ---------------------------------------------------------------------------------------------- child phases


def t4_dtype(folder: Path):
    """The compute dtype the course picks on a T4 for this checkpoint's generation (fp16 for one it lacks)."""
    import torch

    from gemmate_lib.generations import generation_of

    generation = generation_of(folder)
    return {"fp16": torch.float16, "fp32": torch.float32}[generation.t4_dtype if generation else "fp16"]


def on_the_gpu(tensor, device=None, dtype=None):
    """Stands in for transformers' copy of one checkpoint tensor to the GPU: read from the mapped file,
    converted
    on the host when the dtype changes (torch converts a CPU->GPU copy there), then handed off."""
    tensor = tensor[...]
    if dtype is not None and tensor.dtype != dtype:
        tensor = tensor.to(dtype=dtype)
    return tensor.to("meta")


def host_table(folder: Path):
    """Gemma 4's per-layer embedding table as `lookup_tables_to_cpu` keeps it on the CPU: bf16; None
    without."""
    import torch
    from safetensors import safe_open

    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"] \
        if (folder / "model.safetensors.index.json").exists() else None
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if "embed_tokens_per_layer" in key and (index is None or index[key] == file.name):
                    return f.get_tensor(key).to(torch.bfloat16)
    return None


def quantized(key: str, shape) -> bool:
    """True for the weights NF4 stores in 4 bits: 2-D linear weights, not embeddings or norms."""
    return len(shape) == 2 and "embed" not in key and not key.endswith("lm_head.weight")


def stream(folder: Path, dtype_of) -> int:
    """Read every tensor as transformers 5.23's loader does (safe_open, one tensor at a time), convert it on
    the CPU to `dtype_of(key, shape)` and hand it off, as the copy to the GPU does. Returns their bytes."""
    from safetensors import safe_open

    total = 0
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt", device="cpu", backend="mmap") as f:
            for key in f.keys():
                lazy = f.get_slice(key)  # as transformers 5.23: get_slice, tensor[...], .to(device, dtype)
                tensor = lazy[...]
                converted = tensor.to(dtype_of(key, lazy.get_shape()))
                total += converted.nbytes
                del tensor, converted
    return total


def nf4_copy(base: Path, precision, steps: int = 0) -> dict:
    """One 4-bit copy as 02-07 hold it: `load_model(..., "nf4")` and k-bit preparation, on the CPU. Its bytes
    as the notebooks' ledger counts a live copy (ledger.measured_copy_bytes), by where they sit on a GPU
    runtime ("gpu": everything but the tables `lookup_tables_to_cpu` keeps on the CPU, "host": those) and by
    kind; with `steps`, that many LoRA steps on 16-token sequences, timed."""
    import time as clock

    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from gemmate_lib.generations import lora_targets
    from gemmate_lib.models import load_model
    from tools.fit.ledger import measured_copy_bytes

    start = clock.time()
    model = prepare_model_for_kbit_training(load_model(str(base), precision, "nf4"),
                                            use_gradient_checkpointing=True)
    # {"cpu:4bit", "cpu:float32", ..., "cpu:host"}: on this CPU every slot is "cpu"; "host" is the tables
    kinds = {slot.split(":", 1)[1]: n for slot, n in measured_copy_bytes(model, set()).items()}
    host = kinds.get("host", 0)
    out = {"gpu": sum(kinds.values()) - host, "host": host, "kinds": kinds,
           "load_seconds": round(clock.time() - start, 1), "step_seconds": []}
    if steps:
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=lora_targets(model),
                                                 task_type="CAUSAL_LM"))
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        vocab = model.config.get_text_config().vocab_size
        ids = torch.randint(3, min(1000, vocab), (1, 16), generator=torch.Generator().manual_seed(0))
        for _ in range(steps):
            begin = clock.time()
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            out["step_seconds"].append(round(clock.time() - begin, 1))
        out["final_loss"] = round(loss.item(), 3)
    return out


def random_adapter(base: Path, out: Path, r: int = 8, alpha: int = 16) -> Path:
    """A LoRA adapter at the base's full shape, as PEFT saves one after the one-page recipe's training (the
    seven projections of the text model, r=8, fp32), with random A and B: the merge changes every target."""
    import re

    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file
    from transformers import AutoConfig

    from tools.fit.full_shape import meta_model

    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    pattern = re.compile(rf"model\.(language_model\.)?layers\.\d+\..*\.({'|'.join(targets)})$")
    model = meta_model(AutoConfig.from_pretrained(base))
    generator, weights = torch.Generator().manual_seed(1), {}
    for name, module in model.named_modules():
        if pattern.match(name) and isinstance(module, torch.nn.Linear):
            prefix = f"base_model.model.{name}"
            a = torch.randn(r, module.in_features, generator=generator)
            b = torch.randn(module.out_features, r, generator=generator)
            weights[f"{prefix}.lora_A.weight"], weights[f"{prefix}.lora_B.weight"] = a * 0.01, b * 0.01
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / "adapter_model.safetensors"))
    LoraConfig(r=r, lora_alpha=alpha, target_modules=pattern.pattern, task_type="CAUSAL_LM",
               base_model_name_or_path=str(base)).save_pretrained(out)
    return out


def child(phase: str, base: Path, work: Path) -> None:
    import torch

    from gemmate_lib.hardware import Precision

    t4 = Precision("cpu", t4_dtype(base), "a T4's compute dtype")
    if phase == "load":
        import transformers.core_model_loading as loading

        from gemmate_lib.models import load_model

        loading._materialize_copy = on_the_gpu  # the one boundary: the copy to the GPU
        model = load_model(str(base), t4, "none")
        table = host_table(base)
        print("loaded", type(model).__name__, "host bytes", 0 if table is None else table.nbytes)
    elif phase == "nf4":
        dtype = t4_dtype(base)
        print("bytes", stream(base, lambda key, shape: dtype))
    elif phase == "copy":
        from gemmate_lib.generations import generation_of

        gemma4 = getattr(generation_of(base), "key", "") == "gemma4"  # E2B: show that its 4-bit path trains
        print("copy", json.dumps(nf4_copy(base, t4, steps=3 if gemma4 else 0)))
    elif phase == "merge":
        from tools.fit.merge_shards import merge_shards

        adapter = random_adapter(base, work / "adapter")
        merge_shards(base, adapter, work / "merged", dtype=torch.float16)  # f16: the converter's own type
    elif phase == "convert":
        from gemmate_lib import export

        print("seconds", export.convert(work / "merged", work / "model-f16.gguf"))
        shutil.rmtree(work / "merged")  # the export deletes its 16-bit copy once converted
    elif phase == "quantize":
        from gemmate_lib import export

        print("seconds", export.quantize(work / "model-f16.gguf", work / "model-q4_k_m.gguf", "q4_k_m"))
    elif phase == "verify":
        from gemmate_cli.gguf_verify import llama_greedy
        from gemmate_lib import export

        # as 05's verification loads a file: the logits of every position (llama-cpp-python keeps none
        # without them, and greedy decoding would read zeros)
        llm = export.load_llama(work / "model-q4_k_m.gguf")
        tokens, logits, _ = llama_greedy(llm, "Quote: Imagination is more", 8)
        spread = float(logits[0].max() - logits[0].min())
        print("generated", json.dumps({"tokens": tokens, "logit_range": spread}))
    else:
        raise SystemExit(f"unknown phase {phase!r}")


# ---------------------------------------------------------------------------------------------- the rehearsal


def rehearse(names, phases=PHASES, limit: float = COLAB_RAM, work_root: Path | None = None,
             builder=None) -> list[dict]:
    """Every phase of every model in `names`, each in a watched child process. Returns one row per phase."""
    from tools.fit import full_shape

    builder = builder or full_shape.build
    rows = []
    for name in names:
        base = builder(name)
        work = Path(work_root or full_shape.root() / "rehearsal") / name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        checkpoint = folder_bytes(base)
        for phase in phases:
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                               os.environ.get("PYTHONPATH", "")])}
            cap = machine_ram() if phase == "copy" else limit  # a copy lives on the GPU, not in Colab's RAM
            result = watch([sys.executable, "-m", "tools.fit.rehearse", "--child", phase, "--base", str(base),
                            "--work", str(work)], cap, (base, work), env=env)
            row = {"model": name, "phase": phase, "checkpoint_bytes": checkpoint, **result,
                   "fits": result["returncode"] == 0 and not result["stopped"]
                   and result["peak_disk"] <= COLAB_DISK}
            for line in result["tail"].splitlines():
                if line.startswith("copy "):
                    row["copy"] = json.loads(line.removeprefix("copy "))
            if phase == "copy" and "copy" in row:
                row["fits"] = row["fits"] and row["copy"]["gpu"] <= FREE_T4_GPU
            rows.append(row)
            ok = row["returncode"] == 0 or row["stopped"]
            failed = "" if ok else f"  (failed: {row['tail'][-200:]})"
            print(f"{name:14s} {phase:9s} RAM {row['peak_ram'] / 1e9:6.2f} GB  "
                  f"disk {row['peak_disk'] / 1e9:6.2f} GB  {row['seconds']:7.1f} s  "
                  f"{'fits' if row['fits'] else 'DOES NOT FIT'}{failed}", flush=True)
            if not row["fits"]:
                break  # the later phases need this one's output
        shutil.rmtree(work, ignore_errors=True)
    return rows


def planned(name: str) -> dict:
    """The planner's phases for `name` on a T4 (gemmate_lib.fit, and merge_shards' merge), from its config
    alone."""
    from gemmate_lib import fit
    from gemmate_lib.generations import generation_of
    from tools.fit.full_shape import config_of
    from tools.fit.merge_shards import phases

    config = config_of(name)
    generation = generation_of(config)
    return phases(fit.shape_of(config), 4 if generation and generation.t4_dtype == "fp32" else 2)


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table, with the planner's estimate (gemmate_lib.fit) beside each peak; the rows
    its
    constants were calibrated on are marked."""
    from tools.fit.full_shape import CALIBRATION, MODELS

    lines = ["| model | phase | peak RAM (GB) | planner's estimate (GB) | peak disk (GB) | time (s) | "
             "within a free Colab runtime |", "|---|---|---|---|---|---|---|"]
    plans = {}
    for r in rows:
        if r["phase"] == "copy":
            continue  # its own table (copy_table)
        if r["model"] in MODELS and r["model"] not in plans:
            plans[r["model"]] = planned(r["model"])
        estimate = plans.get(r["model"], {}).get(r["phase"], {}).get("ram")
        fits = "yes" if r["fits"] else "**no**"
        mark = " (calibration)" if r["model"] in CALIBRATION else ""
        lines.append(f"| {r['model']}{mark} | {r['phase']} | {r['peak_ram'] / 1e9:.2f} | "
                     f"{'-' if estimate is None else f'{estimate / 1e9:.2f}'} | "
                     f"{r['peak_disk'] / 1e9:.1f} | {r['seconds']:.0f} | {fits} |")
    return "\n".join(lines)


def copy_table(rows: list[dict]) -> str:
    """The copy rows: one 4-bit copy after k-bit preparation, on the compute device and on the CPU, against
    the planner's fit.predicted_copy_bytes; the LoRA steps where they ran."""
    from gemmate_lib import fit
    from gemmate_lib.generations import generation_of
    from tools.fit.full_shape import config_of

    lines = ["| model | on the GPU (GiB) | planner (GiB) | on the CPU (GiB) | planner (GiB) | LoRA steps (s) "
             "|",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if r["phase"] != "copy" or "copy" not in r:
            continue
        config = config_of(r["model"])
        generation = generation_of(config)
        need = fit.predicted_copy_bytes(fit.shape_of(config), "nf4-fp32",
                              4 if generation and generation.t4_dtype == "fp32" else 2)
        c, gib = r["copy"], 2**30
        steps = ", ".join(f"{t:.0f}" for t in c["step_seconds"]) or "-"
        lines.append(f"| {r['model']} | {c['gpu'] / gib:.2f} | {need['gpu'] / gib:.2f} | "
                     f"{c['host'] / gib:.2f} | {need['host'] / gib:.2f} | {steps} |")
    return "\n".join(lines)


def write_docs(rows: list[dict], cpu: str, update: bool = False) -> None:
    """docs/full-shape.json and the tables in docs/full-shape.md; `update` keeps the rows of the other models
    and phases."""
    if update and (DOCS / "full-shape.json").exists():
        fresh = {(r["model"], r["phase"]) for r in rows}
        old = json.loads((DOCS / "full-shape.json").read_text())["rows"]
        for r in old:
            r.setdefault("cpu", "?")  # measured before rows named their CPU
        rows = [r for r in old if (r["model"], r["phase"]) not in fresh] + rows
        from tools.fit.full_shape import MODELS

        order = list(MODELS)
        rows.sort(key=lambda r: (order.index(r["model"]) if r["model"] in order else 99,
                                 PHASES.index(r["phase"])))
    from tools.fit.full_shape import CALIBRATION

    for r in rows:
        r.setdefault("cpu", cpu)  # each row keeps the CPU it was measured on (an --update mixes runs)
        r["calibrated"] = r["model"] in CALIBRATION  # the planner's constants were fitted on these rows
    (DOCS / "full-shape.json").write_text(json.dumps(
        {"colab_ram_bytes": COLAB_RAM, "colab_disk_bytes": COLAB_DISK,
         "cpus": sorted({r["cpu"] for r in rows if r["cpu"] != "?"}),
         "rows": [{k: v for k, v in r.items() if k != "tail"} for r in rows]}, indent=1) + "\n")
    page = DOCS / "full-shape.md"
    text = page.read_text()
    from tools.markers import replace

    text = replace(text, "rehearsal table", table(rows))
    page.write_text(replace(text, "copy table", copy_table(rows)))


def cpu_name() -> str:
    """This machine's CPU, its cores, and whether it has AMX (the times depend on it)."""
    from gemmate_lib.hardware import cpu_bf16_units
    from tools.machine import cpu_name as model_name

    return f"{model_name()}, {os.cpu_count()} cores{', AMX' if cpu_bf16_units() == 'AMX' else ''}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--child")
    parser.add_argument("--base", type=Path)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument("--no-docs", action="store_true", help="print the table, do not write docs/")
    parser.add_argument("--update", action="store_true",
                        help="replace only these models' rows of these phases in docs/")
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.base, args.work)
        return 0
    from tools.fit import full_shape

    rows = rehearse(args.names or list(full_shape.MODELS), args.phases.split(","))
    print(table(rows))
    if not args.no_docs:
        write_docs(rows, cpu_name(), args.update)
    return 0 if all(r["fits"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
