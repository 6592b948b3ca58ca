"""Colab's kernel shell class lives in google.colab._shell; huggingface_hub detects Colab by that name."""
from ipykernel.zmqshell import ZMQInteractiveShell


class Shell(ZMQInteractiveShell):
    pass
