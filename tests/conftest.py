"""Shared fixtures, in two tiers.

- Plumbing tests use a tiny random Gemma 3 (2 layers, hidden size 64) built from a config,
  with a tiny byte-level tokenizer trained in memory: no download, no conversion,
  milliseconds per forward pass. `make test-fast` runs only these.
- Model-behaviour tests use the embedded Gemma 3 270M for real (fixtures `tokenizer`,
  `base_model`, `fresh_model`); they, and tests marked `slow` (subprocesses, training
  runs), run in `make test` only. A test that asks for a real fixture is marked slow here.
"""
import os
from pathlib import Path

# Nothing here can reach the Hub: fail at once instead of retrying for ~30 s.
# (Set before huggingface_hub is imported, which reads it once.)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads sleep when they wait instead of spinning: llama.cpp's (the export and certificate tests) spun
# against the other worker's torch, one llama.cpp step 68 ms against 0.15 ms on two busy cores
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# make unit and make nbval run on several workers (pytest-xdist): each computes with its share of the cores,
# and so do the processes it starts (notebook kernels, the command line), instead of every worker running a
# thread per core and all of them fighting over the cores (nbval's two kernels on one thread each: 555 s
# against 602 s with two each on the 2-core EPYC; every checked output as `make notebooks` printed it on two).
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
if WORKERS:
    os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // WORKERS))

import pytest  # noqa: E402
import torch  # noqa: E402

if WORKERS:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from tiny import make_tiny_gemma, make_tiny_tokenizer  # noqa: E402

REAL_FIXTURES = {"tokenizer", "base_model", "fresh_model"}
def pytest_collection_modifyitems(config, items):
    for item in items:
        if REAL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.xdist_group("embedded"))  # one worker loads the real model, once


@pytest.fixture(scope="session")
def fp32():
    from gemmate_lib.hardware import pick_precision

    return pick_precision("cpu", "fp32")


@pytest.fixture(scope="module")
def one_thread():
    """The tiny model's matrices are 64 wide: one thread beats several (no hand-offs), most of all on a busy
    machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    """A fresh tiny Gemma 3 (seed 0) for a test that may change it."""
    return make_tiny_gemma(tiny_tokenizer)


@pytest.fixture()
def new_tiny_model(tiny_tokenizer):
    """The one builder as a fixture, for a test that needs a second fresh base: `new_tiny_model(seed=0)`."""
    return lambda seed=0: make_tiny_gemma(tiny_tokenizer, seed)


@pytest.fixture(scope="session")
def tiny_folder(tiny_tokenizer, tmp_path_factory):
    """The tiny model and tokenizer saved once as a model folder (what load_model / load_tokenizer take).
    Session-wide and read only: a test that writes next to it uses its own tmp_path."""
    folder = tmp_path_factory.mktemp("tiny") / "tiny-gemma"
    make_tiny_gemma(tiny_tokenizer).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    saved = {p.name: p.read_bytes() for p in folder.iterdir()}
    yield folder
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == saved, "a test wrote into the shared folder"


@pytest.fixture(scope="session")
def generation_folder(tmp_path_factory):
    """`generation_folder(key)`: a tiny random model of Gemma generation `key` ("gemma", "gemma3", "gemma4")
    with its tokenizer, saved once per session (read only)."""
    from tiny import make_generation_tokenizer, make_tiny_generation

    saved = {}

    def folder(key: str):
        if key not in saved:
            path = tmp_path_factory.mktemp(f"tiny-{key}") / key
            tokenizer = make_generation_tokenizer(key)
            make_tiny_generation(key, tokenizer).save_pretrained(path)
            tokenizer.save_pretrained(path)
            saved[key] = path
        return saved[key]

    return folder


@pytest.fixture()
def fake_gpu(monkeypatch):
    """CUDA faked at torch's boundary: `fake_gpu((7, 5))` is one T4 (compute capability 7.5, 15 GiB,
    is_bf16_supported() True as torch says on a T4), `fake_gpu((8, 0), count=2)` two A100s, `fake_gpu(None)`
    a machine without a GPU. Only torch.cuda's answers are faked; the course's own checks run as they are."""
    import types

    def fake(capability=(7, 5), *, count: int = 1, name: str | None = None, memory_gib: float = 15):
        if capability is None:
            monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
            monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
            return
        name = name or ("Tesla T4" if tuple(capability) < (8, 0) else "NVIDIA A100")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)

        def properties(device=None):  # as torch: None is the current device (0); another index must exist
            if isinstance(device, (str, torch.device)):
                device = torch.device(device).index
            index = 0 if device is None else device
            if not 0 <= index < count:
                raise AssertionError("Invalid device id")
            return types.SimpleNamespace(name=name, major=capability[0], minor=capability[1],
                                         total_memory=int(memory_gib * 2**30))

        monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: properties(device).name)
        monkeypatch.setattr(torch.cuda, "get_device_capability",
                            lambda device=None: (properties(device).major, properties(device).minor))
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)

    return fake


@pytest.fixture()
def fake_host(monkeypatch):
    """The host's RAM and free disk faked where the course reads them (`os.sysconf("SC_PHYS_PAGES")`,
    `shutil.disk_usage`): `fake_host()` is a free Colab runtime's (fit.FREE_COLAB: 12.7 GB of RAM, 70 GB
    free), so a test of what fits reads the runtime it names, not the machine it runs on."""
    import shutil

    from gemmate_lib import fit

    sysconf, disk_usage = os.sysconf, shutil.disk_usage

    def fake(ram_bytes: float = fit.FREE_COLAB["ram_bytes"],
             disk_bytes: float = fit.FREE_COLAB["disk_bytes"]):
        page = sysconf("SC_PAGE_SIZE")

        def fake_sysconf(name):
            asked = name in ("SC_PHYS_PAGES", os.sysconf_names.get("SC_PHYS_PAGES"))
            return int(ram_bytes) // page if asked else sysconf(name)

        def fake_disk_usage(path):
            real = disk_usage(path)
            return type(real)(real.used + int(disk_bytes), real.used, int(disk_bytes))

        monkeypatch.setattr(os, "sysconf", fake_sysconf)
        monkeypatch.setattr(shutil, "disk_usage", fake_disk_usage)

    return fake


class _NotebookAccessError(Exception):
    pass


class _SecretNotFoundError(Exception):
    pass


@pytest.fixture()
def fake_colab(monkeypatch, tmp_path):
    """A Colab runtime faked at its boundary, the `google.colab` module: `userdata.get` returns
    `fake_colab.secret` (None: no such secret; an exception: raised), `drive.mount(path)` creates
    path/MyDrive and records the path in `fake_colab.mounted`, `drive.flush_and_unmount()` appends to
    `fake_colab.flushed`. No HF_TOKEN in the environment and no saved login, so the secret is the token.
    `fake_colab.leave()` and `fake_colab.enter()` take a test out of the runtime and back in."""
    import sys
    import types

    from huggingface_hub import constants
    from huggingface_hub.utils import _auth

    state = types.SimpleNamespace(secret=None, mounted=[], flushed=[],
                                  NotebookAccessError=_NotebookAccessError,
                                  SecretNotFoundError=_SecretNotFoundError)

    def get(name):
        if isinstance(state.secret, Exception):
            raise state.secret
        if state.secret is None:
            raise _SecretNotFoundError(name)
        return state.secret

    def mount(path, **kwargs):
        state.mounted.append(str(path))
        (Path(path) / "MyDrive").mkdir(parents=True, exist_ok=True)

    google = types.ModuleType("google")
    colab = types.ModuleType("google.colab")
    userdata = types.ModuleType("google.colab.userdata")
    userdata.get, userdata.NotebookAccessError, userdata.SecretNotFoundError = (get, _NotebookAccessError,
                                                                                 _SecretNotFoundError)
    drive = types.ModuleType("google.colab.drive")
    drive.mount, drive.flush_and_unmount = mount, lambda **kwargs: state.flushed.append("flushed")
    errors = types.ModuleType("google.colab.errors")
    errors.Error = RuntimeError
    google.colab, colab.userdata, colab.drive, colab.errors = colab, userdata, drive, errors

    def enter():
        for module in (google, colab, userdata, drive, errors):
            monkeypatch.setitem(sys.modules, module.__name__, module)

    def leave():
        for module in (google, colab, userdata, drive, errors):
            monkeypatch.delitem(sys.modules, module.__name__, raising=False)

    state.enter, state.leave = enter, leave
    enter()
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-token"))
    monkeypatch.setattr(_auth, "_IS_GOOGLE_COLAB_CHECKED", False)  # huggingface_hub reads the secret once
    monkeypatch.setattr(_auth, "is_google_colab", lambda: True)
    return state


@pytest.fixture()
def cpu_cfg():
    """The course's config on this CPU in fp32 (the dtype of the tiny model)."""
    from gemmate_lib.config import course_config

    return course_config(device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def tokenizer():
    from gemmate_lib.models import load_tokenizer

    return load_tokenizer("embedded")


@pytest.fixture(scope="session")
def base_model(fp32):
    """The embedded model in fp32. Session-wide: do not modify it in a test."""
    from gemmate_lib.models import load_model

    model = load_model("embedded", fp32)
    model.requires_grad_(False)
    return model


@pytest.fixture()
def fresh_model(fp32):
    from gemmate_lib.models import load_model

    torch.manual_seed(0)
    return load_model("embedded", fp32)


@pytest.fixture(autouse=True)
def _run_dir_variable_restored():
    """A test that runs notebooks in place (tools.runners.course) sets GEMMATE_RUN_DIR for their kernels:
    restored after it, so that no later test on the same worker inherits that test's run folder."""
    saved = os.environ.get("GEMMATE_RUN_DIR")
    yield
    if saved is None:
        os.environ.pop("GEMMATE_RUN_DIR", None)
    else:
        os.environ["GEMMATE_RUN_DIR"] = saved
