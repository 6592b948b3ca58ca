"""The LM head of the fast loss: two layouts of the same product, and the head the model's own forward runs.

Run with `make bench-head` (or `python benchmarks/lm_head.py`). Gemma 3's head is
262,144 x 640; `gemmate_lib/fast_loss.py` computes its logits and the gradient for the
hidden states chunk by chunk. In one run on the same machine, for row counts like a 07
step (56 labelled date tokens), a 03 step (~160 tokens) and one full chunk (256), it times:

  a) rows-major, as before: logits = rows @ W.T ([rows, vocab]), grad = probs @ W;
  b) vocabulary-major, as now: logits = W @ rows.T ([vocab, rows]), grad = (W.T @ probs).T;

checks that both give the same loss and gradient, and then times what the model's own
forward adds when the decoder's output is taken from it: `logits_to_keep=1` (one position
per row through the head, as before) against an empty index (nothing, as now).
It prints a table and ends with `ratio b/a: X` for each row count.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def softmax_grad(hidden, weight, targets, vocab_major: bool):
    """Summed cross-entropy and its gradient for `hidden`, in one of the two layouts (one chunk)."""
    n = len(targets)
    cols = torch.arange(n)
    z = weight @ hidden.t() if vocab_major else hidden @ weight.t()
    dim = 0 if vocab_major else 1
    target_logit = (z[targets, cols] if vocab_major else z[cols, targets]).clone()
    top = z.amax(dim=dim, keepdim=True)
    z.sub_(top).exp_()
    norm = z.sum(dim=dim, keepdim=True)
    z.div_(norm)
    loss = (top.flatten() + norm.flatten().log() - target_logit).sum()
    if vocab_major:
        z[targets, cols] -= 1.0
        return loss, (weight.t() @ z).t()
    z[cols, targets] -= 1.0
    return loss, z @ weight


def best_of(fn, *args, repeats: int = 3, **kwargs) -> float:
    fn(*args, **kwargs)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    torch.manual_seed(0)
    from gemmate_lib.config import course_config
    from gemmate_lib.models import load_model

    cfg = course_config()
    model = load_model(cfg.model.model_name, cfg.precision, quantization="none")
    weight = model.get_output_embeddings().weight.detach()
    print(f"head {tuple(weight.shape)} {weight.dtype}, {torch.get_num_threads()} threads")
    print(f"{'rows':>5} {'a) rows-major':>14} {'b) vocab-major':>15}  same result")
    for rows in (56, 160, 256):
        hidden = torch.randn(rows, weight.shape[1], dtype=weight.dtype)
        targets = torch.randint(0, weight.shape[0], (rows,))
        la, ga = softmax_grad(hidden, weight, targets, vocab_major=False)
        lb, gb = softmax_grad(hidden, weight, targets, vocab_major=True)
        same = torch.allclose(la, lb, rtol=1e-5) and torch.allclose(ga, gb, rtol=1e-4, atol=1e-6)
        a = best_of(softmax_grad, hidden, weight, targets, vocab_major=False)
        b = best_of(softmax_grad, hidden, weight, targets, vocab_major=True)
        print(f"{rows:>5} {a:>12.3f} s {b:>13.3f} s  {same}   ratio b/a: {b / a:.2f}")

    ids = torch.randint(0, weight.shape[0], (8, 22))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        one = best_of(model, input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)
        none = best_of(model, input_ids=ids, attention_mask=mask, use_cache=False,
                       logits_to_keep=torch.zeros(0, dtype=torch.long))
    print(f"model forward, 8 rows x 22 tokens: logits_to_keep=1 {one:.3f} s, empty index {none:.3f} s "
          f"(the head's 8 positions cost {one - none:.3f} s)   ratio empty/one: {none / one:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
