"""Where one training step of the course's CPU default spends its time, by operator group.

Run with `make profile` (or `python benchmarks/profile_step.py`; `--dtype fp32` forces bf16 off,
`--loss trl` uses TRL's own loss instead of the course's, `--loss torch_chunk256` (or another of
torch_loss.py's TORCH_LOSSES) torch's F.linear_cross_entropy, `--threads 1` one thread). It trains the
embedded Gemma 3 270M with the course default (course_config() on this CPU) for a few warm-up steps,
then records one whole optimizer step with torch.profiler: fetching the batch, forward, backward,
AdamW and zero_grad.

Each operator's own time (its time minus that of the operators it calls) goes to one group:

  LM head            the loss's projection onto the 262k-token vocabulary (GEMMs) and its softmax
  attention SDPA     scaled_dot_product_attention, forward and backward
  attention GEMMs    the frozen q/k/v/o projections, forward and input-gradient
  MLP GEMMs          the frozen gate/up/down projections, forward and input-gradient
  other GEMMs        matrix products outside those (none expected: a check on the grouping)
  LoRA               the adapters' A and B products (and their weight gradients)
  element-wise       everything else in the model: norms, GELU, RoPE, residual adds, casts, copies
  optimizer          AdamW's step and zero_grad
  data               the data loader: sampling, collating, padding
  other              Python and framework time between operators (the trainer, hooks, autograd)

Forward operators are grouped by the module that runs them (forward hooks open a profiler range per
module); backward operators by the forward operator whose gradient they compute (the autograd
sequence number links the two). It prints the table, the step's wall time and the machine.
"""
from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.machine import cpu_name  # noqa: E402

GEMMS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmm_", "aten::mm_out",
         "mkldnn::_linear_pointwise", "aten::mkldnn_linear", "aten::_addmm_activation"}
GROUPS = ("LM head: GEMMs", "LM head: softmax and loss", "attention SDPA", "attention GEMMs", "MLP GEMMs",
          "other GEMMs", "LoRA", "element-wise", "optimizer", "data", "other")
LABEL = "gm::"  # prefix of the profiler ranges the module hooks open
# the LM head's loss: the course's autograd function, TRL's, torch's F.linear_cross_entropy (its chunked op
# and the range fast_loss opens around it)
HEAD_NAMES = ("LinearCrossEntropy", "ChunkedLogProb", "linear_cross_entropy")


def is_head(name: str) -> bool:
    return any(h in name for h in HEAD_NAMES)


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def module_label(name: str, module) -> str | None:
    """The profiler range a module's forward runs in: what it is, by its place in the model."""
    kind = type(module).__name__
    if name.endswith("lora_A.default") or name.endswith("lora_B.default") or ".lora_" in name:
        return "lora"
    if name.endswith("lm_head"):
        return "lm_head"
    if "Norm" in kind or "Rotary" in kind:
        return "elementwise"
    if name.endswith("base_layer") or (kind == "Linear" and "lora" not in name):
        if ".self_attn." in name:
            return "attn_gemm"
        if ".mlp." in name:
            return "mlp_gemm"
    if name.endswith("self_attn"):
        return "attention"
    if name.endswith("mlp"):
        return "mlp"
    return None


def add_module_ranges(model) -> list:
    """Open a profiler range `gm::<label>` around each labelled module's forward; return the hook handles."""
    from torch.autograd.profiler import record_function

    handles, stack = [], []
    for name, module in model.named_modules():
        label = module_label(name, module)
        if label is None:
            continue

        def pre(mod, args, label=label):
            rf = record_function(LABEL + label)
            rf.__enter__()
            stack.append(rf)

        def post(mod, args, out):
            stack.pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    return handles


def classify(events) -> tuple[dict[str, float], float, dict[tuple[str, str], float]]:
    """Microseconds of own time per group, the sum over every operator, and per (group, operator)."""
    def label_of(event):
        """The nearest meaningful range above `event` (itself included), or None."""
        while event is not None:
            name = event.name
            if name.startswith(LABEL):
                return name[len(LABEL):]
            if "Optimizer.step" in name or "Optimizer.zero_grad" in name or name == "aten::zero_":
                if "Optimizer" in name:
                    return "optimizer"
            if "DataLoader" in name or "_next_data" in name:
                return "data"
            if is_head(name):
                return "lm_head"
            if name.startswith("autograd::engine::evaluate_function"):
                return ("bwd", event.sequence_nr, name)
            event = event.cpu_parent
        return None

    # forward: sequence number of each autograd-recording operator -> the module range it ran in
    forward = {}
    for e in events:
        if e.sequence_nr is not None and e.sequence_nr >= 0 and not e.name.startswith("autograd::"):
            lab = label_of(e)
            if isinstance(lab, str) and lab not in ("optimizer", "data"):
                forward.setdefault(e.sequence_nr, lab)
    times, total, per_op = defaultdict(float), 0.0, defaultdict(float)
    for e in events:
        own = e.self_cpu_time_total
        total += own
        lab = label_of(e)
        if isinstance(lab, tuple):  # a backward node: the range of its forward operator
            _, seq, name = lab
            lab = "lm_head" if is_head(name) else forward.get(seq)
        op = e.name
        gemm = op in GEMMS
        if lab == "optimizer":
            group = "optimizer"
        elif lab == "data":
            group = "data"
        elif lab == "lm_head":
            group = "LM head: GEMMs" if gemm else "LM head: softmax and loss"
        elif "scaled_dot_product" in op or "flash_attention" in op:
            group = "attention SDPA"
        elif lab == "lora":
            group = "LoRA"
        elif gemm and lab == "attn_gemm":
            group = "attention GEMMs"
        elif gemm and lab == "mlp_gemm":
            group = "MLP GEMMs"
        elif gemm:
            group = "other GEMMs"
        elif op.startswith("aten::") or op.startswith("mkldnn::"):
            group = "element-wise"
        else:  # profiler ranges, autograd nodes, Python: own time is framework overhead
            group = "other"
        times[group] += own
        per_op[group, op] += own
    return times, total, per_op


def main() -> int:
    from torch_loss import TORCH_LOSSES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto",
                        help="compute dtype (auto: what pick_precision chooses on this CPU)")
    parser.add_argument("--loss", choices=("course", "trl", *TORCH_LOSSES), default="course",
                        help="the course's fast loss, TRL's own (loss_type='nll'), or torch's "
                        "F.linear_cross_entropy in one of torch_loss.TORCH_LOSSES' settings")
    parser.add_argument("--warmup-steps", type=int, default=3, help="steps trained before the profiled one")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default, every core); on a machine that others "
                        "share, 1 keeps the threads from waiting on each other at every operator")
    parser.add_argument("--top", type=int, default=0, help="also print the N operators that take longest")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    from gemmate_lib.config import course_config
    from gemmate_lib.data import load_quotes
    from gemmate_lib.models import load_model, load_tokenizer
    from gemmate_lib.training import attach_lora, sft_trainer

    if args.loss in TORCH_LOSSES:
        import torch_loss

        torch_loss.use(args.loss)
    overrides = {} if args.dtype == "auto" else {"dtype": args.dtype}
    if args.loss == "trl":
        overrides["fast_loss"] = False
    cfg = course_config(device="cpu", **overrides)
    cfg = cfg.replace(max_steps=args.warmup_steps + 1, warmup_steps=0, steps_freq=args.warmup_steps + 1)
    data = load_quotes(cfg.data.dataset, cfg.data.eval_fraction, cfg.data.data_seed)
    tokenizer = load_tokenizer(cfg.model.model_name)
    model = attach_lora(load_model(cfg.model.model_name, cfg.precision, quantization=cfg.model.quantization),
                        cfg)
    prof = profile(activities=[ProfilerActivity.CPU])
    window = {}

    class Window(TrainerCallback):
        """Profile from the end of the last warm-up step to the end of the next step: one whole step."""

        def on_step_end(self, a, state, control, **kw):
            if state.global_step == args.warmup_steps:
                window["handles"] = add_module_ranges(trainer.model)
                window["tokens"] = trainer.tokens_trained
                prof.__enter__()
                window["start"] = time.perf_counter()
            elif state.global_step == args.warmup_steps + 1:
                window["seconds"] = time.perf_counter() - window["start"]
                prof.__exit__(None, None, None)
                window["tokens"] = trainer.tokens_trained - window["tokens"]
                for h in window["handles"]:
                    h.remove()

    extras = {"loss_type": "nll"} if args.loss == "trl" else {}
    trainer = sft_trainer(model, tokenizer, data.train, [], cfg, ROOT / "runs" / "profile",
                          callbacks=[Window()], **extras)
    trainer.train()
    times, total, per_op = classify(prof.events())
    wall_us = window["seconds"] * 1e6
    times["other"] += max(0.0, wall_us - total)  # time the profiler saw no operator in

    flags = cpu_flags()
    native = ("AMX" if {"amx_bf16", "amx_tile"} & flags else "AVX512_BF16" if "avx512_bf16" in flags
              else "none")
    t = cfg.train
    print(f"\n{datetime.date.today().isoformat()}, {cpu_name()}, {torch.get_num_threads()} threads, "
          f"native bf16: {native}; torch {torch.__version__}")
    loss = args.loss if trainer.fast_loss else "TRL nll"
    print(f"one step of the course default: {cfg.precision.name}, batch {t.batch_size}x"
          f"{t.gradient_accumulation_steps}, {t.optim}, loss {loss}, "
          f"{window['tokens']} tokens; step {window['seconds'] * 1e3:.0f} ms (profiled; the profiler adds a "
          f"little)")
    print(f"{'group':28} {'ms':>8} {'share':>7}")
    for group in GROUPS:
        print(f"{group:28} {times.get(group, 0.0) / 1e3:8.1f} {times.get(group, 0.0) / wall_us:7.1%}")
    print(f"{'step (wall)':28} {wall_us / 1e3:8.1f} {1:7.1%}")
    for (group, op), us in sorted(per_op.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {group:26} {op:60} {us / 1e3:8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
