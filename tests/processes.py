"""Helpers for tests that start a process: the `gemmate` command with quick settings, and for servers
(`make lab`, `gemmate serve`) a free port and a bounded stop."""
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Small and quick on the embedded default: short quotes, batch 4.
QUICK = ["--max_length", "48", "--batch_size", "4", "--steps_freq", "2", "--val_steps_freq", "2",
         "--eval_fraction", "0.03"]


def gemmate(*args, check=True, **kwargs) -> subprocess.CompletedProcess:
    """`python -m gemmate_cli ARGS` from the project's root; with `check`, a failure shows its stderr."""
    proc = subprocess.run([sys.executable, "-m", "gemmate_cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=900, **kwargs)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group (started with start_new_session=True),
    SIGKILL after 30 s; returns once it is gone."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
