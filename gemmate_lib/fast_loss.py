"""Cross-entropy through Gemma's 262k-token LM head only where it counts (03_lora_sft's "look inside", every
method of 06; docs/performance.md): labelled positions only, gradients in the forward pass, chunk by chunk in
one reused logits buffer, from the decoder output of the model's own forward (adapters and GemmaTE count).

torch 2.13 ships the same idea as `torch.nn.functional.linear_cross_entropy`; benchmarks/torch_loss.py runs
training through it instead, to compare the two (docs/performance.md, "The course's loss against torch's")."""
from __future__ import annotations

import torch

from gemmate_lib.hardware import cpu_has_native_bf16

CHUNK_TOKENS = 256  # tokens per chunk: 256 x 262144 fp32 logits = 256 MiB at a time
LOWP_SOFTMAX = True  # a bf16 head's training softmax on its bf16 product (in _softmax_chunks); False: fp32


def _softmax_chunks(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                    probs: bool, lowp: bool | None = None, softcap: float | None = None):
    """Yield (start, rows, targets, per-token NLL, logits as [vocab, rows], one_hot_done) per chunk through
    one reused buffer (MKL writes [vocab, rows] fastest: `make bench-head`), with `probs` softmaxed in place.
    `lowp` (default: a bf16 head, LOWP_SOFTMAX): the softmax runs on the bf16 product itself, no fp32 copy of
    the logits, the normalizer summed in fp32; each target's own probability, from which its gradient
    subtracts one, and the loss in fp32 (in bf16, 1 - p of a likely token would lose most of its digits)."""
    acc = torch.promote_types(hidden.dtype, torch.float32)  # softmax in fp32 (or fp64)
    lowp = LOWP_SOFTMAX and weight.dtype == torch.bfloat16 if lowp is None else lowp
    if softcap is not None and (probs or lowp):
        raise ValueError("a logit cap is applied to held-out losses only (training with one uses the model's "
                         "own logits: causal_lm_loss)")
    rows, vocab = min(chunk, hidden.shape[0]), weight.shape[0]
    raw = hidden.new_empty(vocab * rows, dtype=weight.dtype)  # one buffer for every chunk
    # lowp: the bf16 product laid out [rows, vocab] (a bf16 reduction along the contiguous vocabulary is
    # several times faster than across it: `make bench-head`), yielded as [vocab, rows] views of it
    logits = raw if raw.dtype == acc or lowp else raw.new_empty(raw.shape, dtype=acc)
    for start in range(0, hidden.shape[0], chunk):
        h, t = hidden[start:start + chunk].to(weight.dtype), targets[start:start + chunk]
        n = len(t)
        if lowp:
            z = raw[:vocab * n].view(n, vocab)
            torch.mm(h, weight.t(), out=z)
            at = (torch.arange(n, device=t.device), t)
            target_logit = z[at].float()
            top = z.amax(dim=1, keepdim=True)
            z.sub_(top).exp_()
            norm = z.sum(dim=1, dtype=torch.float32)
            nll = top.squeeze(1).float() + norm.log() - target_logit
            if probs:  # dloss/dlogits: softmax - one_hot, the target's entry from fp32 (p - 1, then rounded)
                z.div_(norm.to(z.dtype).unsqueeze(1))
                z[at] = torch.expm1(-nll).to(z.dtype)
            yield start, h, t, nll, z.t(), True
            continue
        out, z = raw[:vocab * n].view(vocab, n), logits[:vocab * n].view(vocab, n)  # contiguous chunks
        torch.mm(weight, h.t(), out=out)
        if z.data_ptr() != out.data_ptr():
            z.copy_(out)
        if softcap is not None:  # the model's own cap: cap * tanh(logits / cap)
            z.div_(softcap).tanh_().mul_(softcap)
        target_logit = z[t, torch.arange(n, device=t.device)].clone()
        top = z.amax(dim=0)
        z.sub_(top).exp_()
        norm = z.sum(dim=0)
        if probs:
            z.div_(norm)
        yield start, h, t, top + norm.log() - target_logit, z, False


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
        for start, h, t, nll, probs, done in _softmax_chunks(hidden, weight, targets, chunk,
                                                             want_hidden or want_weight):
            total += nll.sum()
            if want_hidden or want_weight:
                if not done:  # softmax - one_hot = dloss/dlogits
                    probs[t, torch.arange(len(t), device=t.device)] -= 1.0
                probs = probs if probs.dtype == weight.dtype else probs.to(weight.dtype)  # [vocab, rows]
                if want_hidden:
                    # [rows, hidden]; the bf16 path keeps its logits [rows, vocab]: multiplied as they lie
                    product = probs.t() @ weight if done else (weight.t() @ probs).t()
                    grad_hidden[start:start + len(t)] = product.to(hidden.dtype)
                if want_weight:
                    grad_weight.addmm_(probs.to(acc), h.to(acc))
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        scaled = [None if grad is None else grad * grad_output.to(grad.dtype) for grad in ctx.saved_tensors]
        return *scaled, None, None


@torch.no_grad()
def token_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = CHUNK_TOKENS,
              softcap: float | None = None):
    """Per-token cross-entropy of `hidden @ weight.T` (capped at `softcap` as the model caps them: Gemma 4's
    30) against `targets`, no gradients (held-out losses). A bf16 head on a CPU without native bf16 (the smoke
    run's GPU profile) multiplies in fp32: about 5x faster there than its bf16 matmul, and the logits skip one
    rounding before the fp32 softmax."""
    if weight.dtype == torch.bfloat16 and weight.device.type == "cpu" and not cpu_has_native_bf16():
        weight = weight.float()
    # held-out losses keep the fp32 softmax: no gradient to speed up, and every digit of the figure reported
    chunks = _softmax_chunks(hidden, weight, targets, chunk, probs=False, lowp=False, softcap=softcap)
    out = [nll for _, _, _, nll, _, _ in chunks]
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


def logit_softcap(model) -> float | None:
    """The cap the model puts on its logits (`cap * tanh(logits / cap)`; Gemma 4: 30.0 in its text config,
    Gemma 1 and 3: none), read through the text config so that a composite model's is found."""
    from gemmate_lib.generations import text_setting

    return text_setting(_base(model), "final_logit_softcapping")


def output_weight(model) -> torch.Tensor:
    """The LM head's weight (tied to the input embeddings in Gemma)."""
    return _base(model).get_output_embeddings().weight


def summed_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """LinearCrossEntropy in one call: where benchmarks/torch_loss.py swaps in torch's own for an arm."""
    return LinearCrossEntropy.apply(hidden, weight, targets)


def causal_lm_loss(model, input_ids, attention_mask, labels, num_items_in_batch=None):
    """Next-token loss of a (PEFT-wrapped) causal LM, the LM head on labelled positions only: the model's own
    loss (mean, or sum / num_items_in_batch) up to rounding; under prompt tuning the first real token is never
    a target, as for every other method."""
    shift_labels = labels[:, 1:]
    mask = shift_labels != -100
    if logit_softcap(model) is None:
        hidden = final_hidden(model, input_ids, attention_mask)
        total = summed_cross_entropy(hidden[:, :-1][mask], output_weight(model), shift_labels[mask])
    else:  # a capped model (Gemma 4): its own logits carry the cap, which the fused head would skip
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        logits = logits[:, -input_ids.shape[1]:][:, :-1][mask]  # prompt tuning's virtual tokens cut off
        total = torch.nn.functional.cross_entropy(logits.float(), shift_labels[mask], reduction="sum")
    count = mask.sum() if num_items_in_batch is None else num_items_in_batch
    return total / torch.as_tensor(count, device=total.device).clamp(min=1)
