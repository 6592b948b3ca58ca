"""`make nbval` runs the nine notebooks on two processes (pytest-xdist, `--dist loadgroup`): 00-05 on one,
in the course's order (04 and 05 read the adapter 03 saved), with the one-page recipe after them; 06 and 07,
which read no other notebook's run folder, on the other. Each notebook still runs once, top to bottom, in a
kernel of its own."""
import pytest

CHAIN = ("00_", "01_", "02_", "03_", "04_", "05_", "qlora_one_runtime")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the marks
def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.suffix == ".ipynb":
            group = "00-05 and the page" if item.path.name.startswith(CHAIN) else "06 and 07"
            item.add_marker(pytest.mark.xdist_group(group))
