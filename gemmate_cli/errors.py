"""`run_cli`: every command and tool runs its main() in it, so a course error is one line (`gemmate`,
tools/, scripts/finetune.py)."""
from __future__ import annotations

import sys
import traceback

from gemmate_lib.guard_rails.errors import GemmateError, one_line, out_of_memory_error


def run_cli(main, argv: list[str] | None = None) -> int:
    """Run a command's `main(argv)`: a course error is one line and exit 2, anything else one line and exit 1
    (`--debug` anywhere in argv shows its full traceback instead)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        return main(argv) or 0
    except GemmateError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - one line for anything unexpected, unless --debug
        memory = out_of_memory_error("the command ran", err)
        if memory is not None and not debug:  # which memory ran out, and the fixes
            print(f"error: {memory}", file=sys.stderr)
            return 2
        if debug:
            traceback.print_exc()
        else:
            print(f"unexpected error: {one_line(err)}; run with --debug for the traceback", file=sys.stderr)
        return 1
