"""The tiny random Gemma of the plumbing tests: a real
Gemma 3 architecture at toy size, and a tokenizer for it.

Built from a config and trained in memory: no download, no conversion, milliseconds per forward pass.
Tests use it through the fixtures in conftest.py; a subprocess of a test imports it directly.
"""
import torch

TINY_CORPUS = ["Quote: Be yourself; everyone else is already taken.\nAuthor: Oscar Wilde",
               "Quote: Imagination is more important than knowledge.\nAuthor: Albert Einstein",
               "Stay hungry, stay foolish.\nWritten: May 2014",
               "one two three four five six seven eight nine ten"]
# Four short rows in the course's format, for loss and training plumbing.
TEXTS = ("Quote: Be yourself.\nAuthor: Oscar Wilde", "Quote: Stay hungry.\nAuthor: Steve Jobs",
         "Quote: Imagination is more important than knowledge.\nAuthor: Albert Einstein",
         "Quote: one two three\nAuthor: Nobody")
ROWS = [{"text": t, "quote": t.split("\n")[0][7:], "author": t.split("Author: ")[1]} for t in TEXTS]


def make_tiny_tokenizer():
    """A byte-level BPE tokenizer (~300 tokens) trained in memory; pads on the right like Gemma's."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TINY_CORPUS * 5, vocab_size=320, min_frequency=1, show_progress=False,
                            special_tokens=["<pad>", "<eos>", "<bos>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>")


def make_tiny_gemma(tokenizer, seed: int = 0):
    """A random Gemma 3 text model with the real architecture at toy size (float32, eval mode).

    Every linear layer is a multiple of 64 wide, as bitsandbytes' CPU NF4 kernels need.
    """
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                              num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=4, head_dim=16,
                              max_position_embeddings=512,
                              sliding_window=64, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()
