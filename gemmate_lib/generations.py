"""What the course knows per Gemma generation (docs/gemma-generations.md; the one-page notebook's parameter
cell names the three choices): Gemma 1 (`google/gemma-2b`, the course's default), Gemma 3 1B and Gemma 4
E2B. Keyed by the `model_type` of the model's config, so a local folder, a Hub id or a loaded model find
their generation. The config, the trainer and the pre-flight check (preflight.py) branch on it here, nowhere
else."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from gemmate_lib.guard_rails.errors import ParameterError

SEED_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TOWERS = ("vision", "audio")  # Gemma 4's encoders: LoRA never goes there (PEFT refuses Gemma4ClippableLinear)


@dataclass(frozen=True)
class Generation:
    key: str  # short name: "gemma", "gemma3", "gemma4"
    name: str  # the generation alone, e.g. "Gemma 3": true of every model of it (the embedded 270M too)
    model_types: tuple[str, ...]  # config.model_type values of this generation
    gated: bool  # the Hub asks to accept a licence first (a token with access is needed)
    t4_dtype: str  # compute dtype on a T4 (compute capability 7.5, no bf16)
    dtype_reason: str  # why, with the public source
    turn_start: str  # opens a chat turn (followed by the role)
    turn_end: str  # closes a chat turn: the token a chat model must learn to write and stop at
    shipped_template: str  # TRL's copy of the template the chat checkpoint ships (trl/chat_templates/)

    @property
    def stop_tokens(self) -> tuple[str, ...]:
        """Tokens that end generation: `<eos>` and the chat turn's end."""
        return ("<eos>", self.turn_end)


GEMMA_1 = Generation(
    key="gemma", name="Gemma 1", model_types=("gemma",), gated=True, t4_dtype="fp16",
    dtype_reason="trains in fp16 with loss scaling on a T4",
    turn_start="<start_of_turn>", turn_end="<end_of_turn>", shipped_template="gemma.jinja")
GEMMA_3 = Generation(
    key="gemma3", name="Gemma 3", model_types=("gemma3_text", "gemma3"), gated=True, t4_dtype="fp32",
    dtype_reason="overflows in fp16 (transformers issue 36822): fp32 compute on a T4, as Unsloth does",
    turn_start="<start_of_turn>", turn_end="<end_of_turn>", shipped_template="gemma3.jinja")
GEMMA_4 = Generation(
    key="gemma4", name="Gemma 4", model_types=("gemma4", "gemma4_text"), gated=False, t4_dtype="fp32",
    dtype_reason="fp16 gradients overflow in the residual stream (unsloth-zoo PR 866): fp32 compute on a T4",
    turn_start="<|turn>", turn_end="<turn|>", shipped_template="gemma4_v5.jinja")
GENERATIONS = {g.key: g for g in (GEMMA_1, GEMMA_3, GEMMA_4)}
DEFAULT = GEMMA_1  # the model of the notebook this course grew from
BY_MODEL_TYPE = {t: g for g in GENERATIONS.values() for t in g.model_types}


def text_setting(model, name: str, default=None):
    """A setting of `model`'s language model (a model, PEFT model, GemmaTE wrapper or config): Gemma 3 and 4
    load as composite models that keep most of their settings (`final_logit_softcapping`, `hidden_size`,
    `max_position_embeddings`) in `text_config`, where a top-level `getattr` finds nothing. Every such read in
    the course goes through here (03 trains on Gemma 4's capped logits because of it)."""
    config = getattr(model, "config", model)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, name, default)


def model_type_of(model) -> str:
    """config.model_type of `model`: a loaded model, a config, a local folder, "embedded" (Gemma 3 270M) or a
    Hub id (read from its name, since the Hub may be out of reach; Gemma 3n is not Gemma 3); "" when it
    cannot tell."""
    if not isinstance(model, (str, Path)):
        return str(getattr(getattr(model, "config", model), "model_type", "") or "")
    name = str(model)
    if name == "embedded":
        return "gemma3_text"
    config = Path(name) / "config.json"
    if config.is_file():
        try:
            return str(json.loads(config.read_text()).get("model_type") or "")
        except ValueError:
            return ""
    for pattern, model_type in ((r"gemma-4", "gemma4"), (r"gemma-3(?!n)", "gemma3_text"),
                                (r"gemma-(1\.1-)?[27]b", "gemma")):
        if re.search(pattern, name.lower()):
            return model_type
    return ""


def generation_of(model) -> Generation | None:
    """The Generation of `model` (anything `model_type_of` takes); None for a model the course lacks."""
    return BY_MODEL_TYPE.get(model_type_of(model))


def lora_targets(model, targets=SEED_TARGETS):
    """The `target_modules` for PEFT on `model`: the text model's layers only. Gemma 4 checkpoints load with
    their vision and audio towers, whose layers carry the same names (q_proj, ...) inside
    Gemma4ClippableLinear, which PEFT refuses; so for Gemma 4 the names become one regex that excludes the
    towers. "all-linear" means the seed recipe's seven projections there."""
    generation = generation_of(model)
    if generation is None or generation.key != "gemma4":
        return targets
    names = SEED_TARGETS if targets == "all-linear" else (targets,) if isinstance(targets, str) else targets
    return rf"^(?!.*(?:{'|'.join(TOWERS)})).*\.(?:{'|'.join(map(re.escape, names))})$"


def stop_token_ids(tokenizer, generation: Generation | None = None) -> list[int]:
    """Ids of the stop tokens the tokenizer has (`<eos>` and the turn end): `generate(eos_token_id=...)` stops
    at any of them, so a chat model stops at its turn end rather than running on."""
    vocab = tokenizer.get_vocab()
    ids = [tokenizer.eos_token_id] + [vocab[t] for t in (generation or DEFAULT).stop_tokens if t in vocab]
    return list(dict.fromkeys(i for i in ids if i is not None))


def training_chat_template(generation: Generation) -> str:
    """The shipped chat template with `{% generation %}` around what the model writes (its content and the
    turn end), so `assistant_only_loss=True` masks the prompt and keeps the turn end in the loss: TRL's
    gemma_training/gemma3_training for Gemma 1 and 3, and for Gemma 4 (TRL 1.16 has none) the shipped
    template patched here. It renders every conversation exactly as the shipped one
    (tests/test_generations.py)."""
    from trl import chat_template_utils

    folder = Path(chat_template_utils.__file__).parent / "chat_templates"
    if generation.key != "gemma4":
        return (folder / f"{generation.shipped_template.split('.')[0]}_training.jinja").read_text()
    return gemma4_training_template((folder / generation.shipped_template).read_text())


def gemma4_training_template(shipped: str) -> str:
    """Gemma 4's shipped template with generation markers around a model turn's content and its `<turn|>`."""
    content = "{{- captured_content -}}"
    end = "{{- '<turn|>\\n' -}}"
    if shipped.count(content) != 1 or end not in shipped:
        raise ParameterError("this Gemma 4 chat template is not the one the course knows how to mark",
                             "use the template TRL ships (trl/chat_templates/gemma4_v5.jinja)")
    marked = "{%- if role == 'model' -%}{%- generation -%}X{%- endgeneration -%}{%- else -%}X{%- endif -%}"
    # the last turn end is the loop's, not the system turn's
    head, tail = shipped.replace(content, marked.replace("X", content)).rsplit(end, 1)
    return head + marked.replace("X", end) + tail
