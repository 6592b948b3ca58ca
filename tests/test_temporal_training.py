"""GemmaTE's training (temporal/training.py, 07; the command, `gemmate train-te`:
tests/cli/test_cli_train_te.py): LoRA and the projection train together, and the baselines every accuracy
stands next to."""
import json
import time
from datetime import datetime

import pytest

from gemmate_lib.temporal.model import GemmaTEForCausalLM

pytestmark = pytest.mark.usefixtures("one_thread")


def test_trainer_trains_lora_and_the_projection(tiny_model, tiny_tokenizer, tmp_path):
    from weights import trains_only_the_trainable

    from gemmate_lib.config import course_config
    from gemmate_lib.temporal.data import PROMPT_END, TextDataset
    from gemmate_lib.temporal.training import attach_temporal_lora, train_temporal

    cfg = course_config("temporal", device="cpu", dtype="fp32", max_steps=3, batch_size=4, steps_freq=1)
    te = attach_temporal_lora(GemmaTEForCausalLM(tiny_model, cfg.temporal), cfg)
    assert attach_temporal_lora(te, cfg).model is te.model  # once: a second call keeps the adapter
    texts = [f"Note {i}\nWritten: May {2008 + i}" for i in range(8)]
    stamps = [datetime(2008 + i, 5, 10) for i in range(8)]
    ds = TextDataset(texts, tiny_tokenizer, stamps, prompt_end=PROMPT_END)
    with trains_only_the_trainable() as checked:  # the base stays frozen; LoRA and the projection move
        result = train_temporal(te, ds, cfg, tmp_path, tiny_tokenizer.pad_token_id)
    trained = {"projection" if "temporal_projection" in n else n.split(".")[-3]  # ...lora_A.default.weight
               for n in checked[0]["changed"]}
    assert trained == {"projection", "lora_A", "lora_B"}
    assert result.steps == 3 and len(result.log) == 3 and result.log["loss"].notna().all()
    assert result.model is te and not te.training  # returned ready to generate


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


def test_gemmates_checkpoints_hold_what_trains_and_a_stopped_run_resumes_bitwise(tiny_model, tiny_tokenizer,
                                                                                 tmp_path, capsys):
    """07's training checkpoints (GemmaTETrainer): the adapter and the projection, never the frozen base; a
    run stopped right after its checkpoint at step 2 (a reclaimed runtime) and run again resumes there and
    ends where the uninterrupted run does, bitwise."""
    import copy

    import torch
    from transformers import TrainerCallback

    from gemmate_lib.config import course_config
    from gemmate_lib.temporal.data import PROMPT_END, TextDataset
    from gemmate_lib.temporal.training import attach_temporal_lora, train_temporal

    class Reclaimed(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # a slow first stretch: its seconds must count
            if state.global_step == 1:
                time.sleep(0.5)

        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise KeyboardInterrupt

    cfg = course_config("temporal", device="cpu", dtype="fp32", max_steps=4, batch_size=2, steps_freq=1,
                        save_steps=2)
    texts = [f"Note {i}\nWritten: May {2008 + i}" for i in range(8)]
    stamps = [datetime(2008 + i, 5, 10) for i in range(8)]
    ds = TextDataset(texts, tiny_tokenizer, stamps, prompt_end=PROMPT_END)

    def trained(folder, callbacks=None):
        te = attach_temporal_lora(GemmaTEForCausalLM(copy.deepcopy(tiny_model), cfg.temporal), cfg)
        result = train_temporal(te, ds, cfg, folder, tiny_tokenizer.pad_token_id, callbacks=callbacks)
        trained.seconds = result.seconds
        return {n: p.detach().clone() for n, p in result.model.named_parameters() if p.requires_grad}

    straight = trained(tmp_path / "straight")
    start = time.time()
    try:
        trained(tmp_path / "stopped", [Reclaimed()])
    except KeyboardInterrupt:
        pass
    first_stretch = time.time() - start
    state = json.loads((tmp_path / "stopped" / "checkpoint-2" / "trainer_state.json").read_text())
    clock = state["stateful_callbacks"]["TrainingClock"]["attributes"]["seconds"]
    saved = sorted(p.name for p in (tmp_path / "stopped" / "checkpoint-2").iterdir())
    assert {"adapter_model.safetensors", "temporal.safetensors", "optimizer.pt",
            "trainer_state.json"} <= set(saved)
    assert not [name for name in saved if name.startswith("model")]  # no copy of the base
    capsys.readouterr()
    start = time.time()
    resumed = trained(tmp_path / "stopped")
    second_stretch = time.time() - start
    assert "resuming from step 2" in capsys.readouterr().out  # not a fresh run that happens to end alike
    # the run's seconds count both stretches: the first up to its checkpoint, then the resumed one
    assert 0.5 < clock <= first_stretch
    assert clock < trained.seconds <= clock + second_stretch
    assert resumed.keys() == straight.keys() and all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_a_rerun_with_other_timestamps_is_another_run_and_starts_over(tiny_model, tiny_tokenizer, tmp_path):
    """The same notes with corrected timestamps (a learner's own file, rerun after fixing its times): the
    run's identity hashed the notes' tokens only, so the rerun resumed the checkpoint trained on the old times
    as "a checkpoint of this same run". The times are part of the run now: it starts over."""
    import copy

    from transformers import TrainerCallback

    from gemmate_lib.config import course_config
    from gemmate_lib.temporal.data import PROMPT_END, TextDataset
    from gemmate_lib.temporal.training import attach_temporal_lora, train_temporal

    cfg = course_config("temporal", device="cpu", dtype="fp32", max_steps=4, batch_size=2, steps_freq=1,
                        save_steps=2)
    texts = [f"Note {i}\nWritten: May {2008 + i}" for i in range(8)]

    class Reclaimed(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            raise KeyboardInterrupt  # the runtime goes, right after its first checkpoint

    def run(stamps, callbacks=None):
        te = attach_temporal_lora(GemmaTEForCausalLM(copy.deepcopy(tiny_model), cfg.temporal), cfg)
        return train_temporal(te, TextDataset(texts, tiny_tokenizer, stamps, prompt_end=PROMPT_END), cfg,
                              tmp_path / "run", tiny_tokenizer.pad_token_id, callbacks=callbacks)

    right = [datetime(2008 + i, 5, 10) for i in range(8)]
    with pytest.raises(KeyboardInterrupt):  # one note's time two hours off (a time zone), fixed for the rerun
        run([*right[:4], datetime(2012, 5, 10, 2), *right[5:]], [Reclaimed()])
    assert (tmp_path / "run" / "checkpoint-2").is_dir()
    result = run(right)
    assert result.steps == 4 and (tmp_path / "run" / "previous-run" / "checkpoint-2").is_dir()
