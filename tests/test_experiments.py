"""Side-by-side short runs (03): the memory meter, and the real QLoRA recipe training on a CPU."""
import math

from gemmate_lib.experiments import PeakMemory, train_arm

ROWS = [{"quote": q, "author": a, "text": f"Quote: {q}\nAuthor: {a}"}
        for q, a in (("Be yourself; everyone else is taken.", "Oscar Wilde"), ("Stay hungry, stay foolish.", "Steve Jobs"),
                     ("Imagination is more important than knowledge.", "Albert Einstein"), ("one two three four", "Nobody"))]


def test_peak_memory_sees_an_allocation_and_its_absence():
    import torch

    with PeakMemory() as idle:
        pass
    with PeakMemory() as busy:
        block = torch.ones(64 * 2**20)  # 256 MiB of float32
        block += 1
        del block
    assert busy.peak_mib > 200 and idle.peak_mib < 50


def test_qlora_and_lora_arms_train_and_report_the_same_numbers(tiny_folder, tiny_tokenizer, cpu_cfg, tmp_path):
    base = cpu_cfg.replace(model_name=str(tiny_folder), max_steps=2, batch_size=2, steps_freq=1, learning_rate=1e-2)
    lora = train_arm("LoRA", base, tiny_tokenizer, ROWS, ROWS[:2], tmp_path / "a", format_check=True)
    qlora_cfg = base.replace(quantization="nf4", optim="paged_adamw_8bit", gradient_checkpointing=True)
    qlora = train_arm("QLoRA", qlora_cfg, tiny_tokenizer, ROWS, ROWS[:2], tmp_path / "b", keep_model=True)
    assert set(lora.summary) - {"format_compliance"} == set(qlora.summary)
    assert 0 <= lora.summary["format_compliance"] <= 1
    for arm in (lora, qlora):
        assert arm.log.loss.notna().sum() == 2 and all(math.isfinite(x) for x in arm.log.loss.dropna())
        assert arm.summary["seconds_per_step"] > 0 and math.isfinite(arm.summary["held_out_loss_text"])
    layer = qlora.model.get_base_model().model.layers[0].self_attn.q_proj
    assert type(layer.base_layer).__name__ == "Linear4bit"  # NF4 weights under the LoRA adapter


def test_padding_share_by_hand():
    from gemmate_lib.experiments import padding_share

    assert padding_share([4, 4, 4, 4], 2, grouped=True) == 0
    assert padding_share([1, 3, 1, 3], 2, grouped=True) == 0  # sorted: (3, 3), (1, 1)
    assert padding_share([2, 4], 2, grouped=False) == 1 - 6 / 8
