"""`python -m gemmate_lib train|evaluate|generate|hpo`: the same as the `gemmate` command."""
import sys

from .cli import main

sys.exit(main())
