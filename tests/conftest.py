"""Shared fixtures, in two tiers.

- Plumbing tests use a tiny random Gemma 3 (2 layers, hidden size 64) built from a config,
  with a tiny byte-level tokenizer trained in memory: no download, no conversion,
  milliseconds per forward pass. `make test-fast` runs only these.
- Model-behaviour tests use the embedded Gemma 3 270M for real (fixtures `tokenizer`,
  `base_model`, `fresh_model`, `quick_run`); they, and tests marked `slow` (subprocesses, training
  runs), run in `make test` only. A test that asks for a real fixture is marked slow here.
"""
import os

# Nothing here can reach the Hub: fail at once instead of retrying for ~30 s.
# (Set before huggingface_hub is imported, which reads it once.)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from tiny import make_tiny_gemma, make_tiny_tokenizer  # noqa: E402

REAL_FIXTURES = {"tokenizer", "base_model", "fresh_model", "quick_run"}
def pytest_collection_modifyitems(config, items):
    for item in items:
        if REAL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


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
    return make_tiny_gemma(tiny_tokenizer)


@pytest.fixture()
def tiny_folder(tiny_tokenizer, tmp_path_factory):
    """The tiny model and tokenizer saved as a model folder (what load_model / load_tokenizer take)."""
    folder = tmp_path_factory.mktemp("tiny") / "tiny-gemma"
    make_tiny_gemma(tiny_tokenizer).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


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


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    """One real `gemmate train` on the embedded model (10 steps of 4 short quotes, an evaluation and a
    checkpoint every 2 steps, the last and the best checkpoint kept), trained once for every test that needs a
    trained run folder: the checkpoint policy, `generate`, `evaluate`, `serve`. Session-wide: copy it before
    writing to it."""
    from processes import QUICK

    from gemmate_lib.cli.main import main
    from gemmate_lib.errors import run_cli

    out = tmp_path_factory.mktemp("quick") / "run"
    assert run_cli(main, ["train", *QUICK, "--max_steps", "10", "--output_dir", str(out),
                          "--keep_last_n", "1", "--keep_best_n", "1"]) == 0
    return out
