"""The pre-flight check (gemmate_lib/preflight.py) on the tiny models of each generation: a healthy model
passes, and each injected fault fails its own line: a broken `use_cache=False` path, a broken cached path
(under either name of the cache), an end token outside the mask, a row all masked, a model at chance."""

import copy

import pytest
import torch
from tiny import CACHE_NAMES, cache_name_of, make_generation_tokenizer, make_tiny_generation, speaking_only

from gemmate_lib.generations import GENERATIONS, stop_token_ids
from gemmate_lib.preflight import IGNORE, PreflightError, cache_agreement, preflight

pytestmark = pytest.mark.generations
AT_CHANCE = (
    3.0  # a random tiny model predicts near chance (its band is about ln(V)); a pretrained base far below
)


@pytest.fixture(scope="module", params=list(GENERATIONS))
def tiny(request):
    tokenizer = make_generation_tokenizer(request.param)
    return request.param, tokenizer, make_tiny_generation(request.param, tokenizer)


def batch_of(tokenizer):
    texts = ["Quote: Be yourself.\nAuthor: Oscar Wilde", "Quote: Stay hungry."]
    enc = tokenizer([t + tokenizer.eos_token for t in texts], return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, IGNORE)
    return {**enc, "labels": labels}


def ends(key, tokenizer):
    return stop_token_ids(tokenizer, GENERATIONS[key])


def test_a_healthy_model_passes(tiny):
    key, tokenizer, model = tiny
    verdicts = preflight(model, batch_of(tokenizer), ends(key, tokenizer), max_share=AT_CHANCE, quiet=True)
    assert all(v.ok for v in verdicts) and len(verdicts) == 6


def test_a_model_at_chance_fails(tiny):
    key, tokenizer, model = tiny
    with pytest.raises(PreflightError, match="loss at initialisation"):
        preflight(model, batch_of(tokenizer), ends(key, tokenizer), quiet=True)


def test_a_broken_cache_path_fails(tiny, monkeypatch):
    """The uncached forward (what training runs) computes something else than the cached one."""
    key, tokenizer, model = tiny
    forward = model.forward

    def broken(*args, **kwargs):
        out = forward(*args, **kwargs)
        if kwargs.get("use_cache") is False:
            out.logits = out.logits + torch.randn_like(out.logits) * out.logits.abs().max()
        return out

    monkeypatch.setattr(model, "forward", broken)
    with pytest.raises(PreflightError, match="KV cache"):
        preflight(model, batch_of(tokenizer), ends(key, tokenizer), max_share=AT_CHANCE, quiet=True)


@pytest.mark.parametrize("name", CACHE_NAMES)
def test_the_cache_check_speaks_both_names_of_the_cache(tiny, monkeypatch, name):
    """transformers 5.24 renamed the KV cache `past_key_values` to `cache`. On a model that knows only `name`,
    a sound cached path passes and a broken one fails its line: a check that knew one name only fails one of
    the two cases (it hands the cache back under a name the model does not take, or reads a missing field)."""
    key, tokenizer, model = tiny
    forward, installed = model.forward, cache_name_of(model)
    monkeypatch.setattr(model, "forward", speaking_only(forward, name, installed))
    assert cache_agreement(model, batch_of(tokenizer)["input_ids"]).ok
    monkeypatch.setattr(model, "forward", speaking_only(forward, name, installed, cached_shift=5.0))
    with pytest.raises(PreflightError, match="KV cache"):
        preflight(model, batch_of(tokenizer), ends(key, tokenizer), max_share=AT_CHANCE, quiet=True)


@pytest.mark.parametrize("dtype, passes", [(torch.bfloat16, True), (torch.float32, False)])
def test_a_rounding_sized_cache_gap_passes_in_16_bits_only(tiny, monkeypatch, dtype, passes):
    """On an H200 the embedded Gemma 3 in NF4 and bf16 measured 0.021 between its cached and uncached logits,
    which a fixed 2e-2 tolerance refused: 03 stopped before training on every bf16 GPU. A 5% gap is rounding
    in bf16 and a fault in fp32."""
    key, tokenizer, model = tiny
    model = copy.deepcopy(model).to(dtype)
    forward = model.forward

    def rounded(*args, **kwargs):
        out = forward(*args, **kwargs)
        if kwargs.get("use_cache") is False:
            out.logits = out.logits * 1.05
        return out

    monkeypatch.setattr(model, "forward", rounded)
    assert cache_agreement(model, batch_of(tokenizer)["input_ids"]).ok is passes
    if dtype == torch.float32:  # QLoRA on a GPU: k-bit preparation leaves every float weight in fp32, and the
        # 4-bit layers compute in bf16 (bitsandbytes' Linear4bit.compute_dtype): that is 16-bit compute
        next(m for m in model.modules() if isinstance(m, torch.nn.Linear)).compute_dtype = torch.bfloat16
        assert cache_agreement(model, batch_of(tokenizer)["input_ids"]).ok


def test_an_end_token_outside_the_mask_fails(tiny):
    key, tokenizer, model = tiny
    batch = batch_of(tokenizer)
    batch["labels"] = batch["labels"].masked_fill(batch["input_ids"] == tokenizer.eos_token_id, IGNORE)
    verdicts = preflight(
        model, batch, ends(key, tokenizer), max_share=AT_CHANCE, raise_on_fail=False, quiet=True
    )
    assert [v.check for v in verdicts if not v.ok] == ["end token inside the mask"]
    with pytest.raises(PreflightError, match="end token inside the mask"):
        preflight(model, batch, ends(key, tokenizer), max_share=AT_CHANCE, quiet=True)


def test_a_row_all_masked_fails(tiny):
    key, tokenizer, model = tiny
    batch = batch_of(tokenizer)
    batch["labels"][1] = IGNORE
    verdicts = preflight(
        model, batch, ends(key, tokenizer), max_share=AT_CHANCE, raise_on_fail=False, quiet=True
    )
    assert {v.check for v in verdicts if not v.ok} == {"end token inside the mask", "no row all masked"}


def test_the_table_prints_every_verdict_it_returns_one_line_each(tiny, capsys):
    key, tokenizer, model = tiny
    verdicts = preflight(model, batch_of(tokenizer), ends(key, tokenizer), max_share=AT_CHANCE)
    names = ("KV cache", "gradient checkpointing", "initialisation", "labelled", "end token", "all masked")
    assert len(verdicts) == len(names) and all(n in v.check for n, v in zip(names, verdicts))
    header, *lines = capsys.readouterr().out.strip().splitlines()
    assert header.split() == ["check", "value", "expected", "verdict"] and len(lines) == len(verdicts)
    for v, line in zip(verdicts, lines):  # a healthy tiny model: every line says ok, with its own value
        assert line.startswith(v.check) and f" {v.value} " in line and line.split()[-1] == "ok" and v.ok
    # a random model judged as a pretrained base would be: its initial-loss line, and that line only, fails
    verdicts = preflight(model, batch_of(tokenizer), ends(key, tokenizer), max_share=0.01,
                         raise_on_fail=False)
    lines = capsys.readouterr().out.strip().splitlines()[1:]
    assert [line.split()[-1] for line in lines] == ["ok" if v.ok else "FAIL" for v in verdicts]
    assert [v.ok for v in verdicts] == [True, True, False, True, True, True]


def test_the_trainer_runs_it_before_step_1(tmp_path):
    """`preflight: true` in the config: CourseSFTTrainer checks the first batch and a random base (at chance)
    stops the run before any step."""
    from tiny import ROWS

    from gemmate_lib.config import course_config
    from gemmate_lib.training import attach_lora, sft_trainer

    tokenizer = make_generation_tokenizer("gemma")
    cfg = course_config(device="cpu", dtype="fp32", preflight=True, max_steps=1, batch_size=2)
    model = attach_lora(make_tiny_generation("gemma", tokenizer), cfg, quiet=True)
    trainer = sft_trainer(model, tokenizer, ROWS, [], cfg, tmp_path)
    with pytest.raises(PreflightError, match="loss at initialisation"):
        trainer.train()
    assert trainer.state.global_step == 0
