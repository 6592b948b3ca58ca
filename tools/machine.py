"""The CPU as the maintainer tools name it in what they record (the reference bands, the rehearsal's tables,
the benchmarks): its model name. The library's own reading of the machine is gemmate_lib/hardware.py."""
from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), or the platform's word for it: a timing names its CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
