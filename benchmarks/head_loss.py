"""The LM head and its loss alone, forward and backward: the course's fast loss, torch's own
`F.linear_cross_entropy` in each setting of `torch_loss.TORCH_LOSSES` (beside this file), and TRL's fused
head.

Run with `make bench-loss` (this, then the training arms of sft_throughput.py that use the same losses) or
`python benchmarks/head_loss.py`. On the embedded Gemma 3 270M's real head (262,144 x 640, tied to the
embeddings, frozen as under LoRA: only the hidden states get a gradient), for each token count (default:
8 x 128 = 1,024 tokens, and 293, one batch of the course's quotes in the profile) and each dtype (bf16 and
fp32), it times one forward and backward of each implementation in the same run, after an untimed one, and
prints the fastest and the median of `--repeats` runs (fewer past `--max-seconds`), each against the course's
loss (`speed x`: the course's seconds over the implementation's, above 1 faster), and how far its loss and
hidden-state gradient lie from exact ones: the loss summed over every token from an fp32 product of the same
(rounded) values, the gradient of the first `--check-rows` tokens likewise.

  course               gemmate_lib.fast_loss.LinearCrossEntropy: vocabulary-major chunks of 256 tokens, the
                       hidden-state gradient in the forward pass
  torch                F.linear_cross_entropy with LinearCrossEntropyOptions(): torch's own ("auto") policy
  torch_chunk256       the same with batch_chunk_size=256, the course's chunk
  torch_chunk256_lowp  and acc_dtype the input's (bf16 only: the same as torch_chunk256 in fp32)
  torch_reference      options=None: cross_entropy(linear(...)) through the whole [tokens, vocab] logits
  trl                  trl.kernels.ChunkedLogProbFunction as SFTTrainer's loss_type="nll" calls it on a
                       CPU: 32,768-wide vocabulary tiles, the entropy and top-1 outputs it logs, the tiles
                       recomputed in the backward (here every token labelled: no padded position is scored)

It writes benchmarks/results/head_loss.json. A machine that others share makes single timings noisy: compare
implementations within one run, and prefer the fastest of several repeats.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from profile_step import cpu_flags, cpu_name  # noqa: E402
from torch_loss import TORCH_LOSSES, summed_cross_entropy, torch_options  # noqa: E402

IMPLS = ("course", *TORCH_LOSSES, "trl")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
TRL_OUTPUTS = ("log_probs", "entropy", "is_top1")  # what SFTTrainer asks its fused head for (it logs them)


def head_weight() -> torch.Tensor:
    """The embedded model's LM head (its token embedding, tied), read alone from the converted checkpoint."""
    from safetensors import safe_open

    from gemmate_lib.models import prepare_embedded

    with safe_open(str(prepare_embedded() / "model.safetensors"), "pt") as f:
        return f.get_tensor("model.embed_tokens.weight")


def trl_loss(hidden, weight, targets):
    """TRL's fused head as its CPU path runs it: summed negative log-likelihood of every position."""
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    log_probs = ChunkedLogProbFunction.apply(hidden, weight, None, targets, 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE,
                                             None, 1.0, TRL_OUTPUTS)[0]
    return -log_probs.sum()


def step(impl: str, hidden, weight, targets):
    """One forward and backward of the head and loss; returns the loss and the hidden states' gradient."""
    h = hidden.clone().requires_grad_()
    loss = trl_loss(h, weight, targets) if impl == "trl" else summed_cross_entropy(h, weight, targets, impl)
    loss.backward()
    return loss.detach(), h.grad


def exact(hidden, weight, targets, rows: int):
    """The yardstick: the summed loss of every token, and the hidden-state gradient of the first `rows`, from
    an fp32 product of the same values (exact products of bf16 ones), in fp32 softmaxes and a float64 sum."""
    w = weight.float()
    total = 0.0
    for start in range(0, len(targets), 256):
        logits = hidden[start:start + 256].float() @ w.t()
        total += float(torch.nn.functional.cross_entropy(logits, targets[start:start + 256], reduction="sum"))
    h = hidden[:rows].float().requires_grad_()
    torch.nn.functional.cross_entropy(h @ w.t(), targets[:rows], reduction="sum").backward()
    return total, h.grad


def resolved(impl: str, tokens: int, weight) -> str:
    """What torch's options come to at this shape (chunk rows, precision policy), for the table."""
    if impl not in TORCH_LOSSES:
        return "chunk 256" if impl == "course" else "tiles 4096 x 32768"
    options = torch_options(impl, weight.dtype)
    if options is None:
        return "whole logits"
    try:  # a private method of torch's options: informative only
        o = options._adjust(num_batches=tokens, in_features=weight.shape[1], num_classes=weight.shape[0],
                            dtype=weight.dtype, device=weight.device)
        return f"chunk {o.batch_chunk_size}, {o.acc_policy}, acc {str(o.acc_dtype).replace('torch.', '')}"
    except Exception:  # noqa: BLE001 - the label is optional
        return "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 293],
                        help="labelled tokens per call (default: %(default)s: 8 x 128, and one course batch)")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["bf16", "fp32"])
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS),
                        help="implementations, in this order (the course's runs first in any case)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each, at most")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each before the timed ones")
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="stop timing an implementation once its timed runs took this long (at least one "
                        "runs; an untimed run this long counts as the timed one): torch's own policy can "
                        "take a minute a call at 1,024 tokens")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default, every core); 1 on a machine others share")
    parser.add_argument("--check-rows", type=int, default=64,
                        help="tokens whose hidden-state gradient is checked against the exact one")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    impls = ["course"] + [i for i in args.impls if i != "course"]
    torch.manual_seed(0)
    full = head_weight()
    flags = cpu_flags()
    native = ("AMX" if {"amx_bf16", "amx_tile"} & flags else "AVX512_BF16" if "avx512_bf16" in flags
              else "none")
    print(f"{datetime.date.today().isoformat()}, {cpu_name()}, {torch.get_num_threads()} threads, "
          f"native bf16: {native}; torch {torch.__version__}; head {tuple(full.shape)}, frozen")
    results = []
    for tokens in args.tokens:
        for dtype_name in args.dtypes:
            dtype = DTYPES[dtype_name]
            weight = full.to(dtype)
            hidden = torch.randn(tokens, weight.shape[1]).to(dtype)
            targets = torch.randint(0, weight.shape[0], (tokens,))
            exact_loss, exact_grad = exact(hidden, weight, targets, args.check_rows)
            print(f"\n{tokens} tokens, {dtype_name}")
            print(f"{'impl':20} {'setting':34} {'fastest s':>9} {'median s':>9} {'speed x':>8} "
                  f"{'cpu s':>8} {'cpu x':>6} {'loss err':>9} {'grad err':>9}")
            base = None
            for impl in impls:
                if impl == "torch_chunk256_lowp" and dtype == torch.float32:
                    continue  # the input's dtype is fp32: the same run as torch_chunk256
                seconds, cpu_seconds = [], []
                for i in range(args.warmup + args.repeats):  # untimed first: allocations, MKL's first call
                    start, cpu_start = time.perf_counter(), time.process_time()
                    loss, grad = step(impl, hidden, weight, targets)
                    elapsed = time.perf_counter() - start
                    if i >= args.warmup or elapsed > args.max_seconds:  # a call that slow: timed as it is
                        seconds.append(elapsed)
                        cpu_seconds.append(time.process_time() - cpu_start)
                        if sum(seconds) > args.max_seconds:
                            break
                row = {"impl": impl, "tokens": tokens, "dtype": dtype_name,
                       "setting": resolved(impl, tokens, weight), "fastest_s": min(seconds),
                       "median_s": statistics.median(seconds), "seconds": seconds,
                       "fastest_cpu_s": min(cpu_seconds), "cpu_seconds": cpu_seconds,
                       "loss": float(loss), "grad_dtype": str(grad.dtype).replace("torch.", "")}
                if base is None:
                    base = row | {"grad": grad.float(), "loss_t": loss.double()}
                row["speed_vs_course"] = base["fastest_s"] / row["fastest_s"]
                row["speed_vs_course_median"] = base["median_s"] / row["median_s"]
                row["cpu_speed_vs_course"] = base["fastest_cpu_s"] / row["fastest_cpu_s"]
                row["loss_rel_diff"] = float((loss.double() - base["loss_t"]).abs() / base["loss_t"].abs())
                row["grad_max_rel_diff"] = float((grad.float() - base["grad"]).abs().max()
                                                 / base["grad"].abs().max())
                row["loss_err"] = abs(float(loss) - exact_loss) / abs(exact_loss)
                head = grad[:args.check_rows].float()
                row["grad_err"] = float((head - exact_grad).abs().max() / exact_grad.abs().max())
                results.append(row)
                print(f"{impl:20} {row['setting']:34} {row['fastest_s']:9.3f} {row['median_s']:9.3f} "
                      f"{row['speed_vs_course']:8.2f} {row['fastest_cpu_s']:8.3f} "
                      f"{row['cpu_speed_vs_course']:6.2f} {row['loss_err']:9.1e} {row['grad_err']:9.1e}",
                      flush=True)
    print("\nspeed x: the course's fastest seconds over each implementation's (above 1: faster than the "
          "course's); cpu s / cpu x: the same in the process's CPU time, which with --threads 1 on a busy "
          "machine leaves out the time others' jobs held the core.\nloss err: relative error of the summed "
          "loss; grad err: the largest error of the hidden-state gradient over its largest value (both "
          "against an fp32 product of the same values)")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    summary = {"date": datetime.date.today().isoformat(), "cpu": cpu_name(), "native_bf16": native,
               "threads": torch.get_num_threads(), "torch": torch.__version__, "results": results}
    (out / "head_loss.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
