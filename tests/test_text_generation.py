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
