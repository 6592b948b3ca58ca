"""environment.yml (conda users) must pin exactly what requirements.txt pins."""
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines):
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if not line:
            continue
        m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(==\s*[^\s]+)?$", line)
        assert m, f"unparsable requirement: {line!r}"
        pins[m.group(1).lower().replace("_", "-")] = (m.group(2) or "").replace(" ", "")
    return pins


def test_environment_yml_matches_requirements():
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert _pins(pip_section) == req
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert python.startswith("python=3.11")


def test_torch_is_pinned_exactly():
    assert _pins((ROOT / "requirements.txt").read_text().splitlines())["torch"] == "==2.13.0"
