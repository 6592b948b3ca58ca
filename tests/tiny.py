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


def make_sentencepiece_tokenizer(folder, corpus, vocab_size: int = 400):
    """A Gemma tokenizer on a SentencePiece BPE model (~400 pieces) trained in memory on `corpus`, saved to
    `folder` (tokenizer.model beside the tokenizer files) and loaded from there: llama.cpp's converter reads a
    Gemma's SentencePiece vocabulary, which make_tiny_tokenizer's byte-level one is not, so a tiny model
    meant for a GGUF export takes this one. As Gemma's: <pad> <eos> <bos> at ids 0 1 2, byte fallback, no
    space prefix; llama.cpp then splits text into the same ids as transformers."""
    import io
    import json
    from pathlib import Path

    import sentencepiece
    from transformers import AutoTokenizer

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(list(corpus) * 20), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>",
        eos_piece="<eos>", bos_piece="<bos>", add_dummy_prefix=False, normalization_rule_name="identity",
        remove_extra_whitespaces=False, user_defined_symbols=["\n"], hard_vocab_limit=False, minloglevel=2)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    settings = {"tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "padding_side": "right"}
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    return AutoTokenizer.from_pretrained(folder)


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


# One tiny random model per Gemma generation (tests/test_generations.py): the real architecture classes at toy
# size, every linear layer a multiple of 32 wide (bitsandbytes' CPU NF4 packs weights in blocks of 32
# rows), and a small tokenizer with the generation's own special tokens and the chat template its chat
# checkpoint ships.
GENERATION_SPECIALS = {"gemma": ["<start_of_turn>", "<end_of_turn>"],
                       "gemma3": ["<start_of_turn>", "<end_of_turn>"],
                       "gemma4": ["<|turn>", "<turn|>"]}
CHATS = [[{"role": "user", "content": "Who wrote: Be yourself?"},
          {"role": "assistant", "content": "Oscar Wilde"}],
         [{"role": "user", "content": "Who wrote: Stay hungry?"},
          {"role": "assistant", "content": "Steve Jobs"}],
         [{"role": "user", "content": "Count to three"}, {"role": "assistant", "content": "one two three"}],
         [{"role": "user", "content": "Who said imagination?"},
          {"role": "assistant", "content": "Albert Einstein"}]]


def make_generation_tokenizer(key: str):
    """A byte-level BPE tokenizer (352 entries) with `key`'s turn tokens as special tokens and the shipped
    chat template of that generation (TRL's copy), padding on the right like Gemma's."""
    from pathlib import Path

    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast
    from trl import chat_template_utils

    from gemmate_lib.generations import GENERATIONS

    corpus = TINY_CORPUS + [m["content"] for chat in CHATS for m in chat] + ["user model system"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus * 5, vocab_size=352, min_frequency=1, show_progress=False,
                            special_tokens=["<pad>", "<eos>", "<bos>", *GENERATION_SPECIALS[key]])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<bos>", eos_token="<eos>",
                                        pad_token="<pad>", additional_special_tokens=GENERATION_SPECIALS[key])
    folder = Path(chat_template_utils.__file__).parent / "chat_templates"
    tokenizer.chat_template = (folder / GENERATIONS[key].shipped_template).read_text()
    return tokenizer


def make_tiny_generation(key: str, tokenizer, seed: int = 0):
    """A random model of generation `key` ("gemma", "gemma3", "gemma4"), float32, eval mode.
    Gemma 4 is built as the Hub's checkpoints load: Gemma4ForConditionalGeneration with vision and audio
    towers, per-layer inputs and KV sharing on (the last 2 of 4 layers reuse the keys and values of earlier
    ones)."""
    import transformers as tf

    # initializer_range 0.2: tied embeddings large enough that a LoRA can move the logits (0.02 caps them near
    # +-1.3 after the final norm, and a few steps cannot memorise anything)
    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, initializer_range=0.2,
               eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(seed)
    if key == "gemma":
        model = tf.GemmaForCausalLM(tf.GemmaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                   num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                                                   max_position_embeddings=512, **ids))
    elif key == "gemma3":
        model = tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(hidden_size=64, intermediate_size=128,
                                                         num_hidden_layers=2, num_attention_heads=2,
                                                         num_key_value_heads=1, head_dim=32,
                                                         max_position_embeddings=512, sliding_window=64,
                                                         **ids))
    elif key == "gemma4":
        text = tf.Gemma4TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                   num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                                   global_head_dim=64,
                                   layer_types=["sliding_attention", "full_attention"] * 2, sliding_window=64,
                                   max_position_embeddings=512, vocab_size_per_layer_input=len(tokenizer),
                                   hidden_size_per_layer_input=64,  # >= 64: bitsandbytes' CPU NF4 blocks
                                   num_kv_shared_layers=2,
                                   use_double_wide_mlp=True, final_logit_softcapping=30.0, **ids)
        vision = tf.Gemma4VisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=2, head_dim=32,
                                       position_embedding_size=64, use_clipped_linears=True)
        audio = tf.Gemma4AudioConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                     subsampling_conv_channels=[32, 32], output_proj_dims=64)
        model = tf.Gemma4ForConditionalGeneration(tf.Gemma4Config(
            text_config=text, vision_config=vision, audio_config=audio,
            **{k: ids[k] for k in ids if k not in ("vocab_size", "initializer_range")}))
    else:
        raise ValueError(f"unknown generation {key!r}")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


# transformers 5.24 renamed the KV cache `past_key_values` to `cache`, as the forward's argument and as the
# output's field (the old name works there, deprecated, until 5.40): a check that hands a cache back to the
# model must use the name the model knows. The pre-flight tests run each check on a model that knows one name.
CACHE_NAMES = ("past_key_values", "cache")


def cache_name_of(model) -> str:
    """The name the installed transformers gives `model`'s KV cache (an argument of its class's forward)."""
    import inspect

    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def speaking_only(forward, name: str, installed: str, cached_shift: float = 0.0):
    """A causal LM's `forward` (whose cache the installed transformers names `installed`) as the forward of a
    model that knows its KV cache as `name` only: it takes the cache under that name and returns loss, logits
    and the cache under that name alone. The other name raises (a real forward takes it into **kwargs and
    runs without the cache, quietly). `cached_shift` > 0 breaks the cached path (Gemma 4's early bug, in
    kind): a step that reads a non-empty cache gets its logits shifted by up to that much."""
    import inspect
    from types import SimpleNamespace

    other = {"cache": "past_key_values", "past_key_values": "cache"}[name]

    def speaks(*args, **kwargs):
        if other in kwargs:
            raise TypeError(f"forward() got an unexpected keyword argument '{other}'")
        cache = kwargs.pop(name, None)
        out = forward(*args, **kwargs, **({installed: cache} if cache is not None else {}))
        logits = out.logits
        if cached_shift and cache is not None and cache.get_seq_length() > 0:
            logits = logits + torch.linspace(0, cached_shift, logits.shape[-1], device=logits.device)
        return SimpleNamespace(loss=out.loss, logits=logits, **{name: getattr(out, installed, None)})

    # the signature a real forward shows: the cache's name among its keyword arguments
    keyword = [inspect.Parameter(p, inspect.Parameter.KEYWORD_ONLY, default=None)
               for p in ("input_ids", "attention_mask", name, "use_cache")]
    rest = inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)
    speaks.__signature__ = inspect.Signature([*keyword, rest])
    return speaks
