"""torch's own fused LM head and loss, `torch.nn.functional.linear_cross_entropy`, in the settings the
benchmarks compare with the course's `gemmate_lib.fast_loss` (docs/performance.md, "The course's loss against
torch's"). Not the course's: the library trains with its own `LinearCrossEntropy`; `use(impl)` swaps
`fast_loss.summed_cross_entropy` for one of these in a benchmark's process, so that an arm trains on the one
path the course takes (`causal_lm_loss`) with torch's head instead."""
from __future__ import annotations

import torch

from gemmate_lib import fast_loss

# keyword arguments of LinearCrossEntropyOptions, None for torch's reference path. On a CPU torch's own policy
# (`LinearCrossEntropyOptions()`, "auto") multiplies a bf16 head in fp32 (it takes bf16 matrix products on a
# CPU for emulated) and sizes chunks so that a chunk's logits are as large as the input: for Gemma's
# 262,144 x 640 head, one row per 410 tokens rounded up to a power of two, so 1-4 rows a chunk at the course's
# batches (fp32: half that).
TORCH_LOSSES: dict[str, dict | None] = {
    "torch": {},  # torch's own policy: LinearCrossEntropyOptions(), chunk size and precision "auto"
    "torch_chunk256": dict(batch_chunk_size=fast_loss.CHUNK_TOKENS),  # the course's chunk, torch's precision
    # the course's chunk with the product and softmax in the input's dtype: bf16 matrix units on a bf16 CPU,
    # and a bf16 softmax and loss sum (the course's loss keeps those in fp32); the same as the above in fp32
    "torch_chunk256_lowp": dict(batch_chunk_size=fast_loss.CHUNK_TOKENS, acc_dtype="input"),
    "torch_reference": None,  # options=None: cross_entropy(linear(...)), the whole [tokens, vocab] logits
}
LOSS_IMPLS = ("course", *TORCH_LOSSES)
COURSE = fast_loss.summed_cross_entropy  # the course's own, as the library defines it


def torch_options(impl: str, dtype: torch.dtype):
    """The LinearCrossEntropyOptions of one of TORCH_LOSSES for inputs of `dtype` (None: torch's reference
    path)."""
    from torch.nn import LinearCrossEntropyOptions

    if impl not in TORCH_LOSSES:
        raise ValueError(f"loss implementation {impl!r} is not known: use one of {', '.join(LOSS_IMPLS)}")
    setting = TORCH_LOSSES[impl]
    if setting is None:
        return None
    if setting.get("acc_dtype") == "input":
        setting = {**setting, "acc_dtype": dtype}
    return LinearCrossEntropyOptions(**setting)


def summed_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         impl: str = "course") -> torch.Tensor:
    """Summed cross-entropy of `hidden @ weight.T` against `targets` by `impl` (LOSS_IMPLS), with gradients
    for `hidden` and for `weight` where they require them. torch's chunked path, like the course's, computes
    the weight's gradient only when the weight requires grad. For bf16 inputs the course's returns the loss
    in fp32, torch's in bf16, summed chunk by chunk in bf16 (about 2% off with torch's one-row chunks); the
    gradients do not depend on that sum."""
    if impl == "course":
        return COURSE(hidden, weight, targets)
    options = torch_options(impl, hidden.dtype)
    with torch.profiler.record_function(f"linear_cross_entropy[{impl}]"):  # the profile's LM head group
        return torch.nn.functional.linear_cross_entropy(hidden.to(weight.dtype), weight, targets,
                                                        reduction="sum", options=options)


def use(impl: str) -> None:
    """Train this process's `causal_lm_loss` through `impl` (LOSS_IMPLS): one benchmark arm per process."""
    if impl not in LOSS_IMPLS:
        raise ValueError(f"loss implementation {impl!r} is not known: use one of {', '.join(LOSS_IMPLS)}")
    def through(hidden, weight, targets):
        return summed_cross_entropy(hidden, weight, targets, impl)

    fast_loss.summed_cross_entropy = COURSE if impl == "course" else through
