"""environment.yml (conda users) pins exactly what requirements.txt pins; `make install` the same torch."""
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


def test_make_install_puts_torch_first_at_the_exact_pin_of_requirements_and_environment(makefile=None):
    """torch goes in first and on its own, at requirements.txt's exact pin (a looser spec pulls a multi-GB
    CUDA build): the Makefile's torch, requirements.txt's and environment.yml's are one version."""
    from make_dry_run import make_commands, pip_installs

    installs = pip_installs(make_commands("install", makefile))
    torch_at = [i for i, args in enumerate(installs) if any(re.match(r"torch\b", a) for a in args)]
    requirements = [i for i, args in enumerate(installs) if "requirements.txt" in args]
    assert len(torch_at) == 1 and len(requirements) == 1 and torch_at[0] < requirements[0], installs
    [spec] = [a for a in installs[torch_at[0]] if a.startswith("torch")]
    pinned = _pins((ROOT / "requirements.txt").read_text().splitlines())["torch"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert re.fullmatch(r"==\d+(\.\d+)+", pinned), f"torch is not pinned exactly: {pinned!r}"
    assert spec.replace(" ", "") == "torch" + pinned == "torch" + _pins(pip_section)["torch"]
