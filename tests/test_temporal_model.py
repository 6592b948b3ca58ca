"""GemmaTE's model (temporal/model.py): the encoder, the zero-initialised wrapper, timestamps through forward
and generate, save and load. Everything runs on the tiny random Gemma 3 (hidden size 64), NF4 included."""
import json
import warnings
from datetime import datetime

import pytest
import torch

from gemmate_lib.config import REFERENCE_MS, TemporalSettings
from gemmate_lib.guard_rails.errors import DataError, ModelLoadError, ParameterError
from gemmate_lib.temporal.model import GemmaTEForCausalLM, TemporalEncoder

MS_2021 = 1_633_046_400_000  # 2021-10-01T00:00:00Z
MS_2014 = 1_394_000_000_000  # 2014-03-05 06:13:20 UTC


pytestmark = pytest.mark.usefixtures("one_thread")


def _perturb(te, seed=0):
    """Give the projection (and LoRA B, if any) non-zero weights, as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in te.named_parameters():
            if "temporal_projection" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return te


def test_bad_settings_are_rejected_by_the_encoder_and_the_config():
    from gemmate_lib.config import course_config

    cfg = course_config("temporal", device="cpu", dtype="fp32", temporal_scale=2.0, temporal_dim=32)
    assert isinstance(cfg.temporal, TemporalSettings)
    assert TemporalEncoder(cfg.temporal)(MS_2014).shape == (32,)
    with pytest.raises(ParameterError, match="even"):
        TemporalEncoder(TemporalSettings(temporal_dim=7))
    with pytest.raises(ParameterError, match="tau"):
        TemporalEncoder(TemporalSettings(temporal_scale=float("nan")))
    with pytest.raises(ParameterError, match="temporal_dim=7 must be even"):
        course_config("temporal", device="cpu", temporal_dim=7)
    with pytest.raises(ParameterError, match="temporal_scale=nan must be a positive finite number"):
        course_config("temporal", device="cpu", temporal_scale=float("nan"))


def test_zero_initialised_wrapper_equals_the_base_model_exactly(tiny_model, tiny_tokenizer):
    fresh_model, tokenizer = tiny_model, tiny_tokenizer
    enc = tokenizer(["Life is short.\nWritten:", "Quote: Imagination is more"], return_tensors="pt",
                    padding=True)
    with torch.no_grad():
        plain = fresh_model(**enc).logits
        te = GemmaTEForCausalLM(fresh_model)
        assert not te.temporal_projection.weight.any()
        timed = te(**enc, timestamps=[MS_2014, "1990-01-01"]).logits
        with pytest.warns(UserWarning, match="no timestamps: using the current time"):
            now = te(**enc).logits  # no timestamps: "now", said once
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            te(**enc)  # ... and only once
        assert torch.equal(plain, timed) and torch.equal(plain, now)
        _perturb(te)
        moved = te(**enc, timestamps=[MS_2014, "1990-01-01"]).logits
        other = te(**enc, timestamps=["2025-01-01", "2025-01-01"]).logits
    assert not torch.equal(plain, moved) and not torch.equal(moved, other)
    te._hook.remove()
    with torch.no_grad():
        assert torch.equal(fresh_model(**enc).logits, plain)  # without the hook: the plain base model


def test_per_token_timestamps_and_batch_mismatch(tiny_model, tiny_tokenizer):
    fresh_model, tokenizer = tiny_model, tiny_tokenizer
    te = _perturb(GemmaTEForCausalLM(fresh_model))
    enc = tokenizer(["one two three"], return_tensors="pt")
    n = enc["input_ids"].shape[1]
    with torch.no_grad():
        per_seq = te(**enc, timestamps=[MS_2014]).logits
        per_tok = te(**enc, timestamps=[[MS_2014] * n]).logits
        mixed = te(**enc, timestamps=[[REFERENCE_MS] * (n - 1) + [MS_2014]]).logits
    assert torch.allclose(per_seq, per_tok, atol=1e-4) and not torch.allclose(per_seq, mixed, atol=1e-2)
    with pytest.raises(DataError, match="2 timestamps for a batch of 1"):
        te(**enc, timestamps=[MS_2014, MS_2014])


def test_fast_loss_forward_equals_the_models_own_loss(tiny_model, tiny_tokenizer):
    fresh_model, tokenizer = tiny_model, tiny_tokenizer
    from gemmate_lib.temporal.data import PROMPT_END, TextDataset, collate_fn

    te = _perturb(GemmaTEForCausalLM(fresh_model))
    ds = TextDataset(["Be kind.\nWritten: May 2014", "Hope is a thing with feathers\nWritten: June 2020"],
                     tokenizer,
                     [MS_2014, "2020-06-10"], prompt_end=PROMPT_END)
    batch = collate_fn([ds[0], ds[1]], tokenizer.pad_token_id)
    assert (batch["labels"][0, :ds.items[0][1]] == -100).all() and batch["timestamps"].dtype == torch.float64
    with torch.no_grad():
        reference = te(**batch).loss
        te.fast_loss = True
        fast = te(**batch).loss
    assert torch.allclose(reference, fast, rtol=1e-5)


def test_save_and_load_give_identical_logits_under_lora(tiny_folder, tiny_tokenizer, fp32, tmp_path):
    from gemmate_lib.config import course_config
    from gemmate_lib.models import load_model
    from gemmate_lib.temporal.training import attach_temporal_lora

    tokenizer = tiny_tokenizer
    cfg = course_config("temporal", device="cpu", dtype="fp32", temporal_scale=2.0, lora_dropout=0.05)
    te = _perturb(attach_temporal_lora(GemmaTEForCausalLM(load_model(str(tiny_folder), fp32), cfg.temporal),
                                       cfg))
    te.eval()  # LoRA dropout (0.05) is active in training mode
    folder = te.save_pretrained(tmp_path / "te")
    names = {p.name for p in folder.iterdir()}
    assert {"adapter_model.safetensors", "temporal.safetensors", "gemmate_te.json"} <= names
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))
    enc = tokenizer(["Stay hungry.\nWritten:"], return_tensors="pt")
    loaded = GemmaTEForCausalLM.from_pretrained(load_model(str(tiny_folder), fp32), folder)
    assert loaded.settings.temporal_scale == 2.0 and loaded.device == te.device == torch.device("cpu")
    assert json.loads((folder / "gemmate_te.json").read_text())["base_model"] == str(tiny_folder)
    with torch.no_grad():
        assert torch.equal(te(**enc, timestamps=[MS_2014]).logits, loaded(**enc, timestamps=[MS_2014]).logits)
    plain = load_model(str(tiny_folder), fp32)
    with pytest.raises(ModelLoadError, match="not a saved GemmaTE model"):
        GemmaTEForCausalLM.from_pretrained(plain, tmp_path)
    meta = json.loads((folder / "gemmate_te.json").read_text())
    (folder / "gemmate_te.json").write_text(json.dumps({**meta, "hidden_size": 2048}))
    with pytest.raises(ModelLoadError, match="hidden size 2048"):
        GemmaTEForCausalLM.from_pretrained(plain, folder)


def _generate(te, tokenizer, stamps):
    enc = tokenizer(["Be kind.\nWritten:"] * (1 if stamps is None else len(stamps)), return_tensors="pt")
    out = te.generate(**enc, timestamps=stamps, max_new_tokens=6, do_sample=False,
                      pad_token_id=tokenizer.pad_token_id)
    return [tokenizer.decode(ids) for ids in out[:, enc["input_ids"].shape[1]:]]


def test_generate_with_timestamps_in_fp32(tiny_model, tiny_tokenizer):
    fresh_model, tokenizer = tiny_model, tiny_tokenizer
    te = GemmaTEForCausalLM(fresh_model)
    enc = tokenizer(["Be kind.\nWritten:"], return_tensors="pt")
    plain = fresh_model.generate(**enc, max_new_tokens=6, do_sample=False)[0, enc["input_ids"].shape[1]:]
    assert _generate(te, tokenizer, [MS_2014]) == [tokenizer.decode(plain)]  # zero projection: same text
    _perturb(te, seed=3)
    with torch.no_grad():  # make time matter a lot, so that two far-apart dates give different text
        te.temporal_projection.weight.mul_(40)
    texts = _generate(te, tokenizer, [datetime(1950, 1, 1), datetime(2090, 1, 1)])
    assert texts[0] != texts[1]
    with pytest.warns(UserWarning, match="no timestamps"):
        assert len(_generate(te, tokenizer, None)) == 1  # default: now


def test_generate_with_timestamps_in_nf4(tiny_folder, tiny_tokenizer, fp32):
    from gemmate_lib.models import load_model

    tokenizer = tiny_tokenizer
    model = load_model(str(tiny_folder), fp32, quantization="nf4")
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    te = _perturb(GemmaTEForCausalLM(model), seed=3)
    with torch.no_grad():
        te.temporal_projection.weight.mul_(40)
    texts = _generate(te, tokenizer, [datetime(1950, 1, 1), datetime(2090, 1, 1)])
    assert len(texts) == 2 and texts[0] != texts[1]


def test_wrapping_the_same_model_again_keeps_one_time_hook(tiny_model, tiny_tokenizer):
    enc = tiny_tokenizer(["one two three"], return_tensors="pt")
    first = _perturb(GemmaTEForCausalLM(tiny_model))
    with torch.no_grad():
        once = first(**enc, timestamps=[MS_2014]).logits
    for _ in range(3):  # a notebook cell run again
        again = GemmaTEForCausalLM(tiny_model)
        again.temporal_projection.load_state_dict(first.temporal_projection.state_dict())
    assert len(tiny_model.get_input_embeddings()._forward_hooks) == 1
    with torch.no_grad():
        assert torch.equal(again(**enc, timestamps=[MS_2014]).logits, once)
    first._hook.remove()  # removing the old wrapper's hook leaves the newest one working
    with torch.no_grad():
        assert torch.equal(again(**enc, timestamps=[MS_2014]).logits, once)


def test_the_fast_loss_never_drops_an_argument(tiny_model, tiny_tokenizer):
    from gemmate_lib.temporal.data import TextDataset, collate_fn

    te = _perturb(GemmaTEForCausalLM(tiny_model))
    ds = TextDataset(["Be kind.\nWritten: May 2014", "Hope is a thing with feathers"], tiny_tokenizer,
                     [MS_2014, "2020-06-10"])
    batch = collate_fn([ds[0], ds[1]], tiny_tokenizer.pad_token_id)
    same_place = torch.zeros_like(batch["input_ids"])  # every token at position 0: a different loss
    with torch.no_grad():
        reference = te(**batch, position_ids=same_place).loss
        te.fast_loss = True
        fast = te(**batch, position_ids=same_place).loss
        plain = te(**batch).loss
    assert torch.allclose(fast, reference, rtol=1e-6, atol=0)
    assert not torch.allclose(fast, plain, rtol=1e-6, atol=0)


# --- bad input and a wrong base: one clear line each, nothing lost --------------------------------
def test_casting_the_wrapper_to_16_bits_keeps_the_encoder_in_float64(tiny_model):
    te = GemmaTEForCausalLM(tiny_model)
    before = te.encoder([MS_2021, MS_2021 + 86_400_000])
    te.to(torch.bfloat16)
    te.half()
    after = te.encoder([MS_2021, MS_2021 + 86_400_000])
    assert te.encoder.frequencies.dtype.name == "float64" and torch.equal(before, after)


def test_per_token_timestamps_of_the_wrong_length_are_refused(tiny_model, tiny_tokenizer):
    te = GemmaTEForCausalLM(tiny_model)
    enc = tiny_tokenizer(["one two three four"], return_tensors="pt")
    n = enc["input_ids"].shape[1]
    with pytest.raises(DataError,
                       match=f"per-token timestamps for {n - 1} positions, but the sequence has {n}"):
        te(**enc, timestamps=[[MS_2021] * (n - 1)])
    # decoding steps: last stamp
    out = te.generate(**enc, timestamps=[[MS_2021] * n], max_new_tokens=3, do_sample=False)
    assert out.shape[1] == n + 3


def test_leaving_timestamps_at_now_warns_once(tiny_model, tiny_tokenizer):
    te = GemmaTEForCausalLM(tiny_model)
    enc = tiny_tokenizer(["one two"], return_tensors="pt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        te(**enc)
        te(**enc)
    assert [str(w.message) for w in caught if "no timestamps" in str(w.message)] == [
        "GemmaTE got no timestamps: using the current time for every "
        "sequence (pass timestamps=... to say when each text was written)"]


def test_loading_checks_the_base_model_and_every_file(tiny_model, tiny_tokenizer, tmp_path):
    from tiny import make_tiny_gemma
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    te = GemmaTEForCausalLM(tiny_model)
    folder = te.save_pretrained(tmp_path / "te")
    meta = json.loads((folder / "gemmate_te.json").read_text())
    assert meta["format_version"] == 2 and meta["vocab_size"] == len(tiny_tokenizer)
    assert meta["settings"]["temporal_dim"] == 64
    other = Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=500, hidden_size=64, intermediate_size=128,
                                               num_hidden_layers=2, num_attention_heads=4,
                                               num_key_value_heads=4,
                                               head_dim=16))  # same hidden size, another base
    with pytest.raises(ModelLoadError, match="vocab_size: saved .* vs 500"):
        GemmaTEForCausalLM.from_pretrained(other, folder)
    changed = {**meta, "settings": {**meta["settings"], "temporal_dim": 32}}
    (folder / "gemmate_te.json").write_text(json.dumps(changed))
    with pytest.raises(ModelLoadError, match="holds a \\(64, 64\\) projection"):
        GemmaTEForCausalLM.from_pretrained(make_tiny_gemma(tiny_tokenizer), folder)
    (folder / "gemmate_te.json").write_text(json.dumps(meta))
    (folder / "temporal.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="could not load the GemmaTE model"):
        GemmaTEForCausalLM.from_pretrained(make_tiny_gemma(tiny_tokenizer), folder)
    (folder / "gemmate_te.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="is damaged"):
        GemmaTEForCausalLM.from_pretrained(make_tiny_gemma(tiny_tokenizer), folder)


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "temporal.safetensors"])
def test_a_saved_gemmate_te_file_cut_short_names_the_file_and_the_fix(tiny_model, tiny_tokenizer, tmp_path,
                                                                      name):
    from tiny import make_tiny_gemma

    from gemmate_lib.config import course_config
    from gemmate_lib.guard_rails.errors import one_line
    from gemmate_lib.temporal.training import attach_temporal_lora

    cfg = course_config("temporal", device="cpu", dtype="fp32")
    folder = attach_temporal_lora(GemmaTEForCausalLM(tiny_model, cfg.temporal), cfg).save_pretrained(
        tmp_path / "te")
    path = folder / name
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ModelLoadError) as err:
        GemmaTEForCausalLM.from_pretrained(make_tiny_gemma(tiny_tokenizer), folder)
    assert f"{name} is cut short or damaged" in one_line(err.value) and "again" in err.value.fix
