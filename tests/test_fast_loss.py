"""The fast loss (fast_loss.py): the LM head on labelled tokens only, equal to the model's own loss."""
import re

import pytest
import torch
from tiny import ROWS

from benchmarks.torch_loss import LOSS_IMPLS, TORCH_LOSSES, summed_cross_entropy, torch_options, use
from gemmate_lib import fast_loss
from gemmate_lib.data import load_quotes
from gemmate_lib.fast_loss import CHUNK_TOKENS, LinearCrossEntropy, causal_lm_loss
from gemmate_lib.training import attach_lora

F = torch.nn.functional
# Tolerances against a float64 reference computed from the same (rounded) values: fp32 rounds the products
# and sums a little; bf16 rounds the logits (ours, torch's reference path), the probabilities fed to the
# gradient's product, the gradient itself, and in torch's case the loss to 8 significant bits.
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=1e-2, atol=4e-2)}
GEMMS = {"aten::mm", "aten::addmm", "aten::addmm_"}


def _batch(tokenizer, rows=ROWS):
    enc = tokenizer([r["text"] + tokenizer.eos_token for r in rows], return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return enc, labels


def _peft_method(name, model):
    from peft import IA3Config, PrefixTuningConfig, PromptTuningConfig, get_peft_model

    if name == "full":
        return model.train()
    config = {"prompt": PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
              "prefix": PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
              "ia3": IA3Config(task_type="CAUSAL_LM")}[name]
    torch.manual_seed(1)
    return get_peft_model(model, config).train()


@pytest.mark.parametrize("weight_trains", [False, True])
def test_linear_cross_entropy_matches_torch_in_value_and_gradient(weight_trains):
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    # trains in full fine-tuning (06)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=weight_trains)
    targets = torch.randint(0, 50, (37,))
    ours = LinearCrossEntropy.apply(hidden, weight, targets, 8)  # several chunks
    ours.backward(torch.tensor(0.5, dtype=torch.float64))
    grads_ours = [hidden.grad.clone(), weight.grad.clone() if weight_trains else None]
    hidden.grad = weight.grad = None
    ref = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, reduction="sum")
    (ref * 0.5).backward()
    assert torch.allclose(ours.double(), ref) and torch.allclose(grads_ours[0], hidden.grad)
    assert (weight.grad is None) if not weight_trains else torch.allclose(grads_ours[1], weight.grad)


@pytest.mark.parametrize("method", ["full", "prompt", "prefix", "ia3"])
def test_fast_loss_equals_the_models_own_loss_for_every_method_of_06(tiny_model, tiny_tokenizer, method):
    enc, labels = _batch(tiny_tokenizer)
    labels[:, 0] = -100  # under prompt tuning the model's own loss also scores BOS; the fast loss never does
    model = _peft_method(method, tiny_model)
    params = [p for p in model.parameters() if p.requires_grad]
    ref = model(**enc, labels=labels).loss
    ref.backward()
    ref_grads = [p.grad.clone() for p in params]
    model.zero_grad()
    ours = causal_lm_loss(model, enc["input_ids"], enc["attention_mask"], labels)
    ours.backward()
    assert torch.allclose(ours, ref, rtol=1e-5), (float(ours), float(ref))
    assert all(torch.allclose(p.grad, g, rtol=1e-4, atol=1e-7) for p, g in zip(params, ref_grads))
    if method in ("prompt", "prefix"):  # the virtual tokens matter: the loss differs from the bare model's
        with torch.no_grad(), model.disable_adapter():
            bare = causal_lm_loss(model, enc["input_ids"], enc["attention_mask"], labels)
        assert not torch.allclose(bare, ours)


def test_fast_loss_equals_the_models_own_loss_and_lora_gradients(tiny_model, tiny_tokenizer, cpu_cfg):
    enc, labels = _batch(tiny_tokenizer)
    assert (labels == -100).any()  # the batch has padding to skip
    with torch.no_grad():
        ref = tiny_model(**enc, labels=labels).loss
        ours = causal_lm_loss(tiny_model, enc["input_ids"], enc["attention_mask"], labels)
    assert torch.allclose(ours, ref, rtol=1e-5), (float(ours), float(ref))
    model = attach_lora(tiny_model, cpu_cfg)
    param = next(p for n, p in model.named_parameters() if "lora_A" in n)
    model(**enc, labels=labels).loss.backward()
    ref_grad = param.grad.clone()
    model.zero_grad()
    causal_lm_loss(model, enc["input_ids"], enc["attention_mask"], labels).backward()
    assert torch.allclose(param.grad, ref_grad, rtol=1e-4, atol=1e-7)


def test_fast_loss_equals_the_real_models_own_loss(base_model, tokenizer):
    rows = load_quotes("embedded").train[:4]
    enc, labels = _batch(tokenizer, rows)
    with torch.no_grad():
        ref = base_model(**enc, labels=labels).loss
        ours = causal_lm_loss(base_model, enc["input_ids"], enc["attention_mask"], labels)
    assert torch.allclose(ours, ref, rtol=1e-4), (float(ours), float(ref))


def test_a_bf16_head_on_a_cpu_without_native_bf16_multiplies_in_fp32(monkeypatch):
    """token_nll of a bf16 head on a CPU without native bf16 (the smoke run's GPU profile here): the fp32
    product of the same bf16 weights, ~5x faster there than the bf16 matmul; with native bf16, bf16."""
    from gemmate_lib import fast_loss

    torch.manual_seed(0)
    hidden, weight = torch.randn(40, 64).bfloat16(), torch.randn(1000, 64).bfloat16()
    targets = torch.randint(0, 1000, (40,))
    logits = hidden.float() @ weight.float().t()
    reference = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    monkeypatch.setattr(fast_loss, "cpu_has_native_bf16", lambda: False)
    assert torch.allclose(fast_loss.token_nll(hidden, weight, targets), reference, atol=1e-5)
    monkeypatch.setattr(fast_loss, "cpu_has_native_bf16", lambda: True)
    native = fast_loss.token_nll(hidden, weight, targets)  # logits rounded to bf16 before the softmax
    assert not torch.allclose(native, reference, atol=1e-5) and torch.allclose(native, reference, atol=0.5)


def _head(dtype, rows=300, vocab=50, width=16, seed=0):
    """Hand-made hidden states, head and targets, rounded to `dtype`: 300 rows are two of the course's chunks
    and several of torch's own."""
    torch.manual_seed(seed)
    hidden = torch.randn(rows, width, dtype=torch.float64).to(dtype)
    weight = torch.randn(vocab, width, dtype=torch.float64).to(dtype)
    return hidden, weight, torch.randint(0, vocab, (rows,))


def _loss_and_grad(fn, hidden, weight, targets, weight_trains=False):
    hidden = hidden.clone().requires_grad_()
    weight = weight.clone().requires_grad_(weight_trains)
    loss = fn(hidden, weight, targets)
    loss.backward()
    return loss, hidden.grad, weight.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", list(TORCH_LOSSES))
def test_torchs_linear_cross_entropy_equals_ours_and_the_plain_loss(impl, dtype):
    """Summed and mean loss and the input gradient of each torch setting equal the course's and
    cross_entropy(linear(...)) computed in float64 from the same values."""
    hidden, weight, targets = _head(dtype)
    ref, ref_grad, _ = _loss_and_grad(lambda h, w, t: F.cross_entropy(h @ w.t(), t, reduction="sum"),
                                      hidden.double(), weight.double(), targets)
    ours, ours_grad, _ = _loss_and_grad(lambda h, w, t: summed_cross_entropy(h, w, t, "course"),
                                        hidden, weight, targets)
    theirs, theirs_grad, _ = _loss_and_grad(lambda h, w, t: summed_cross_entropy(h, w, t, impl),
                                            hidden, weight, targets)
    assert theirs_grad.dtype == ours_grad.dtype == dtype
    for loss, grad in ((ours, ours_grad), (theirs, theirs_grad)):
        torch.testing.assert_close(loss.double(), ref.detach(), **TOL[dtype])
        torch.testing.assert_close(grad.double(), ref_grad, **TOL[dtype])
    torch.testing.assert_close(theirs.double(), ours.double(), **TOL[dtype])
    torch.testing.assert_close(theirs_grad.double(), ours_grad.double(), **TOL[dtype])
    mean = lambda h, w, t: F.linear_cross_entropy(h, w, t, reduction="mean",  # noqa: E731
                                                  options=torch_options(impl, dtype))
    theirs_mean, theirs_mean_grad, _ = _loss_and_grad(mean, hidden, weight, targets)
    torch.testing.assert_close(theirs_mean.double(), ref.detach() / len(targets), **TOL[dtype])
    torch.testing.assert_close(theirs_mean_grad.double(), ref_grad / len(targets), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", list(TORCH_LOSSES))
def test_torchs_ignored_rows_contribute_nothing(impl, dtype):
    """Rows whose target is ignore_index (-100, the masked labels) add nothing to torch's loss and get a zero
    gradient: the loss over all rows equals the loss over the kept rows alone (torch still multiplies the
    ignored rows through the head; causal_lm_loss drops them before)."""
    hidden, weight, targets = _head(dtype)
    ignored = torch.rand(len(targets), generator=torch.Generator().manual_seed(1)) < 0.3
    masked = targets.masked_fill(ignored, -100)
    options = torch_options(impl, dtype)
    every, every_grad, _ = _loss_and_grad(
        lambda h, w, t: F.linear_cross_entropy(h, w, t, reduction="sum", ignore_index=-100, options=options),
        hidden, weight, masked)
    kept, kept_grad, _ = _loss_and_grad(lambda h, w, t: summed_cross_entropy(h, w, t, impl),
                                        hidden[~ignored], weight, targets[~ignored])
    assert ignored.any() and (every_grad[ignored] == 0).all()
    torch.testing.assert_close(every.double(), kept.double(), **TOL[dtype])
    torch.testing.assert_close(every_grad[~ignored].double(), kept_grad.double(), **TOL[dtype])


@pytest.mark.parametrize("impl", LOSS_IMPLS)
def test_a_batch_without_a_labelled_token_has_zero_loss_and_gradient(impl):
    """A micro-batch whose labels are all -100 (causal_lm_loss then sends no row through the head) gives a
    zero loss that still backpropagates, in every implementation."""
    _, weight, _ = _head(torch.float32)
    hidden = torch.randn(3, weight.shape[1], requires_grad=True)
    loss = summed_cross_entropy(hidden[:0] * 2, weight, torch.zeros(0, dtype=torch.long), impl)
    loss.backward()
    assert loss.item() == 0.0 and (hidden.grad == 0).all()


def _gemms(fn, *args) -> int:
    """Matrix products that `fn(*args)` runs, forward and backward."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(*args)
    return sum(e.name in GEMMS for e in prof.events())


@pytest.mark.parametrize("impl", LOSS_IMPLS)
def test_a_frozen_head_gets_no_gradient_and_no_weight_gradient_product(impl):
    """Our head is frozen under LoRA: each implementation computes the weight's gradient only when the weight
    requires grad (torch's chunked op reads `linear_weight.requires_grad`). Frozen, it multiplies twice per
    chunk (logits, input gradient); trainable, once more (the weight gradient), which then equals the plain
    loss's (full fine-tuning in 06)."""
    hidden, weight, targets = _head(torch.float32)
    fn = lambda h, w, t: summed_cross_entropy(h, w, t, impl)  # noqa: E731
    frozen = _gemms(_loss_and_grad, fn, hidden, weight, targets)
    trainable = _gemms(_loss_and_grad, fn, hidden, weight, targets, True)
    _, _, frozen_weight_grad = _loss_and_grad(fn, hidden, weight, targets)
    assert frozen_weight_grad is None
    assert frozen == 2 * (trainable - frozen) > 0, (frozen, trainable)
    _, _, weight_grad = _loss_and_grad(fn, hidden, weight, targets, True)
    _, _, ref = _loss_and_grad(lambda h, w, t: F.cross_entropy(h @ w.t(), t, reduction="sum"),
                               hidden.double(), weight.double(), targets, True)
    torch.testing.assert_close(weight_grad.double(), ref, **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", list(TORCH_LOSSES))
def test_torchs_loss_on_the_tiny_gemma_equals_ours_and_the_models_own(tiny_model, tiny_tokenizer, cpu_cfg,
                                                                      impl, dtype, monkeypatch):
    """causal_lm_loss through each torch setting, on the tiny Gemma with LoRA and padded (-100) labels: the
    mean loss and the sum over num_items_in_batch equal the course's and the model's own, and so do the LoRA
    gradients (the head is frozen: only the input gradient flows back)."""
    enc, labels = _batch(tiny_tokenizer)
    assert (labels == -100).any()
    model = attach_lora(tiny_model.to(dtype), cpu_cfg)
    params = [p for p in model.parameters() if p.requires_grad]

    monkeypatch.setattr(fast_loss, "summed_cross_entropy", fast_loss.summed_cross_entropy)  # restored after

    def run(loss_fn, impl="course"):
        use(impl)  # the benchmark's switch: this implementation under causal_lm_loss
        model.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss.detach().double(), [p.grad.double() for p in params]

    ref, ref_grads = run(lambda: model(**enc, labels=labels).loss)
    count = int((labels[:, 1:] != -100).sum())
    for items in (None, count):  # mean; sum / num_items_in_batch
        ours, ours_grads = run(lambda items=items: causal_lm_loss(
            model, enc["input_ids"], enc["attention_mask"], labels, items))
        theirs, theirs_grads = run(lambda items=items: causal_lm_loss(
            model, enc["input_ids"], enc["attention_mask"], labels, items), impl)
        torch.testing.assert_close(theirs, ours, **TOL[dtype])
        torch.testing.assert_close(theirs, ref, **TOL[dtype])
        for theirs_grad, ours_grad, ref_grad in zip(theirs_grads, ours_grads, ref_grads):
            scale = ref_grad.abs().max().item()  # LoRA B starts at zero, A's gradient then too
            torch.testing.assert_close(theirs_grad, ours_grad, rtol=TOL[dtype]["rtol"],
                                       atol=TOL[dtype]["atol"] * max(scale, 1e-12))
            torch.testing.assert_close(theirs_grad, ref_grad, rtol=TOL[dtype]["rtol"],
                                       atol=TOL[dtype]["atol"] * max(scale, 1e-12))


def test_an_unknown_loss_implementation_is_refused():
    hidden, weight, targets = _head(torch.float32, rows=4)
    with pytest.raises(ValueError, match=re.escape("'torch_fastest' is not known: use one of course, torch, "
                                                   "torch_chunk256, torch_chunk256_lowp, torch_reference")):
        summed_cross_entropy(hidden, weight, targets, "torch_fastest")


@pytest.mark.parametrize("lowp", [True, False])
def test_a_likely_targets_gradient_keeps_its_digits_in_the_bf16_softmax(lowp, monkeypatch):
    """The bf16 head's training softmax (LOWP_SOFTMAX) runs on the bf16 product, but each target's 1 - p
    comes from fp32: for a target the model already gives p = 0.995, a bf16 p - 1 (p rounds to 0.99609)
    would be 22% off, and that entry is most of the hidden state's gradient."""
    import gemmate_lib.fast_loss as fast

    monkeypatch.setattr(fast, "LOWP_SOFTMAX", lowp)
    torch.manual_seed(0)
    vocab, width, rows = 4096, 64, 8
    weight = (torch.randn(vocab, width) * 0.02).to(torch.bfloat16)
    targets = torch.randint(0, vocab, (rows,))
    own = weight[targets].float()
    hidden = (own * (16 / (own * own).sum(-1, keepdim=True))).to(torch.bfloat16)  # each target's logit: 16
    reference = hidden.float().requires_grad_()
    logits = reference @ weight.float().t()
    assert (logits.softmax(-1)[torch.arange(rows), targets] > 0.99).all()
    torch.nn.functional.cross_entropy(logits, targets, reduction="sum").backward()
    mine = hidden.clone().requires_grad_()
    fast.LinearCrossEntropy.apply(mine, weight, targets).backward()
    error = (mine.grad.float() - reference.grad).norm() / reference.grad.norm()
    assert error < 0.02, error


# What the learner's loss and gradients depend on, each part on its own: the precision each dtype computes
# in, rows of very different scales in one chunk, odd head shapes, the dtypes returned, the memory kept, and
# what causal_lm_loss passes on (the implementation, the token count, the head on no position, no cache).

def _reference(hidden, weight, targets):
    """The float64 loss, per-token losses and gradients (hidden, weight) of the same (rounded) values."""
    hidden = hidden.detach().double().requires_grad_()
    weight = weight.detach().double().requires_grad_()
    per_token = F.cross_entropy(hidden @ weight.t(), targets, reduction="none")
    per_token.sum().backward()
    return per_token.sum().detach(), per_token.detach(), hidden.grad, weight.grad


def _loud_row(dtype, rows=6, vocab=50, width=16):
    """A chunk whose first row's logits run to the hundreds and the others' to a few units: a softmax
    shifted by the chunk's maximum instead of each row's own would underflow every quiet row to exp() = 0."""
    hidden, weight, targets = _head(torch.float64, rows, vocab, width)
    hidden[0] *= 60
    return hidden.to(dtype), weight.to(dtype), targets


HEADS = {  # name: (hidden, weight, targets) when called, chunk, tolerance
    # float64 in, float64 throughout: no step through float32 (its normalizer alone would be 1e-7 off)
    "fp64_several_chunks": (lambda: _head(torch.float64, rows=37), 8, dict(rtol=1e-10, atol=1e-10)),
    "fp32_loud_row": (lambda: _loud_row(torch.float32), CHUNK_TOKENS, TOL[torch.float32]),
    "bf16_loud_row": (lambda: _loud_row(torch.bfloat16), CHUNK_TOKENS, TOL[torch.bfloat16]),
    # a head wider than its vocabulary (vocab 12 < width 32): each buffer sized by the vocabulary
    "bf16_wider_than_its_vocab": (lambda: _head(torch.bfloat16, rows=5, vocab=12, width=32), CHUNK_TOKENS,
                                  TOL[torch.bfloat16]),
    "fp32_short_last_chunk": (lambda: _head(torch.float32, rows=11, vocab=12, width=32), 4,
                              TOL[torch.float32]),
}


@pytest.mark.parametrize("name", list(HEADS))
def test_loss_gradients_and_held_out_losses_equal_float64_cross_entropy(name):
    """Training loss, both gradients (a trainable head: 06's full fine-tuning) and the held-out per-token
    losses equal cross_entropy computed in float64 from the same values, to the dtype's digits."""
    from gemmate_lib.fast_loss import token_nll

    make, chunk, tol = HEADS[name]
    hidden, weight, targets = make()
    ref, ref_per_token, ref_hidden_grad, ref_weight_grad = _reference(hidden, weight, targets)
    assert torch.isfinite(ref)
    mine_hidden, mine_weight = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = LinearCrossEntropy.apply(mine_hidden, mine_weight, targets, chunk)
    loss.backward()
    torch.testing.assert_close(loss.double(), ref, **tol)
    torch.testing.assert_close(mine_hidden.grad.double(), ref_hidden_grad, **tol)
    torch.testing.assert_close(mine_weight.grad.double(), ref_weight_grad, **tol)
    torch.testing.assert_close(token_nll(hidden, weight, targets, chunk).double(), ref_per_token, **tol)


def test_a_bf16_head_trains_on_the_bf16_softmax_and_scores_held_out_losses_in_fp32(monkeypatch):
    """A bf16 head's training softmax runs in bf16 (LOWP_SOFTMAX; False: in fp32), its held-out losses in
    fp32 on the bf16 product, with and without Gemma 4's cap, as a CPU with native bf16 computes them."""
    from gemmate_lib import fast_loss

    hidden, weight, targets = _head(torch.bfloat16, rows=40)
    _, _, ref_grad, _ = _reference(hidden, weight, targets)
    grads = {}
    for lowp in (True, False):
        monkeypatch.setattr(fast_loss, "LOWP_SOFTMAX", lowp)
        _, grads[lowp], _ = _loss_and_grad(lambda h, w, t: LinearCrossEntropy.apply(h, w, t), hidden, weight,
                                           targets)
        torch.testing.assert_close(grads[lowp].double(), ref_grad, **TOL[torch.bfloat16])
    assert not torch.equal(grads[True], grads[False])  # the two softmaxes are two paths
    monkeypatch.setattr(fast_loss, "LOWP_SOFTMAX", True)
    monkeypatch.setattr(fast_loss, "cpu_has_native_bf16", lambda: True)  # the head stays bf16
    logits = torch.mm(weight, hidden.t()).t().float()  # the bf16 product, as the loss multiplies it
    for cap in (None, 30.0):
        capped = logits if cap is None else cap * torch.tanh(logits / cap)
        expected = F.cross_entropy(capped, targets, reduction="none")
        torch.testing.assert_close(fast_loss.token_nll(hidden, weight, targets, softcap=cap), expected,
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("probs, lowp", [(True, False), (False, True), (True, True)],
                         ids=["gradient", "bf16_softmax", "both"])
def test_a_logit_cap_is_refused_where_the_loss_would_skip_it(probs, lowp):
    """The cap is applied to held-out losses only: a training softmax (its gradient) or the bf16 softmax
    with a cap is refused, naming where a capped model's training loss comes from."""
    from gemmate_lib.fast_loss import _softmax_chunks

    hidden, weight, targets = _head(torch.float32, rows=4)
    message = ("a logit cap is applied to held-out losses only (training with one uses the model's own "
               "logits: causal_lm_loss)")
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        next(_softmax_chunks(hidden, weight, targets, 8, probs=probs, lowp=lowp, softcap=30.0))


@pytest.mark.parametrize("impl", LOSS_IMPLS)
def test_each_implementation_returns_its_dtypes_and_takes_fp32_hidden_states_into_a_bf16_head(impl):
    """A bf16 head: the course's loss comes back in fp32 (summed in fp32), torch's in bf16; the gradient
    in the hidden states' dtype. fp32 hidden states into a bf16 head are multiplied as bf16 (the course's:
    the very same loss and gradient), the gradient returned in fp32."""
    hidden, weight, targets = _head(torch.bfloat16, rows=40)
    fn = lambda h, w, t: summed_cross_entropy(h, w, t, impl)  # noqa: E731
    loss, grad, _ = _loss_and_grad(fn, hidden, weight, targets)
    assert (loss.dtype, grad.dtype) == (torch.float32 if impl == "course" else torch.bfloat16, torch.bfloat16)
    if impl == "course":  # summed in fp32: as close to the float64 sum as its bf16 logits allow
        torch.testing.assert_close(loss.double(), _reference(hidden, weight, targets)[0], rtol=2e-3, atol=0)
    mixed_loss, mixed_grad, _ = _loss_and_grad(fn, hidden.float(), weight, targets)
    assert mixed_grad.dtype == torch.float32
    torch.testing.assert_close(mixed_loss.double(), loss.double(), **TOL[torch.bfloat16])
    torch.testing.assert_close(mixed_grad.double(), grad.double(), **TOL[torch.bfloat16])
    if impl == "course":
        assert torch.equal(mixed_loss, loss) and torch.equal(mixed_grad, grad.float())


# Each torch setting of TORCH_LOSSES, written out: what summed_cross_entropy must hand torch's op
TORCH_OPTIONS = {"torch": lambda dtype: dict(),
                 "torch_chunk256": lambda dtype: dict(batch_chunk_size=256),
                 "torch_chunk256_lowp": lambda dtype: dict(batch_chunk_size=256, acc_dtype=dtype),
                 "torch_reference": None}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", list(TORCH_LOSSES))
def test_each_torch_setting_runs_torchs_op_with_exactly_its_options(impl, dtype):
    """summed_cross_entropy(..., impl) is torch's linear_cross_entropy with that setting's options, bit for
    bit in loss and gradient (the settings differ in their bits: torch's own chunks against 256 rows, fp32
    against bf16 softmax, chunked against the whole logits)."""
    from torch.nn import LinearCrossEntropyOptions

    assert set(TORCH_OPTIONS) == set(TORCH_LOSSES)
    setting = TORCH_OPTIONS[impl]
    options = None if setting is None else LinearCrossEntropyOptions(**setting(dtype))
    hidden, weight, targets = _head(dtype)
    theirs = _loss_and_grad(lambda h, w, t: F.linear_cross_entropy(h, w, t, reduction="sum", options=options),
                            hidden, weight, targets)
    ours = _loss_and_grad(lambda h, w, t: summed_cross_entropy(h, w, t, impl), hidden, weight, targets)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("trains", ["hidden", "head", "both"])
def test_the_loss_keeps_one_logits_buffer_and_no_gradient_nobody_asked_for(trains, dtype):
    """Memory, Gemma's head being 262,144 x 640: the forward keeps for backward the gradient of what trains
    and nothing else (a frozen head's fp32 gradient alone would be 640 MiB), and an fp32 head's chunks all
    go through one [vocab, chunk] buffer, the softmax in place (a bf16 head's fp32 normalizer takes an fp32
    copy of each chunk on a CPU: torch's sum(dtype=float32))."""
    from torch.profiler import ProfilerActivity, profile

    rows, vocab, width = 16, 4096, 8
    hidden, weight, targets = _head(dtype, rows, vocab, width)
    hidden.requires_grad_(trains != "head")
    weight.requires_grad_(trains != "hidden")
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append((tuple(x.shape), x.dtype)) or x,
                                                  lambda x: x):
        LinearCrossEntropy.apply(hidden, weight, targets)
    expected = {"hidden": [((rows, width), dtype)], "head": [((vocab, width), torch.float32)]}
    expected["both"] = expected["hidden"] + expected["head"]
    assert saved == expected[trains]
    if trains == "hidden" and dtype == torch.float32:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            LinearCrossEntropy.apply(hidden, weight, targets)
        allocated = sum(max(e.self_cpu_memory_usage, 0) for e in prof.events() if e.name.startswith("aten::"))
        buffer = vocab * rows * weight.element_size()
        assert buffer <= allocated < 1.25 * buffer, (allocated, buffer)


def test_causal_lm_loss_runs_the_head_on_no_position_and_keeps_no_cache(tiny_model, tiny_tokenizer):
    """The model's own forward runs with its LM head on no position (the fast loss multiplies the labelled
    rows itself) and builds no KV cache, in training mode as the trainer calls it."""
    enc, labels = _batch(tiny_tokenizer)
    head_rows, caches = [], []
    tiny_model.get_output_embeddings().register_forward_pre_hook(
        lambda module, args: head_rows.append(args[0].shape[:-1].numel()))
    tiny_model.get_decoder().register_forward_hook(
        lambda module, args, out: caches.append(out.past_key_values))
    causal_lm_loss(tiny_model.train(), enc["input_ids"], enc["attention_mask"], labels)
    assert head_rows == [0] and caches == [None]


def test_causal_lm_loss_divides_by_the_count_it_is_given(tiny_model, tiny_tokenizer):
    """Mean over the labelled tokens, or the sum over num_items_in_batch (gradient accumulation: the
    labelled tokens of every micro-batch of the step); a single labelled token's loss is its own."""
    enc, labels = _batch(tiny_tokenizer)
    count = int((labels[:, 1:] != -100).sum())
    with torch.no_grad():
        mean = causal_lm_loss(tiny_model, enc["input_ids"], enc["attention_mask"], labels)
        accumulated = causal_lm_loss(tiny_model, enc["input_ids"], enc["attention_mask"], labels, 3 * count)
        torch.testing.assert_close(accumulated, mean / 3)
        one = torch.full_like(labels, -100)
        one[0, 3] = labels[0, 3]
        own = tiny_model(**enc, labels=one).loss
        mine = causal_lm_loss(tiny_model, enc["input_ids"], enc["attention_mask"], one)
        torch.testing.assert_close(mine, own)


@pytest.mark.parametrize("impl", LOSS_IMPLS)
def test_a_benchmark_arm_trains_through_the_implementation_it_names(tiny_model, tiny_tokenizer, impl,
                                                                    monkeypatch):
    """benchmarks/torch_loss.py's `use(impl)` puts that implementation under causal_lm_loss, the one path
    training takes: on a bf16 model the course's loss is an fp32 figure, torch's a bf16 one."""
    monkeypatch.setattr(fast_loss, "summed_cross_entropy", fast_loss.summed_cross_entropy)  # restored after
    use(impl)
    enc, labels = _batch(tiny_tokenizer)
    with torch.no_grad():
        loss = causal_lm_loss(tiny_model.to(torch.bfloat16), enc["input_ids"], enc["attention_mask"], labels)
    assert loss.dtype == (torch.float32 if impl == "course" else torch.bfloat16)
