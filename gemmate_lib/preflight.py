"""The pre-flight check before training step 1 (03_lora_sft and the one-page notebook write it out;
`CourseSFTTrainer` runs it when `preflight: true`): the checks of docs/gemma-generations.md on one batch, as
a verdict table; a failed line stops the run with what it means and the fix. Then `GradientTripwire` checks
the first optimizer step's gradients and watches the logged gradient norm for a spike."""
from __future__ import annotations

import contextlib
import inspect
import math
import statistics
from dataclasses import dataclass

import torch
from transformers import TrainerCallback

from gemmate_lib.guard_rails.errors import GemmateError

IGNORE = -100  # the label of a token that is not trained on


class PreflightError(GemmateError, RuntimeError):
    """A pre-flight check failed: training would waste its steps (problem says which line, fix what to do)."""

    verdict = None  # the pre-flight line that stopped the run (a PreflightLine); None: the gradient tripwire


@dataclass
class PreflightLine:
    check: str  # what was checked
    ok: bool
    value: str  # what was measured
    expected: str  # what passes
    problem: str = ""  # when not ok: what it means
    fix: str = ""  # when not ok: what to do


@contextlib.contextmanager
def _mode(model, training: bool):
    """`model` in training or eval mode inside the block, its own mode again after it."""
    was_training = model.training
    model.train(training)
    try:
        yield
    finally:
        model.train(was_training)


def cache_agreement(model, input_ids: torch.Tensor, tolerance: float | None = None) -> PreflightLine:
    """The last position's logits from one pass without the cache equal those of a prefix pass plus one cached
    step (relative max difference). Tolerance: 2e-2 where every weight and 4-bit layer computes in fp32, else
    0.1 (bf16's 8-bit mantissa rounds the two paths differently; a broken path differs by far more)."""
    if tolerance is None:
        floats = {p.dtype for p in model.parameters() if p.is_floating_point()}
        floats |= {m.compute_dtype for m in model.modules() if getattr(m, "compute_dtype", None) is not None}
        tolerance = 2e-2 if floats <= {torch.float32} else 0.1
    ids = input_ids[:1]
    # eval mode: in training mode checkpointing switches the cache off and dropout differs between passes
    with _mode(model, False), torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits[0, -1].float()
        prefix = model(input_ids=ids[:, :-1], use_cache=True)
        # the cache's keyword: `past_key_values` up to transformers 5.23, `cache` from 5.24 (the old one
        # deprecated until 5.40). A wrong one fails quietly: 5.23 takes `cache=` into **kwargs, uncached. The
        # base model's forward says which it takes; one that names neither (peft's), the output's field.
        takes = inspect.signature(getattr(model, "get_base_model", lambda: model)().forward).parameters
        name = next((n for n in ("cache", "past_key_values") if n in takes),
                    "cache" if hasattr(prefix, "cache") else "past_key_values")
        step = model(input_ids=ids[:, -1:], use_cache=True, **{name: getattr(prefix, name)}).logits
    diff = float((full - step[0, -1].float()).abs().max() / full.abs().max().clamp_min(1e-6))
    return PreflightLine("logits with and without the KV cache", diff <= tolerance, f"{diff:.2g}",
                   f"<= {tolerance:g}", "the model computes differently with and without its cache: one of "
                   "the two paths is broken (Gemma 4's use_cache=False path was, transformers issue 45242), "
                   "and training uses the uncached one",
                   "upgrade transformers to the course's pin (requirements.txt) and rerun")


def _loss(model, batch: dict) -> torch.Tensor:
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels") if k in batch}
    return model(**inputs, use_cache=False).loss.float()


def checkpointing_agreement(model, batch: dict, tolerance: float = 1e-3) -> PreflightLine:
    """The training-mode loss equals itself with gradient checkpointing on (same seed and batch)."""
    base = getattr(model, "get_base_model", lambda: model)()
    was_on = base.is_activation_checkpointing  # transformers 5.23's names (gradient_checkpointing_* before)
    switch = lambda on: base.activation_checkpointing_enable({"use_reentrant": False}) if on else \
        base.activation_checkpointing_disable()  # the kwargs, positional
    losses = []
    with _mode(model, True):
        try:
            for on in (False, True):
                switch(on)
                torch.manual_seed(0)
                with torch.enable_grad():
                    losses.append(float(_loss(model, batch).detach()))
        finally:
            switch(was_on)
    diff = abs(losses[0] - losses[1]) / max(abs(losses[0]), 1e-6)
    return PreflightLine("loss with gradient checkpointing on", diff <= tolerance, f"{diff:.2g}",
                   f"<= {tolerance:g}", "recomputing activations in the backward pass gives another loss: "
                   "checkpointing would train a different model than the one evaluated",
                   "set gradient_checkpointing=False and rerun")


def initial_loss(model, batch: dict, max_share: float = 0.8) -> PreflightLine:
    """The loss before training is below `max_share` x ln(vocabulary size), chance's loss."""
    with _mode(model, False), torch.no_grad():
        loss = float(_loss(model, batch))
    vocab = model.get_output_embeddings().weight.shape[0]
    chance = math.log(vocab)
    return PreflightLine("loss at initialisation", math.isfinite(loss) and loss <= max_share * chance,
                   f"{loss:.2f}", f"<= {max_share:g} x ln({vocab}) = {max_share * chance:.2f}",
                   "the base predicts no better than chance: its weights, dtype or attention path are broken "
                   "(a loss of 13-16 is not normal, whatever a guide says)",
                   "check model_name and dtype (Gemma 3 and 4 need fp32 on a T4), and the transformers pin")


def label_mask(batch: dict, end_ids: list[int], min_share: float = 0.05) -> list[PreflightLine]:
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
        PreflightLine("share of labelled tokens", share >= min_share, f"{share:.0%}", f">= {min_share:.0%}",
                "almost nothing is trained on", "check the completion/assistant mask of the data"),
        PreflightLine("end token inside the mask", without_end == 0, f"{rows - without_end} of {rows} rows",
                f"all {rows} rows", "rows whose end token (<eos>, <end_of_turn> or <turn|>) is not labelled: "
                "the model never learns to stop and runs on at generation time",
                "end each text with the tokenizer's EOS (the course does), and for chats use a training "
                "template whose {% generation %} block holds the turn end "
                "(generations.training_chat_template)"),
        PreflightLine("no row all masked", empty == 0, f"{empty} of {rows} rows", "0",
                "rows with no labelled token: truncation cut the answer off, or the mask is wrong",
                "raise max_length, or check the assistant/completion mask"),
    ]


def preflight(model, batch: dict, end_ids: list[int], *, max_share: float = 0.8) -> list[PreflightLine]:
    """All checks on one training batch (input_ids, attention_mask, labels); prints the table, and raises a
    PreflightError naming the first failed line (its `verdict`), else returns the lines.
    A batch that labels no token is named by its label line: its loss is NaN, which fails the lines above."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    first = batch["input_ids"][:1]
    length = int(batch.get("attention_mask", torch.ones_like(first))[0].sum())
    verdicts = [cache_agreement(model, first[:, :max(length, 2)]), checkpointing_agreement(model, batch),
                initial_loss(model, batch, max_share), *label_mask(batch, end_ids)]
    rows = [("check", "value", "expected", "verdict")]
    rows += [(v.check, v.value, v.expected, "ok" if v.ok else "FAIL") for v in verdicts]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print("\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows))
    failed = [v for v in verdicts if not v.ok]
    if failed:
        v = failed[0]
        if not bool((batch["labels"] != IGNORE).any()):  # every label -100: the cause of any NaN above
            v = next((f for f in failed if f.check == "share of labelled tokens"), v)
        error = PreflightError(f"pre-flight check failed: {v.check} is {v.value} (expected {v.expected}): "
                               f"{v.problem}", v.fix)
        error.verdict = v
        raise error
    return verdicts


MAX_SKIPPED = 10  # fp16: steps the gradient scaler may skip in a row before the run counts as overflowing
SPIKE_FACTOR = 10.0  # a logged gradient norm over this x the median of those before it is a spike
SPIKE_HISTORY = 5  # judged once this many are in; Gemma 4 LoRA's spikes (transformers 45676) are 10-1000x
SPIKE_FIX = ("lower the learning rate and clip gradients (max_grad_norm=1.0); Gemma 4 LoRA shows such spikes "
             "(transformers issue 45676)")


class GradientTripwire(TrainerCallback):
    """After the first optimizer step (the first that fp16's scaler takes), every LoRA module got a finite
    gradient and every lora_B (zero at start) a non-zero one, else the run stops naming the modules: a mask
    that labels nothing, or gradients cut off before the adapter, train nothing while the loss looks normal.
    Then the first spike of the logged gradient norm is named once, in `spike`; training goes on."""

    def __init__(self):
        self.skipped = 0  # steps the fp16 gradient scaler skipped before the check
        self.passed: bool | None = None  # None until the check ran
        self._seen: list[tuple[str, bool, bool]] | None = None
        self._grads: dict[tuple[str, str], tuple[bool, bool]] = {}  # (module, weight): (finite, non-zero)
        self._hooks: list = []
        self._scale: float | None = None  # fp16's loss scale before the step
        self.spike: tuple[int, float, float] | None = None  # the first spike: (step, norm, median so far)
        self._norms: list[float] = []  # the finite gradient norms logged so far

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        """Watch each LoRA weight's gradient as backward leaves it, before clipping (which spreads one
        module's NaN over every module)."""
        if self.passed is None and model is not None and not self._hooks:
            for module, weight, param in lora_weights(model):
                self._hooks.append(param.register_post_accumulate_grad_hook(
                    lambda p, key=(module, weight): self._grads.__setitem__(key, grad_state(p.grad))))

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        """Sum up the gradients this step collected (all its micro-batches), and fp16's loss scale."""
        if self.passed is None and model is not None:
            self._seen = lora_gradients(model, self._grads if self._hooks else None)
            self._grads = {}
            scaler = getattr(optimizer, "scaler", None)
            self._scale = scaler.get_scale() if scaler is not None else None

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        """Judge the gradients read before this step, unless the fp16 scaler skipped it."""
        if self.passed is not None or self._seen is None:
            return
        step, seen, self._seen = state.global_step + 1, self._seen, None
        # fp16's scaler skipped the step: accelerate says so, except for an optimizer that skips inside its
        # own step (fused AdamW, transformers' default), where only the scale it lowered shows it
        scaler = getattr(optimizer, "scaler", None)
        lowered = scaler is not None and self._scale is not None and scaler.get_scale() < self._scale
        if getattr(optimizer, "step_was_skipped", False) or lowered:
            self.skipped += 1
            if self.skipped == 1:
                print(f"gradient tripwire: step {step} skipped by fp16's gradient scaler (inf/NaN gradients "
                      "at its starting scale, which it now lowers): normal in the first steps, while a run "
                      "whose steps keep being skipped past the first few is overflowing; the check waits for "
                      "the first step the scaler takes")
            if self.skipped >= MAX_SKIPPED:
                self._stop(False)
                raise PreflightError(
                    f"gradient tripwire: fp16's gradient scaler skipped the first {self.skipped} steps "
                    "(inf/NaN gradients at every scale it tried): the run overflows fp16 and trains nothing",
                    "Gemma 3 and 4 overflow fp16: compute in fp32 on a T4 (the course's dtype rule); for "
                    "Gemma 1 lower the learning rate and check the data (the pre-flight's loss line)")
            return
        after = f"after step {step}" + (f" (the first fp16's scaler took; {self.skipped} skipped before it: "
                                        "normal)" if self.skipped else "")
        broken = [name for name, finite, _ in seen if not finite]
        zero = [name for name, finite, moved in seen if finite and not moved]
        out_of = f"of {len(seen)} LoRA modules"
        self._stop(not broken and not zero)
        if broken:
            raise PreflightError(
                f"gradient tripwire: {after}, {len(broken)} {out_of} got no finite gradient "
                f"({_names(broken)}): the loss or the forward overflowed, or a NaN reached the adapter",
                "run the pre-flight check (its loss line), keep Gemma 3 and 4 out of fp16 (fp32 on a T4), "
                "lower the learning rate, and look for a broken row in the data")
        if zero:
            raise PreflightError(
                f"gradient tripwire: {after}, {len(zero)} {out_of} got a zero (or no) lora_B gradient "
                f"({_names(zero)}): the loss reaches no adapter weight, so the run would train nothing while "
                "its loss looks normal: labels all -100 (a completion or assistant mask that labels "
                "nothing), or gradients cut off before the adapter (checkpointing without input gradients)",
                "check a batch's labels (the pre-flight's share of labelled tokens) and the completion or "
                "assistant mask; with gradient checkpointing on a 4-bit base, call "
                "prepare_model_for_kbit_training (or model.enable_input_require_grads())")
        if seen:
            print(f"gradient tripwire: {after}, all {len(seen)} LoRA modules got finite gradients, and every "
                  "lora_B a non-zero one")

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Judge the logged gradient norm (before clipping) against the median of those before it; a log
        without one (an evaluation's) or with a non-finite one (a step fp16's scaler skipped) is left out."""
        norm = (logs or {}).get("grad_norm")
        if norm is None or not math.isfinite(norm := float(norm)):
            return
        if self.spike is None and len(self._norms) >= SPIKE_HISTORY:
            median = statistics.median(self._norms)
            if median > 0 and norm > SPIKE_FACTOR * median:
                self.spike = (state.global_step, norm, median)
                clip, clipped = getattr(args, "max_grad_norm", None), ""
                if clip is not None and clip > 0:
                    clipped = f" (the Trainer clipped this step to max_grad_norm={clip:g})"
                elif clip is not None:
                    clipped = f" (and unclipped: max_grad_norm={clip:g} turns clipping off)"
                print(f"gradient tripwire: step {state.global_step}'s gradient norm {norm:.3g} is "
                      f"{norm / median:.0f} times the run's median so far ({median:.3g}): a spike with no "
                      f"NaN, so training goes on{clipped}; the fix: {SPIKE_FIX}")
        self._norms.append(norm)

    def on_train_end(self, args, state, control, **kwargs):
        self._stop(self.passed)

    def _stop(self, passed: bool | None) -> None:
        self.passed = passed
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


def lora_weights(model) -> list[tuple[str, str, torch.nn.Parameter]]:
    """(module name, weight name, weight) of every trainable LoRA weight of `model` (peft's LoraLayer)."""
    from peft.tuners.lora import LoraLayer

    return [(name.removeprefix("base_model.model."), weight, param)
            for name, module in model.named_modules() if isinstance(module, LoraLayer)
            for weight, param in module.named_parameters() if "lora_" in weight and param.requires_grad]


def grad_state(grad: torch.Tensor | None) -> tuple[bool, bool]:
    """(finite, non-zero) of one gradient; (True, False) for none."""
    return (True, False) if grad is None else (bool(torch.isfinite(grad).all()), bool(grad.ne(0).any()))


def lora_gradients(model, grads: dict | None = None) -> list[tuple[str, bool, bool]]:
    """(module name, every LoRA gradient finite, the zero-started weight's gradient non-zero) per LoRA module
    of `model`, from `grads` ({(module, weight): grad_state}, as backward left them) or else the `.grad`s."""
    modules: dict[str, list[bool]] = {}
    for module, weight, param in lora_weights(model):
        finite, moved = grads.get((module, weight), (True, False)) if grads is not None else \
            grad_state(param.grad)
        state = modules.setdefault(module, [True, False])
        state[0] &= finite
        state[1] |= moved and weight.startswith(("lora_B", "lora_embedding_A"))  # the ones peft starts at 0
    return [(module, finite, moved) for module, (finite, moved) in modules.items()]


def _names(names: list[str], shown: int = 4) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")
