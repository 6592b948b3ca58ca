"""`python -m gemmate_lib train|train-te|evaluate|generate|hpo`: the same as the `gemmate` command."""
import sys

from .cli import run

sys.exit(run())
