"""Which model copies a notebook holds at once, measured while it runs: an IPython startup file loads this
module into each notebook's kernel (the smoke run, `make course`, nbval, `make exercises`:
`GEMMATE_LEDGER=<file>.jsonl`, or a folder, where each kernel writes `kernel-<pid>.jsonl`), and it writes one
JSON line per event:

- "load": right after `from_pretrained` returns a model (transformers' `PreTrainedModel.from_pretrained`,
  which every load of the course and of the one-page recipe goes through), with every copy then alive;
- "train": when a `Trainer.train()` starts (training adds activations, gradients and optimizer state);
- "cell": at the end of each cell, with the copies alive, and the largest resident memory any finished child
  process reached so far (`children_peak`: llama.cpp's converter and quantizer, 05's fresh-process reload);
- "spawn": when the kernel starts a child process, with the copies the kernel holds then;
- "exit": when a child process that loaded a model ends.

Child processes are followed: the kernel puts a folder on PYTHONPATH whose `sitecustomize.py` loads this
module into every Python child it starts (05's reload in a fresh process loads a second copy while the kernel
holds its own: on a GPU both are there at once). A child's events carry its `pid`; `cell` names the kernel's
cell that started it. A `part` names an optional part of a notebook that is running (GEMMATE_FIT_PART, set by
the code that runs it: an exercise's solution, one of 06's methods), so the fit table can answer for each.

A copy is a model that `from_pretrained` returned and that is still alive after `gc.collect()`, held through
weak references, so the ledger never keeps one alive. Each copy's bytes are counted once per tensor storage,
by device and by kind: "4bit" (bitsandbytes' packed weights), or the dtype of a float tensor, with the tables
that `lookup_tables_to_cpu` keeps on the CPU counted apart ("host"). tools/fit/notebook_fit.py turns the
ledgers into the per-notebook table (docs/full-shape.md). This module imports nothing of the course: the
one-page recipe's kernel must never see `gemmate_lib`."""
from __future__ import annotations

import atexit
import gc
import hashlib
import importlib.abc
import importlib.util
import json
import os
import resource
import sys
import time
import weakref
from pathlib import Path

PART = "GEMMATE_FIT_PART"  # the optional part that runs now (an exercise's solution), set by what runs it
CELL = "GEMMATE_LEDGER_CELL"  # the kernel's cell now running: a child process names it in its events
FILE = "GEMMATE_LEDGER_FILE"  # the kernel's ledger file, which its child processes append to
_copies: list[weakref.ref] = []
_state = {"n": 0, "source": "", "path": None, "child": False, "part": None}


def ledger_file() -> str | None:
    """Where this process writes: the kernel's file (a child inherits it), GEMMATE_LEDGER itself, or, when
    GEMMATE_LEDGER is a folder, kernel-<pid>.jsonl in it (one pytest process runs every kernel of nbval)."""
    if os.environ.get(FILE):
        return os.environ[FILE]
    path = os.environ.get("GEMMATE_LEDGER")
    if not path:
        return None
    return str(Path(path) / f"kernel-{os.getpid()}.jsonl") if Path(path).is_dir() else path


def rss_anon() -> int:
    """This process's resident anonymous memory in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("RssAnon:"))
    except (OSError, StopIteration):
        return 0


def children_peak() -> int:
    """The largest resident memory that any finished child process of this one reached, in bytes."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def measured_copy_bytes(model, seen: set) -> dict:
    """{"device:kind": bytes} of `model`'s parameters and buffers, each storage once across copies
    (`seen`); kind "host" is the lookup tables kept on the CPU. The one count of a live copy's bytes: the
    ledger's, and the rehearsal's copy phase (rehearse.nf4_copy)."""
    out: dict[str, int] = {}
    tensors = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    host = {name for name, module in model.named_modules() if getattr(module, "on_cpu", False)}
    for name, tensor in tensors:
        if tensor.device.type == "meta":
            continue
        key = (tensor.device.type, tensor.untyped_storage().data_ptr())
        if key in seen:
            continue
        seen.add(key)
        if name.rsplit(".", 1)[0] in host:
            kind = "host"
        elif type(tensor).__name__ == "Params4bit" or str(tensor.dtype) == "torch.uint8":
            kind = "4bit"
        else:
            kind = str(tensor.dtype).removeprefix("torch.")
        slot = f"{tensor.device.type}:{kind}"
        out[slot] = out.get(slot, 0) + tensor.untyped_storage().nbytes()
    return out


def alive(collect: bool = True) -> list:
    """The copies still alive; with `collect`, after a full garbage collection (a copy that only a reference
    cycle holds is gone then)."""
    if collect:
        gc.collect()
    models = [ref() for ref in _copies]
    return [m for m in models if m is not None]


def write(event: str, **extra) -> None:
    # A full collection costs about 0.25 s once transformers is imported, and every cell ends with a record:
    # at a cell's end it runs only where it can change how many copies are at once (two or more still
    # referenced); a load and a training start always collect first.
    collect = event != "cell" or len(alive(collect=False)) >= 2
    seen: set = set()
    models = [] if event == "exit" else alive(collect)  # a child's copies end with it
    copies = [{"class": type(m).__name__, "bytes": measured_copy_bytes(m, seen)} for m in models]
    child = _state["child"]
    part = os.environ.get(PART) or (_state["part"] if event == "cell" else None)
    if part:
        _state["part"] = part  # the cell's own end belongs to the part that ran in it
    record = {"event": event, "cell": _state["n"],
              "source": os.environ.get(CELL, "") if child else _state["source"],
              "time": round(time.time(), 3), "copies": copies, "rss_anon": rss_anon(),
              **({"pid": os.getpid()} if child else {}),
              **({"part": part} if part else {}), **extra}
    with open(_state["path"], "a") as f:  # one write per line: a child's lines never interleave a kernel's
        f.write(json.dumps(record) + "\n")


def _patch_loading(module) -> None:
    pretrained = module.PreTrainedModel.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        model = pretrained(cls, *args, **kwargs)
        _copies.append(weakref.ref(model))
        write("load", model=cls.__name__)
        return model

    module.PreTrainedModel.from_pretrained = classmethod(from_pretrained)


def _patch_trainer(module) -> None:
    train = module.Trainer.train

    def patched(self, *args, **kwargs):
        write("train")
        return train(self, *args, **kwargs)

    module.Trainer.train = patched


PATCHES = {"transformers.modeling_utils": _patch_loading, "transformers.trainer": _patch_trainer}


class _AfterImport(importlib.abc.MetaPathFinder):
    """Patches a module of PATCHES right after its first import (importing transformers here would slow every
    kernel's start by seconds)."""

    def find_spec(self, name, path, target=None):
        if name not in PATCHES:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            PATCHES[name](module)

        spec.loader.exec_module = exec_module
        return spec


def _pre_run_cell(info) -> None:
    _state["n"] += 1
    _state["part"] = None
    _state["source"] = cell_hash(info.raw_cell or "")
    os.environ[CELL] = _state["source"]


def _post_run_cell(result) -> None:
    write("cell", children_peak=children_peak())


def _hook() -> None:
    for name, patch in PATCHES.items():
        if name in sys.modules:
            patch(sys.modules[name])
    sys.meta_path.insert(0, _AfterImport())


CHILD_SITE = '''"""Loads the notebook ledger (tools/fit/ledger.py) into a child process of a measured kernel,
then the sitecustomize this one hides, if any."""
import importlib.util as _util
import os as _os
import sys as _sys

_spec = _util.spec_from_file_location("_gemmate_ledger", {path!r})
_ledger = _util.module_from_spec(_spec)
_spec.loader.exec_module(_ledger)
_ledger.start_child()
_here = _os.path.dirname(_os.path.abspath(__file__))
for _folder in _sys.path:
    _other = _os.path.join(_folder or ".", "sitecustomize.py")
    if _os.path.abspath(_folder or ".") != _here and _os.path.isfile(_other):
        _code = compile(open(_other).read(), _other, "exec")
        exec(_code, {{"__name__": "sitecustomize", "__file__": _other}})
        break
'''


def _patch_spawn() -> None:
    """A "spawn" line whenever the kernel starts a child process: what the kernel holds while its child
    loads a copy of its own (05 frees its copy, then reloads in a fresh process, in one cell)."""
    import subprocess

    init = subprocess.Popen.__init__

    def patched(self, *args, **kwargs):
        if _copies:  # once a model was loaded: what the kernel holds now (maybe nothing), beside its child
            write("spawn")
        init(self, *args, **kwargs)

    subprocess.Popen.__init__ = patched


def start(shell) -> None:
    """Hook the ledger into an IPython shell (the startup file calls it), and into its Python children."""
    path = ledger_file()
    if not path:
        return
    _state["path"] = path
    os.environ[FILE] = path  # the kernel's children write here too
    child_site = Path(path).parent / ".ledger-child"
    child_site.mkdir(parents=True, exist_ok=True)
    (child_site / "sitecustomize.py").write_text(CHILD_SITE.format(path=str(Path(__file__).resolve())))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(child_site), os.environ.get("PYTHONPATH")]))
    _hook()
    _patch_spawn()
    shell.events.register("pre_run_cell", _pre_run_cell)
    shell.events.register("post_run_cell", _post_run_cell)


def start_child() -> None:
    """In a child process of a measured kernel (CHILD_SITE): record its loads, and its end where it loaded."""
    path = os.environ.get(FILE)
    if not path:
        return
    _state.update(path=path, child=True)
    _hook()
    atexit.register(lambda: _copies and write("exit"))


def cell_hash(source: str) -> str:
    """The id the ledger gives a cell: a notebook's cell source, hashed as the kernel saw it."""
    return hashlib.sha1(source.strip().encode()).hexdigest()[:12]


STARTUP = """import importlib.util as _ledger_util

_ledger_spec = _ledger_util.spec_from_file_location("_gemmate_ledger", {path!r})
_ledger = _ledger_util.module_from_spec(_ledger_spec)
_ledger_spec.loader.exec_module(_ledger)
_ledger.start(get_ipython())
"""


def startup_dir(folder) -> str:
    """An IPYTHONDIR under `folder` whose startup file loads this module (without putting the course on
    sys.path); kernels started with IPYTHONDIR set to it write their ledger to $GEMMATE_LEDGER."""
    startup = Path(folder) / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    (startup / "00-ledger.py").write_text(STARTUP.format(path=str(Path(__file__).resolve())))
    return str(folder)
