"""The fast loss (fast_loss.py): the LM head on labelled tokens only, equal to the model's own loss."""
import pytest
import torch
from tiny import ROWS

from gemmate_lib.data import load_quotes
from gemmate_lib.fast_loss import LinearCrossEntropy, causal_lm_loss
from gemmate_lib.training import attach_lora


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
