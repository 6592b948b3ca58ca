"""Colab secrets: HF_TOKEN is $COLAB_SIM_SECRET (unset: no such secret; "declined": access refused)."""
import os

from .errors import Error


class NotebookAccessError(Error):
    pass


class SecretNotFoundError(Error):
    pass


def get(name: str) -> str:
    value = os.environ.get("COLAB_SIM_SECRET") if name == "HF_TOKEN" else None
    if value == "declined":
        raise NotebookAccessError(name)
    if not value:
        raise SecretNotFoundError(name)
    return value
