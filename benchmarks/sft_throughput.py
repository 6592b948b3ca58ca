"""LoRA SFT throughput: the seed notebook's settings against the course's tuned CPU settings, and the
course default against variants of it (TRL's own loss, torch's own, fp32, the changes docs/performance.md
records).

Run with `make bench` (or `python benchmarks/sft_throughput.py`; `--arms` picks the arms, `make bench
ARMS="b_tuned c_trl_loss"`, or a group of them: `make bench ARMS=loss`, which `make bench-loss` runs). In one
run, on the same machine, model (the embedded Gemma 3 270M) and data
(the offline quotes), it trains each arm in its own subprocess (so peak memory is its own) for the same
number of examples, times the optimizer steps after a warm-up, and then measures the held-out loss (the
same evaluation for every arm). It prints a table, each arm's samples/s and held-out loss against the
course default in the same precision, writes JSON to benchmarks/results/sft_throughput.json, and ends
with `ratio b/a: X` when both the seed (a) and the default (b) ran.

FLOPs per non-padding token (for MFU):
    4 x frozen matmul weights   forward (2) + gradient w.r.t. the input (2); frozen weights
                                get no weight gradient. The tied LM head counts here
                                (vocab x hidden): the embedding lookup itself is free.
  + 6 x LoRA weights            forward (2) + input gradient (2) + weight gradient (2)
  + 12 x layers x heads x head_dim x mean context   attention scores and values, fwd+bwd
Padding tokens and recomputation (gradient checkpointing) are not useful work and are
not counted. The peak is a 2048x2048 matmul measured in the same run, in fp32 (the
issue's reference) and in bf16 (the dtype the tuned run uses on AMX CPUs).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gemmate_lib.config import SEED_QLORA  # noqa: E402
from gemmate_lib.generations import text_setting  # noqa: E402

# Each arm: `cfg`, overrides of course_config(device="cpu"); `args`, extra SFTConfig fields.
ARMS = {
    # (a) the seed notebook: QLoRA NF4 with bf16 compute, batch 1 x 4 accumulation, paged 8-bit AdamW,
    #     gradient checkpointing (TRL's default), TRL's own loss over every position.
    "a_seed": dict(cfg=dict(dtype="bf16", lora_dropout=0.05, **{
        k: v for k, v in SEED_QLORA.items() if k not in ("max_steps", "steps_freq", "val_steps_freq")})),
    # (b) the course's CPU defaults (course_config() on a machine without a GPU): the course's fast loss.
    "b_tuned": dict(cfg=dict()),
    # (c) the same with TRL's own loss: no override (SFTTrainer.compute_loss), loss_type="nll", which in
    #     trl >= 1.16 runs the LM head in chunks (TRL's fused LM head) without Triton.
    "c_trl_loss": dict(cfg=dict(fast_loss=False), args=dict(loss_type="nll")),
    # the same two with bf16 forced off: what a CPU without native bf16 runs
    "b_tuned_fp32": dict(cfg=dict(dtype="fp32")),
    "c_trl_loss_fp32": dict(cfg=dict(dtype="fp32", fast_loss=False), args=dict(loss_type="nll")),
}
# What the profile of one step points to (docs/performance.md, "What was tried"), each against the default:
TRIED = {
    # a larger micro-batch at the same number of examples (half the optimizer steps)
    "d_batch16": dict(cfg=dict(batch_size=16)),
    # the same, with the learning rate scaled by sqrt(2) for the halved number of steps
    "d_batch16_lr": dict(cfg=dict(batch_size=16, learning_rate=2.83e-4)),
    # fewer element-wise kernels in the optimizer: torch's fused AdamW (one kernel per step on a CPU)
    "e_fused_adamw": dict(cfg=dict(optim="adamw_torch_fused")),
    # LoRA weights, gradients and AdamW state in the compute dtype (PEFT keeps them fp32 and casts the LoRA
    # path's input up and its output down at every adapted layer); nothing changes in fp32
    "f_lora_in_compute_dtype": dict(cfg=dict(), lora_dtype="compute"),
    "f_lora_in_compute_dtype_fp32": dict(cfg=dict(dtype="fp32"), lora_dtype="compute"),
    "e_fused_adamw_fp32": dict(cfg=dict(dtype="fp32", optim="adamw_torch_fused")),
    "d_batch16_fp32": dict(cfg=dict(dtype="fp32", batch_size=16)),
}
ARMS.update(TRIED)
# torch 2.13's own head-and-loss, F.linear_cross_entropy, in place of the course's LinearCrossEntropy on the
# same path (CourseSFTTrainer -> fast_loss.causal_lm_loss, labelled tokens only): `loss_impl` names one of
# torch_loss.TORCH_LOSSES. torch's own CPU policy ("auto"), the course's chunk of 256 tokens with torch's
# precision policy (fp32 products for a bf16 head on a CPU), the same with the product and softmax in bf16,
# and torch's reference path (the whole logits). In fp32 the third is the second.
TORCH_LOSS_ARMS = {
    "g_torch_loss": dict(cfg=dict(), loss_impl="torch"),
    "g_torch_loss_chunk256": dict(cfg=dict(), loss_impl="torch_chunk256"),
    "g_torch_loss_chunk256_lowp": dict(cfg=dict(), loss_impl="torch_chunk256_lowp"),
    "g_torch_loss_reference": dict(cfg=dict(), loss_impl="torch_reference"),
    "g_torch_loss_fp32": dict(cfg=dict(dtype="fp32"), loss_impl="torch"),
    "g_torch_loss_chunk256_fp32": dict(cfg=dict(dtype="fp32"), loss_impl="torch_chunk256"),
    "g_torch_loss_reference_fp32": dict(cfg=dict(dtype="fp32"), loss_impl="torch_reference"),
}
ARMS.update(TORCH_LOSS_ARMS)
DEFAULT_ARMS = ("a_seed", "b_tuned", "c_trl_loss", "b_tuned_fp32", "c_trl_loss_fp32")
# Named groups `--arms` also takes: "loss", the course's loss against TRL's and torch's, bf16 then fp32.
ARM_GROUPS = {
    "loss": ("b_tuned", "c_trl_loss", *(n for n in TORCH_LOSS_ARMS if not n.endswith("_fp32")),
             "b_tuned_fp32", "c_trl_loss_fp32", *(n for n in TORCH_LOSS_ARMS if n.endswith("_fp32"))),
}


def matmul_peak(dtype_name: str, n: int = 2048, seconds: float = 1.5) -> float:
    """GFLOP/s of an n x n matmul in the given dtype, on all threads."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    start, k = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        a @ b
        k += 1
    return 2 * n**3 * k / (time.perf_counter() - start) / 1e9


def run_one(name: str, examples: int, warmup_steps: int) -> dict:
    """Train one configuration for `examples` examples; return its measurements."""
    import torch
    import torch_loss
    from transformers import TrainerCallback

    from gemmate_lib.config import course_config
    from gemmate_lib.data import load_quotes
    from gemmate_lib.evaluation import held_out_loss
    from gemmate_lib.models import load_model, load_tokenizer
    from gemmate_lib.training import attach_lora, sft_trainer

    arm = ARMS[name]
    torch_loss.use(arm.get("loss_impl", "course"))  # this arm's process only
    probe = course_config(device="cpu", **arm["cfg"])
    per_step = probe.train.batch_size * probe.train.gradient_accumulation_steps
    steps = examples // per_step
    cfg = probe.replace(max_steps=steps, warmup_steps=0, steps_freq=max(1, steps // 4))
    data = load_quotes(cfg.data.dataset, cfg.data.eval_fraction, cfg.data.data_seed)
    tokenizer = load_tokenizer(cfg.model.model_name)
    model = load_model(cfg.model.model_name, cfg.precision, quantization=cfg.model.quantization)
    loss_before = held_out_loss(model, tokenizer, data.held_out, max_length=cfg.train.max_length)
    model = attach_lora(model, cfg)
    if arm.get("lora_dtype") == "compute":
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.to(cfg.precision.dtype)
    lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base = model.get_base_model()
    hidden, vocab = text_setting(base, "hidden_size"), text_setting(base, "vocab_size")
    frozen_matmul = sum(p.numel() * (2 if p.dtype == torch.uint8 else 1)
                        for n, p in model.named_parameters() if not p.requires_grad and p.dim() == 2
                        and "embed" not in n) + vocab * hidden
    marks: list[tuple[float, int]] = []

    class Clock(TrainerCallback):
        """Time and the trainer's public token count at the end of every optimizer step."""

        def on_step_end(self, args, state, control, **kw):
            marks.append((time.perf_counter(), trainer.tokens_trained))

    trainer = sft_trainer(model, tokenizer, data.train, [], cfg, ROOT / "runs" / "bench" / name,
                          callbacks=[Clock()], **arm.get("args", {}))
    trainer.train()
    model.eval()
    (t0, tok0), (t1, tok1) = marks[warmup_steps - 1], marks[-1]
    measured_steps = len(marks) - warmup_steps
    seconds = t1 - t0
    # the fastest step: on a shared machine, the closest to what the step costs when nothing else runs
    step_seconds = sorted(b[0] - a[0] for a, b in zip(marks[warmup_steps - 1:], marks[warmup_steps:]))
    c = base.config
    mean_ctx = 20  # quotes are ~40 tokens: mean causal context ~20
    attn = 12 * c.num_hidden_layers * c.num_attention_heads * c.head_dim * mean_ctx
    flops_per_token = 4 * frozen_matmul + 6 * lora + attn
    loss = held_out_loss(trainer.model, tokenizer, data.held_out, max_length=cfg.train.max_length)
    return {
        "config": name, "settings": {"quantization": cfg.model.quantization, "dtype": cfg.precision.name,
                                     "batch_size": cfg.train.batch_size,
                                     "grad_accum": cfg.train.gradient_accumulation_steps,
                                     "optim": cfg.train.optim, "learning_rate": cfg.train.learning_rate,
                                     "lora_dtype": str(next(p.dtype for p in model.parameters()
                                                            if p.requires_grad)).replace("torch.", ""),
                                     "gradient_checkpointing": cfg.train.gradient_checkpointing,
                                     "loss": arm.get("loss_impl", "course") if trainer.fast_loss else
                                     f"TRL {trainer.args.loss_type}",
                                     "group_by_length": cfg.train.group_by_length},
        "examples": steps * per_step, "steps": steps, "measured_steps": measured_steps,
        "samples_per_s": measured_steps * per_step / seconds, "tokens_per_s": (tok1 - tok0) / seconds,
        "samples_per_s_fastest_step": per_step / step_seconds[0],
        "samples_per_s_median_step": per_step / step_seconds[len(step_seconds) // 2],
        "flops_per_token": flops_per_token,
        "achieved_gflops": (tok1 - tok0) * flops_per_token / seconds / 1e9,
        "held_out_loss_before": loss_before, "held_out_loss": loss,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def describe(s: dict) -> str:
    return (f"{s['quantization']}, {s['dtype']}, batch {s['batch_size']}x{s['grad_accum']}, {s['optim']}, "
            f"ckpt {'on' if s['gradient_checkpointing'] else 'off'}, loss {s['loss']}, "
            f"lr {s['learning_rate']:g}, LoRA {s['lora_dtype']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=96, help="training examples per configuration")
    parser.add_argument("--warmup-steps", type=int, default=2, help="optimizer steps not timed")
    parser.add_argument("--arms", nargs="+", choices=sorted(ARMS) + sorted(ARM_GROUPS), default=DEFAULT_ARMS,
                        help="arms to run, in this order, or a group of them: "
                        + "; ".join(f"{g}: {' '.join(a)}" for g, a in ARM_GROUPS.items())
                        + " (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per arm (0: torch's default, every core); on a machine that "
                        "others share, 1 keeps the threads from waiting on each other at every operator")
    parser.add_argument("--one", choices=sorted(ARMS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.arms = list(dict.fromkeys(a for name in args.arms for a in ARM_GROUPS.get(name, (name,))))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args.examples, args.warmup_steps)), flush=True)
        return 0

    peaks = {d: matmul_peak(d) for d in ("fp32", "bf16")}
    results = {}
    for name in args.arms:
        print(f"running {name} ({args.examples} examples)...", flush=True)
        proc = subprocess.run([sys.executable, __file__, "--one", name, "--examples", str(args.examples),
                               "--warmup-steps", str(args.warmup_steps), "--threads", str(args.threads)],
                              capture_output=True, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        results[name] = json.loads(line[0][len("RESULT "):])
    import torch

    print(f"\n{torch.get_num_threads()} threads; matmul peak (2048x2048, this run): "
          f"fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s")
    print(f"{'arm':28} {'settings':100} {'samples/s':>9} {'fastest':>8} {'tokens/s':>8} {'GFLOP/s':>8} "
          f"{'MFU fp32':>8} {'MFU bf16':>8} {'loss 0':>8} {'loss N':>8} {'peak GiB':>8}")
    for r in results.values():
        r["mfu_fp32_peak"] = r["achieved_gflops"] / peaks["fp32"]
        r["mfu_bf16_peak"] = r["achieved_gflops"] / peaks["bf16"]
        print(f"{r['config']:28} {describe(r['settings']):100} {r['samples_per_s']:9.2f} "
              f"{r['samples_per_s_fastest_step']:8.2f} {r['tokens_per_s']:8.1f} "
              f"{r['achieved_gflops']:8.1f} {r['mfu_fp32_peak']:8.1%} {r['mfu_bf16_peak']:8.1%} "
              f"{r['held_out_loss_before']:8.4f} {r['held_out_loss']:8.4f} {r['peak_rss_gib']:8.2f}")
    print("samples/s: over the timed steps; fastest: the fastest step's (on a shared machine, the closer to "
          "an idle one's)\nloss 0 / loss N: held-out loss (nats/token) before training and after the same "
          "number of examples")
    summary = {"peaks_gflops": peaks, "results": results, "against_default": {}}
    for name, r in results.items():  # each arm against the course default in the same precision
        base = next((b for b in ("b_tuned", "b_tuned_fp32") if b in results and b != name
                     and results[b]["settings"]["dtype"] == r["settings"]["dtype"]), None)
        if base is None or name == "a_seed":
            continue
        speed = r["samples_per_s"] / results[base]["samples_per_s"]
        fastest = r["samples_per_s_fastest_step"] / results[base]["samples_per_s_fastest_step"]
        gap = (r["held_out_loss"] - results[base]["held_out_loss"]) / results[base]["held_out_loss"]
        summary["against_default"][name] = {"default": base, "samples_per_s_ratio": speed,
                                            "fastest_step_ratio": fastest, "held_out_loss_gap": gap}
        print(f"{name} / {base}: samples/s x{speed:.2f} (fastest step x{fastest:.2f}), held-out loss "
              f"{r['held_out_loss']:.4f} vs {results[base]['held_out_loss']:.4f} ({gap:+.1%})")
    if "a_seed" in results and "b_tuned" in results:
        a, b = results["a_seed"], results["b_tuned"]
        ratio = b["samples_per_s"] / a["samples_per_s"]
        loss_gap = (b["held_out_loss"] - a["held_out_loss"]) / a["held_out_loss"]
        summary.update(ratio_b_over_a=ratio, held_out_loss_gap=loss_gap)
        print(f"held-out loss after {b['examples']} examples: tuned {b['held_out_loss']:.4f} vs seed "
              f"{a['held_out_loss']:.4f} ({loss_gap:+.1%}); before training: "
              f"{b['held_out_loss_before']:.4f} vs "
              f"{a['held_out_loss_before']:.4f} (the seed's NF4 re-quantizes the weights)")
        print(f"ratio b/a: {ratio:.2f}")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "sft_throughput.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
