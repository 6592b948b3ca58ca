"""GemmaTE: the encoder, the zero-initialised wrapper, timestamps through forward/generate/Trainer, save/load.

Everything runs on the tiny random Gemma 3 of conftest.py (hidden size 64), NF4 included;
only the command-line run (a subprocess) is marked slow, and it too loads the tiny model.
"""
import json
import os
import warnings
from datetime import datetime, timezone

import numpy as np
import pytest
import torch

from gemmate_lib.config import REFERENCE_MS, TemporalSettings
from gemmate_lib.errors import DataError, ModelLoadError, ParameterError
from gemmate_lib.temporal.model import GemmaTEForCausalLM, TemporalEncoder
from gemmate_lib.temporal.timestamps import signed_log_days, to_milliseconds

MS_2021 = 1_633_046_400_000  # 2021-10-01T00:00:00Z
MS_2014 = 1_394_000_000_000  # 2014-03-05 06:13:20 UTC


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tiny model's matrices are 64 wide: one thread beats
    several (no hand-offs), most of all on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _perturb(te, seed=0):
    """Give the projection (and LoRA B, if any) non-zero weights, as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in te.named_parameters():
            if "temporal_projection" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return te


def test_reference_is_2006_05_23_and_the_sign_follows_it():
    assert to_milliseconds("2006-05-23T00:00:00Z") == REFERENCE_MS
    ms = to_milliseconds([REFERENCE_MS - 86_400_000, REFERENCE_MS, REFERENCE_MS + 86_400_000, "1995-01-01",
                          "2024-06-01"])
    x = signed_log_days(ms)
    assert x[0] < 0 and x[1] == 0 and x[2] > 0 and x[3] < x[0] and x[4] > x[2]
    assert torch.allclose(x[[0, 2]].abs(), torch.tensor([np.log(2.0)] * 2, dtype=torch.float64))
    feats = TemporalEncoder(TemporalSettings())(ms)
    assert feats.shape == (5, 64) and torch.equal(torch.sign(feats[:, 1]), torch.tensor([-1.0, 0, 1, -1, 1]))


def test_every_accepted_form_gives_the_same_milliseconds():
    when = datetime(2014, 3, 5, 6, 13, 20, tzinfo=timezone.utc)
    forms = [MS_2014, float(MS_2014), np.int64(MS_2014), when, when.replace(tzinfo=None),
             "2014-03-05T06:13:20Z", "2014-03-05T07:13:20+01:00", torch.tensor(MS_2014)]
    assert all(float(to_milliseconds(f)) == MS_2014 for f in forms)
    assert to_milliseconds(np.array([MS_2014, REFERENCE_MS])).tolist() == [MS_2014, REFERENCE_MS]


@pytest.mark.parametrize("bad, message", [
    (float("nan"), "NaN or infinite"), (float("inf"), "NaN or infinite"), (None, "is not a time"),
    (True, "is not a time"), ("next tuesday", "not an ISO-8601"),
    (1_394_000_000_000_000, "looks like microseconds"),
    (1e16, "outside 1900-01-01..2100-01-01"), ([MS_2014, float("nan")], "1 timestamp"),
    (torch.tensor([True]), "booleans"),
    ({"t": 1}, "must be one value, got a dict"), (object(), "has type object"),
])
def test_invalid_timestamps_raise_a_clear_error(bad, message):
    with pytest.raises(DataError, match=message) as info:
        to_milliseconds(bad)
    assert info.value.fix


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
    te.unwrap()
    with torch.no_grad():
        assert torch.equal(fresh_model(**enc).logits, plain)  # unwrap removes the hook


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


def test_trainer_trains_lora_and_the_projection(tiny_model, tiny_tokenizer, tmp_path):
    from gemmate_lib.config import course_config
    from gemmate_lib.temporal.data import PROMPT_END, TextDataset
    from gemmate_lib.temporal.training import attach_temporal_lora, train_temporal

    cfg = course_config("temporal", device="cpu", dtype="fp32", max_steps=3, batch_size=4, steps_freq=1)
    embeddings = tiny_model.get_input_embeddings().weight.detach().clone()
    te = attach_temporal_lora(GemmaTEForCausalLM(tiny_model, cfg.temporal), cfg)
    assert attach_temporal_lora(te, cfg).model is te.model  # once: a second call keeps the adapter
    texts = [f"Note {i}\nWritten: May {2008 + i}" for i in range(8)]
    stamps = [datetime(2008 + i, 5, 10) for i in range(8)]
    ds = TextDataset(texts, tiny_tokenizer, stamps, prompt_end=PROMPT_END)
    result = train_temporal(te, ds, cfg, tmp_path, tiny_tokenizer.pad_token_id)
    assert result.steps == 3 and len(result.log) == 3 and result.log["loss"].notna().all()
    assert result.model is te and not te.training  # returned ready to generate
    assert te.temporal_projection.weight.abs().sum() > 0
    assert any(p.abs().sum() > 0 for n, p in te.named_parameters() if "lora_B" in n)
    assert torch.equal(tiny_model.get_input_embeddings().weight, embeddings)  # the base stays frozen


def test_data_files_and_dated_notes(tmp_path):
    from gemmate_lib.temporal.data import load_jsonl, make_dated_notes, parse_date, save_jsonl

    notes = make_dated_notes([f"quote number {i} is here" for i in range(40)], n_train=50, n_test=10)
    assert not set(notes.train_timestamps) & set(notes.test_timestamps)
    assert all(2007 <= y <= 2020 for y, _ in notes.test_dates)
    from collections import Counter

    balanced = make_dated_notes([f"quote number {i} is here" for i in range(40)], n_train=50, n_test=28,
                                n_val=14,
                                n_far=12)
    assert set(Counter(y for y, _ in balanced.test_dates).values()) == {2}  # 2 per training year
    assert set(Counter(y for y, _ in balanced.val_dates).values()) == {1}
    # 2 per year after them
    assert Counter(y for y, _ in balanced.far_dates) == {y: 2 for y in range(2021, 2027)}
    assert parse_date(notes.train_texts[0].split("Written:")[1])[0] is not None
    path = save_jsonl(tmp_path / "notes.jsonl", notes.train_texts, notes.train_timestamps)
    texts, stamps = load_jsonl(path)
    assert texts == notes.train_texts and stamps == [float(s) for s in notes.train_timestamps]
    path.write_text(path.read_text() + '{"text": "late", "timestamp": "yesterday"}\n')
    with pytest.raises(DataError, match="notes.jsonl line 51: timestamp 'yesterday'"):
        load_jsonl(path)
    path.write_text('{"text": "no time"}\n')
    with pytest.raises(DataError, match="has no column timestamp"):
        load_jsonl(path)
    assert parse_date(" May 2014, a fine") == (2014, 5) and parse_date(" once upon") == (None, None)


@pytest.mark.slow
def test_the_command_trains_on_a_small_jsonl(tmp_path, tiny_folder, fp32):
    import subprocess
    import sys

    from gemmate_lib.temporal.data import save_jsonl

    data = save_jsonl(tmp_path / "notes.jsonl", [f"Note {i}\nWritten: May {2008 + i}" for i in range(12)],
                      [to_milliseconds(datetime(2008 + i, 5, 10)) for i in range(12)])
    out = tmp_path / "te"
    proc = subprocess.run([sys.executable, "-m", "gemmate_lib", "train-te", "--dataset", str(data),
                           "--output_dir",
                           str(out), "--max_steps", "2", "--batch_size", "4", "--temporal_scale", "1.5",
                           "--prompt_end", "Written:", "--model_name", str(tiny_folder)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # a tiny model: one thread is fastest
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["rows"] == 12
    model = out / "model"
    assert json.loads((model / "gemmate_te.json").read_text())["settings"]["temporal_scale"] == 1.5
    assert (model / "adapter_model.safetensors").exists() and (model / "temporal.safetensors").exists()
    assert not list(out.glob("*.partial")) and not list(out.glob("*.backup"))
    from gemmate_lib.models import load_model

    loaded = GemmaTEForCausalLM.from_pretrained(load_model(str(tiny_folder), fp32), model)
    assert loaded.settings.temporal_scale == 1.5 and loaded.temporal_projection.weight.abs().sum() > 0


@pytest.mark.parametrize("argv, message", [
    (["--batch_size", "0"], "parameter batch_size=0 must be at least 1"),
    (["--learning_rate", "fast"], "parameter learning_rate='fast' has type str"),
    (["--temporal_scale", "-1"], "temporal_scale=-1.0 must be a positive finite number"),
    pytest.param(["--fp16"], "--fp16 needs a CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(),
                                          reason="a GPU is visible: --fp16 is allowed")),
    ([], "dataset='MISSING': no such file"),
])
def test_command_bad_values_get_one_clear_line(argv, message, tmp_path, capsys):
    from gemmate_lib.cli.main import main
    from gemmate_lib.errors import run_cli

    # every case has it: the bad value must be reported before the file
    missing = str(tmp_path / "missing.jsonl")
    code = run_cli(main, ["train-te", "--dataset", missing, "--output_dir", str(tmp_path / "o"), *argv])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "Traceback" not in "\n".join(lines)
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and message.replace("MISSING", missing) in errors[0]
    assert lines[lines.index(errors[0]) + 1].startswith("  Fix: ")  # the line after says what to do
    assert not (tmp_path / "o").exists()  # nothing was created before the check


def test_baselines_by_hand():
    from gemmate_lib.temporal.data import DatedNotes
    from gemmate_lib.temporal.timestamps import date_ms as _ms
    from gemmate_lib.temporal.training import baselines

    notes = DatedNotes(train_texts=["a", "b", "c"],
                       train_timestamps=[_ms(2010, 3, 1), _ms(2012, 7, 1), _ms(2020, 1, 1)],
                       test_prompts=["x", "y"], test_timestamps=[_ms(2010, 3, 3), _ms(2019, 12, 30)],
                       test_dates=[(2010, 3), (2019, 12)])
    got = baselines(notes)
    # the first test note's neighbour is 2010-03 (right year and month); the second's is 2020-01 (both wrong)
    assert got["nearest_year"] == 0.5 and got["nearest_month_year"] == 0.5 and got["median_gap_days"] == 2
    assert got["chance_year"] == 0.5 and got["chance_month_year"] == 1 / 24


def test_dated_notes_keep_validation_test_and_extrapolation_apart():
    from gemmate_lib.temporal.data import PROMPT_END, date_of, make_dated_notes

    notes = make_dated_notes([f"quote number {i} is here today" for i in range(60)], n_train=300, n_test=40,
                             n_val=30,
                             n_far=24, seed=3)
    splits = [set(notes.train_timestamps), set(notes.val_timestamps), set(notes.test_timestamps),
              set(notes.far_timestamps)]
    # no timestamp in two places
    assert sum(map(len, splits)) == len(set().union(*splits)) == 300 + 30 + 40 + 24
    assert {date_of(ms)[0] for ms in notes.train_timestamps} <= set(range(2007, 2021))
    assert {y for y, _ in notes.far_dates} == set(range(2021, 2027))  # no training target names these years
    assert not any(f" {y}" in t for t in notes.train_texts for y in range(2021, 2027))
    trained = {t.split(PROMPT_END)[0] for t in notes.train_texts}
    held = {p.removesuffix(PROMPT_END) for p in notes.val_prompts + notes.test_prompts + notes.far_prompts}
    assert trained and held and not trained & held  # held-out quotes are never trained on
    assert notes.split("far") == (notes.far_prompts, notes.far_timestamps, notes.far_dates)
    with pytest.raises(DataError, match="extrapolate_to=2019 is not after last_year=2020"):
        make_dated_notes([f"q {i} words" for i in range(20)], extrapolate_to=2019)


def test_baselines_within_one_year_outside_the_training_years():
    from gemmate_lib.temporal.data import DatedNotes
    from gemmate_lib.temporal.timestamps import date_ms as _ms
    from gemmate_lib.temporal.training import baselines

    notes = DatedNotes(["a", "b"], [_ms(2019, 6, 1), _ms(2020, 11, 1)], [], [], [],
                       far_prompts=["x", "y", "z"],
                       far_timestamps=[_ms(2021, 2, 1), _ms(2022, 5, 1), _ms(2025, 1, 1)],
                       far_dates=[(2021, 2), (2022, 5), (2025, 1)])
    got = baselines(notes, "far")
    # every neighbour is 2020-11: never the right year, within one year only for 2021
    assert got["nearest_year"] == 0 and got["nearest_year_within_1"] == pytest.approx(1 / 3)
    assert got["chance_year"] == pytest.approx(1 / 3)


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
    first.unwrap()  # the old wrapper's unwrap leaves the newest one working
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
