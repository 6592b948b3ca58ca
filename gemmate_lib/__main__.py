"""`python -m gemmate_lib train|train-te|evaluate|generate|hpo`: the same as the `gemmate` command."""
import sys

from gemmate_lib.cli.main import run

sys.exit(run())
