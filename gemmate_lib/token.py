"""The Hugging Face token: Colab secrets first, then the environment, else None.

Taught in 00_setup. The token is never printed, logged or saved: callers get the
string to pass to Hub calls and `describe_token()` says only where it came from.
"""
from __future__ import annotations

import os


def _from_colab() -> str | None:
    try:
        from google.colab import userdata  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        return userdata.get("HF_TOKEN") or None
    except Exception:  # SecretNotFoundError, NotebookAccessError: treat as absent
        return None


def token_source() -> str | None:
    """Where a token would come from: "colab", "env" or None (no token)."""
    if _from_colab():
        return "colab"
    if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
        return "env"
    return None


def get_hf_token() -> str | None:
    """Return the token string, or None. Do not print what it returns."""
    return _from_colab() or os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def describe_token() -> str:
    """A safe one-line description for notebooks: where the token comes from, never its value."""
    source = token_source()
    if source == "colab":
        return "HF_TOKEN found in Colab secrets (value hidden)"
    if source == "env":
        return "HF_TOKEN found in the environment (value hidden)"
    return "no HF_TOKEN: the gated google/gemma models are out of reach; the embedded default needs none"
