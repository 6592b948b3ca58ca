"""Colab's kernel class (google.colab._kernel.Kernel) runs the shell of google.colab._shell."""
from ipykernel.ipkernel import IPythonKernel

from ._shell import Shell


class Kernel(IPythonKernel):
    shell_class = Shell
