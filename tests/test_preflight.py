"""The pre-flight check (gemmate_lib/preflight.py) on the tiny models of each generation: a healthy model
passes, and each injected fault fails its own line: a broken `use_cache=False` path, a broken cached path
(under either name of the cache), an end token outside the mask, a row all masked, a model at chance."""

import copy
import math
import warnings

import pytest
import torch
from tiny import CACHE_NAMES, cache_name_of, make_generation_tokenizer, make_tiny_generation, speaking_only

from gemmate_lib.generations import GENERATIONS, stop_token_ids
from gemmate_lib.preflight import IGNORE, PreflightError, cache_agreement, initial_loss, label_mask, preflight

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


def failed_lines(capsys) -> list[tuple[str, str]]:
    """(check, value) of each FAIL line of the table preflight printed last, read at the header's columns."""
    out = capsys.readouterr().out.splitlines()
    start = max(i for i, line in enumerate(out) if line.split() == ["check", "value", "expected", "verdict"])
    value, expected = out[start].index("value"), out[start].index("expected")
    return [(line[:value].rstrip(), line[value:expected].rstrip()) for line in out[start + 1:]
            if line.split()[-1] == "FAIL"]


def scaled(forward, factor, *args, **kwargs):
    """`forward` with the uncached path's logits (what training computes) `factor` times the cached path's."""
    out = forward(*args, **kwargs)
    if kwargs.get("use_cache") is False:
        out.logits = out.logits * factor
    return out


def preflight_checkpointing(model, batch, **kwargs):
    from gemmate_lib.preflight import checkpointing_agreement

    return checkpointing_agreement(model, batch, **kwargs)


def test_a_healthy_model_passes(tiny):
    key, tokenizer, model = tiny
    verdicts = preflight(model, batch_of(tokenizer), ends(key, tokenizer), max_share=AT_CHANCE)
    assert all(v.ok for v in verdicts) and len(verdicts) == 6


def test_a_model_at_chance_fails(tiny):
    key, tokenizer, model = tiny
    with pytest.raises(PreflightError, match="loss at initialisation"):
        preflight(model, batch_of(tokenizer), ends(key, tokenizer))
    assert not initial_loss(model, batch_of(tokenizer)).ok  # alone too, it judges it as a pretrained base


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
    line = r"^pre-flight check failed: logits with and without the KV cache is \S+ \(expected <= 0\.02\): "
    with pytest.raises(PreflightError, match=line) as err:  # an fp32 model's tolerance
        preflight(model, batch_of(tokenizer), ends(key, tokenizer), max_share=AT_CHANCE)
    problem, fix = err.value.problem, err.value.fix  # why it matters, the known case, what to do
    assert "training uses the uncached one" in problem and "use_cache=False" in problem and "45242" in problem
    assert fix.startswith("upgrade transformers") and "requirements.txt" in fix


@pytest.mark.parametrize("name", CACHE_NAMES)
def test_behind_a_wrapper_the_check_reads_the_name_of_the_cache_from_the_output(tiny, monkeypatch, name):
    """A forward that names neither (peft's wrapper and the course's take **kwargs): the check hands the cache
    back under the name of the output's field, on a model that knows either name."""
    key, tokenizer, model = tiny
    speaks = speaking_only(model.forward, name, cache_name_of(model))
    monkeypatch.setattr(model, "forward", lambda *args, **kwargs: speaks(*args, **kwargs))
    assert cache_agreement(model, batch_of(tokenizer)["input_ids"]).ok


def test_the_cache_gap_is_relative_to_the_logits_at_any_scale(tiny, monkeypatch):
    """Logits all far below 1 (a small head): a 5% gap still reads 0.05 / 1.05 of the largest logit, a fault
    in fp32."""
    key, tokenizer, model = tiny
    forward = model.forward

    def small(*args, **kwargs):
        out = forward(*args, **kwargs)
        out.logits = out.logits * (1.05e-4 if kwargs.get("use_cache") is False else 1e-4)
        return out

    monkeypatch.setattr(model, "forward", small)
    line = cache_agreement(model, batch_of(tokenizer)["input_ids"])
    assert (line.ok, line.value) == (False, f"{0.05 / 1.05:.2g}")


def test_paths_that_agree_exactly_pass_with_no_tolerance_at_all(tiny, monkeypatch):
    """A line passes while its gap is at most the tolerance, the bound included: checkpointing recomputes the
    very same loss, and a model whose logits do not depend on the cache gives the same logits both ways."""
    key, tokenizer, model = tiny
    batch = batch_of(tokenizer)
    assert preflight_checkpointing(model, batch, tolerance=0).ok
    forward = model.forward

    def constant(*args, **kwargs):
        out = forward(*args, **kwargs)
        out.logits = torch.ones_like(out.logits)
        return out

    monkeypatch.setattr(model, "forward", constant)
    assert cache_agreement(model, batch["input_ids"], tolerance=0).ok


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
        preflight(model, batch_of(tokenizer), ends(key, tokenizer), max_share=AT_CHANCE)


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
    if dtype == torch.bfloat16:  # a third of the logits is no rounding, in 16 bits either
        monkeypatch.setattr(model, "forward", lambda *args, **kwargs: scaled(forward, 1.5, *args, **kwargs))
        assert not cache_agreement(model, batch_of(tokenizer)["input_ids"]).ok
    if dtype == torch.float32:  # QLoRA on a GPU: k-bit preparation leaves every float weight in fp32, and the
        # 4-bit layers compute in bf16 (bitsandbytes' Linear4bit.compute_dtype): that is 16-bit compute
        next(m for m in model.modules() if isinstance(m, torch.nn.Linear)).compute_dtype = torch.bfloat16
        assert cache_agreement(model, batch_of(tokenizer)["input_ids"]).ok


def test_an_end_token_outside_the_mask_fails(tiny, capsys):
    key, tokenizer, model = tiny
    batch = batch_of(tokenizer)
    batch["labels"] = batch["labels"].masked_fill(batch["input_ids"] == tokenizer.eos_token_id, IGNORE)
    with pytest.raises(PreflightError, match="end token inside the mask"):
        preflight(model, batch, ends(key, tokenizer), max_share=AT_CHANCE)
    assert [check for check, _ in failed_lines(capsys)] == ["end token inside the mask"]


def test_a_row_all_masked_fails(tiny, capsys):
    key, tokenizer, model = tiny
    batch = batch_of(tokenizer)
    batch["labels"][1] = IGNORE
    with pytest.raises(PreflightError, match="end token inside the mask"):
        preflight(model, batch, ends(key, tokenizer), max_share=AT_CHANCE)
    assert {check for check, _ in failed_lines(capsys)} == {"end token inside the mask", "no row all masked"}


def test_a_batch_that_labels_nothing_stops_at_its_label_line_not_at_the_nan_loss_lines(tiny, capsys):
    """Every label -100 (a completion or assistant mask that labels nothing, exercise 03-4): the loss is a
    mean over no token, NaN, which fails the checkpointing and loss lines above the label lines too. The run
    stopped at "loss with gradient checkpointing on is nan", whose fix (turn checkpointing off) does not help;
    it stops at the share of labelled tokens, and the error carries that line."""
    key, tokenizer, model = tiny
    batch = batch_of(tokenizer)
    batch["labels"] = torch.full_like(batch["labels"], IGNORE)
    with pytest.raises(PreflightError, match=r"share of labelled tokens is 0% \(expected >= 5%\)") as err:
        preflight(model, batch, ends(key, tokenizer), max_share=AT_CHANCE)
    assert [check for check, _ in failed_lines(capsys)][:2] == ["loss with gradient checkpointing on",
                                                                "loss at initialisation"]  # NaN, as it is
    assert err.value.verdict.check == "share of labelled tokens" and "mask" in err.value.fix
    # a batch that labels some tokens stops at its first failed line, as before, which the error carries too
    batch = batch_of(tokenizer)
    batch["labels"] = batch["labels"].masked_fill(batch["input_ids"] == tokenizer.eos_token_id, IGNORE)
    with pytest.raises(PreflightError) as err:
        preflight(model, batch, ends(key, tokenizer), max_share=AT_CHANCE)
    assert (err.value.verdict.check, err.value.verdict.value) == ("end token inside the mask", "0 of 2 rows")


def test_the_table_prints_every_verdict_it_returns_one_line_each(tiny, capsys):
    key, tokenizer, model = tiny
    verdicts = preflight(model, batch_of(tokenizer), ends(key, tokenizer), max_share=AT_CHANCE)
    assert [v.check for v in verdicts] == ["logits with and without the KV cache", "loss with gradient "
                                           "checkpointing on", "loss at initialisation", "share of labelled "
                                           "tokens", "end token inside the mask", "no row all masked"]
    header, *lines = capsys.readouterr().out.strip().splitlines()
    assert header.split() == ["check", "value", "expected", "verdict"] and len(lines) == len(verdicts)
    assert all(line == line.rstrip() for line in lines)  # no trailing blanks in a notebook's committed output
    for v, line in zip(verdicts, lines):  # a healthy tiny model: every line says ok, with its own value
        assert line.startswith(v.check) and f" {v.value} " in line and line.split()[-1] == "ok" and v.ok
    # a random model judged as a pretrained base would be: its initial-loss line, and that line only, fails
    with pytest.raises(PreflightError) as err:
        preflight(model, batch_of(tokenizer), ends(key, tokenizer), max_share=0.01)
    lines = capsys.readouterr().out.strip().splitlines()[1:]
    assert [line.split()[-1] for line in lines] == ["ok", "ok", "FAIL", "ok", "ok", "ok"]
    assert lines[2].startswith("loss at initialisation") and err.value.verdict.check == lines[2][:22]


def test_a_loss_that_checkpointing_changes_fails_its_line_and_names_the_gap(tiny, monkeypatch, capsys):
    """Recomputing activations in the backward pass gives another loss (here 10% more while checkpointing is
    on): the line fails with the relative gap as its value, and the error says to turn checkpointing off."""
    key, tokenizer, model = tiny
    forward = model.forward

    def drifting(*args, **kwargs):
        out = forward(*args, **kwargs)
        if model.is_activation_checkpointing and out.loss is not None:
            out.loss = out.loss * 1.1
        return out

    monkeypatch.setattr(model, "forward", drifting)
    with pytest.raises(PreflightError, match=r"checkpointing on is 0\.1 \(expected <= 0\.001\)") as err:
        preflight(model, batch_of(tokenizer), ends(key, tokenizer), max_share=AT_CHANCE)
    assert failed_lines(capsys) == [("loss with gradient checkpointing on", "0.1")]
    assert "gradient_checkpointing=False" in err.value.fix


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_the_check_leaves_checkpointing_and_the_mode_as_it_found_them(tiny, checkpointing, training):
    """The trainer runs the check after k-bit preparation turned checkpointing on (a T4's memory needs it) and
    trains right after: a check that left it off would train without it, one that left it on would slow a run
    that never asked for it; the same for training and eval mode."""
    key, tokenizer, model = tiny
    if checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    model.train(training)
    try:
        preflight(model, batch_of(tokenizer), ends(key, tokenizer), max_share=AT_CHANCE)
        assert (model.is_activation_checkpointing, model.training) == (checkpointing, training)
    finally:
        model.activation_checkpointing_disable()
        model.eval()


def test_the_check_shows_its_table_and_warns_of_nothing(tiny, capfd):
    """transformers 5.23 deprecated the gradient_checkpointing_* names (a FutureWarning each, gone in v6):
    the check reads and switches checkpointing under the new ones and asks for no cache where it trains, so
    the learner reads its table and nothing else."""
    key, tokenizer, model = tiny
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        preflight(model, batch_of(tokenizer), ends(key, tokenizer), max_share=AT_CHANCE)
    out, err = capfd.readouterr()
    assert [str(w.message) for w in caught] == [] and err == ""
    assert out.splitlines()[0].split() == ["check", "value", "expected", "verdict"]


def test_the_initial_loss_is_the_models_loss_on_the_batch_with_its_mask(tiny):
    """A left-padded batch: without its attention mask the model would read the padding, and the line would
    show another loss than the one training starts from."""
    key, tokenizer, model = tiny
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.padding_side = "left"
    batch = batch_of(tokenizer)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}  # what training reads
    with torch.no_grad():
        expected = float(model.eval()(**inputs).loss)
    line = preflight(model, batch, ends(key, tokenizer), max_share=AT_CHANCE)[2]
    assert line.check == "loss at initialisation" and line.value == f"{expected:.2f}"


def test_the_initial_loss_line_flips_at_max_share_times_ln_of_the_vocabulary(tiny):
    """Chance's loss is ln(vocabulary size): the line names that size and the threshold, passes just below the
    threshold and fails just above it, and its error says what the loss means and what to check."""
    key, tokenizer, model = tiny
    batch = batch_of(tokenizer)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    with torch.no_grad():
        share = float(model.eval()(**inputs).loss) / math.log(len(tokenizer))  # the loss, in units of chance
    for factor, passes in ((1.001, True), (0.999, False)):
        line = initial_loss(model, batch, share * factor)
        assert line.ok is passes and f"x ln({len(tokenizer)}) = " in line.expected
        assert line.expected.endswith(f" = {share * factor * math.log(len(tokenizer)):.2f}")
    with pytest.raises(PreflightError, match=r"loss at initialisation is [\d.]+ \(expected <= ") as err:
        preflight(model, batch, ends(key, tokenizer), max_share=share * 0.999)
    assert "chance" in err.value.problem and "model_name" in err.value.fix and "fp32 on a T4" in err.value.fix


EOS, EOT = 1, 2  # hand-written label rows: token ids, IGNORE where a token is not trained on


def test_the_share_counts_labelled_tokens_among_the_real_ones():
    """3 of the 5 real tokens of each row labelled, the padding neither labelled nor counted: 60%; a batch
    without an attention mask counts every position; a one-token row, labelled, is all labelled."""
    labels = torch.tensor([[IGNORE, IGNORE, 7, 8, EOS, IGNORE]] * 2)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]] * 2)
    share = label_mask({"labels": labels, "attention_mask": mask}, [EOS])[0]
    assert (share.check, share.ok, share.value, share.expected) == ("share of labelled tokens", True, "60%",
                                                                     ">= 5%")
    assert label_mask({"labels": labels}, [EOS])[0].value == "50%"  # 6 of 12 positions
    one = {"labels": torch.tensor([[EOS]]), "attention_mask": torch.tensor([[1]])}
    assert label_mask(one, [EOS])[0].value == "100%"


def test_the_share_line_passes_at_min_share_and_fails_below_it():
    labels = torch.tensor([[IGNORE, IGNORE, IGNORE, EOS]])  # 1 of 4: 25%
    assert label_mask({"labels": labels}, [EOS], min_share=0.25)[0].ok
    assert not label_mask({"labels": labels}, [EOS], min_share=0.26)[0].ok


def test_the_end_and_empty_lines_count_rows():
    """Row 1 ends on a labelled <eos>, row 2 on a labelled turn end (either stops generation), row 3 on an
    unlabelled end, row 4 has no labelled token at all: two of four rows end inside the mask, one is empty."""
    labels = torch.tensor([[7, 8, EOS], [7, 8, EOT], [7, 8, IGNORE], [IGNORE, IGNORE, IGNORE]])
    share, end, empty = label_mask({"labels": labels, "attention_mask": torch.ones_like(labels)}, [EOS, EOT])
    assert (end.check, end.ok, end.value, end.expected) == ("end token inside the mask", False, "2 of 4 rows",
                                                             "all 4 rows")
    assert (empty.check, empty.ok, empty.value, empty.expected) == ("no row all masked", False, "1 of 4 rows",
                                                                     "0")
    share, end, empty = label_mask({"labels": labels[:2]}, [EOS, EOT])
    assert (end.ok, end.value, empty.ok, empty.value) == (True, "2 of 2 rows", True, "0 of 2 rows")
    assert not label_mask({"labels": labels[:2]}, [EOS])[1].ok  # the turn end is not an end for a text model


def test_each_failed_label_line_says_what_it_means_and_what_to_change():
    """A failed line reaches the learner as its problem and its fix: each names the tokens, the setting or the
    function it is about (the stop tokens, max_length, the mask, the training chat template)."""
    from gemmate_lib import generations

    labels = torch.tensor([[IGNORE] * 39 + [7], [IGNORE] * 40])  # 1 of 80 labelled, no end, a row all masked
    share, end, empty = label_mask({"labels": labels}, [EOS])
    assert not (share.ok or end.ok or empty.ok)
    assert "trained on" in share.problem and "completion/assistant mask" in share.fix
    assert "<eos>, <end_of_turn> or <turn|>" in end.problem and "never learns to stop" in end.problem
    assert "tokenizer's EOS" in end.fix and "{% generation %}" in end.fix
    assert "(generations.training_chat_template)" in end.fix and callable(generations.training_chat_template)
    assert "truncation cut the answer off" in empty.problem and "raise max_length" in empty.fix


def test_a_batch_of_one_row_or_without_a_mask_is_checked(tiny):
    """The GPU profile trains one row per step (batch 1 x 4): its first batch holds a single row; a batch
    built by hand may carry no attention mask (every token real)."""
    key, tokenizer, model = tiny
    one = {k: v[:1] for k, v in batch_of(tokenizer).items()}  # the longer row: no padding
    for batch in (one, {k: one[k] for k in ("input_ids", "labels")}):
        verdicts = preflight(model, batch, ends(key, tokenizer), max_share=AT_CHANCE)
        assert all(v.ok for v in verdicts) and verdicts[3].value == "100%"


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


# ---- the gradient tripwire: after the first optimizer step, every LoRA module got a gradient ----

def tripwire_trainer(tmp_path, label_nothing=False, steps=2, optim="adamw_torch"):
    """The course's trainer (CourseSFTTrainer, its fast loss) on a tiny Gemma 3 with LoRA on q_proj and
    v_proj (2 layers: 4 LoRA modules), fp32 on the CPU, with a GradientTripwire; `label_nothing`: every label
    of every batch -100, as a collator whose mask labels nothing makes them (TRL drops rows whose own
    completion mask is all zeros, but not what a collator does)."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from tiny import TEXTS, make_tiny_gemma, make_tiny_tokenizer
    from trl import SFTConfig

    from gemmate_lib.preflight import GradientTripwire
    from gemmate_lib.training import CourseSFTTrainer

    tokenizer = make_tiny_tokenizer()
    model = get_peft_model(make_tiny_gemma(tokenizer), LoraConfig(r=4, lora_alpha=8, target_modules=[
        "q_proj", "v_proj"], task_type="CAUSAL_LM"))
    ids = tokenizer([t + tokenizer.eos_token for t in TEXTS])["input_ids"]
    data = Dataset.from_dict({"input_ids": ids})
    args = SFTConfig(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=2,
                     learning_rate=1e-3, use_cpu=True, report_to="none", save_strategy="no", logging_steps=1,
                     disable_tqdm=True, max_length=64, bf16=False, optim=optim)
    trainer = CourseSFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    if label_nothing:
        collate = trainer.data_collator
        trainer.data_collator = lambda rows: {**(batch := collate(rows)),
                                              "labels": torch.full_like(batch["labels"], IGNORE)}
    tripwire = GradientTripwire()
    trainer.add_callback(tripwire)
    return trainer, tripwire


def lora_b(trainer, index=0):
    """The `index`-th LoRA module's name (as the tripwire names it) and its lora_B weight."""
    from peft.tuners.lora import LoraLayer

    name, module = [(n, m) for n, m in trainer.model.named_modules() if isinstance(m, LoraLayer)][index]
    return name.removeprefix("base_model.model."), module.lora_B["default"].weight


def test_the_tripwire_passes_a_normal_lora_run(tmp_path, capsys):
    trainer, tripwire = tripwire_trainer(tmp_path)
    trainer.train()
    assert tripwire.passed is True and trainer.state.global_step == 2
    assert ("gradient tripwire: after step 1, all 4 LoRA modules got finite gradients, and every lora_B a "
            "non-zero one") in capsys.readouterr().out


def test_a_mask_that_labels_nothing_stops_after_step_1_naming_the_modules(tmp_path):
    """Every label -100: the loss is a calm 0 and every gradient zero; the run stops after its first step."""
    trainer, tripwire = tripwire_trainer(tmp_path, label_nothing=True)
    with pytest.raises(PreflightError, match=r"after step 1, 4 of 4 LoRA modules got a zero \(or no\) lora_B "
                                             r"gradient \(model\.layers\.0\.self_attn\.q_proj, ") as err:
        trainer.train()
    assert "labels all -100" in err.value.problem and "completion or assistant mask" in err.value.fix
    assert tripwire.passed is False and trainer.state.global_step == 0


def test_a_planted_nan_stops_the_run_naming_the_one_module(tmp_path):
    trainer, tripwire = tripwire_trainer(tmp_path)
    name, weight = lora_b(trainer, 2)
    weight.register_hook(lambda grad: torch.full_like(grad, math.nan))
    with pytest.raises(PreflightError, match=rf"1 of 4 LoRA modules got no finite gradient \({name}\)"):
        trainer.train()
    assert tripwire.passed is False


@pytest.mark.parametrize("optim", ["adamw_torch", "adamw_torch_fused"])  # the fused one skips inside its step
def test_fp16s_skipped_first_step_is_normal_and_the_first_step_taken_is_checked(tmp_path, capsys,
                                                                                monkeypatch, optim):
    """fp16's gradient scaler (a real torch GradScaler in accelerate's optimizer; a CPU has no fp16 autocast,
    so an inf gradient stands in for an overflow at its starting scale): step 1 is skipped and reported as
    normal, step 2 is checked and passes. A scaler that skips every step stops the run."""
    trainer, tripwire = tripwire_trainer(tmp_path, steps=3, optim=optim)
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu")  # what fp16 on a GPU gives the optimizer
    name, weight = lora_b(trainer)
    calls = []
    weight.register_hook(lambda grad: calls.append(1) or (grad * math.inf if len(calls) == 1 else grad))
    trainer.train()
    out = capsys.readouterr().out
    assert "step 1 skipped by fp16's gradient scaler" in out and "normal in the first steps" in out
    assert "keep being skipped past the first few is overflowing" in out
    assert ("after step 2 (the first fp16's scaler took; 1 skipped before it: normal), all 4 LoRA modules "
            "got finite gradients") in out
    assert tripwire.passed is True and tripwire.skipped == 1

    monkeypatch.setattr("gemmate_lib.preflight.MAX_SKIPPED", 3)
    trainer, tripwire = tripwire_trainer(tmp_path, steps=5, optim=optim)
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu")
    lora_b(trainer)[1].register_hook(lambda grad: grad * math.inf)  # every step overflows
    with pytest.raises(PreflightError, match="skipped the first 3 steps"):
        trainer.train()


def test_the_librarys_training_path_adds_the_tripwire_where_the_preflight_runs(tmp_path, monkeypatch,
                                                                               capsys):
    """`preflight: true`: CourseSFTTrainer runs the pre-flight (stood in for: a random base is at chance),
    then trains with the tripwire; without the pre-flight, no tripwire."""
    from tiny import ROWS, make_tiny_gemma, make_tiny_tokenizer

    from gemmate_lib import preflight as module
    from gemmate_lib.config import course_config
    from gemmate_lib.preflight import GradientTripwire
    from gemmate_lib.training import attach_lora, sft_trainer

    monkeypatch.setattr(module, "preflight", lambda *args, **kwargs: [])
    tokenizer = make_tiny_tokenizer()
    cfg = course_config(device="cpu", dtype="fp32", preflight=True, max_steps=1, batch_size=2, save_steps=0)
    trainer = sft_trainer(attach_lora(make_tiny_gemma(tokenizer), cfg, quiet=True), tokenizer, ROWS, [], cfg,
                          tmp_path)
    trainer.train()
    wires = [c for c in trainer.callback_handler.callbacks if isinstance(c, GradientTripwire)]
    assert len(wires) == 1 and wires[0].passed is True
    out = capsys.readouterr().out
    assert "gradient tripwire: after step 1, all 14 LoRA modules got finite gradients" in out
    off = cfg.replace(preflight=False)
    plain = sft_trainer(attach_lora(make_tiny_gemma(tokenizer), off, quiet=True), tokenizer, ROWS, [], off,
                        tmp_path / "off")
    plain.train()
    assert not any(isinstance(c, GradientTripwire) for c in plain.callback_handler.callbacks)


def test_a_loss_exactly_at_the_threshold_passes(tiny):
    """The line's own words, `<= max_share x ln(V)`: a loss equal to the threshold passes."""
    from gemmate_lib.preflight import _loss

    key, tokenizer, model = tiny
    batch = batch_of(tokenizer)
    with torch.no_grad():
        loss = float(_loss(model.eval(), batch))
    chance = math.log(model.get_output_embeddings().weight.shape[0])
    share = loss / chance
    for _ in range(8):  # the float next to loss / chance whose product with chance is the loss itself
        if share * chance == loss:
            break
        share = math.nextafter(share, math.inf if share * chance < loss else -math.inf)
    assert share * chance == loss
    assert initial_loss(model, batch, share).ok
    assert not initial_loss(model, batch, math.nextafter(share, 0.0)).ok


def test_with_tokens_labelled_the_error_names_the_first_failed_line(tiny, capsys):
    """Only a batch that labels nothing is named by its label line; where some tokens are labelled (too few)
    and the model is at chance as well, the error names the first line that failed, the loss."""
    key, tokenizer, model = tiny
    text = "Quote: " + "be yourself, everyone else is taken. " * 6 + "\nAuthor: Oscar Wilde"
    enc = tokenizer([text + tokenizer.eos_token] * 2, return_tensors="pt", padding=True)
    labels = torch.full_like(enc["input_ids"], IGNORE)
    last = int(enc["attention_mask"][0].sum()) - 1  # row 0's <eos> (right padding): its only labelled token
    labels[0, last] = enc["input_ids"][0, last]
    batch = {**enc, "labels": labels}
    with pytest.raises(PreflightError) as err:
        preflight(model, batch, ends(key, tokenizer), max_share=0.01)
    failed = [check for check, _ in failed_lines(capsys)]
    assert failed[:2] == ["loss at initialisation", "share of labelled tokens"]
    assert err.value.verdict.check == "loss at initialisation"


def test_a_list_of_modules_shows_four_and_counts_the_rest():
    from gemmate_lib.preflight import _names

    assert _names(["a", "b", "c", "d"]) == "a, b, c, d"
    assert _names(["a", "b", "c", "d", "e"]) == "a, b, c, d and 1 more"
    assert _names(["a", "b", "c", "d", "e", "f"], shown=2) == "a, b and 4 more"


# ---- the tripwire's parts one at a time: which weights it watches, how it sums a module, its hooks ----

def lora_model(targets=("q_proj", "v_proj"), **lora):
    """A tiny Gemma 3 (2 layers) with LoRA on `targets`, fp32 on the CPU, and a batch of it."""
    from peft import LoraConfig, get_peft_model
    from tiny import TEXTS, make_tiny_gemma, make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer()
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), task_type="CAUSAL_LM", **lora)
    model = get_peft_model(make_tiny_gemma(tokenizer), lora)
    enc = tokenizer(TEXTS[:2], return_tensors="pt", padding=True)
    return model, {**enc, "labels": enc["input_ids"].masked_fill(enc["attention_mask"] == 0, IGNORE)}


def backward(model, batch):
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()


def test_a_gradient_is_finite_and_moved_or_not_and_no_gradient_is_a_finite_zero():
    from gemmate_lib.preflight import grad_state

    assert grad_state(None) == (True, False)
    assert grad_state(torch.tensor([0.0, 0.0])) == (True, False)
    assert grad_state(torch.tensor([0.0, 2.0])) == (True, True)
    assert grad_state(torch.tensor([math.nan, 2.0])) == (False, True)
    assert grad_state(torch.tensor([math.inf, 0.0])) == (False, True)


def test_the_tripwire_watches_the_active_adapters_weights_only():
    """A second adapter beside the one training (05 loads two) is frozen: its weights get no gradient, and
    watching them would read as a module the loss never reaches."""
    from peft import LoraConfig

    from gemmate_lib.preflight import lora_weights

    model, _ = lora_model()
    model.add_adapter("other", LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    watched = lora_weights(model)
    assert len(watched) == 8 and all(".default" in weight for _, weight, _ in watched)
    assert {module for module, _, _ in watched} == {f"model.layers.{i}.self_attn.{p}_proj" for i in (0, 1)
                                                   for p in "qv"}


def test_a_module_sums_its_weights_gradients_as_backward_left_them():
    """From the hooks' record: a weight whose hook never fired got no gradient (finite, zero); one non-finite
    weight makes its module non-finite, whichever comes first; only the zero-started weight's gradient
    (lora_B) says the loss reached the module at step 1."""
    from gemmate_lib.preflight import lora_gradients, lora_weights

    model, _ = lora_model(targets=("q_proj",))
    first = lora_weights(model)[0][0]
    assert lora_gradients(model, {}) == [(first, True, False), (first.replace("0", "1"), True, False)]
    cases = {((True, False), (True, True)): (True, True),    # step 1: A zero, B moved
             ((False, True), (True, True)): (False, True),   # A broke, B after it did not
             ((True, True), (False, True)): (False, True),
             ((True, True), (True, False)): (True, False)}   # A moved, B did not: the loss reached no B
    for (a, b), expected in cases.items():
        grads = {(first, "lora_A.default.weight"): a, (first, "lora_B.default.weight"): b}
        assert lora_gradients(model, grads)[0] == (first, *expected), (a, b)


def test_without_hooks_the_module_is_read_from_each_weights_grad():
    """A tripwire added after training began (no hooks) reads `.grad`: after one backward every module's
    lora_B moved; before any, none did."""
    from gemmate_lib.preflight import lora_gradients

    model, batch = lora_model()
    assert {(f, m) for _, f, m in lora_gradients(model)} == {(True, False)}
    backward(model, batch)
    assert {(f, m) for _, f, m in lora_gradients(model)} == {(True, True)}


def test_lora_on_the_embedding_passes_the_tripwire(tmp_path):
    """peft starts an embedding's LoRA the other way round (lora_embedding_A at zero, B drawn), so its first
    gradient lands on A, and B's is zero: a healthy run with LoRA on embed_tokens must not be stopped."""
    from gemmate_lib.preflight import GradientTripwire, lora_gradients

    model, batch = lora_model(targets=("embed_tokens", "q_proj"), ensure_weight_tying=True)
    backward(model, batch)
    assert ("model.embed_tokens", True, True) in lora_gradients(model)
    tripwire = GradientTripwire()
    state = type("State", (), {"global_step": 0})()
    tripwire.on_pre_optimizer_step(None, state, None, model=model)
    tripwire.on_optimizer_step(None, state, None)
    assert tripwire.passed is True


def test_the_tripwire_hooks_once_judges_once_and_waits_for_a_step_to_judge(capsys):
    """Called as the Trainer calls it, with no optimizer scaler (a CPU or bf16 run): hooks go on once however
    often training begins; a step with nothing read before it is not judged; after the check it reads
    nothing more and removes its hooks; it prints its one line, once."""
    from gemmate_lib.preflight import GradientTripwire, lora_weights

    model, batch = lora_model()
    state = type("State", (), {"global_step": 0})()
    tripwire = GradientTripwire()
    tripwire.on_train_begin(None, state, None, model=None)  # no model: nothing to watch, no error
    tripwire.on_optimizer_step(None, state, None)  # nothing read before it
    assert tripwire.passed is None
    tripwire.on_train_begin(None, state, None, model=model)
    tripwire.on_train_begin(None, state, None, model=model)
    assert len(tripwire._hooks) == len(lora_weights(model)) == 8
    backward(model, batch)
    tripwire.on_pre_optimizer_step(None, state, None, model=model, optimizer=None)
    tripwire.on_optimizer_step(None, state, None, optimizer=object())
    assert tripwire.passed is True and tripwire._hooks == []
    tripwire.on_train_begin(None, state, None, model=model)
    tripwire.on_pre_optimizer_step(None, state, None, model=model)
    assert tripwire._hooks == [] and tripwire._seen is None
    assert capsys.readouterr().out == ("gradient tripwire: after step 1, all 4 LoRA modules got finite "
                                       "gradients, and every lora_B a non-zero one\n")
    empty = GradientTripwire()  # a model with no LoRA module: nothing to judge, nothing to say
    empty.on_pre_optimizer_step(None, state, None, model=torch.nn.Linear(2, 2))
    empty.on_optimizer_step(None, state, None)
    assert empty.passed is True and capsys.readouterr().out == ""


def test_a_step_accelerate_says_was_skipped_is_waited_past_then_overflow_stops_the_run(capsys, monkeypatch):
    """accelerate's optimizer says `step_was_skipped` when fp16's scaler skipped (its scale need not show it
    yet): the tripwire waits, says so once, and after MAX_SKIPPED in a row stops the run, failed, naming
    fp16 overflow and the fix for each generation."""
    from gemmate_lib.preflight import GradientTripwire

    monkeypatch.setattr("gemmate_lib.preflight.MAX_SKIPPED", 3)
    model, batch = lora_model()
    backward(model, batch)
    tripwire = GradientTripwire()
    skipped = type("Optimizer", (), {"step_was_skipped": True})()
    for step in range(2):
        state = type("State", (), {"global_step": step})()
        tripwire.on_pre_optimizer_step(None, state, None, model=model, optimizer=skipped)
        tripwire.on_optimizer_step(None, state, None, optimizer=skipped)
    assert tripwire.passed is None and tripwire.skipped == 2
    out = capsys.readouterr().out
    assert out.count("skipped by fp16's gradient scaler") == 1
    assert ("step 1 skipped by fp16's gradient scaler (inf/NaN gradients at its starting scale, which it "
            "now lowers): normal in the first steps, while a run whose steps keep being skipped past the "
            "first few is overflowing; the check waits for the first step the scaler takes") in out
    tripwire.on_train_begin(None, state, None, model=model)
    tripwire.on_pre_optimizer_step(None, state, None, model=model, optimizer=skipped)
    with pytest.raises(PreflightError) as err:
        tripwire.on_optimizer_step(None, state, None, optimizer=skipped)
    assert tripwire.passed is False and tripwire._hooks == []
    assert ("skipped the first 3 steps (inf/NaN gradients at every scale it tried): the run overflows fp16 "
            "and trains nothing") in err.value.problem
    assert ("Gemma 3 and 4 overflow fp16: compute in fp32 on a T4 (the course's dtype rule); for Gemma 1 "
            "lower the learning rate and check the data (the pre-flight's loss line)") == err.value.fix


def test_a_planted_nan_and_a_mask_that_labels_nothing_say_what_to_do():
    """The two failures' fixes, as the learner reads them: the NaN's names the loss line, fp32 for Gemma 3
    and 4, the learning rate and the data; the zero gradient's names the mask and the 4-bit checkpointing
    call."""
    from gemmate_lib.preflight import GradientTripwire, lora_weights

    model, batch = lora_model()
    state = type("State", (), {"global_step": 0})()
    nan_fix = ("run the pre-flight check (its loss line), keep Gemma 3 and 4 out of fp16 (fp32 on a T4), "
               "lower the learning rate, and look for a broken row in the data")
    zero_cause = ("labels all -100 (a completion or assistant mask that labels nothing), or gradients cut "
                  "off before the adapter (checkpointing without input gradients)")
    zero_fix = ("with gradient checkpointing on a 4-bit base, call prepare_model_for_kbit_training (or "
                "model.enable_input_require_grads())")
    for plant, words in [(math.nan, [nan_fix]), (0.0, [zero_cause, zero_fix])]:
        backward(model, batch)
        for _, _, param in lora_weights(model):
            param.grad.fill_(plant)
        tripwire = GradientTripwire()
        tripwire.on_pre_optimizer_step(None, state, None, model=model)
        with pytest.raises(PreflightError) as err:
            tripwire.on_optimizer_step(None, state, None)
        text = f"{err.value.problem} {err.value.fix}"
        assert all(w in text for w in words), text


# ---- the tripwire's gradient-norm spike: named once, training goes on ----

def log_norms(tripwire, norms, max_grad_norm=1.0):
    """`norms` handed to the tripwire's on_log as the Trainer logs them (logging_steps=1), steps 1, 2, ..."""
    args = type("Args", (), {"max_grad_norm": max_grad_norm})()
    for step, norm in enumerate(norms, 1):
        state = type("State", (), {"global_step": step})()
        tripwire.on_log(args, state, None, logs={"loss": 1.0, "grad_norm": norm, "learning_rate": 2e-4})


SPIKE_FIX = ("lower the learning rate and clip gradients (max_grad_norm=1.0); Gemma 4 LoRA shows such spikes "
             "(transformers issue 45676)")


def test_a_gradient_norm_spike_is_named_once_with_its_step_norm_and_median(capsys):
    """Step 7's norm is 11 times the median of the six before it (1.15): one line names the step, the norm,
    the median and the fix, and training goes on; step 8's larger spike says nothing more."""
    from gemmate_lib.preflight import GradientTripwire

    tripwire = GradientTripwire()
    log_norms(tripwire, [2.0, 1.6, 1.2, 1.0, 0.9, 1.1, 12.5, 40.0, 1.0])
    out = capsys.readouterr().out
    assert out.count("gradient tripwire:") == 1, out
    assert ("gradient tripwire: step 7's gradient norm 12.5 is 11 times the run's median so far (1.15): a "
            "spike with no NaN, so training goes on (the Trainer clipped this step to max_grad_norm=1); the "
            "fix: ") in out
    assert SPIKE_FIX in out
    assert tripwire.spike == (7, 12.5, 1.15) and tripwire.passed is None
    unclipped = GradientTripwire()
    log_norms(unclipped, [1.0] * 5 + [20.0], max_grad_norm=0.0)
    assert unclipped.spike == (6, 20.0, 1.0)
    assert "(and unclipped: max_grad_norm=0 turns clipping off)" in capsys.readouterr().out


def test_a_steady_run_says_nothing_about_spikes(capsys):
    """A falling curve, a jump before the median has its history (step 2: 27 times step 1), logs without a
    norm (an evaluation's), and non-finite norms (fp16's skipped steps) are no spike."""
    from gemmate_lib.preflight import GradientTripwire

    tripwire = GradientTripwire()
    log_norms(tripwire, [0.3, 8.0, 6.0, math.nan, 4.0, 3.0, 2.0, math.inf, 1.5, 1.2, 1.0, 0.9, 5.0])
    state = type("State", (), {"global_step": 13})()
    tripwire.on_log(None, state, None, logs={"eval_loss": 2.0})
    tripwire.on_log(None, state, None, logs=None)
    assert tripwire.spike is None and capsys.readouterr().out == ""


def test_a_planted_spike_in_a_real_run_is_named_from_the_trainers_logged_norm(tmp_path, capsys):
    """The course's trainer, 8 steps: step 7's lora_B gradient planted 10,000 times larger; the Trainer's
    logged (pre-clip) grad_norm shows it, the tripwire names it, and the run finishes."""
    trainer, tripwire = tripwire_trainer(tmp_path, steps=8)
    calls = []

    def plant(grad):  # step 7's backward: 10,000 times the gradient
        calls.append(1)
        return grad * 1e4 if len(calls) == 7 else grad

    lora_b(trainer)[1].register_hook(plant)
    trainer.train()
    out = capsys.readouterr().out
    assert trainer.state.global_step == 8 and tripwire.passed is True
    assert tripwire.spike is not None and tripwire.spike[0] == 7, out
    assert "gradient tripwire: step 7's gradient norm " in out and SPIKE_FIX in out


def test_a_planted_nan_still_stops_the_run_and_is_no_spike(tmp_path, capsys):
    """A NaN stops the run after its first step as before (a PreflightError); the spike line stays silent."""
    trainer, tripwire = tripwire_trainer(tmp_path)
    lora_b(trainer, 2)[1].register_hook(lambda grad: torch.full_like(grad, math.nan))
    with pytest.raises(PreflightError, match="got no finite gradient"):
        trainer.train()
    assert tripwire.passed is False and tripwire.spike is None
    assert "spike" not in capsys.readouterr().out
