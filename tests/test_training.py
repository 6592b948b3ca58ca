import pytest
import torch

from gemmate_lib import course_config
from gemmate_lib.data import load_quotes
from gemmate_lib.fast_loss import LinearCrossEntropy, causal_lm_loss
from gemmate_lib.training import attach_lora, held_out_loss, train_lora


def _batch(tokenizer, n=4):
    rows = load_quotes("embedded").train[:n]
    enc = tokenizer([r["text"] + tokenizer.eos_token for r in rows], return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return enc, labels


def test_linear_cross_entropy_matches_torch_in_value_and_gradient():
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64)
    targets = torch.randint(0, 50, (37,))
    ours = LinearCrossEntropy.apply(hidden, weight, targets, 8)  # several chunks
    ours.backward(torch.tensor(0.5, dtype=torch.float64))
    grad_ours = hidden.grad.clone()
    hidden.grad = None
    ref = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, reduction="sum")
    (ref * 0.5).backward()
    assert torch.allclose(ours.double(), ref) and torch.allclose(grad_ours, hidden.grad)


def test_fast_loss_equals_the_models_own_loss(base_model, tokenizer):
    enc, labels = _batch(tokenizer)
    assert (labels == -100).any()  # the batch has padding to skip
    with torch.no_grad():
        ref = base_model(**enc, labels=labels).loss
        ours = causal_lm_loss(base_model, enc["input_ids"], enc["attention_mask"], labels)
    assert torch.allclose(ours, ref, rtol=1e-4), (float(ours), float(ref))


def test_fast_loss_gives_the_same_lora_gradients(fresh_model, tokenizer):
    cfg = course_config(device="cpu", dtype="fp32", dropout=0.0)
    model = attach_lora(fresh_model, cfg.lora)
    enc, labels = _batch(tokenizer)
    param = next(p for n, p in model.named_parameters() if "lora_A" in n)
    model(**enc, labels=labels).loss.backward()
    ref = param.grad.clone()
    model.zero_grad()
    causal_lm_loss(model, enc["input_ids"], enc["attention_mask"], labels).backward()
    assert torch.allclose(param.grad, ref, rtol=1e-3, atol=1e-6)


def test_attach_lora_twice_does_not_wrap_twice(fresh_model, capsys):
    cfg = course_config(device="cpu")
    once = attach_lora(fresh_model, cfg.lora)
    twice = attach_lora(once, cfg.lora)
    assert twice is once and "not wrapping twice" in capsys.readouterr().out
    trainable = sum(p.numel() for p in twice.parameters() if p.requires_grad)
    c = fresh_model.config
    q, kv, h, mlp = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim, c.hidden_size, \
        c.intermediate_size
    per_layer = (h + q) * 2 + (h + kv) * 2 + (h + mlp) * 3  # q,o + k,v + gate,up,down: r * (d_in + d_out) each
    assert trainable == cfg.lora.r * per_layer * c.num_hidden_layers == 1_898_496


def test_a_short_training_run_lowers_the_held_out_loss_and_saves_safetensors(fresh_model, tokenizer, tmp_path):
    cfg = course_config(device="cpu", dtype="fp32", max_steps=4, batch_size=4, learning_rate=1e-3,
                        logging_steps=1, eval_steps=2)
    data = load_quotes("embedded")
    held = data.held_out[:8]
    before = held_out_loss(fresh_model, tokenizer, held)
    result = train_lora(fresh_model, tokenizer, data.train[:32], held, cfg, output_dir=tmp_path / "trainer")
    after = held_out_loss(result.model, tokenizer, held)
    assert after < before
    assert result.log.loss.notna().sum() == 4 and result.log.eval_loss.notna().sum() == 2
    result.model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert not list((tmp_path / "adapter").glob("*.bin"))
