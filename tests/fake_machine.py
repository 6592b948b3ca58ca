"""Another machine, faked at its boundary: `make nbval` starts every notebook's kernel with this module
installed (an IPython startup file, `startup_dir`), so the machine's RAM, free disk and core count answer with
values no machine of ours has. nbval then compares every checked cell's output with the committed one, which
a real machine wrote: a checked cell that prints a property of the machine (its RAM, its disk, its cores)
fails there, on every machine, not only on one with another amount of RAM.

What is faked is what the course reads of the machine: `os.sysconf("SC_PHYS_PAGES")` (RAM),
`shutil.disk_usage` (free disk; the total and used figures follow), `os.cpu_count` (cores). The scheduler's
view (`os.sched_getaffinity`), which sets how many threads work, is left alone: the run's speed stays this
machine's."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

RAM = 61 * 2**30 + 7 * 2**20  # 65.5 GB: no machine or runtime of the course's has this
DISK_FREE = 777 * 10**9 + 123 * 2**20  # free disk, as shutil.disk_usage reports it
CORES = 7


def install() -> None:
    """Fake the machine in this process (a kernel's startup file calls it)."""
    sysconf, disk_usage = os.sysconf, shutil.disk_usage
    page = sysconf("SC_PAGE_SIZE")

    def fake_sysconf(name):
        asked = name in ("SC_PHYS_PAGES", os.sysconf_names.get("SC_PHYS_PAGES"))
        return RAM // page if asked else sysconf(name)

    def fake_disk_usage(path):
        real = disk_usage(path)
        return type(real)(real.used + DISK_FREE, real.used, DISK_FREE)

    os.sysconf = fake_sysconf
    shutil.disk_usage = fake_disk_usage
    os.cpu_count = lambda: CORES
    ledger = os.environ.get("GEMMATE_LEDGER")
    if ledger and Path(ledger).is_dir():  # a mark beside this kernel's ledger: make nbval's test reads it
        (Path(ledger) / f"fake-machine-{os.getpid()}").write_text(f"{RAM} {DISK_FREE} {CORES}\n")


STARTUP = """import importlib.util as _fake_util

_fake_spec = _fake_util.spec_from_file_location("_fake_machine", {path!r})
_fake = _fake_util.module_from_spec(_fake_spec)
_fake_spec.loader.exec_module(_fake)
_fake.install()
"""


def startup_dir(folder) -> str:
    """Add this module's startup file to the IPYTHONDIR `folder` (tools/fit/ledger.startup_dir makes it)."""
    startup = Path(folder) / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    (startup / "01-fake-machine.py").write_text(STARTUP.format(path=str(Path(__file__).resolve())))
    return str(folder)


if __name__ == "__main__":  # make nbval: python tests/fake_machine.py FOLDER -> an IPYTHONDIR, the ledger too
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tools.fit.ledger import startup_dir as ledger_dir

    print(startup_dir(ledger_dir(sys.argv[1])))
