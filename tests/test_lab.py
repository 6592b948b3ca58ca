"""`make lab`: JupyterLab starts on 127.0.0.1 with the
notebooks and the course's kernel, answers, and stops."""
import json
import os
import secrets
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from processes import free_port, stop

ROOT = Path(__file__).resolve().parents[1]


def _get(url: str, token: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, response.read()


@pytest.mark.slow
def test_make_lab_serves_the_notebooks_with_the_course_kernel():
    port, token = free_port(), secrets.token_hex(16)  # a throwaway local token, never printed
    # -o install: no reinstall of .venv while other tests use it; port_retries=0: a taken port fails at once
    proc = subprocess.Popen(["make", "-s", "-o", "install", "lab", f"LAB_PORT={port}",
                             "LAB_ARGS=--no-browser --ServerApp.port_retries=0"], cwd=ROOT,
                            env={**os.environ, "JUPYTER_TOKEN": token}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, specs = time.time() + 120, None
        while time.time() < deadline and specs is None:  # bounded: at most 2 minutes, one request a second
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                specs = json.loads(_get(f"{base}/api/kernelspecs", token)[1])
            except OSError:
                time.sleep(1)
        assert specs is not None, "JupyterLab did not answer within 2 minutes"
        assert specs["default"] == "python3"
        course = specs["kernelspecs"]["python3"]["spec"]
        assert course["display_name"] == "GemmaTE course (.venv)"
        # the course's venv, not a system Python
        assert Path(course["argv"][0]).parent == ROOT / ".venv" / "bin"
        listing = json.loads(_get(f"{base}/api/contents", token)[1])
        names = {item["name"] for item in listing["content"]}
        assert {"00_setup.ipynb", "03_lora_sft.ipynb", "07_temporal_encoding.ipynb"} <= names
        status, page = _get(f"{base}/lab", token)
        assert status == 200 and b"JupyterLab" in page
        with pytest.raises(urllib.error.HTTPError) as refused:  # the token is required
            urllib.request.urlopen(f"{base}/api/kernelspecs", timeout=5)
        assert refused.value.code == 403
    finally:
        stop(proc)
    assert proc.poll() is not None
    with pytest.raises(OSError):  # stopped: nothing answers on the port any more
        _get(f"{base}/api/kernelspecs", token)
