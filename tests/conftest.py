"""Shared fixtures. Tests that need a model use the embedded Gemma 3 270M for real."""
import os

# Nothing here can reach the Hub: fail at once instead of retrying for ~30 s.
# (Set before huggingface_hub is imported, which reads it once.)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def fp32():
    from gemmate_lib.hardware import pick_precision

    return pick_precision("cpu", "fp32")


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
