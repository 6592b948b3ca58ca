"""Shared fixtures, in two tiers.

- Plumbing tests use a tiny random Gemma 3 (2 layers, hidden size 64) built from a config,
  with a tiny byte-level tokenizer trained in memory: no download, no conversion,
  milliseconds per forward pass. `make test-fast` runs only these.
- Model-behaviour tests use the embedded Gemma 3 270M for real (fixtures `tokenizer`,
  `base_model`, `fresh_model`); they, and tests marked `slow` (subprocesses, training
  runs), run in `make test` only. A test that asks for a real fixture is marked slow here.
"""
import os

# Nothing here can reach the Hub: fail at once instead of retrying for ~30 s.
# (Set before huggingface_hub is imported, which reads it once.)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

REAL_FIXTURES = {"tokenizer", "base_model", "fresh_model"}
TINY_CORPUS = ["Quote: Be yourself; everyone else is already taken.\nAuthor: Oscar Wilde",
               "Quote: Imagination is more important than knowledge.\nAuthor: Albert Einstein",
               "Stay hungry, stay foolish.\nWritten: May 2014", "one two three four five six seven eight nine ten"]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if REAL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def fp32():
    from gemmate_lib.hardware import pick_precision

    return pick_precision("cpu", "fp32")


@pytest.fixture(scope="session")
def tiny_tokenizer():
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

    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=4, head_dim=16, max_position_embeddings=512,
                              sliding_window=64, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    return make_tiny_gemma(tiny_tokenizer)


@pytest.fixture()
def tiny_folder(tiny_tokenizer, tmp_path_factory):
    """The tiny model and tokenizer saved as a model folder (what load_model / load_tokenizer take)."""
    folder = tmp_path_factory.mktemp("tiny") / "tiny-gemma"
    make_tiny_gemma(tiny_tokenizer).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture()
def cpu_cfg():
    """The course's config on this CPU in fp32 (the dtype of the tiny model)."""
    from gemmate_lib.config import course_config

    return course_config(device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def tokenizer():
    from gemmate_lib.models import load_tokenizer

    return load_tokenizer("embedded")


@pytest.fixture(scope="session")
def base_model(fp32):
    """The embedded model in fp32. Session-wide: do not modify it in a test."""
    from gemmate_lib.models import load_model

    model = load_model("embedded", fp32)
    model.requires_grad_(False)
    return model


@pytest.fixture()
def fresh_model(fp32):
    from gemmate_lib.models import load_model

    torch.manual_seed(0)
    return load_model("embedded", fp32)
