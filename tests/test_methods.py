"""06's methods: the configs the library builds, the full
fine-tuning memory check, and every method training for real
on the tiny Gemma (plumbing) through the same train_arm as 03's side-by-side runs."""

import pytest
import torch
from test_notebook_recipes import build_06, written_out_06

from gemmate_lib.guard_rails.errors import HardwareError, ParameterError
from gemmate_lib.methods import (
    DEFAULT_METHODS,
    METHODS,
    build_methods,
    check_full_finetuning,
    full_finetuning_gib,
    train_arm,
)

ROWS = [{"quote": q, "author": a, "text": f"Quote: {q}\nAuthor: {a}"}
        for q, a in (("Be yourself; everyone else is taken.", "Oscar Wilde"),
                     ("Stay hungry, stay foolish.", "Steve Jobs"),
                     ("Imagination is more important than knowledge.",
                      "Albert Einstein"), ("one two three four", "Nobody"))]


@pytest.fixture()
def model_dir(tiny_folder) -> str:
    """A model folder: build_methods reads its config before any weight loads, to refuse what will not fit."""
    return str(tiny_folder)


def test_every_method_has_its_config_and_its_own_learning_rate(cpu_cfg, model_dir):
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig

    # a GPU profile's
    cfg = cpu_cfg.replace(quantization="nf4", optim="paged_adamw_8bit", gradient_checkpointing=True)
    built = build_06(cfg, model_dir, METHODS, other_rank=16)
    configs, rates = written_out_06(cfg, model_dir, other_rank=16)
    assert {k: m.peft_config for k, m in built.items()} == configs  # 06's own configs, trained as written
    assert list(built) == list(METHODS) and list(build_06(cfg, model_dir)) == list(DEFAULT_METHODS)
    kinds = {k: type(m.peft_config) for k, m in built.items()}
    assert kinds == {"full": type(None), "lora_r8": LoraConfig, "lora_r32": LoraConfig, "qlora": LoraConfig,
                     "prompt": PromptTuningConfig, "prefix": PrefixTuningConfig, "ia3": IA3Config}
    assert (built["lora_r32"].peft_config.r, built["lora_r32"].peft_config.lora_alpha) == (16, 32)
    # QLoRA is the same adapter on an NF4 base
    assert built["qlora"].peft_config == built["lora_r8"].peft_config
    assert built["prompt"].peft_config.tokenizer_name_or_path == model_dir
    # every method states its own weights and optimizer, whatever the profile's are; QLoRA differs from LoRA
    # r=8 in the NF4 base alone: the same fused AdamW, no checkpointing (prefix tuning cannot train with it)
    for key, m in built.items():
        arm = cfg.replace(**m.settings)
        assert arm.model.quantization == ("nf4" if key == "qlora" else "none")
        assert arm.train.optim == "adamw_torch_fused"
        assert arm.train.gradient_checkpointing is False
        assert arm.train.learning_rate == rates[key]  # 06's written-out rate
    assert {k: v for k, v in built["qlora"].settings.items() if built["lora_r8"].settings[k] != v} == {
        "quantization": "nf4"}
    # papermill -p methods a,b
    assert list(build_06(cpu_cfg, model_dir, "prompt, ia3")) == ["prompt", "ia3"]


def test_the_default_list_holds_full_finetuning_on_a_cpu_and_only_what_a_t4_runs_on_a_gpu(monkeypatch,
                                                                                          model_dir):
    """06's methods=None: full fine-tuning of google/gemma-2b needs ~37 GiB, which the course refuses on a
    T4, so the GPU profiles leave it out; the CPU default (the committed outputs) keeps all six."""
    from gemmate_lib.config import course_config

    cpu = course_config("methods", device="cpu")
    assert list(build_06(cpu, model_dir)) == list(DEFAULT_METHODS) and "full" in DEFAULT_METHODS
    for profile in ("gpu", "t4"):  # the GPU profile on this CPU, and a T4's, as the smoke run does
        monkeypatch.setenv("GEMMATE_PROFILE", profile)
        gpu = course_config("methods")
        assert gpu.profile.startswith("gpu")
        chosen = build_06(gpu, model_dir)
        assert "full" not in chosen and list(chosen) == [k for k in DEFAULT_METHODS if k != "full"]
        # asked for: kept
        assert list(build_06(gpu, model_dir, ["full", "lora_r8"])) == ["full", "lora_r8"]


def test_an_unknown_method_or_rank_is_one_clear_error(cpu_cfg, model_dir):
    with pytest.raises(ParameterError, match=r"unknown method 'lora'\n  Fix: use some of: full"):
        build_06(cpu_cfg, model_dir, ["lora"])
    with pytest.raises(ParameterError, match="lora_r"):
        build_06(cpu_cfg, model_dir, ["lora_r32"], other_rank="wide")
    configs, rates = written_out_06(cpu_cfg, model_dir)
    with pytest.raises(ParameterError, match="no config or learning rate for 'ia3'.*\n  Fix: run section 2"):
        build_methods(cpu_cfg, model_dir, {k: configs[k] for k in ("lora_r8",)}, rates, ["lora_r8", "ia3"])
    with pytest.raises(ParameterError, match="other_rank = 16, but section 2's lora_wide has r = 32\n  Fix"):
        build_methods(cpu_cfg, model_dir, configs, rates, ["lora_r32"], other_rank=16)  # cell not rerun
    # one folder, one label: clash
    with pytest.raises(ParameterError, match=r"other_rank = 8 is the rank of LoRA r=8"):
        build_06(cpu_cfg, model_dir, ["lora_r8", "lora_r32"], other_rank=8)
    # alone it is fine
    assert list(build_06(cpu_cfg, model_dir, ["lora_r32"], other_rank=8)) == ["lora_r32"]
    # ia3 is not among those that run
    for bad in ({"ia3": 3e-3}, {"prompt": 3}, {"prompt": "fast"}, {"prompt": True}):
        with pytest.raises(ParameterError, match=r"rates\[.*\n  Fix: give a learning rate between 0 and 1"):
            build_06(cpu_cfg, model_dir, ["prompt", "lora_r8"], rates=bad)


def test_rates_change_only_the_methods_named_and_the_wide_rank_has_its_own_folder(cpu_cfg, model_dir):
    """06's exercises 2 and 3: another rank must not overwrite
    lora_r32's adapter; one method's rate, not the others'."""
    chosen = build_06(cpu_cfg, model_dir, ["lora_r8", "lora_r32", "prompt"], other_rank=2,
                           rates={"prompt": 3e-3})
    assert [m.key for m in chosen.values()] == ["lora_r8", "lora_r2", "prompt"]
    rates = written_out_06(cpu_cfg, model_dir, other_rank=2)[1]
    learned = [m.settings["learning_rate"] for m in chosen.values()]
    assert learned == [rates["lora_r8"], rates["lora_r32"], 3e-3]


def test_full_finetuning_memory_is_sixteen_bytes_a_weight_and_a_t4_says_no(fake_gpu):
    assert full_finetuning_gib(2**30) == 16
    assert 37 < full_finetuning_gib(2_506_172_416) < 38  # google/gemma-2b
    # the embedded model fits here
    assert check_full_finetuning(268_098_176, "cpu") == pytest.approx(4.0, abs=0.01)
    # The boundary faked: a T4's 15 GiB (torch's answer), and the course's real check behind it.
    fake_gpu((7, 5), memory_gib=15)
    with pytest.raises(HardwareError, match=r"needs ~37 GiB .* this GPU has 15 GiB") as err:
        check_full_finetuning(2_506_172_416, "cuda")
    assert "LoRA and QLoRA" in err.value.fix
    assert check_full_finetuning(268_098_176, "cuda") == pytest.approx(4.0, abs=0.01)


def _expected_trainable(key: str, method, config, total_base: int) -> int:
    """What `key` trains on the tiny Gemma, counted by hand from its config and the layer shapes."""
    h, L = config.hidden_size, config.num_hidden_layers
    q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    shapes = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
              "gate_proj": (h, config.intermediate_size), "up_proj": (h, config.intermediate_size),
              "down_proj": (config.intermediate_size, h)}  # (in, out)
    peft = method.peft_config
    if key == "full":
        return total_base
    if key in ("prompt", "prefix"):
        # prefix tuning: a key and a value in every layer
        return peft.num_virtual_tokens * h * (1 if key == "prompt" else 2 * L)
    if key == "ia3":  # one scale per output feature, per input feature of the feed-forward layers
        return L * sum(shapes[m][0 if m in peft.feedforward_modules else 1] for m in peft.target_modules)
    return L * peft.r * sum(sum(shapes[m]) for m in peft.target_modules)  # LoRA: r * (in + out)


@pytest.mark.parametrize("key", METHODS)
def test_every_method_trains_what_it_says_saves_it_and_reports_exact_counts(key, tiny_folder, tiny_tokenizer,
                                                                            cpu_cfg, tmp_path):
    """Each method on the tiny Gemma (2 steps): the trainable weights changed and the frozen ones did not,
    the table's trainable count and share are the ones counted by hand, and what was saved is what trained
    (the adapter alone, or every weight for full fine-tuning), in safetensors, of the size reported."""
    from safetensors import safe_open
    from tiny import make_tiny_gemma
    from weights import trains_only_the_trainable

    cfg = cpu_cfg.replace(model_name=str(tiny_folder), max_steps=2, batch_size=2, steps_freq=1,
                          warmup_steps=0)
    method = build_06(cfg, str(tiny_folder), [key], other_rank=16)[key]
    with trains_only_the_trainable():
        arm = train_arm(method.name, cfg.replace(**method.settings), tiny_tokenizer, ROWS, ROWS[:2],
                        tmp_path / "trainer", format_check=True, adapter=method.peft_config,
                        save_dir=tmp_path / "saved")
    s, base = arm.summary, make_tiny_gemma(tiny_tokenizer)
    total_base = sum(p.numel() for p in base.parameters())
    trainable = _expected_trainable(key, method, base.config, total_base)
    total = total_base + (trainable if key != "full" else 0)
    assert (s["trainable"], s["trainable_share"]) == (trainable, trainable / total)
    assert arm.log.loss.notna().sum() == 2 and s["seconds_per_step"] > 0
    assert s["format_compliance"] in (0, 0.5, 1)  # two held-out rows
    saved = sorted(p.name for p in (tmp_path / "saved").iterdir())
    assert not [p for p in saved if p.endswith(".bin")]
    weights = "model.safetensors" if key == "full" else "adapter_model.safetensors"
    with safe_open(tmp_path / "saved" / weights, framework="pt") as f:
        assert sum(_numel(f.get_slice(k).get_shape()) for k in f.keys()) == trainable  # what trained, no more
    assert s["saved_mib"] == pytest.approx(
        sum(p.stat().st_size for p in (tmp_path / "saved").glob("*.safetensors")) / 2**20, abs=0.01)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def test_prompt_tuning_learns_and_its_saved_vectors_reload(tiny_folder, tiny_tokenizer, cpu_cfg, tmp_path):
    """The soft prompt really trains (the loss falls on the training rows) and reloads into a fresh base."""
    from peft import PeftModel

    from gemmate_lib.evaluation import held_out_loss
    from gemmate_lib.models import load_model

    cfg = cpu_cfg.replace(model_name=str(tiny_folder), max_steps=12, batch_size=4, steps_freq=1,
                          warmup_steps=0)
    method = build_06(cfg, str(tiny_folder), ["prompt"])["prompt"]
    arm = train_arm(method.name, cfg.replace(**method.settings), tiny_tokenizer, ROWS, ROWS,
                    tmp_path / "trainer",
                    keep_model=True, adapter=method.peft_config, save_dir=tmp_path / "prompt")
    before = held_out_loss(load_model(str(tiny_folder), cfg.precision), tiny_tokenizer, ROWS)
    after = held_out_loss(arm.model, tiny_tokenizer, ROWS)
    reloaded = PeftModel.from_pretrained(load_model(str(tiny_folder), cfg.precision), tmp_path / "prompt")
    assert after < before - 0.1
    assert held_out_loss(reloaded, tiny_tokenizer, ROWS) == pytest.approx(after, rel=1e-5)


def test_prefix_tuning_with_gradient_checkpointing_is_one_clear_error_not_a_size_mismatch(tiny_folder,
                                                                                          tiny_tokenizer,
                                                                                          cpu_cfg, tmp_path):
    cfg = cpu_cfg.replace(model_name=str(tiny_folder), max_steps=1, batch_size=2)
    method = build_06(cfg, str(tiny_folder), ["prefix"])["prefix"]
    with pytest.raises(ParameterError, match="prefix tuning cannot train with gradient_checkpointing=True"):
        train_arm(method.name, cfg.replace(**{**method.settings, "gradient_checkpointing": True}),
                  tiny_tokenizer, ROWS, ROWS,
                  tmp_path, adapter=method.peft_config)


def test_the_loss_before_training_is_measured_on_an_identically_seeded_copy(tiny_folder, tiny_tokenizer,
                                                                            cpu_cfg, tmp_path):
    """start_loss: prefix tuning's random keys and values
    change the output before any step; measured after training
    on a second copy drawn from the same seed (a pass before training would hide memory from the peak)."""
    from peft import get_peft_model

    from gemmate_lib.evaluation import held_out_loss
    from gemmate_lib.models import load_model

    cfg = cpu_cfg.replace(model_name=str(tiny_folder), max_steps=3, batch_size=4, steps_freq=1)
    method = build_06(cfg, str(tiny_folder), ["prefix"])["prefix"]
    arm_cfg = cfg.replace(**method.settings)
    arm = train_arm(method.name, arm_cfg, tiny_tokenizer, ROWS, ROWS, tmp_path, adapter=method.peft_config,
                    start_loss=True)
    torch.manual_seed(arm_cfg.train.seed)
    untouched = get_peft_model(load_model(str(tiny_folder), cfg.precision), method.peft_config)
    bare = held_out_loss(load_model(str(tiny_folder), cfg.precision), tiny_tokenizer, ROWS)
    start = arm.summary["held_out_loss_start"]
    assert start == pytest.approx(held_out_loss(untouched, tiny_tokenizer, ROWS), abs=1e-3)
    assert abs(start - bare) > 1e-3 and abs(start - arm.summary["held_out_loss_text"]) > 1e-3


def test_full_finetuning_that_does_not_fit_stops_clearly_and_frees_the_model(tiny_folder, tiny_tokenizer,
                                                                             cpu_cfg, tmp_path, monkeypatch):
    """06 keeps the error to show it; its traceback must
    not keep the loaded weights alive (on a T4, ~5 GB)."""
    import gc
    import os
    import weakref

    import gemmate_lib.models

    real_sysconf, real_load, loaded = os.sysconf, gemmate_lib.models.load_model, []
    monkeypatch.setattr(gemmate_lib.models, "load_model",
                        lambda *a, **k: loaded.append(weakref.ref(m := real_load(*a, **k))) or m)
    cfg = cpu_cfg.replace(model_name=str(tiny_folder), max_steps=1, batch_size=2)
    method = build_06(cfg, str(tiny_folder), ["full"])["full"]
    # The boundary faked after 06's check before the load: the machine now reports 1 MiB of RAM, so the
    # course's real check at the load refuses.
    monkeypatch.setattr(os, "sysconf", lambda n: 256 if n == "SC_PHYS_PAGES" else real_sysconf(n))
    with pytest.raises(HardwareError, match="full fine-tuning of .* needs") as err:
        train_arm(method.name, cfg.replace(**method.settings), tiny_tokenizer, ROWS, ROWS, tmp_path,
                  adapter=None)
    gc.collect()
    assert err.value.__traceback__ is not None and len(loaded) == 1
    assert loaded[0]() is None, "the kept error still holds the model"


def test_full_finetuning_under_bf16_trains_fp32_master_weights_so_small_updates_land(tiny_folder,
                                                                                     tiny_tokenizer, cpu_cfg,
                                                                                     tmp_path):
    """06's full fine-tuning on a bf16 GPU trained the weights in pure bf16: at lr 5e-5 an AdamW step is
    smaller than half a bf16 step of most weights, so it rounded away. Mixed precision keeps fp32 weights,
    gradients and moments and computes in bf16 (autocast); the model is measured and saved in bf16."""
    from safetensors import safe_open
    from transformers import TrainerCallback

    seen = {}

    class Watch(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            seen["before"] = {n: p.detach().clone() for n, p in model.named_parameters() if "mlp" in n}

        def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
            params = [p for p in model.parameters() if p.requires_grad]
            seen["weights"] = {p.dtype for p in params}
            seen["moments"] = {s["exp_avg"].dtype for s in optimizer.state.values()}
            moved = [(p != seen["before"][n]).float().mean()
                     for n, p in model.named_parameters() if "mlp" in n]
            seen["moved"] = float(sum(moved) / len(moved))
            seen["autocast"] = args.bf16

    cfg = cpu_cfg.replace(model_name=str(tiny_folder), dtype="bf16", max_steps=1, batch_size=2,
                          warmup_steps=0)
    method = build_06(cfg, str(tiny_folder), ["full"])["full"]
    arm_cfg = cfg.replace(**method.settings)
    assert arm_cfg.train.learning_rate == 5e-5 and arm_cfg.precision.name == "bf16"
    arm = train_arm(method.name, arm_cfg, tiny_tokenizer, ROWS, ROWS[:2], tmp_path / "trainer",
                    keep_model=True, adapter=None, save_dir=tmp_path / "saved", callbacks=[Watch()])
    assert seen["weights"] == seen["moments"] == {torch.float32} and seen["autocast"]
    assert seen["moved"] > 0.95  # nearly every weight took the step (pure bf16: far fewer)
    assert {p.dtype for p in arm.model.parameters()} == {torch.bfloat16}  # measured like the other methods
    with safe_open(tmp_path / "saved" / "model.safetensors", framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}


def test_06s_default_methods_on_a_t4_with_gemma_4_e2b_are_what_the_t4_holds(tmp_path, fake_gpu, fake_host,
                                                                             capsys):
    """methods=None on a GPU: the T4 list with gemma-2b; with Gemma 4 E2B, whose 16/32-bit copy (~19 GiB in
    fp32) a T4 cannot hold, QLoRA alone, said in one line, instead of stopping with a FitError."""
    import dataclasses

    from gemmate_lib.config import course_config
    from gemmate_lib.hardware import Precision
    from gemmate_lib.methods import GPU_DEFAULT_METHODS
    from tools.fit.full_shape import config_of

    for name in ("gemma-2b", "gemma-4-E2B"):
        config_of(name).save_pretrained(tmp_path / name)  # the config alone: no weights to load
    cfg = course_config("methods")  # the CPU profile's settings; then a T4's precision below
    fake_gpu((7, 5))
    fake_host()  # and a free Colab runtime's RAM and disk, whatever this machine has
    t4 = {"gemma-2b": Precision("cuda", torch.float16, "a T4"),
          "gemma-4-E2B": Precision("cuda", torch.float32, "a T4")}
    on_t4 = {name: dataclasses.replace(cfg, precision=precision, profile="gpu")
             for name, precision in t4.items()}
    small = build_06(on_t4["gemma-2b"], str(tmp_path / "gemma-2b"), None)
    assert tuple(small) == GPU_DEFAULT_METHODS
    capsys.readouterr()
    e2b = build_06(on_t4["gemma-4-E2B"], str(tmp_path / "gemma-4-E2B"), None)
    assert list(e2b) == ["qlora"] and 'methods=["qlora"]' in capsys.readouterr().out
