"""tools/fit/ledger.py in this process: what each event line records (the copies alive, their bytes by device
and kind, the cell, the part, the child processes), read back as notebook_fit reads it. The smoke run drives
the ledger through real notebook kernels (tests/test_learner_path.py); these tests drive the same functions
with a stand-in IPython shell and the tiny Gemma, in seconds, so `make mutants` can plant faults in the ledger
and see them fail here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types

import pytest
import torch
import transformers
from transformers import modeling_utils, trainer

from tools.fit import ledger


class Shell:
    """What `ledger.start` uses of an IPython shell: its event registry."""

    def __init__(self):
        self.handlers = {}
        self.events = self

    def register(self, name, handler):
        self.handlers.setdefault(name, []).append(handler)

    def run_cell(self, source: str, body=lambda: None):
        """A cell as IPython runs it: pre_run_cell, the cell's work, post_run_cell."""
        for handler in self.handlers["pre_run_cell"]:
            handler(types.SimpleNamespace(raw_cell=source))
        body()
        for handler in self.handlers["post_run_cell"]:
            handler(None)


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture()
def fresh_ledger(monkeypatch, tmp_path):
    """The ledger as a new kernel finds it, and every patch it makes undone after the test."""
    monkeypatch.setattr(ledger, "_copies", [])
    monkeypatch.setattr(ledger, "_state", {"n": 0, "source": "", "path": None, "child": False, "part": None})
    for name in (ledger.FILE, ledger.PART, ledger.CELL, "GEMMATE_LEDGER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYTHONPATH", "")
    monkeypatch.setattr(modeling_utils.PreTrainedModel, "from_pretrained",
                        vars(modeling_utils.PreTrainedModel)["from_pretrained"])  # the classmethod itself
    monkeypatch.setattr(trainer.Trainer, "train", trainer.Trainer.train)
    monkeypatch.setattr(subprocess.Popen, "__init__", subprocess.Popen.__init__)
    meta_path = list(sys.meta_path)
    yield tmp_path
    sys.meta_path[:] = meta_path


def test_where_each_process_writes(monkeypatch, tmp_path):
    for name in (ledger.FILE, "GEMMATE_LEDGER"):
        monkeypatch.delenv(name, raising=False)
    assert ledger.ledger_file() is None  # not measured: the kernel runs as it would anywhere
    monkeypatch.setenv("GEMMATE_LEDGER", str(tmp_path / "03.jsonl"))
    assert ledger.ledger_file() == str(tmp_path / "03.jsonl")
    monkeypatch.setenv("GEMMATE_LEDGER", str(tmp_path))  # a folder: one file per kernel (nbval)
    assert ledger.ledger_file() == str(tmp_path / f"kernel-{os.getpid()}.jsonl")
    monkeypatch.setenv(ledger.FILE, str(tmp_path / "kernel.jsonl"))  # a child writes to its kernel's file
    assert ledger.ledger_file() == str(tmp_path / "kernel.jsonl")


def test_resident_memory_follows_what_this_process_and_its_children_hold():
    before = ledger.rss_anon()
    held = bytearray(200 * 2**20)  # touched, so resident
    for i in range(0, len(held), 4096):
        held[i] = 1
    grown = ledger.rss_anon() - before
    assert 180 * 2**20 < grown < 260 * 2**20, grown
    del held
    subprocess.run([sys.executable, "-c", "b = bytearray(300 * 2**20); b[::4096] = b'1' * len(b[::4096])"],
                   check=True)
    assert ledger.children_peak() >= 300 * 2**20
    assert ledger.children_peak() < 64 * 2**30  # bytes, not kibibytes counted as bytes twice


def test_each_storage_counts_once_by_device_and_kind(tiny_model):
    fp32 = sum(t.untyped_storage().nbytes() for t in {p.untyped_storage().data_ptr(): p
                                                     for p in tiny_model.parameters()}.values())
    buffers = sum(b.untyped_storage().nbytes() for b in tiny_model.buffers())
    seen: set = set()
    first = ledger.measured_copy_bytes(tiny_model, seen)
    assert first == {"cpu:float32": fp32 + buffers}  # the tied embedding and head once
    assert ledger.measured_copy_bytes(tiny_model, seen) == {}  # the same storages again: a view, not a copy
    assert ledger.measured_copy_bytes(tiny_model, set()) == first

    half = ledger.measured_copy_bytes(tiny_model.to(torch.bfloat16), set())
    assert half["cpu:bfloat16"] == pytest.approx(fp32 / 2 + sum(
        b.untyped_storage().nbytes() for b in tiny_model.buffers() if b.dtype == torch.bfloat16))

    layer = tiny_model.model.layers[0].mlp.down_proj
    layer.weight = torch.nn.Parameter(torch.zeros(layer.weight.shape, dtype=torch.uint8), requires_grad=False)
    host = tiny_model.model.layers[1].mlp.up_proj
    host.on_cpu = True  # lookup_tables_to_cpu's tables stay on the host
    packed = ledger.measured_copy_bytes(tiny_model, set())
    assert packed["cpu:4bit"] == layer.weight.numel()
    assert packed["cpu:host"] == host.weight.untyped_storage().nbytes()
    assert sum(packed.values()) == sum(ledger.measured_copy_bytes(tiny_model, set()).values())

    with torch.device("meta"):
        empty = type(tiny_model)(tiny_model.config)
    assert ledger.measured_copy_bytes(empty, set()) == {}  # not yet loaded: no bytes anywhere


def test_a_kernel_records_its_loads_cells_training_and_parts(fresh_ledger, tiny_folder, monkeypatch):
    path = fresh_ledger / "03.jsonl"
    monkeypatch.setenv("GEMMATE_LEDGER", str(path))
    started = []
    monkeypatch.setattr(trainer.Trainer, "train",
                        lambda self, *a, **k: started.append((self, a, k)) or "trained")
    reference = transformers.AutoModelForCausalLM.from_pretrained(tiny_folder)  # before the ledger starts
    expected = sum(ledger.measured_copy_bytes(reference, set()).values())
    shell = Shell()
    ledger.start(shell)
    held = {}

    shell.run_cell("x = 1")
    shell.run_cell(" model = load() \n", lambda: held.update(
        model=transformers.AutoModelForCausalLM.from_pretrained(tiny_folder)))
    monkeypatch.setenv(ledger.PART, "solution 03-4")
    the_trainer = object()
    shell.run_cell("trainer.train()", lambda: held.update(
        out=trainer.Trainer.train(the_trainer, "checkpoint-2", trial=None)))
    monkeypatch.delenv(ledger.PART)
    shell.run_cell("second = load()", lambda: held.update(
        second=transformers.AutoModelForCausalLM.from_pretrained(tiny_folder, dtype=torch.bfloat16)))
    shell.run_cell("del model, second", lambda: [held.pop("model"), held.pop("second")])

    events = lines(path)
    assert [(e["event"], e["cell"]) for e in events] == [
        ("cell", 1), ("load", 2), ("cell", 2), ("train", 3), ("cell", 3), ("load", 4), ("cell", 4),
        ("cell", 5)]
    assert held["out"] == "trained"  # the real train still runs, on the same trainer and arguments
    assert started == [(the_trainer, ("checkpoint-2",), {"trial": None})]
    load, second = events[1], events[5]
    assert load["model"] == "Gemma3ForCausalLM" and load["source"] == ledger.cell_hash("model = load()")
    assert load["copies"] == [{"class": "Gemma3ForCausalLM", "bytes": {"cpu:float32": expected}}]
    first, half = (c["bytes"] for c in second["copies"])
    assert first == {"cpu:float32": expected}  # the weights in bf16, the rotary tables kept in fp32
    assert 2 * half["cpu:bfloat16"] + half.get("cpu:float32", 0) == pytest.approx(expected, rel=0.01)
    assert [len(e["copies"]) for e in events] == [0, 1, 1, 1, 1, 2, 2, 0]  # the deleted copies are gone
    assert [e.get("part") for e in events] == [None, None, None, "solution 03-4", "solution 03-4", None, None,
                                              None]
    assert all(e["rss_anon"] > 0 and "pid" not in e for e in events)
    assert all(e["time"] == round(e["time"], 3) and abs(e["time"] - time.time()) < 60 for e in events)
    assert [e["time"] for e in events] == sorted(e["time"] for e in events)  # notebook_fit merges by time
    assert any(e["time"] != int(e["time"]) for e in events)  # milliseconds: a child's lines interleave right
    assert all("children_peak" in e for e in events if e["event"] == "cell")
    assert ledger.ledger_file() == str(path)  # the kernel's children write here too
    site = path.parent / ".ledger-child"
    assert (site / "sitecustomize.py").is_file() and os.environ["PYTHONPATH"] == str(site)
    assert isinstance(sys.meta_path[0], ledger._AfterImport)  # modules imported later get patched too


@pytest.mark.slow  # over 3 s: make test runs it, make test-fast does not
def test_a_child_process_writes_its_loads_to_the_kernels_ledger(fresh_ledger, tiny_folder, monkeypatch):
    path = fresh_ledger / "05.jsonl"
    monkeypatch.setenv("GEMMATE_LEDGER", str(path))
    shell = Shell()
    ledger.start(shell)
    held = {}
    reload = ("import transformers; m = transformers.AutoModelForCausalLM.from_pretrained("
              f"{str(tiny_folder)!r}); print('loaded')")

    def cell():
        held["model"] = transformers.AutoModelForCausalLM.from_pretrained(tiny_folder)
        done = subprocess.run([sys.executable, "-c", reload], capture_output=True, text=True)
        assert done.stdout.strip() == "loaded", done.stderr[-2000:]

    shell.run_cell("reload in a fresh process", cell)
    events = lines(path)
    assert [e["event"] for e in events] == ["load", "spawn", "load", "exit", "cell"]
    child = [e for e in events if "pid" in e]
    assert [e["event"] for e in child] == ["load", "exit"]
    assert {e["source"] for e in child} == {ledger.cell_hash("reload in a fresh process")}
    assert len(child[0]["copies"]) == 1 and child[1]["copies"] == []
    assert len(events[1]["copies"]) == 1  # what the kernel held beside its child
    assert events[-1]["children_peak"] >= child[0]["rss_anon"]


def test_a_child_that_loads_nothing_writes_nothing(fresh_ledger, monkeypatch):
    path = fresh_ledger / "k.jsonl"
    monkeypatch.setenv("GEMMATE_LEDGER", str(path))
    shell = Shell()
    ledger.start(shell)
    shell.run_cell("!python -c pass", lambda: subprocess.run([sys.executable, "-c", "pass"], check=True))
    assert [e["event"] for e in lines(path)] == ["cell"]  # no spawn line before any load either


def test_start_child_records_exit_only_where_the_child_loaded(fresh_ledger, monkeypatch):
    exits = []
    monkeypatch.setattr(ledger.atexit, "register", exits.append)
    ledger.start_child()
    assert exits == [] and ledger._state["path"] is None  # not under a measured kernel: nothing
    path = fresh_ledger / "kernel.jsonl"
    monkeypatch.setenv(ledger.FILE, str(path))
    monkeypatch.setenv(ledger.CELL, "abc")
    ledger.start_child()
    assert ledger._state["child"] is True and len(exits) == 1
    exits[0]()
    assert not path.exists()  # it loaded nothing
    held = torch.nn.Linear(2, 2)
    ledger._copies.append(lambda: held)  # still alive at the exit: a child's copies end with it all the same
    exits[0]()
    (line,) = lines(path)
    assert line["event"] == "exit" and line["source"] == "abc" and line["copies"] == []
    assert line["pid"] == os.getpid()  # a child's lines say whose they are
    monkeypatch.delenv(ledger.CELL)  # a child started outside a cell
    exits[0]()
    assert lines(path)[-1]["source"] == ""


def test_a_module_is_patched_right_after_its_first_import(fresh_ledger, monkeypatch):
    (fresh_ledger / "probe_mod.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(fresh_ledger))
    monkeypatch.setitem(ledger.PATCHES, "probe_mod", lambda module: setattr(module, "VALUE", 2))
    monkeypatch.delitem(sys.modules, "probe_mod", raising=False)
    finder = ledger._AfterImport()
    sys.meta_path.insert(0, finder)
    import probe_mod

    assert probe_mod.VALUE == 2
    assert sys.meta_path[0] is finder  # still there for the next module
    assert finder.find_spec("json", None) is None  # other modules import as they always do
    assert finder.find_spec("probe_mod_missing", None) is None
    monkeypatch.setitem(ledger.PATCHES, "probe_mod_missing", lambda module: None)
    assert finder.find_spec("probe_mod_missing", None) is None  # not installed: no error
    del sys.modules["probe_mod"]


def test_the_startup_file_hooks_a_kernel(fresh_ledger, monkeypatch):
    folder = ledger.startup_dir(fresh_ledger / "ipython")
    assert folder == str(fresh_ledger / "ipython")
    (startup,) = (fresh_ledger / "ipython" / "profile_default" / "startup").iterdir()
    monkeypatch.setenv("GEMMATE_LEDGER", str(fresh_ledger / "nb.jsonl"))
    shell = Shell()
    exec(compile(startup.read_text(), str(startup), "exec"), {"get_ipython": lambda: shell})
    shell.run_cell("1 + 1")
    (line,) = lines(fresh_ledger / "nb.jsonl")
    assert line["event"] == "cell" and line["source"] == ledger.cell_hash("1 + 1")
    child_site = fresh_ledger / ".ledger-child" / "sitecustomize.py"
    assert str(child_site.parent) in os.environ["PYTHONPATH"].split(":")


def test_an_unmeasured_kernel_is_left_alone(fresh_ledger):
    shell = Shell()
    ledger.start(shell)
    assert shell.handlers == {} and ledger._state["path"] is None


def test_a_cell_id_ignores_surrounding_whitespace_only():
    assert ledger.cell_hash("  model = load()\n") == ledger.cell_hash("model = load()")
    assert ledger.cell_hash("model = load()") != ledger.cell_hash("model = load(1)")
    assert len(ledger.cell_hash("x")) == 12


def test_a_cell_end_leaves_out_a_copy_only_a_cycle_holds(fresh_ledger, tiny_model, monkeypatch):
    import weakref

    monkeypatch.setattr(ledger, "_state", {**ledger._state, "path": str(fresh_ledger / "c.jsonl")})
    held, other = transformers.Gemma3ForCausalLM(tiny_model.config), transformers.Gemma3ForCausalLM(
        tiny_model.config)
    cycle = {"model": held}
    cycle["self"] = cycle
    ledger._copies.extend([weakref.ref(held), weakref.ref(other)])
    del held, cycle
    ledger.write("cell")  # two copies referenced: the cell's end collects, and the cycle's copy is gone
    assert len(lines(fresh_ledger / "c.jsonl")[-1]["copies"]) == 1
    del other
    assert ledger.alive() == []


def test_a_part_set_and_cleared_inside_a_cell_owns_that_cells_end(fresh_ledger, monkeypatch):
    """An exercise's runner sets GEMMATE_FIT_PART for its solution and clears it before the cell ends: the
    cell's end still belongs to that part; the next cell's does not."""
    path = fresh_ledger / "05.jsonl"
    monkeypatch.setenv("GEMMATE_LEDGER", str(path))
    shell = Shell()
    ledger.start(shell)

    def solution():
        os.environ[ledger.PART] = "exercise 05-2"
        ledger.write("train")
        del os.environ[ledger.PART]

    shell.run_cell("run_solution()", solution)
    shell.run_cell("")  # an empty cell: its id is the empty source's
    events = lines(path)
    assert [(e["event"], e.get("part")) for e in events] == [
        ("train", "exercise 05-2"), ("cell", "exercise 05-2"), ("cell", None)]
    assert events[-1]["source"] == ledger.cell_hash("")


def test_two_kernels_start_in_one_folder_and_keep_pythonpath(fresh_ledger, monkeypatch):
    """nbval starts every notebook's kernel with the same ledger folder and startup folder."""
    monkeypatch.setenv("GEMMATE_LEDGER", str(fresh_ledger))
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    ledger.start(Shell())
    ledger.start(Shell())  # the second kernel: the child site exists already
    site = str(fresh_ledger / ".ledger-child")
    assert os.environ["PYTHONPATH"].split(os.pathsep)[-1] == "/elsewhere"
    assert os.environ["PYTHONPATH"].split(os.pathsep)[0] == site
    ledger.startup_dir(fresh_ledger / "ipython")
    ledger.startup_dir(fresh_ledger / "ipython")
    (startup,) = (fresh_ledger / "ipython" / "profile_default" / "startup").iterdir()
    assert startup.suffix == ".py" and startup.name < "50"  # IPython runs *.py startup files, sorted


def test_loads_and_training_starts_collect_first(fresh_ledger, tiny_model, monkeypatch):
    """A copy only a reference cycle holds is gone at a load or a training start, even when it is the only
    one (a cell's end collects only from two copies on); alive() collects unless told not to."""
    import weakref

    monkeypatch.setattr(ledger, "_state", {**ledger._state, "path": str(fresh_ledger / "l.jsonl")})
    held = transformers.Gemma3ForCausalLM(tiny_model.config)
    cycle = {"model": held}
    cycle["self"] = cycle
    ledger._copies.append(weakref.ref(held))
    del held, cycle
    ledger.write("load")
    assert lines(fresh_ledger / "l.jsonl")[-1]["copies"] == []
    held = transformers.Gemma3ForCausalLM(tiny_model.config)
    cycle = {"model": held}
    cycle["self"] = cycle
    ledger._copies.append(weakref.ref(held))
    del held, cycle
    assert ledger.alive() == []


def test_a_tensor_on_the_meta_device_counts_nothing_and_the_rest_still_count():
    model = torch.nn.Module()
    model.a = torch.nn.Parameter(torch.empty(4, device="meta"))
    model.b = torch.nn.Parameter(torch.zeros(8))
    assert ledger.measured_copy_bytes(model, set()) == {"cpu:float32": 32}
