"""LoRA SFT (training.py): the one builder, the trainer's evaluation and counters, and a real short run."""

import pytest
import torch
from tiny import ROWS
from weights import assert_trained, snapshot, trains_only_the_trainable

from gemmate_lib.config import course_config
from gemmate_lib.evaluation import held_out_loss
from gemmate_lib.training import attach_lora, lora_config, train_lora, training_args


def test_evaluation_uses_the_fast_loss_and_gets_the_models_own_value(tiny_model, tiny_tokenizer, cpu_cfg,
                                                                     tmp_path):
    from gemmate_lib.training import sft_trainer

    model = attach_lora(tiny_model, cpu_cfg, quiet=True)
    trainer = sft_trainer(model, tiny_tokenizer, ROWS, ROWS, cpu_cfg.replace(max_steps=1), tmp_path)
    head_positions = []  # positions per row that the model's own LM head computed
    hook = model.get_base_model().get_output_embeddings().register_forward_hook(
        lambda module, args, out: head_positions.append(out.shape[1]))
    fast = trainer.evaluate()["eval_loss"]
    hook.remove()
    # the model's head computed nothing; the loss ran on labelled tokens
    assert head_positions and set(head_positions) == {0}
    trainer.fast_loss = False
    assert abs(trainer.evaluate()["eval_loss"] - fast) < 1e-5


def test_attach_lora_twice_does_not_wrap_twice_and_counts_are_exact(tiny_model, cpu_cfg, capsys):
    once = attach_lora(tiny_model, cpu_cfg)
    twice = attach_lora(once, cpu_cfg)
    assert twice is once and "not wrapping twice" in capsys.readouterr().out
    trainable = sum(p.numel() for p in twice.parameters() if p.requires_grad)
    c = tiny_model.config
    q, kv, h, mlp = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim, c.hidden_size, \
        c.intermediate_size
    # q,o + k,v + gate,up,down: r * (d_in + d_out) each
    per_layer = (h + q) * 2 + (h + kv) * 2 + (h + mlp) * 3
    assert trainable == cpu_cfg.lora.lora_r * per_layer * c.num_hidden_layers


def test_the_builder_maps_every_setting(tmp_path):
    cfg = course_config(device="cpu", dtype="bf16", max_steps=7, batch_size=3, gradient_accumulation_steps=2,
                        learning_rate=1e-3, warmup_steps=1, steps_freq=3, val_steps_freq=6, seed=5,
                        gradient_checkpointing=True, group_by_length=False, lora_r=4, lora_alpha=8)
    args = training_args(cfg, tmp_path, has_eval=True)
    assert type(args).__name__ == "SFTConfig"
    assert (args.max_steps, args.per_device_train_batch_size, args.gradient_accumulation_steps) == (7, 3, 2)
    assert (args.learning_rate, args.warmup_steps, args.logging_steps, args.eval_steps) == (1e-3, 1, 3, 6)
    assert (args.seed, args.data_seed, args.bf16, args.fp16, args.use_cpu) == (5, 5, True, False, True)
    assert args.activation_checkpointing and args.train_sampling_strategy == "random"
    assert args.max_length == cfg.train.max_length
    # 03's checkpoints (quotes: every 20 steps), the last one only, for a rerun to resume; none with 0
    assert (args.save_strategy, args.save_steps, args.save_total_limit) == ("steps", 20, 1)
    assert training_args(cfg.replace(save_steps=0), tmp_path, has_eval=True).save_strategy == "no"
    te_args = training_args(cfg, tmp_path, has_eval=False, sft=False, remove_unused_columns=False)
    assert type(te_args).__name__ == "TrainingArguments" and te_args.remove_unused_columns is False
    assert te_args.eval_strategy == "no" and te_args.activation_checkpointing
    lora = lora_config(cfg)
    assert (lora.r, lora.lora_alpha, lora.task_type) == (4, 8, "CAUSAL_LM")


def test_a_tiny_training_run_trains_the_adapter_only_and_counts_its_tokens(tiny_model, tiny_tokenizer,
                                                                            cpu_cfg, tmp_path):
    cfg = cpu_cfg.replace(max_steps=4, batch_size=2, steps_freq=1, val_steps_freq=4, learning_rate=1e-2)
    with trains_only_the_trainable() as checked:
        result = train_lora(tiny_model, tiny_tokenizer, ROWS, ROWS[:2], cfg, output_dir=tmp_path / "trainer")
    # only the adapter trained: names end in lora_A.default.weight, lora_B.default.weight
    assert {n.split(".")[-3] for n in checked[0]["changed"]} == {"lora_A", "lora_B"}
    assert result.trainer.state.global_step == 4 and result.log.loss.notna().sum() == 4
    assert result.log.eval_loss.notna().sum() == 1
    per_epoch = sum(len(ids) for ids in result.trainer.train_dataset["input_ids"])
    assert result.trainer.tokens_trained == 2 * per_epoch  # 4 steps of 2 = two passes over the 4 rows


def test_completion_only_loss_trains_on_what_follows_the_prompt(tiny_model, tiny_tokenizer, cpu_cfg,
                                                                tmp_path):
    from gemmate_lib.training import sft_trainer

    model = attach_lora(tiny_model, cpu_cfg, quiet=True)
    for completion_only in (False, True):
        cfg = cpu_cfg.replace(completion_only_loss=completion_only, max_steps=1, batch_size=4)
        trainer = sft_trainer(model, tiny_tokenizer, ROWS, [], cfg, tmp_path / str(completion_only))
        assert trainer.args.completion_only_loss is completion_only
        batch = next(iter(trainer.get_train_dataloader()))
        for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
            trained = tiny_tokenizer.decode(ids[labels != -100])
            if completion_only:
                assert not trained.startswith("Quote:") and trained.endswith("<eos>")
                assert "\nAuthor:" in trained
                assert 0 < int((labels != -100).sum()) < int(mask.sum())
            else:
                assert int((labels != -100).sum()) == int(mask.sum())  # every real token


def test_a_short_training_run_lowers_the_loss_and_saves_the_adapter_alone_as_safetensors(tiny_model,
                                                                                         tiny_tokenizer,
                                                                                         cpu_cfg, tmp_path):
    """Plumbing on the tiny Gemma (03's self-check under nbval sees the embedded model's held-out loss
    fall)."""
    from safetensors import safe_open

    cfg = cpu_cfg.replace(max_steps=4, batch_size=4, learning_rate=1e-2, warmup_steps=0, steps_freq=1,
                          val_steps_freq=2)
    before = held_out_loss(tiny_model, tiny_tokenizer, ROWS)
    result = train_lora(tiny_model, tiny_tokenizer, ROWS, ROWS, cfg, output_dir=tmp_path / "trainer")
    assert held_out_loss(result.model, tiny_tokenizer, ROWS) < before - 0.1
    assert result.log.loss.notna().sum() == 4 and result.log.eval_loss.notna().sum() == 2
    result.model.save_pretrained(tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["README.md", "adapter_config.json",
                                                                         "adapter_model.safetensors"]
    trained = {n for n, p in result.model.named_parameters() if p.requires_grad}
    with safe_open(tmp_path / "adapter" / "adapter_model.safetensors", framework="pt") as f:
        assert len(f.keys()) == len(trained) and all("lora_" in k for k in f.keys())


def test_the_after_training_check_fails_on_an_adapter_that_did_not_move_or_a_base_that_did():
    """tests/weights.py, the check every training test relies on, seen failing on what it must catch."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    model[0].requires_grad_(False)  # the "base"; model[1] is the "adapter"
    before = snapshot(model)
    with torch.no_grad():
        model[1].weight += 1  # the adapter's weight moved, its bias did not
    with pytest.raises(AssertionError, match=r"1 of 2 trainable parameters did not change: \['1.bias'\]"):
        assert_trained(model, before)
    assert assert_trained(model, before, may_stay="bias")["frozen"] == ["0.weight", "0.bias"]
    with torch.no_grad():
        model[0].bias += 1  # the base moved
    with pytest.raises(AssertionError, match=r"1 frozen parameters changed: \['0.bias'\]"):
        assert_trained(model, before, may_stay="bias")
    with pytest.raises(AssertionError, match="no Trainer.train"), trains_only_the_trainable():
        pass


@pytest.mark.parametrize("given", [dict(lora_target_modules=["all-linear"]),  # YAML `[all-linear]`
                                   dict(lora_target_modules="all-linear"),  # the flag, or YAML `all-linear`
                                   dict(lora_target_modules="v_proj")])  # YAML `lora_target_modules: v_proj`
def test_all_linear_and_a_single_name_work_from_a_flag_or_yaml(tiny_model, given):
    from gemmate_lib.config import course_config
    from gemmate_lib.training import attach_lora

    cfg = course_config(device="cpu", dtype="fp32", **given)
    model = attach_lora(tiny_model, cfg, quiet=True)
    adapted = {name.split(".")[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")}
    expected = {"v_proj"} if given["lora_target_modules"] == "v_proj" else \
        {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert adapted == expected
