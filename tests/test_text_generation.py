import pytest
import torch
import transformers

from gemmate_lib.text_generation import STANDARD_PROMPTS, generate, has_author_line


def test_author_line_detection():
    assert has_author_line("Quote: Be yourself.\nAuthor: Oscar Wilde")
    assert not has_author_line("Quote: Be yourself. And so on and so on")
    assert not has_author_line("Quote: x\nAuthor:")
    assert not has_author_line("Quote: x\nAuthor: Author: Author:")
    assert not has_author_line("Quote: x\nAuthor: A\nQuote: y\nAuthor: B")


def _greedy_by_hand(model, tokenizer, prompt: str, max_new_tokens: int) -> list[int]:
    """Greedy decoding written out: the most likely next token, one at a time, until EOS or the limit."""
    import torch

    ids, new = tokenizer(prompt, return_tensors="pt").input_ids, []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = model(input_ids=ids).logits[0, -1].argmax()
            new.append(int(token))
            ids = torch.cat([ids, token.view(1, 1)], dim=1)
            if token == tokenizer.eos_token_id:
                break
    return new


def test_greedy_generation_is_the_most_likely_token_each_step_in_batches_or_alone(tiny_model, tiny_tokenizer):
    tokenizer = tiny_tokenizer
    prompts = [STANDARD_PROMPTS[0], "Quote: Be"]
    assert len({len(tokenizer(p).input_ids) for p in prompts}) == 2  # the batch of two needs padding
    side = tokenizer.padding_side
    first = generate(tiny_model, tokenizer, prompts, max_new_tokens=8)
    again = generate(tiny_model, tokenizer, prompts[::-1], max_new_tokens=8, batch_size=1)
    assert list(first.columns) == ["prompt", "completion", "author_line", "new_tokens", "seconds"]
    assert first.prompt.tolist() == prompts
    for prompt, completion, count in zip(prompts, first.completion, first.new_tokens):
        by_hand = _greedy_by_hand(tiny_model, tokenizer, prompt, 8)
        assert (completion, count) == (tokenizer.decode(by_hand, skip_special_tokens=True), len(by_hand))
    # left padding in a batch of two gives the same text as one prompt at a time
    assert first.completion.tolist() == again.completion.tolist()[::-1]
    assert tokenizer.padding_side == side  # restored after generation


def test_a_prompt_longer_than_the_context_is_cut_with_a_warning(tiny_model, tiny_tokenizer):
    import pytest

    tiny_model.config.max_position_embeddings = 64
    with pytest.warns(UserWarning,
                      match=r"cut to its last 56 \(the model's context of 64 minus max_new_tokens=8\)"):
        out = generate(tiny_model, tiny_tokenizer, ["word " * 500 + "Quote: end"], max_new_tokens=8)
    assert len(out) == 1 and out.new_tokens[0] > 0


NEWER_CACHE = tuple(int(x) for x in transformers.__version__.split(".")[:2]) >= (5, 24)


@pytest.mark.parametrize("method", ["prompt", pytest.param("prefix", marks=pytest.mark.xfail(
    NEWER_CACHE, strict=True, reason="peft 0.21 passes the prefix as past_key_values, which transformers "
    "5.24's generate overrides with its own cache: the prefix is lost (docs/compatibility.md)"))])
def test_soft_prompts_generate_what_a_step_by_step_greedy_decoding_gives(tiny_tokenizer, method):
    """06's prompt and prefix tuning through `generate`: token for token what a greedy decoding that runs the
    whole text at every step gives. peft 0.21 with transformers 5.24 (which renames the cache to `cache`)
    prepended the soft prompt at every step when generate used its KV cache, and loses the prefix."""
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model
    from tiny import make_tiny_gemma

    from gemmate_lib.text_generation import generate

    torch.manual_seed(0)
    config = (PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4) if method == "prompt"
              else PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    model = get_peft_model(make_tiny_gemma(tiny_tokenizer), config).eval()
    prompts = ["Quote: Be yourself", "Quote: Imagination"]
    got = generate(model, tiny_tokenizer, prompts, max_new_tokens=6, batch_size=1).completion.tolist()
    for prompt, text in zip(prompts, got):
        ids = tiny_tokenizer(prompt, return_tensors="pt")["input_ids"]
        new = []
        for _ in range(6):
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
            token = logits[0, -1].argmax()
            if token.item() == tiny_tokenizer.eos_token_id:
                break
            new.append(token.item())
            ids = torch.cat([ids, token.view(1, 1)], dim=1)
        assert text == tiny_tokenizer.decode(new, skip_special_tokens=True)


def test_the_format_is_one_author_line_then_the_end(monkeypatch, tiny_model, tiny_tokenizer):
    """04's and 06's format check (evaluation.format_generations): a generation that went on after its
    `Author:` line ("... Author: John Wooden\nQuote: Be kind.") and then stopped counted as following the
    format, which 04 defines as one Author: line and the end."""
    import pandas as pd

    from gemmate_lib import evaluation
    from gemmate_lib.text_generation import follows_the_format

    assert follows_the_format("Quote: Be.\nAuthor: John Wooden\n", True)
    assert not follows_the_format("Quote: Be.\nAuthor: John Wooden\nQuote: Be kind.", True)
    assert not follows_the_format("Quote: Be.\nAuthor: John Wooden", False)  # no end token
    assert not follows_the_format("Quote: Be.", True)
    completions = [" here.\nAuthor: John Wooden", " here.\nAuthor: John Wooden\nQuote: Be kind.",
                   " here.\nAuthor: Me"]
    monkeypatch.setattr(evaluation, "generate", lambda *args, **kwargs: pd.DataFrame(
        {"completion": completions, "new_tokens": [6, 12, evaluation.TOKENS["completion"]]}))
    rows = [{"quote": "Be here now.", "author": "A"}] * 3
    assert evaluation.format_generations(tiny_model, tiny_tokenizer, rows)[2] == [1.0, 0.0, 0.0]
