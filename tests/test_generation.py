from gemmate_lib.text_generation import STANDARD_PROMPTS, generate, has_author_line


def test_author_line_detection():
    assert has_author_line("Quote: Be yourself.\nAuthor: Oscar Wilde")
    assert not has_author_line("Quote: Be yourself. And so on and so on")
    assert not has_author_line("Quote: x\nAuthor:")
    assert not has_author_line("Quote: x\nAuthor: Author: Author:")
    assert not has_author_line("Quote: x\nAuthor: A\nQuote: y\nAuthor: B")


def test_greedy_generation_is_a_repeatable_table(tiny_model, tiny_tokenizer):
    tokenizer = tiny_tokenizer
    prompts = list(STANDARD_PROMPTS[:2])
    side = tokenizer.padding_side
    first = generate(tiny_model, tokenizer, prompts, max_new_tokens=8)
    again = generate(tiny_model, tokenizer, prompts[::-1], max_new_tokens=8, batch_size=1)
    assert list(first.columns) == ["prompt", "completion", "author_line", "new_tokens", "seconds"]
    assert first.prompt.tolist() == prompts
    assert (first.new_tokens <= 8).all() and (first.new_tokens > 0).all()
    # left padding in a batch of two gives the same text as one prompt at a time
    assert first.completion.tolist() == again.completion.tolist()[::-1]
    assert tokenizer.padding_side == side  # restored after generation


def test_generation_on_the_real_model_is_repeatable(base_model, tokenizer):
    prompts = list(STANDARD_PROMPTS[:2])
    first = generate(base_model, tokenizer, prompts, max_new_tokens=8)
    again = generate(base_model, tokenizer, prompts[::-1], max_new_tokens=8, batch_size=1)
    assert first.completion.tolist() == again.completion.tolist()[::-1] and (first.new_tokens > 0).all()


def test_a_prompt_longer_than_the_context_is_cut_with_a_warning(tiny_model, tiny_tokenizer):
    import pytest

    tiny_model.config.max_position_embeddings = 64
    with pytest.warns(UserWarning,
                      match=r"cut to its last 56 \(the model's context of 64 minus max_new_tokens=8\)"):
        out = generate(tiny_model, tiny_tokenizer, ["word " * 500 + "Quote: end"], max_new_tokens=8)
    assert len(out) == 1 and out.new_tokens[0] > 0
