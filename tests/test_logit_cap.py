"""The course's loss is the model's own loss on every Gemma generation, Gemma 4's logit cap included.

Gemma 4 caps its logits (`30 * tanh(logits / 30)`) and keeps the cap in `text_config`; a top-level read of the
composite config finds nothing. These tests push the tiny models' logits far past the cap (weights x4), so an
uncapped loss is far off (88.6 against 31.5 on the tiny Gemma 4), and hold the course's training loss
(`fast_loss.causal_lm_loss`, what CourseSFTTrainer and GemmaTE train on) and its held-out loss
(`evaluation.example_nll_by_part`, 04's perplexity) to the model's own, for the plain model, a PEFT-wrapped
one and a GemmaTE-wrapped one, in fp32 and bf16."""
import ast
import re
from pathlib import Path

import pytest
import torch

from tests.tiny import TEXTS, make_generation_tokenizer, make_tiny_generation

ROOT = Path(__file__).resolve().parents[1]


def loud(key: str, dtype):
    """A tiny model of generation `key` whose logits run far past Gemma 4's cap: every weight x4."""
    tokenizer = make_generation_tokenizer(key)
    model = make_tiny_generation(key, tokenizer)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(4)
    return model.to(dtype), tokenizer


def wrapped(model, how: str):
    if how == "plain":
        return model
    from peft import LoraConfig, get_peft_model

    from gemmate_lib.generations import lora_targets

    model = get_peft_model(model, LoraConfig(r=4, target_modules=lora_targets(model, ["q_proj", "v_proj"])))
    if how == "gemmate":
        from gemmate_lib.temporal.model import GemmaTEForCausalLM

        model = GemmaTEForCausalLM(model)
        torch.nn.init.normal_(model.temporal_projection.weight)  # time changes the logits
    return model


def course_and_own_loss(model, enc, labels):
    """(the course's training loss, the model's own) on one batch. GemmaTE's forward takes the course's loss
    when its `fast_loss` is on (07 and the CPU profile), the model's own when off."""
    from gemmate_lib.fast_loss import causal_lm_loss

    if hasattr(model, "temporal_projection"):
        stamps = [1.2e12, 1.3e12, 1.4e12, 1.5e12][:len(labels)]
        losses = []
        for fast in (True, False):
            model.fast_loss = fast
            losses.append(model(**enc, labels=labels, timestamps=stamps).loss)
        return losses
    course = causal_lm_loss(model, enc["input_ids"], enc["attention_mask"], labels)
    return course, model(**enc, labels=labels).loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("how", ["plain", "peft", "gemmate"])
@pytest.mark.parametrize("key", ["gemma", "gemma3", "gemma4"])
def test_the_course_loss_is_the_models_own_loss_past_the_cap(key, how, dtype):
    model, tokenizer = loud(key, dtype)
    if key == "gemma4":  # the cap matters here: the logits run up against it
        from gemmate_lib.fast_loss import logit_softcap

        assert logit_softcap(model) == 30.0
        logits = model(**tokenizer(list(TEXTS), return_tensors="pt", padding=True)).logits
        assert 25.0 < float(logits.abs().max()) <= 30.0
    model = wrapped(model, how)
    enc = dict(tokenizer(list(TEXTS), return_tensors="pt", padding=True))
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    with torch.no_grad():
        course, own = course_and_own_loss(model, enc, labels)
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    assert float(course) == pytest.approx(float(own), rel=tolerance)


@pytest.mark.parametrize("key", ["gemma", "gemma4"])
def test_the_held_out_loss_is_the_models_own_past_the_cap(key):
    from gemmate_lib.evaluation import example_nll_by_part

    model, tokenizer = loud(key, torch.float32)
    rows = [{"text": t} for t in TEXTS]
    summed = sum(nll for nll, _ in example_nll_by_part(model, tokenizer, rows)["text"])
    count = sum(n for _, n in example_nll_by_part(model, tokenizer, rows)["text"])
    enc = tokenizer([t + tokenizer.eos_token for t in TEXTS], return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    own = model(**enc, labels=labels).loss
    assert summed / count == pytest.approx(float(own), rel=1e-4)


# Settings that Gemma 3 and 4 keep in text_config only: a composite config has none of them at the top
def text_only_settings() -> set[str]:
    from transformers import Gemma4Config, Gemma4TextConfig

    return set(Gemma4TextConfig().to_dict()) - set(Gemma4Config().to_dict())


def top_level_reads(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, code) of each read of one of `names` off something named config (model.config, self.config,
    config), as an attribute or through getattr: not off get_text_config() or text_setting."""
    found = []
    for node in ast.walk(ast.parse(source)):
        read = None
        if isinstance(node, ast.Attribute) and node.attr in names:
            read = node.value
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr"
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
              and node.args[1].value in names):
            read = node.args[0]
        if read is not None and re.search(r"(^|\.)config$", ast.unparse(read)):
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_no_code_reads_a_text_config_setting_at_the_top_level():
    """Every read of `final_logit_softcapping`, `hidden_size`, `vocab_size`, ... off a model's config goes
    through the text config (generations.text_setting or get_text_config())."""
    names = text_only_settings()
    assert {"final_logit_softcapping", "hidden_size", "vocab_size", "max_position_embeddings"} <= names
    found = [f"{path.relative_to(ROOT)}:{line}: {code}"
             for folder in ("gemmate_lib", "gemmate_cli", "tools", "benchmarks", "scripts")
             for path in (ROOT / folder).rglob("*.py")
             for line, code in top_level_reads(path.read_text(), names)]
    assert not found, "read through the text config (generations.text_setting):\n" + "\n".join(found)


def test_the_look_finds_the_reads_that_made_gemma_4_train_uncapped():
    names = text_only_settings()
    before = ('softcap = getattr(self.model.config, "final_logit_softcapping", None)\n'
              'hidden = model.config.hidden_size\n'
              'fine = model.config.get_text_config().hidden_size\n')
    assert [line for line, _ in top_level_reads(before, names)] == [1, 2]


@pytest.mark.parametrize("key", ["gemma3", "gemma4"])
def test_the_course_loss_masks_left_padding_and_keeps_no_cache(key):
    """On a left-padded batch (the pads first: a real token could attend to them) the course's loss is the
    model's own, the attention mask passed on, on Gemma 4's capped path (the model's own logits) as on the
    fused head; and neither path builds a KV cache during training."""
    from gemmate_lib.fast_loss import causal_lm_loss

    model, tokenizer = loud(key, torch.float32)
    enc = dict(tokenizer(list(TEXTS), return_tensors="pt", padding=True, padding_side="left"))
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    assert (enc["attention_mask"][:, 0] == 0).any()
    caches = []
    model.get_decoder().register_forward_hook(lambda module, args, out: caches.append(out.past_key_values))
    with torch.no_grad():
        course = causal_lm_loss(model.train(), enc["input_ids"], enc["attention_mask"], labels)
        assert caches == [None]
        own = model(**enc, labels=labels).loss
    assert float(course) == pytest.approx(float(own), rel=1e-4)
