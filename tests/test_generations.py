"""Each Gemma generation proven offline on a tiny random model of its own architecture (tests/tiny.py): Gemma
1, Gemma 3 text, and Gemma 4 in the multimodal wrapper its Hub checkpoints load as, with per-layer inputs
and KV sharing on. NF4 load on the CPU, k-bit preparation, LoRA on the text layers only, chat training with
an assistant-only loss that goes down, save, merge, reload in a fresh process, greedy agreement, and a stop
at the generation's turn end. `-m generations` selects them (make drift runs them; so can a Colab replica)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import CHATS
from weights import trains_only_the_trainable

from gemmate_lib.generations import (
    GENERATIONS,
    gemma4_training_template,
    generation_of,
    lora_targets,
    stop_token_ids,
    training_chat_template,
)
from gemmate_lib.hardware import DTYPES, Precision

pytestmark = pytest.mark.generations
KEYS = list(GENERATIONS)
LR, STEPS = 3e-2, 30  # enough for a tiny model to learn the chats' format and answers


@pytest.fixture(scope="module", params=KEYS)
def tiny_generation(request, generation_folder):
    """(key, folder) of a saved tiny model of one generation, with its tokenizer and shipped chat template."""
    return request.param, generation_folder(request.param)


def test_each_folder_is_its_generation(tiny_generation):
    key, folder = tiny_generation
    assert generation_of(str(folder)).key == key


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_the_courses_loader_loads_each_generation_with_the_chosen_kernel_on_its_text_model(
        tiny_generation, fp32, attn):
    """01, 03 and `gemmate train` load through load_model with attn_implementation="sdpa": Gemma 4's audio
    tower has no SDPA, and asked for it everywhere, its load stopped."""
    from gemmate_lib.models import load_model

    key, folder = tiny_generation
    model = load_model(str(folder), fp32, attn_implementation=attn)
    assert model.config.get_text_config()._attn_implementation == attn


@pytest.mark.parametrize(
    "model_name, key",
    [
        ("google/gemma-2b", "gemma"),
        ("google/gemma-3-1b-pt", "gemma3"),
        ("google/gemma-4-E2B-it", "gemma4"),
        ("embedded", "gemma3"),
        ("Google/Gemma-1.1-7B-it", "gemma"),  # Hub ids are read case-blind
        ("google/gemma-3n-E2B", None),  # Gemma 3n is not Gemma 3: the course has no recipe for it
        ("google/gemma-2-2b", None),
        ("meta-llama/Llama-3.2-1B", None),
    ],
)
def test_hub_ids_name_their_generation(model_name, key):
    generation = generation_of(model_name)
    assert (generation and generation.key) == key


def test_a_model_a_config_and_a_folder_name_their_generation(tmp_path):
    """A loaded model and its bare config say their model_type; a folder's config.json does, and a folder
    whose config.json has none, or is not JSON, belongs to no generation (never to a guessed one)."""
    from types import SimpleNamespace

    from transformers import Gemma3TextConfig

    from gemmate_lib.generations import model_type_of

    config = Gemma3TextConfig()
    assert model_type_of(config) == model_type_of(SimpleNamespace(config=config)) == "gemma3_text"
    assert model_type_of(SimpleNamespace()) == model_type_of(SimpleNamespace(model_type=None)) == ""
    for text, expected in (('{"model_type": "gemma4"}', "gemma4"), ('{"model_type": null}', ""), ("{}", ""),
                           ("not json", "")):
        (tmp_path / "config.json").write_text(text)
        assert model_type_of(tmp_path) == expected, text
    assert generation_of(tmp_path) is None
    assert model_type_of("meta-llama/Llama-3.2-1B") == ""  # a Hub id of no Gemma: no type, not a guess


def test_text_setting_reads_the_text_config_of_a_model_or_a_config():
    """Gemma 4's cap sits in text_config: text_setting finds it from the config itself, from a model holding
    it, and from a plain object without get_text_config; a missing setting gives the default asked for."""
    from types import SimpleNamespace

    from transformers import Gemma4Config

    from gemmate_lib.generations import text_setting

    config = Gemma4Config(text_config={"final_logit_softcapping": 30.0})
    assert getattr(config, "final_logit_softcapping", None) is None  # not at the top level
    assert text_setting(config, "final_logit_softcapping") == 30.0
    assert text_setting(SimpleNamespace(config=config), "final_logit_softcapping") == 30.0
    assert text_setting(SimpleNamespace(hidden_size=64), "hidden_size") == 64
    assert text_setting(config, "no_such_setting", 7) == 7


def test_the_page_shows_the_generations_table():
    """docs/gemma-generations.md's table is tools.fit.generations_table's output, row for row (regenerate it
    with `python -m tools.fit.generations_table` when GENERATIONS or the planner's rule changes)."""
    from tools.fit.generations_table import markdown_table

    page = (Path(__file__).resolve().parents[1] / "docs" / "gemma-generations.md").read_text()
    start = page.index("| | ")
    assert page[start:page.index("\n\n", start)] == markdown_table()


def test_dtype_rule(tiny_generation):
    """A T4 (fp16 profile) computes Gemma 1 in fp16, Gemma 3 and 4 in fp32; an A100 (bf16) keeps bf16."""
    from gemmate_lib.config import gemma3_rule

    key, folder = tiny_generation
    t4 = gemma3_rule(Precision("cuda", DTYPES["fp16"], "a T4"), str(folder))
    assert t4.name == {"gemma": "fp16", "gemma3": "fp32", "gemma4": "fp32"}[key]
    assert gemma3_rule(Precision("cuda", DTYPES["bf16"], "an A100"), str(folder)).name == "bf16"


def nf4_lora(folder, tokenizer=None, **cfg_values):
    """NF4 load on the CPU, k-bit preparation and the course's LoRA (training.attach_lora) on `folder`."""
    from gemmate_lib.config import course_config
    from gemmate_lib.models import load_model
    from gemmate_lib.training import attach_lora

    cfg = course_config(
        model_name=str(folder),
        quantization="nf4",
        device="cpu",
        dtype="fp32",
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        **cfg_values,
    )
    model = load_model(str(folder), cfg.precision, "nf4", attn_implementation="eager")
    return cfg, attach_lora(model, cfg, quiet=True, tokenizer=tokenizer)


def test_lora_goes_on_the_text_layers_only(tiny_generation):
    """Every q/k/v/o/gate/up/down of the language model gets an adapter, no layer of a vision or audio tower
    (PEFT refuses Gemma 4's Gemma4ClippableLinear there)."""
    key, folder = tiny_generation
    cfg, model = nf4_lora(folder)
    adapted = {name.rsplit(".lora_A", 1)[0] for name, _ in model.named_modules() if name.endswith(".lora_A")}
    assert adapted and not [n for n in adapted if "vision" in n or "audio" in n]
    text_linears = {
        name
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1]
        in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        and "vision" not in name
        and "audio" not in name
    }
    assert adapted == text_linears
    assert model.get_base_model().is_loaded_in_4bit


def test_gemma4_targets_are_a_regex_that_takes_the_text_layers_and_leaves_the_towers():
    """PEFT full-matches a string target against each module name: the text model's q/v projections match,
    the towers' layers of the same names and the other projections do not."""
    import re

    regex = lora_targets("google/gemma-4-E2B", ["q_proj", "v_proj"])
    wanted = {"model.language_model.layers.0.self_attn.q_proj": True,
              "model.language_model.layers.11.self_attn.v_proj": True,
              "model.language_model.layers.0.self_attn.k_proj": False,
              "model.vision_tower.encoder.layers.0.self_attn.q_proj": False,
              "model.audio_tower.layers.0.self_attn.v_proj": False}
    assert {name: bool(re.fullmatch(regex, name)) for name in wanted} == wanted
    assert lora_targets("google/gemma-2b", ["q_proj"]) == ["q_proj"]
    one = lora_targets("google/gemma-4-E2B", "q_proj")  # one name as a string
    assert re.fullmatch(one, "model.language_model.layers.0.self_attn.q_proj")
    assert not re.fullmatch(one, "model.language_model.layers.0.self_attn.v_proj")
    every = lora_targets("google/gemma-4-E2B", "all-linear")  # PEFT's "all-linear": the seven projections
    mlp = "model.language_model.layers.3.mlp."
    assert all(re.fullmatch(every, mlp + name) for name in ("gate_proj", "down_proj"))
    assert not re.fullmatch(every, "model.audio_tower.layers.0.mlp.down_proj")


def sample_chats(key):
    """The tiny chats, a two-round conversation and a system prompt (not Gemma 1: no system role)."""
    system = [{"role": "system", "content": "Answer with a name."}] + CHATS[0]
    return CHATS + [CHATS[0] + CHATS[1]] + ([system] if key != "gemma" else [])


def test_training_template_renders_as_shipped(tiny_generation):
    """The training template (generation markers) renders every sample conversation exactly as the template
    the chat checkpoint ships; its assistant mask covers the answer and the turn end, not the prompt."""
    key, folder = tiny_generation
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    generation = GENERATIONS[key]
    training = training_chat_template(generation)
    assert "{% generation" in training or "{%- generation" in training
    for chat in sample_chats(key):
        shipped = tokenizer.apply_chat_template(chat, tokenize=False)
        assert tokenizer.apply_chat_template(chat, tokenize=False, chat_template=training) == shipped
    out = tokenizer.apply_chat_template(
        CHATS[0], chat_template=training, return_dict=True, return_assistant_tokens_mask=True
    )
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    text = tokenizer.decode(masked)
    assert "Oscar Wilde" in text and generation.turn_end in text and "Who wrote" not in text
    assert generation.turn_start not in text  # the "<turn>model" cue is prompt, not written by the model


def test_gemma4_training_template_refuses_an_unknown_template():
    from gemmate_lib.guard_rails.errors import ParameterError

    content, end = "{{- captured_content -}}", "{{- '<turn|>\\n' -}}"
    for template in ("{{ messages }}", content, end, content + content + end):  # each lacks what it marks
        with pytest.raises(ParameterError) as error:
            gemma4_training_template(template)
        assert "this Gemma 4 chat template is not the one the course knows how to mark" in str(error.value)
        assert "use the template TRL ships (trl/chat_templates/gemma4_v5.jinja)" in str(error.value)


def test_stop_tokens(tiny_generation):
    key, folder = tiny_generation
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = stop_token_ids(tokenizer, GENERATIONS[key])
    assert ids == [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(GENERATIONS[key].turn_end)]


def chat_trainer(model, tokenizer, cfg, output_dir, steps):
    """The course's SFTConfig and CourseSFTTrainer on the tiny chats, with TRL's assistant-only loss."""
    from datasets import Dataset

    from gemmate_lib.training import CourseSFTTrainer, training_args

    tokenizer.chat_template = training_chat_template(generation_of(model))
    args = training_args(
        cfg,
        output_dir,
        has_eval=False,
        assistant_only_loss=True,
        completion_only_loss=None,
        max_steps=steps,
        logging_steps=1,
        learning_rate=LR,
        warmup_steps=0,
        per_device_train_batch_size=4,
    )
    return CourseSFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([{"messages": c} for c in CHATS]),
        processing_class=tokenizer,
    )


RELOAD = """
import json, sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, adapter, merged, prompt = sys.argv[1:5]
tok = AutoTokenizer.from_pretrained(folder)
ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
stop = json.loads(sys.argv[5])
def greedy(model):
    out = model.generate(**ids, max_new_tokens=8, do_sample=False, eos_token_id=stop,
    pad_token_id=tok.pad_token_id)
    return out[0, ids["input_ids"].shape[1]:].tolist()
base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
with_adapter = PeftModel.from_pretrained(base, adapter).eval()
a = greedy(with_adapter)
m = greedy(AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32,
attn_implementation="eager").eval())
print(json.dumps({"adapter": a, "merged": m}))
"""


@pytest.mark.slow  # about 1-2 minutes per generation on a 2-core CPU
def test_chat_training_end_to_end(tiny_generation, tmp_path):
    """NF4 + k-bit + text-only LoRA; assistant-only chat loss finite and falling; save; merge into a fresh
    32-bit base; reload both in a fresh process; greedy tokens agree and stop at the generation's turn end."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    key, folder = tiny_generation
    generation = GENERATIONS[key]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    cfg, model = nf4_lora(folder)
    trainer = chat_trainer(model, tokenizer, cfg, tmp_path / "trainer", steps=STEPS)
    with trains_only_the_trainable():
        trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert all(math.isfinite(x) for x in losses)
    assert max(losses[-3:]) < 0.7 * losses[0], (
        losses
    )  # learning; a loss stuck near ln(vocab) is a broken path
    adapter = tmp_path / "adapter"
    trainer.model.save_pretrained(adapter)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    prompt = tokenizer.apply_chat_template(CHATS[0][:1], tokenize=False, add_generation_prompt=True)
    stop = stop_token_ids(tokenizer, generation)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            RELOAD,
            str(folder),
            str(adapter),
            str(tmp_path / "merged"),
            prompt,
            json.dumps(stop),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.returncode == 0, out.stderr[-2000:]
    tokens = json.loads(out.stdout.strip().splitlines()[-1])
    assert tokens["adapter"] == tokens["merged"]
    text = tokenizer.decode(tokens["adapter"])
    answers = {chat[1]["content"] for chat in CHATS}
    assert tokens["adapter"][-1] == tokenizer.convert_tokens_to_ids(generation.turn_end), text  # it stopped
    assert text.removesuffix(generation.turn_end).strip() in answers, (
        text
    )  # and wrote an answer in the format


def test_trainable_tokens_train_the_turn_end(tiny_generation, tmp_path):
    """`lora_trainable_tokens`: the turn end's input embedding trains (peft's trainable_token_indices), as a
    base model's never-trained `<end_of_turn>` needs; every other row of the embedding stays as it was."""
    from transformers import AutoTokenizer

    key, folder = tiny_generation
    turn_end = GENERATIONS[key].turn_end
    tokenizer = AutoTokenizer.from_pretrained(folder)
    cfg, model = nf4_lora(folder, tokenizer, lora_trainable_tokens=(turn_end,))
    ids = torch.tensor([[tokenizer.convert_tokens_to_ids(turn_end), tokenizer.eos_token_id]])
    before = model.get_input_embeddings()(ids).detach().clone()
    with trains_only_the_trainable():
        chat_trainer(model, tokenizer, cfg, tmp_path, steps=2).train()
    after = model.get_input_embeddings()(ids).detach()
    assert not torch.allclose(before[0, 0], after[0, 0])  # the turn end learned
    assert torch.equal(before[0, 1], after[0, 1])  # <eos> did not


def test_trainable_tokens_must_be_in_the_vocabulary(tiny_generation):
    from transformers import AutoTokenizer

    from gemmate_lib.guard_rails.errors import ParameterError

    key, folder = tiny_generation
    with pytest.raises(ParameterError, match="<start_of_image>"):
        nf4_lora(folder, AutoTokenizer.from_pretrained(folder), lora_trainable_tokens=("<start_of_image>",))
