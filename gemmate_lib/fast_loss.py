"""Cross-entropy through Gemma's 262k-token LM head only where it counts (03_lora_sft's "look inside", every
method of 06; docs/performance.md): labelled positions only, gradients in the forward pass, chunk by chunk in
one reused logits buffer, from the decoder output of the model's own forward (adapters and GemmaTE count)."""
from __future__ import annotations

import torch

from gemmate_lib.housekeeping.hardware import cpu_has_native_bf16

CHUNK_TOKENS = 256  # tokens per chunk: 256 x 262144 fp32 logits = 256 MiB at a time


def _softmax_chunks(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                    probs: bool):
    """Yield (start, rows, targets, per-token NLL, logits) per chunk through one reused [vocab, rows] buffer
    (the order MKL writes fastest: `make bench-head`), with `probs` softmaxed in place."""
    acc = torch.promote_types(hidden.dtype, torch.float32)  # softmax in fp32 (or fp64)
    rows, vocab = min(chunk, hidden.shape[0]), weight.shape[0]
    raw = hidden.new_empty(vocab * rows, dtype=weight.dtype)  # one buffer for every chunk
    logits = raw if raw.dtype == acc else raw.new_empty(raw.shape, dtype=acc)
    for start in range(0, hidden.shape[0], chunk):
        h, t = hidden[start:start + chunk].to(weight.dtype), targets[start:start + chunk]
        n = len(t)
        out, z = raw[:vocab * n].view(vocab, n), logits[:vocab * n].view(vocab, n)  # contiguous chunks
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
    """Summed cross-entropy of `hidden @ weight.T` against `targets`, with gradients for `hidden` and for
    `weight` if it trains."""

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
                probs[t, torch.arange(len(t), device=t.device)] -= 1.0  # softmax - one_hot = dloss/dlogits
                probs = probs if probs.dtype == weight.dtype else probs.to(weight.dtype)  # [vocab, rows]
                if want_hidden:
                    grad_hidden[start:start + len(t)] = (weight.t() @ probs).t().to(hidden.dtype)
                if want_weight:
                    grad_weight.addmm_(probs.to(acc), h.to(acc))
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        scaled = [None if grad is None else grad * grad_output.to(grad.dtype) for grad in ctx.saved_tensors]
        return *scaled, None, None


@torch.no_grad()
def token_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = CHUNK_TOKENS):
    """Per-token cross-entropy of `hidden @ weight.T` against `targets`, no gradients (held-out losses). A
    bf16 head on a CPU without native bf16 (the smoke run's GPU profile) multiplies in fp32: about 5x faster
    there than its bf16 matmul, and the logits skip one rounding before the fp32 softmax."""
    if weight.dtype == torch.bfloat16 and weight.device.type == "cpu" and not cpu_has_native_bf16():
        weight = weight.float()
    out = [nll for _, _, _, nll, _ in _softmax_chunks(hidden, weight, targets, chunk, probs=False)]
    acc = torch.promote_types(hidden.dtype, torch.float32)
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=acc)


def _base(model):
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def final_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The decoder's final-norm hidden states of the real tokens, [batch, seq, hidden], from `model`'s own
    forward with the LM head on no position (prompt tuning's virtual tokens cut off)."""
    no_position = torch.zeros(0, dtype=torch.long, device=input_ids.device)
    captured = []
    hook = _base(model).get_decoder().register_forward_hook(lambda module, args, out: captured.append(out[0]))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=no_position)
    finally:
        hook.remove()
    return captured[-1][:, -input_ids.shape[1]:]


def output_weight(model) -> torch.Tensor:
    """The LM head's weight (tied to the input embeddings in Gemma)."""
    return _base(model).get_output_embeddings().weight


def causal_lm_loss(model, input_ids, attention_mask, labels, num_items_in_batch=None):
    """Next-token loss of a (PEFT-wrapped) causal LM, the LM head on labelled positions only: the model's own
    loss (mean, or sum / num_items_in_batch) up to rounding; under prompt tuning the first real token is never
    a target, as for every other method."""
    hidden = final_hidden(model, input_ids, attention_mask)
    shift_labels = labels[:, 1:]
    mask = shift_labels != -100
    total = LinearCrossEntropy.apply(hidden[:, :-1][mask], output_weight(model), shift_labels[mask])
    count = mask.sum() if num_items_in_batch is None else num_items_in_batch
    return total / torch.as_tensor(count, device=total.device).clamp(min=1)
