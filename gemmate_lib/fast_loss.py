"""Cross-entropy through Gemma's 262k-token LM head, only where it counts: the head is most of a LoRA step's
FLOPs. Taught in 03_lora_sft ("look inside" cell), used by every method of 06_compare_methods. Three savings,
all exact: (1) only labelled positions (not padding, not a masked prompt) go through the head; (2) gradients
are computed in the forward pass chunk by chunk, for the head weight only when it trains, one reused buffer of
logits turned into the softmax in place (fresh logits per chunk cost a CPU as much as the arithmetic); (3) the
model's own forward keeps no logits (`logits_to_keep` an empty index) and its output is taken with a hook, so
whatever the adapter does inside forward (LoRA, IA3, prompt or prefix tuning, GemmaTE) is included."""
from __future__ import annotations

import torch

CHUNK_TOKENS = 256  # tokens per chunk: 256 x 262144 fp32 logits = 256 MiB at a time


def _softmax_chunks(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                    probs: bool):
    """Yield (start, rows, targets, per-token NLL, logits buffer) chunk by chunk, through one reused buffer.
    The buffer is laid out vocabulary-major, [vocab, rows]: the softmax and gradient then read memory in the
    order MKL's CPU kernels write it, which is faster for chunks of a few hundred rows (`make bench-head`
    compares both layouts). With `probs` the buffer holds the chunk's softmax (computed in place, over dim 0)
    when yielded."""
    acc = torch.promote_types(hidden.dtype, torch.float32)  # softmax in fp32 (or fp64)
    rows, vocab = min(chunk, hidden.shape[0]), weight.shape[0]
    raw = hidden.new_empty(vocab * rows, dtype=weight.dtype)  # one buffer for every chunk
    logits = raw if raw.dtype == acc else raw.new_empty(raw.shape, dtype=acc)
    for start in range(0, hidden.shape[0], chunk):
        h, t = hidden[start:start + chunk].to(weight.dtype), targets[start:start + chunk]
        n = len(t)
        # contiguous, also the last chunk
        out, z = raw[:vocab * n].view(vocab, n), logits[:vocab * n].view(vocab, n)
        torch.mm(weight, h.t(), out=out)
        if z.data_ptr() != out.data_ptr():
            z.copy_(out)
        target_logit = z[t, torch.arange(n, device=t.device)].clone()
        top = z.amax(dim=0)
        z.sub_(top).exp_()
        norm = z.sum(dim=0)
        if probs:
            z.div_(norm)
        yield start, h, t, top + norm.log() - target_logit, z


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T` against `targets`; gradients for `hidden` (and `weight` if
    it trains)."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk: int = CHUNK_TOKENS):
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        acc = torch.promote_types(hidden.dtype, torch.float32)
        total = hidden.new_zeros((), dtype=acc)
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=acc) if want_weight else None
        for start, h, t, nll, probs in _softmax_chunks(hidden, weight, targets, chunk,
                                                       want_hidden or want_weight):
            total += nll.sum()
            if want_hidden or want_weight:
                # softmax - one_hot = d loss / d logits
                probs[t, torch.arange(len(t), device=t.device)] -= 1.0
                probs = probs if probs.dtype == weight.dtype else probs.to(weight.dtype)  # [vocab, rows]
                if want_hidden:
                    grad_hidden[start:start + len(t)] = (weight.t() @ probs).t().to(hidden.dtype)
                if want_weight:
                    grad_weight.addmm_(probs.to(acc), h.to(acc))
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_output.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = grad_weight * grad_output.to(grad_weight.dtype)
        return grad_hidden, grad_weight, None, None


@torch.no_grad()
def token_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = CHUNK_TOKENS):
    """Per-token cross-entropy of `hidden @ weight.T` against `targets`, without gradients (held-out losses).
    One call for a whole batch: the head's 262k x 640 weights are read once per chunk, not once per example.
    """
    out = [nll for _, _, _, nll, _ in _softmax_chunks(hidden, weight, targets, chunk, probs=False)]
    return torch.cat(out) if out else hidden.new_zeros(0,
                                                       dtype=torch.promote_types(hidden.dtype, torch.float32))


def _base(model):
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def final_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The decoder's last hidden states (after the final norm) for the real tokens, [batch, seq, hidden]. Runs
    `model`'s own forward (PEFT wrapper, GemmaTE wrapper or a plain model), so every adapter takes part; the
    LM head computes no position at all. Virtual tokens of prompt tuning come first in the decoder's output
    and are cut off here."""
    base = _base(model)
    no_position = torch.zeros(0, dtype=torch.long, device=input_ids.device)
    captured = []
    hook = base.get_decoder().register_forward_hook(lambda module, args, out: captured.append(out[0]))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=no_position)
    finally:
        hook.remove()
    return captured[-1][:, -input_ids.shape[1]:]


def output_weight(model) -> torch.Tensor:
    """The LM head's weight (tied to the input embeddings in Gemma)."""
    return _base(model).get_output_embeddings().weight


def causal_lm_loss(model, input_ids, attention_mask, labels, num_items_in_batch=None):
    """Next-token loss of a (PEFT-wrapped) causal LM, with the LM head on labelled positions only. Equals the
    model's own loss (mean over labelled tokens, or sum / num_items_in_batch under gradient accumulation) up
    to float rounding; tests/test_training.py checks it. One difference, on purpose: under prompt tuning the
    model's own loss also scores the first real token (BOS) as predicted from the virtual tokens; here, as for
    every other method, the first token is never a target."""
    hidden = final_hidden(model, input_ids, attention_mask)
    shift_labels = labels[:, 1:]
    mask = shift_labels != -100
    total = LinearCrossEntropy.apply(hidden[:, :-1][mask], output_weight(model), shift_labels[mask])
    count = mask.sum() if num_items_in_batch is None else num_items_in_batch
    return total / torch.as_tensor(count, device=total.device).clamp(min=1)
