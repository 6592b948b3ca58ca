"""A stand-in for Colab's `google.colab` package: only what the course and huggingface_hub touch."""
from . import drive, errors, userdata  # noqa: F401
