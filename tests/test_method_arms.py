"""Side-by-side short runs (03): the memory meter, and the real QLoRA recipe training on a CPU."""
import math

import pytest

from gemmate_lib.methods import train_arm
from gemmate_lib.training import PeakMemory

ROWS = [{"quote": q, "author": a, "text": f"Quote: {q}\nAuthor: {a}"}
        for q, a in (("Be yourself; everyone else is taken.", "Oscar Wilde"),
                     ("Stay hungry, stay foolish.", "Steve Jobs"),
                     ("Imagination is more important than knowledge.",
                      "Albert Einstein"), ("one two three four", "Nobody"))]


def test_peak_memory_sees_an_allocation_and_its_absence():
    import torch

    with PeakMemory() as idle:
        pass
    with PeakMemory() as busy:
        block = torch.ones(64 * 2**20)  # 256 MiB of float32
        block += 1
        del block
    assert busy.peak_mib > 200 and idle.peak_mib < 50


def test_qlora_and_lora_arms_train_the_same_adapter_and_report_numbers_measured_the_same_way(
        tiny_folder, tiny_tokenizer, cpu_cfg, tmp_path):
    """03's side-by-side runs: QLoRA is LoRA on an NF4 base, so both arms train the same adapter (the same
    trainable count and share, the adapter alone changes), their first loss is the same base's loss up to
    NF4's rounding, and each held-out loss in the table is the one measured on the arm's own trained model."""
    from weights import trains_only_the_trainable

    from gemmate_lib.evaluation import held_out_loss

    base = cpu_cfg.replace(model_name=str(tiny_folder), max_steps=2, batch_size=2, steps_freq=1,
                           learning_rate=1e-2, warmup_steps=0)
    with trains_only_the_trainable() as checked:
        lora = train_arm("LoRA", base, tiny_tokenizer, ROWS, ROWS[:2], tmp_path / "a", format_check=True,
                         keep_model=True)
        qlora_cfg = base.replace(quantization="nf4", optim="paged_adamw_8bit", gradient_checkpointing=True)
        qlora = train_arm("QLoRA", qlora_cfg, tiny_tokenizer, ROWS, ROWS[:2], tmp_path / "b", keep_model=True)
    assert len(checked) == 2 and all(all("lora_" in n for n in c["changed"]) for c in checked)
    assert set(lora.summary) - {"format_compliance"} == set(qlora.summary)
    assert lora.summary["trainable"] == qlora.summary["trainable"] > 0
    assert lora.summary["trainable_share"] == qlora.summary["trainable_share"]
    first = [float(arm.log.loss.dropna().iloc[0]) for arm in (lora, qlora)]
    assert first[0] == pytest.approx(first[1], rel=0.02) and all(math.isfinite(x) for x in first)
    for arm in (lora, qlora):
        assert arm.log.loss.notna().sum() == 2 and arm.summary["seconds_per_step"] > 0
        assert arm.summary["held_out_loss_text"] == pytest.approx(
            held_out_loss(arm.model, tiny_tokenizer, ROWS[:2], base.train.max_length), abs=1e-3)
    assert lora.summary["format_compliance"] in (0, 0.5, 1)  # two held-out rows
    layer = qlora.model.get_base_model().model.layers[0].self_attn.q_proj
    assert type(layer.base_layer).__name__ == "Linear4bit"  # NF4 weights under the LoRA adapter


def test_03s_padding_share_by_hand(capsys):
    import types

    from test_notebook_recipes import run_cell

    def share(lengths, batch_size):  # 03's cell on texts of these lengths, a token a character
        tokenizer = type("T", (), {"eos_token": "", "__call__": lambda _, text: {"input_ids": list(text)}})()
        data = types.SimpleNamespace(train=[{"text": "x" * n} for n in lengths])
        run_cell("03_lora_sft.ipynb", "1429bd50", tokenizer=tokenizer, data=data,
                 t=types.SimpleNamespace(batch_size=batch_size, seed=0))
        printed = capsys.readouterr().out.splitlines()[1:]  # random order, then grouped
        return [line.rsplit(": ", 1)[1] for line in printed]

    assert share([4, 4, 4, 4], 2) == ["0% of the tokens"] * 2
    assert share([1, 3, 1, 3], 4)[1] == "33% of the tokens"  # one batch of 4: (3, 3, 1, 1) pads 4 of 12
    assert share([1, 3, 1, 3], 2)[1] == "0% of the tokens"  # sorted: (3, 3), (1, 1)
    assert share([2, 4], 2) == ["25% of the tokens"] * 2  # 6 tokens in a batch of 2 x 4


@pytest.mark.slow  # over 3 s: make test runs it, make test-fast does not
def test_seconds_per_step_time_the_steps_not_the_start_up(tiny_folder, tiny_tokenizer, cpu_cfg, tmp_path,
                                                          monkeypatch):
    """Pauses injected by callbacks, on a clock that only
    they move (exact on a busy machine): one before training
    (on_train_begin) does not count, one inside every step (before each optimizer update) counts once a step,
    and one in the first step alone does not count (that step pays
    one-off costs); a run of one step reports that step."""
    from transformers import TrainerCallback


    now = [0.0]
    monkeypatch.setattr("gemmate_lib.training.perf_counter", lambda: now[0])  # StepTimer's clock alone

    class Pause(TrainerCallback):
        def __init__(self, event: str, seconds: float, first_step_only: bool = False):
            def pause(args, state, control, **kwargs):
                if not first_step_only or state.global_step == 0:
                    now[0] += seconds
            setattr(self, event, pause)

    cfg = cpu_cfg.replace(model_name=str(tiny_folder), max_steps=3, batch_size=2, steps_freq=1)

    def per_step(name, *callbacks, steps=3):
        return train_arm(name, cfg.replace(max_steps=steps), tiny_tokenizer, ROWS, ROWS[:1], tmp_path / name,
                         callbacks=list(callbacks)).summary["seconds_per_step"]

    # all three pauses in one run: the start-up or the first step counted gives more, the steps' own pause
    # left out gives 0
    assert per_step("three_pauses", Pause("on_train_begin", 100.0), Pause("on_pre_optimizer_step", 0.5),
                    Pause("on_pre_optimizer_step", 7.0, first_step_only=True)) == 0.5
    assert per_step("one_step", Pause("on_pre_optimizer_step", 7.0), steps=1) == 7.0


def test_step_timer_leaves_out_the_first_step_when_there_are_others():
    from gemmate_lib.training import StepTimer

    timer = StepTimer()
    assert timer.per_step() != timer.per_step()  # NaN before any step
    timer.seconds = [5.0]
    assert timer.per_step() == 5.0  # one step: all there is
    timer.seconds = [5.0, 1.0, 2.0]
    assert timer.per_step() == 1.5
