"""Which model copies a notebook holds at once, measured while it runs: an IPython startup file loads this
module into each notebook's kernel (the smoke run, `make course`, nbval: `GEMMATE_LEDGER=<file>.jsonl`), and
it writes one JSON line per event:

- "load": right after `from_pretrained` returns a model (transformers' `PreTrainedModel.from_pretrained`,
which
  every load of the course and of the one-page recipe goes through), with every copy then alive;
- "train": when a `Trainer.train()` starts (training adds activations, gradients and optimizer state); -
"cell": at the end of each cell, with the copies alive and the kernel's peak resident anonymous memory during
  that cell (RssAnon, sampled every 50 ms: what a Colab runtime's RAM limit sees).

A copy is a model that `from_pretrained` returned and that is still alive after `gc.collect()`, held through
weak references, so the ledger never keeps one alive. Each copy's bytes are counted once per tensor storage,
by device and by kind: "4bit" (bitsandbytes' packed weights), or the dtype of a float tensor, with the tables
that `lookup_tables_to_cpu` keeps on the CPU counted apart ("host"). tools/notebook_fit.py turns the ledgers
into the per-notebook table (docs/full-shape.md). This module imports nothing of the course: the one-page
recipe's kernel must never see `gemmate_lib`. """
from __future__ import annotations

import gc
import hashlib
import importlib.abc
import importlib.util
import json
import os
import sys
import threading
import time
import weakref

PATH = os.environ.get("GEMMATE_LEDGER")
_copies: list[weakref.ref] = []
_cell = {"n": 0, "source": "", "peak": 0}


def rss_anon() -> int:
    """This process's resident anonymous memory in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("RssAnon:"))
    except (OSError, StopIteration):
        return 0


def _sample(poll: float = 0.05) -> None:
    while True:
        _cell["peak"] = max(_cell["peak"], rss_anon())
        time.sleep(poll)


def copy_bytes(model, seen: set) -> dict:
    """{"device:kind": bytes} of `model`'s parameters and buffers, each storage once across copies
    (`seen`)."""
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
    copies = [{"class": type(m).__name__, "bytes": copy_bytes(m, seen)} for m in alive(collect)]
    record = {"event": event, "cell": _cell["n"], "source": _cell["source"], "time": round(time.time(), 2),
              "copies": copies, "rss_anon": rss_anon(), **extra}
    with open(PATH, "a") as f:
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
    _cell["n"] += 1
    source = info.raw_cell or ""
    _cell["source"] = hashlib.sha1(source.strip().encode()).hexdigest()[:12]
    _cell["peak"] = rss_anon()


def _post_run_cell(result) -> None:
    write("cell", peak_rss_anon=max(_cell["peak"], rss_anon()))


def start(shell) -> None:
    """Hook the ledger into an IPython shell (the startup file calls it)."""
    if not PATH:
        return
    for name, patch in PATCHES.items():
        if name in sys.modules:
            patch(sys.modules[name])
    sys.meta_path.insert(0, _AfterImport())
    shell.events.register("pre_run_cell", _pre_run_cell)
    shell.events.register("post_run_cell", _post_run_cell)
    threading.Thread(target=_sample, daemon=True).start()


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
    from pathlib import Path

    startup = Path(folder) / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    (startup / "00-ledger.py").write_text(STARTUP.format(path=str(Path(__file__).resolve())))
    return str(folder)
