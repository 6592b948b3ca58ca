"""The pre-flight check before training step 1 (the one-page notebook and 03_lora_sft write it out;
`CourseSFTTrainer` runs it when `preflight: true`): one batch, the checks of docs/gemma-generations.md
("Pre-flight check"), a verdict table; a failed line stops the run with what it means and the fix."""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch

from gemmate_lib.housekeeping.errors import GemmateError

IGNORE = -100  # the label of a token that is not trained on


class PreflightError(GemmateError, RuntimeError):
    """A pre-flight check failed: training would waste its steps (problem says which line, fix what to do)."""


@dataclass
class Verdict:
    check: str  # what was checked
    ok: bool
    value: str  # what was measured
    expected: str  # what passes
    problem: str = ""  # when not ok: what it means
    fix: str = ""  # when not ok: what to do


def cache_keyword(model, output) -> str:
    """The name under which `model` takes its KV cache back and `output` (one of its forward's outputs) holds
    it: `past_key_values` up to transformers 5.23, `cache` from 5.24 (the old name still works there, with a
    deprecation warning, until 5.40). A wrong name fails quietly: 5.23's forward takes an unknown `cache=`
    into its **kwargs and runs without the cache."""
    # the base model's forward says which name it takes (peft's wrapper and the course's take **kwargs)
    base = getattr(model, "get_base_model", lambda: model)()
    takes = inspect.signature(base.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in takes:
            return name
    # a forward that names neither: the name of the output's field (5.24's outputs have `cache`)
    return "cache" if hasattr(output, "cache") else "past_key_values"


def cache_agreement(model, input_ids: torch.Tensor, tolerance: float | None = None) -> Verdict:
    """The last position's logits from one pass without the cache equal those of a prefix pass plus one cached
    step (relative max difference). The tolerance: 2e-2 where every weight and 4-bit layer computes in fp32,
    else 0.1: bf16 keeps 8 bits of mantissa, and the two paths round differently (on an H200 the embedded
    Gemma 3 in NF4 and bf16 measured 0.021); a broken path differs by far more. The one-page recipe measures
    another quantity, the change of the top token's log-probability (nats) at every position, so its limits
    (1e-3 in fp32, 0.1 in 16 bits) are on another scale."""
    if tolerance is None:
        floats = {p.dtype for p in model.parameters() if p.is_floating_point()}
        floats |= {m.compute_dtype for m in model.modules() if getattr(m, "compute_dtype", None) is not None}
        tolerance = 2e-2 if floats <= {torch.float32} else 0.1
    ids = input_ids[:1]
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits[0, -1].float()
        prefix = model(input_ids=ids[:, :-1], use_cache=True)
        name = cache_keyword(model, prefix)
        step = model(input_ids=ids[:, -1:], use_cache=True, **{name: getattr(prefix, name)}).logits
    diff = float((full - step[0, -1].float()).abs().max() / full.abs().max().clamp_min(1e-6))
    return Verdict("logits with and without the KV cache", diff <= tolerance, f"{diff:.2g}",
                   f"<= {tolerance:g}", "the model computes differently with and without its cache: one of "
                   "the two paths is broken (Gemma 4's use_cache=False path was, transformers issue 45242), "
                   "and training uses the uncached one",
                   "upgrade transformers to the course's pin (requirements.txt) and rerun")


def _loss(model, batch: dict) -> torch.Tensor:
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels") if k in batch}
    return model(**inputs, use_cache=False).loss.float()


def checkpointing_agreement(model, batch: dict, tolerance: float = 1e-3) -> Verdict:
    """The training-mode loss equals itself with gradient checkpointing on (same seed and batch)."""
    base = getattr(model, "get_base_model", lambda: model)()
    was_on, was_training = getattr(base, "is_gradient_checkpointing", False), model.training
    # transformers 5.23 names it activation checkpointing; gradient_checkpointing_* before (deprecated since)
    enable = getattr(base, "activation_checkpointing_enable", None) or base.gradient_checkpointing_enable
    disable = getattr(base, "activation_checkpointing_disable", None) or base.gradient_checkpointing_disable
    # the kwargs, positional under either name
    switch = lambda on: enable({"use_reentrant": False}) if on else disable()
    model.train()
    try:
        losses = []
        for on in (False, True):
            switch(on)
            torch.manual_seed(0)
            with torch.enable_grad():
                losses.append(float(_loss(model, batch).detach()))
    finally:
        switch(was_on)
        model.train(was_training)
    diff = abs(losses[0] - losses[1]) / max(abs(losses[0]), 1e-6)
    return Verdict("loss with gradient checkpointing on", diff <= tolerance, f"{diff:.2g}",
                   f"<= {tolerance:g}", "recomputing activations in the backward pass gives another loss: "
                   "checkpointing would train a different model than the one evaluated",
                   "set gradient_checkpointing=False and rerun")


def initial_loss(model, batch: dict, max_share: float = 0.8) -> Verdict:
    """The loss before training is below `max_share` x ln(vocabulary size), chance's loss."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        loss = float(_loss(model, batch))
    model.train(was_training)
    vocab = model.get_output_embeddings().weight.shape[0]
    chance = math.log(vocab)
    ok = math.isfinite(loss) and loss <= max_share * chance
    return Verdict("loss at initialisation", ok, f"{loss:.2f}",
                   f"<= {max_share:g} x ln({vocab}) = {max_share * chance:.2f}",
                   "the base predicts no better than chance: its weights, dtype or attention path are broken "
                   "(a loss of 13-16 is not normal, whatever a guide says)",
                   "check model_name and dtype (Gemma 3 and 4 need fp32 on a T4), and the transformers pin")


def label_mask(batch: dict, end_ids: list[int], min_share: float = 0.05) -> list[Verdict]:
    """Three lines on the labels: the share of labelled tokens, an end token labelled in every row, no row all
    masked."""
    labels, mask = batch["labels"], batch.get("attention_mask", torch.ones_like(batch["labels"]))
    labelled = labels != IGNORE
    share = float(labelled.sum() / mask.sum().clamp_min(1))
    empty = int((labelled.sum(dim=1) == 0).sum())
    ends = torch.isin(labels, torch.tensor(end_ids, device=labels.device)) & labelled
    without_end = int((ends.sum(dim=1) == 0).sum())
    rows = labels.shape[0]
    return [
        Verdict("share of labelled tokens", share >= min_share, f"{share:.0%}", f">= {min_share:.0%}",
                "almost nothing is trained on", "check the completion/assistant mask of the data"),
        Verdict("end token inside the mask", without_end == 0, f"{rows - without_end} of {rows} rows",
                f"all {rows} rows", "rows whose end token (<eos>, <end_of_turn> or <turn|>) is not labelled: "
                "the model never learns to stop and runs on at generation time",
                "end each text with the tokenizer's EOS (the course does), and for chats use a training "
                "template whose {% generation %} block holds the turn end "
                "(generations.training_chat_template)"),
        Verdict("no row all masked", empty == 0, f"{empty} of {rows} rows", "0",
                "rows with no labelled token: truncation cut the answer off, or the mask is wrong",
                "raise max_length, or check the assistant/completion mask"),
    ]


def verdict_table(verdicts: list[Verdict]) -> str:
    """The verdicts as an aligned text table."""
    rows = [("check", "value", "expected", "verdict")]
    rows += [(v.check, v.value, v.expected, "ok" if v.ok else "FAIL") for v in verdicts]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def preflight(model, batch: dict, end_ids: list[int], *, max_share: float = 0.8, raise_on_fail: bool = True,
              quiet: bool = False) -> list[Verdict]:
    """All checks on one training batch (input_ids, attention_mask, labels); prints the table unless `quiet`,
    and raises a PreflightError naming the first failed line unless `raise_on_fail` is False."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    first = batch["input_ids"][:1]
    length = int(batch.get("attention_mask", torch.ones_like(first))[0].sum())
    verdicts = [cache_agreement(model, first[:, :max(length, 2)]), checkpointing_agreement(model, batch),
                initial_loss(model, batch, max_share), *label_mask(batch, end_ids)]
    if not quiet:
        print(verdict_table(verdicts))
    failed = [v for v in verdicts if not v.ok]
    if failed and raise_on_fail:
        v = failed[0]
        raise PreflightError(f"pre-flight check failed: {v.check} is {v.value} (expected {v.expected}): "
                             f"{v.problem}", v.fix)
    return verdicts
