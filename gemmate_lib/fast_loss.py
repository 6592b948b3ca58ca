"""Cross-entropy through Gemma's 262k-token LM head, only where it counts.

Taught in 03_lora_sft ("look inside" cell) and measured in benchmarks/sft_throughput.py.
The LM head of Gemma 3 270M is ~60% of a LoRA step's FLOPs, and full logits for
1k tokens take ~1 GB in fp32. Two savings, both exact:

1. Only positions with a label (not padding) go through the LM head.
2. The head weights are frozen (tied to the embeddings), so the only gradient it
   needs is the one for the hidden states. `LinearCrossEntropy` computes it during
   the forward pass, chunk by chunk, and keeps just that [tokens, hidden] matrix:
   two matmuls per token instead of the three of a recompute-in-backward scheme,
   and never more than one chunk of logits in memory.
"""
from __future__ import annotations

import torch

CHUNK_TOKENS = 256  # tokens per chunk: 256 x 262144 fp32 logits = 256 MiB at a time


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T` against `targets`; gradient for `hidden` only."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = CHUNK_TOKENS):
        need_grad = ctx.needs_input_grad[0]
        total = hidden.new_zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32))
        grad_hidden = torch.empty_like(hidden) if need_grad else None
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start:start + chunk]
            t = targets[start:start + chunk]
            logits = h @ weight.t()  # [n, V]
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # softmax in fp32 (or fp64)
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if need_grad:
                probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place
                probs[torch.arange(len(t)), t] -= 1.0  # d loss / d logits = softmax - one_hot
                grad_hidden[start:start + chunk] = (probs.to(weight.dtype) @ weight).to(hidden.dtype)
        ctx.save_for_backward(grad_hidden if need_grad else None)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        (grad_hidden,) = ctx.saved_tensors
        if grad_hidden is None:
            return None, None, None, None
        return grad_hidden * grad_output.to(grad_hidden.dtype), None, None, None


def causal_lm_loss(model, input_ids, attention_mask, labels, num_items_in_batch=None):
    """Next-token loss of a (PEFT-wrapped) causal LM, with the LM head on labelled positions only.

    Equals the model's own loss (mean over labelled tokens, or sum / num_items_in_batch
    under gradient accumulation) up to float rounding; tests/test_training.py checks it.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = base.get_decoder() if hasattr(base, "get_decoder") else base.model
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    shift_labels = labels[:, 1:]
    mask = shift_labels != -100
    picked = hidden[:, :-1][mask]  # [n_labelled, hidden]
    weight = base.get_output_embeddings().weight
    total = LinearCrossEntropy.apply(picked, weight, shift_labels[mask])
    count = mask.sum() if num_items_in_batch is None else num_items_in_batch
    return total / torch.as_tensor(count, device=total.device).clamp(min=1)
