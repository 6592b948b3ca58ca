"""What a make target would run, read from `make -n` (make's dry run: nothing runs), as argument lists."""
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_commands(target: str, makefile: Path | None = None) -> list[list[str]]:
    """The commands of `make TARGET` from a clean state (-B: as if every file were out of date), each split
    as the shell would split it (continuation lines joined)."""
    cmd = ["make", "-n", "-B", "--no-print-directory", target]
    cmd += ["-f", str(makefile)] if makefile else []
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True).stdout
    lines = out.replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.strip()]


def pip_installs(commands: list[list[str]]) -> list[list[str]]:
    """The arguments after `pip install` of each pip install among `commands`, in order, each up to the end of
    its shell command (a `;`, `&&`, `||` or `|` after it on the same line)."""
    installs = []
    for args in commands:
        i = args.index("pip") if "pip" in args else -1
        if i < 0 or "install" not in args[i:]:
            continue
        own = []
        for arg in args[args.index("install", i) + 1:]:
            if arg in (";", "&&", "||", "|", "&"):
                break
            own.append(arg.removesuffix(";"))
            if arg.endswith(";"):
                break
        installs.append(own)
    return installs
