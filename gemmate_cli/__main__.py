"""`python -m gemmate_cli COMMAND ...`: the same as the `gemmate` command (docs/command-line.md)."""
import sys

from gemmate_cli.main import run

sys.exit(run())
