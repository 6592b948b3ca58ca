"""`make nbval` runs the nine notebooks on two processes (pytest-xdist, `--dist loadgroup`): 00-05 on one,
in the course's order (04 and 05 read the adapter 03 saved), with the one-page recipe after them; 06 and 07,
which read no other notebook's run folder, on the other. Each notebook still runs once, top to bottom, in a
kernel of its own.

The tests that read what the notebooks wrote (markers `canary` and `after_nbval`, tests/nbval_run.py) run in
the same session, after 07 on the second process: each waits for the notebooks it reads, which this plugin
marks done (a file named after the notebook in $GEMMATE_NBVAL_DONE) once its kernel has stopped. So they run
while the first process finishes 00-05 and the page, not in a pytest session of their own after both. One that
reads 05 alone runs on the first process after the page instead (BY_THE_PAGE), so that both end together (the
two sides' seconds: CONTRIBUTING.md, "Test time")."""
import os
from pathlib import Path

import pytest

CHAIN = ("00_", "01_", "02_", "03_", "04_", "05_", "qlora_one_runtime")
SECOND = "06 and 07"
BY_THE_PAGE = ("test_llama_server.py",)


def pytest_configure(config):
    config.addinivalue_line("markers", "nbval: a notebook's cell under nbval (tests/nbval_groups.py)")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the marks and -m selects
def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.suffix == ".ipynb":
            group = "00-05 and the page" if item.path.name.startswith(CHAIN) else SECOND
            item.add_marker(pytest.mark.nbval)
        else:  # a test that reads the run folder: after 07 (or the page), in the order collected
            group = "00-05 and the page" if item.path.name in BY_THE_PAGE else SECOND
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """After a notebook's last cell and its kernel's shutdown (its file's teardown), mark it done."""
    yield
    done = os.environ.get("GEMMATE_NBVAL_DONE")
    if done and item.path.suffix == ".ipynb" and (nextitem is None or nextitem.path != item.path):
        Path(done).mkdir(parents=True, exist_ok=True)
        (Path(done) / item.path.stem).touch()
