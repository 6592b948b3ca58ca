"""Text generation for a list of prompts, as a table (02_baseline_generation before training, 03 after):
greedy by default, so "before" and "after" compare line by line."""
from __future__ import annotations

import contextlib
import time
import warnings

import pandas as pd
import torch

from gemmate_lib.generations import text_setting
from gemmate_lib.guard_rails.errors import DataError

STANDARD_PROMPTS = (
    "Quote: I am not talented, but I'm good at not giving up",
    "Quote: Imagination is more",
    "Quote: A Woman is like a tea bag;",
    "Quote: Outside of a dog, a book is man's",
)  # the seed notebook's prompts
BATCH_SIZE = 32  # prompts per model.generate call: on a CPU a bigger batch costs little more per step


def has_author_line(text: str) -> bool:
    """True when the text names an author on one `Author: <name>` line (not "Author: Author: ...")."""
    names = [line[len("Author:"):].strip() for line in text.splitlines() if line.startswith("Author:")]
    return len(names) == 1 and bool(names[0]) and "Author:" not in names[0]


def follows_the_format(text: str, stopped: bool) -> bool:
    """The learned format (04's and 06's format check, 05's GGUF files): one `Author: <name>` line, nothing
    written after it, and the end token (`stopped`)."""
    lines = text.rstrip().splitlines()
    return stopped and has_author_line(text) and lines[-1].startswith("Author:")


@contextlib.contextmanager
def unfrozen_for_cpu(model):
    """Frozen float CPU weights marked as requiring grad while generating (under no_grad): PyTorch's CPU bf16
    matmul takes a much slower path with frozen weights, for the same outputs."""
    params = [p for p in model.parameters()
              if not p.requires_grad and p.is_floating_point() and p.device.type == "cpu"]
    for p in params:
        p.requires_grad_(True)
    try:
        yield model
    finally:
        for p in params:
            p.requires_grad_(False)


@torch.no_grad()
def generate(model, tokenizer, prompts=STANDARD_PROMPTS, max_new_tokens: int = 40, greedy: bool = True,
             batch_size: int = BATCH_SIZE, timestamps=None, **generate_kwargs):
    """A continuation for each prompt, as a DataFrame (prompt, completion, author line, seconds): the course's
    one generation loop, for plain models and for GemmaTE with `timestamps` (one per prompt, 07). 02 writes
    out one call of it, 04 the loop (tests/test_notebook_recipes*.py hold them equal)."""
    model.eval()
    device = next(model.parameters()).device
    rows = []
    if timestamps is not None and len(timestamps) != len(prompts):
        raise DataError(f"{len(prompts)} prompts but {len(timestamps)} timestamps",
                        "give one timestamp per prompt")
    # peft 0.21 finds generate's KV cache under `past_key_values` only; transformers 5.24 names it `cache`,
    # and prompt tuning (06) then prepends its soft prompt at every step: no cache (docs/compatibility.md)
    peft, active = getattr(model, "peft_config", None), getattr(model, "active_adapter", None)
    no_cache = bool(peft) and active in peft and peft[active].peft_type == "PROMPT_TUNING"
    cache = {"use_cache": False} if no_cache else {}
    # a prompt may have the model's context minus max_new_tokens tokens; warn when one is cut
    context = text_setting(model, "max_position_embeddings") or 8192
    limit = max(1, context - max_new_tokens)
    longest = max((len(ids) for ids in tokenizer(list(prompts))["input_ids"]), default=0)
    if longest > limit:
        warnings.warn(f"a prompt of {longest} tokens was cut to its last {limit} (the "
                      f"model's context of {context} minus max_new_tokens={max_new_tokens})", stacklevel=2)
    old_side, old_truncation = tokenizer.padding_side, tokenizer.truncation_side
    # decoder-only models continue from the right end; a prompt too long loses its start, never that end
    tokenizer.padding_side = tokenizer.truncation_side = "left"
    try:
        for i in range(0, len(prompts), batch_size):
            batch = list(prompts[i:i + batch_size])
            enc = tokenizer(batch, return_tensors="pt", padding=True, truncation=True,
                            max_length=limit).to(device)
            extra = {} if timestamps is None else {"timestamps": list(timestamps[i:i + batch_size])}
            start = time.time()
            with unfrozen_for_cpu(model):
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=not greedy,
                                     pad_token_id=tokenizer.pad_token_id, **extra, **cache, **generate_kwargs)
            seconds = (time.time() - start) / len(batch)
            for prompt, ids in zip(batch, out[:, enc["input_ids"].shape[1]:]):
                completion = tokenizer.decode(ids, skip_special_tokens=True)
                rows.append({"prompt": prompt, "completion": completion,
                             "author_line": has_author_line(prompt + completion),
                             "new_tokens": int((ids != tokenizer.pad_token_id).sum()),
                             "seconds": round(seconds, 2)})
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = old_side, old_truncation
    return pd.DataFrame(rows)
