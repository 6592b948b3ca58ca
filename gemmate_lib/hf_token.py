"""The Hugging Face token, resolved by huggingface_hub: never printed, logged or saved.

Taught in 00_setup. `huggingface_hub.get_token()` already looks in the `HF_TOKEN`
environment variable, the saved `hf auth login` file and Colab's secrets; this module
only adds a description that says where the token came from (never its value), and
the environment a subprocess needs to see the same token. (Named `hf_token`, not
`token`, so that it never shadows the standard library's `token` module.)
"""
from __future__ import annotations

import os


def get_token() -> str | None:
    """The token string, or None. Do not print what it returns."""
    from huggingface_hub import get_token as hub_get_token

    return hub_get_token()


def token_source() -> str | None:
    """Where the token comes from: "env", "saved login", "colab" or None (no token)."""
    from huggingface_hub import constants

    if not get_token():
        return None
    if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
        return "env"
    return "saved login" if os.path.exists(constants.HF_TOKEN_PATH) else "colab"


def describe_token() -> str:
    """A safe one-line description for notebooks: where the token comes from, never its value."""
    source = token_source()
    where = {"env": "the HF_TOKEN environment variable", "saved login": "the saved `hf auth login`",
             "colab": "Colab secrets (HF_TOKEN)"}
    if source:
        return f"Hugging Face token found in {where[source]} (value hidden)"
    return "no HF_TOKEN: the gated google/gemma models are out of reach; the embedded default needs none"


def subprocess_env() -> dict[str, str]:
    """os.environ plus HF_TOKEN when the token lives elsewhere (Colab secrets, a saved login).

    A child process has no notebook kernel, so it cannot read Colab secrets itself.
    """
    env = os.environ.copy()
    token = get_token()
    if token and not env.get("HF_TOKEN"):
        env["HF_TOKEN"] = token
    return env
