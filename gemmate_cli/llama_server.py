"""An exported GGUF (`gemmate export`, 05_save_and_push) served over HTTP as Ollama serves it: Ollama 0.30 and
later runs every GGUF on llama.cpp's server, so `serve` starts the same kind of server on the file
(llama-cpp-python's `python -m llama_cpp.server`, the pinned llama.cpp) and `complete` asks its completion
endpoint for the raw prompt, as `ollama run` sends it with the Modelfile's TEMPLATE of the prompt alone (or
`"raw": true`). The answer must be what llama.cpp in process wrote (tests/test_llama_server.py);
docs/export.md shows the server's own command."""
from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from gemmate_cli.gguf_file import read_gguf_header
from gemmate_lib.guard_rails.errors import GemmateError, ModelLoadError, ParameterError
from gemmate_lib.guard_rails.files import show_path

HOST = "127.0.0.1"


def gguf_fields(path) -> dict:
    """The metadata of the GGUF at `path` ({key: value}, arrays left out: gguf_file.read_gguf_header).
    ModelLoadError when `path` is missing, is not a GGUF file, or was cut short (shorter than its header
    says), in one line, before llama.cpp reads it (`serve` here, adapter_gguf.py's base model)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"no GGUF file at {show_path(path)}",
                             "export it first (05 section 3, or `gemmate export RUN_DIR`)")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(f"{show_path(path)} is not a GGUF file (it starts with {magic!r}, not b'GGUF')",
                             "pass the .gguf file that 05 or `gemmate export` wrote")
    try:
        fields, end = read_gguf_header(path)
    except (ValueError, OSError) as err:
        raise ModelLoadError(f"{show_path(path)} is cut short or damaged ({err})",
                             "export it again (an interrupted copy or download cuts a file short)") from None
    if end > path.stat().st_size:
        raise ModelLoadError(f"{show_path(path)} is cut short: its tensors end at byte {end:,}, the file at "
                             f"{path.stat().st_size:,}", "export it again (an interrupted copy or download)")
    return fields


def free_port(host: str = HOST) -> int:
    """A port nothing listens on now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port(port: int, host: str = HOST) -> None:
    """ParameterError when `port` is taken, before the server starts (it would die with a bind error)."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            raise ParameterError(f"port {port} on {host} is in use by another program",
                                 "pass another port, or stop the program that holds it") from None


@contextlib.contextmanager
def serve(path, port: int | None = None, n_ctx: int = 512, timeout: float = 120.0):
    """llama.cpp's server on `path` at http://127.0.0.1:<port> while the block runs (yields the address);
    stopped after it. One line when the file or the port is wrong, or the server does not come up."""
    gguf_fields(path)  # a missing, foreign or cut-short file: one line, before the server starts
    path = Path(path)
    port = port or free_port()
    check_port(port)
    try:
        import llama_cpp.server  # noqa: F401  (its extras: fastapi, uvicorn, sse-starlette, ...)
    except ImportError as err:
        raise ModelLoadError(f"llama-cpp-python's server cannot start: {err}",
                             "run `make install` (requirements.txt pins the server's packages)") from None
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--host", HOST,
               "--port", str(port), "--n_ctx", str(n_ctx), "--verbose", "False"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                last = (server.stdout.read() or "").strip().splitlines()[-1:] or ["(no output)"]
                raise ModelLoadError(f"llama.cpp's server stopped before answering: {last[0]}",
                                     "check the file with 05's llama.cpp check after its export, or "
                                     "export it again")
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise GemmateError(f"llama.cpp's server did not answer within {timeout:.0f} s",
                                       "try again on a quieter machine, or raise the timeout") from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if server.stdout:
            server.stdout.close()


def complete(url: str, prompt: str, max_tokens: int = 40, stop=None) -> dict:
    """The server's /v1/completions for the raw prompt, greedy: {"text", "finish_reason"}. Its repeat
    penalty is off: llama.cpp's server (and Ollama) default to 1.1, which turns greedy decoding into another
    text where the quote repeats a word (the Modelfile sets it to 1 for the same reason)."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "top_k": 1, "seed": 0,
            "repeat_penalty": 1.0,
            **({"stop": list(stop)} if stop else {})}
    request = urllib.request.Request(f"{url}/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        choice = json.loads(response.read())["choices"][0]
    return {"text": choice["text"], "finish_reason": choice["finish_reason"]}
