"""`python -m gemmate_lib` was the command line until it became its own package (gemmate_cli): say where it
went instead of Python's "No module named gemmate_lib.__main__"."""
import sys

if __name__ == "__main__":
    sys.exit("the command line is its own package now: run `gemmate ...` or `python -m gemmate_cli ...` "
             "(docs/command-line.md)")
