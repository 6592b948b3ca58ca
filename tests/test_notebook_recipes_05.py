"""The peft, transformers and huggingface_hub calls that 05 writes out for the learner (save an adapter with
`save_pretrained`, reload it on a fresh base with `PeftModel.from_pretrained`, `merge_and_unload`, save the
merged model, push with `HfApi`) do what the library does for 03, `gemmate train`, `gemmate export` and
`gemmate serve` (adapters.save_adapter, gemmate_cli.commands.load_merged, gemmate_cli.serve.save_merged,
03's written-out push), so the page and the library cannot drift apart. Each test runs 05's own cell, found
by its cell id, on the tiny model (tests/test_notebook_recipes.py's pattern)."""
import json
import types

import pytest
import torch
from test_notebook_recipes import run_cell

NOTEBOOK = "05_save_and_push.ipynb"


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny model's matrices are 64 wide: one thread beats several, most of all on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tensors(folder) -> dict:
    from safetensors.torch import load_file

    return {k: v for path in sorted(folder.glob("*.safetensors")) for k, v in load_file(path).items()}


def _adapter(tiny_folder, tmp_path):
    """A saved adapter of the tiny model whose B is not zero, so merging it changes the weights."""
    from gemmate_lib.adapters import save_adapter
    from gemmate_lib.config import course_config
    from gemmate_lib.hardware import pick_precision
    from gemmate_lib.models import load_model, load_tokenizer
    from gemmate_lib.training import attach_lora

    cfg = course_config(model_name=str(tiny_folder), device="cpu", dtype="fp32", quantization="none")
    model = attach_lora(load_model(str(tiny_folder), pick_precision("cpu", "fp32")), cfg, quiet=True)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    return cfg, model, save_adapter(model, load_tokenizer(str(tiny_folder)), tmp_path / "adapter",
                                    str(tiny_folder))


def test_05s_written_out_save_writes_what_save_adapter_writes(tiny_folder, tmp_path, monkeypatch):
    """Section 6's second adapter, saved by the page's own calls (its training stood in for: the tiny model's
    adapter), against save_adapter's folder: the same files, settings, base record and weights."""
    from gemmate_lib import training
    from gemmate_lib.config import course_config
    from gemmate_lib.models import load_tokenizer

    cfg, model, library = _adapter(tiny_folder, tmp_path)
    monkeypatch.setattr(training, "train_lora", lambda *args, **kwargs: types.SimpleNamespace(model=model,
                                                                                             seconds=1.0))
    out = tmp_path / "run"
    ns = run_cell(NOTEBOOK, "65f8a659", out=out, cfg=cfg, tokenizer=load_tokenizer(str(tiny_folder)),
                  course_config=course_config, model_name=str(tiny_folder), dataset=None, data_seed=None,
                  second_steps=2, load_model=lambda *args, **kwargs: None, free_memory=lambda: None)
    page = out / "adapter_reverse"
    assert sorted(p.name for p in page.iterdir()) == sorted(p.name for p in library.iterdir())
    for name in ("adapter_config.json", "gemmate.json"):
        assert json.loads((page / name).read_text()) == json.loads((library / name).read_text())
    saved, expected = tensors(page), tensors(library)
    assert saved.keys() == expected.keys() and all(torch.equal(saved[k], expected[k]) for k in saved)
    assert "second" not in ns and sorted(p.name for p in out.iterdir()) == ["adapter_reverse"]  # no .partial


def test_05s_written_out_reload_and_merge_equal_the_commands_merge(tiny_folder, tmp_path):
    """05 section 3's reload (`PeftModel.from_pretrained` on a fresh 32-bit base) and `merge_and_unload`,
    against the merge `gemmate export` and `gemmate serve` make (load_merged): the same weights, and the
    cell's own check of the logits passes."""
    from gemmate_cli.commands import load_merged
    from gemmate_lib.hardware import pick_precision
    from gemmate_lib.models import load_model, load_tokenizer
    from gemmate_lib.text_generation import STANDARD_PROMPTS

    cfg, _, adapter_dir = _adapter(tiny_folder, tmp_path)
    ns = run_cell(NOTEBOOK, "4d257956", fits=types.SimpleNamespace(whole_copies=True), cfg=cfg,
                  load_model=load_model, adapter_dir=adapter_dir, tokenizer=load_tokenizer(str(tiny_folder)),
                  STANDARD_PROMPTS=STANDARD_PROMPTS)
    library, _ = load_merged(str(tiny_folder), pick_precision("cpu", "fp32"), adapter_dir)
    page, expected = ns["merged"].state_dict(), library.state_dict()
    assert type(ns["merged"]) is type(library) and page.keys() == expected.keys()
    assert all(torch.equal(page[k], expected[k]) for k in page)
    base = load_model(str(tiny_folder), pick_precision("cpu", "fp32")).state_dict()
    assert any(not torch.equal(page[k], base[k]) for k in page)  # the merge changed the weights
    assert ns["diff"] < ns["tolerance"] == 5e-3


def test_05s_written_out_merged_save_writes_what_save_merged_writes(tiny_folder, tmp_path, capsys):
    from gemmate_cli.serve import save_merged
    from gemmate_lib.guard_rails import files
    from gemmate_lib.models import load_tokenizer

    cfg, model, _ = _adapter(tiny_folder, tmp_path)
    merged = model.merge_and_unload()
    tokenizer = load_tokenizer(str(tiny_folder))
    out = tmp_path / "run"
    run_cell(NOTEBOOK, "1ac8b0c4", out=out, merged=merged, unmerged=None, base=None, cfg=cfg,
             tokenizer=tokenizer, save_merged=True, push_merged=False, repo_id=None, free_memory=lambda: None,
             files=files)
    library = save_merged(merged, tokenizer, tmp_path / "library", cfg.precision.dtype)
    page = out / "merged"
    assert sorted(p.name for p in page.iterdir()) == sorted(p.name for p in library.iterdir())
    saved, expected = tensors(page), tensors(library)
    assert saved.keys() == expected.keys() and all(torch.equal(saved[k], expected[k]) for k in saved)
    assert {v.dtype for v in saved.values()} == {cfg.precision.dtype}
    assert "merged model saved in" in capsys.readouterr().out


class Hub:
    """huggingface_hub.HfApi at its boundary: every call it gets, nothing sent."""
    calls: list = []

    def __init__(self, token=None):
        pass

    def create_repo(self, *args, **kwargs):
        Hub.calls.append(("create_repo", args, kwargs))

    def upload_folder(self, **kwargs):
        Hub.calls.append(("upload_folder", (), kwargs))


def test_05s_written_out_push_makes_the_calls_03s_push_makes(monkeypatch, tmp_path, capsys):
    import huggingface_hub

    from gemmate_lib import adapters
    from gemmate_lib.guard_rails.files import show_path

    monkeypatch.setattr(huggingface_hub, "HfApi", Hub)
    monkeypatch.setattr(adapters, "push_problem", lambda repo_id: None)  # a write token, on a reachable Hub
    monkeypatch.setattr(Hub, "calls", [])
    folder = tmp_path / "adapter"
    folder.mkdir()
    scope = dict(adapter_dir=folder, merged_dir=tmp_path / "merged", push_merged=False, save_merged=False)
    run_cell(NOTEBOOK, "83a0faac", repo_id="someone/quotes-lora", private=True, **scope)
    page, Hub.calls = Hub.calls, []
    run_cell("03_lora_sft.ipynb", "7e1c0a52", adapter_repo="someone/quotes-lora", adapter_dir=folder)
    assert page == Hub.calls and [c[0] for c in page] == ["create_repo", "upload_folder"]
    assert page[0][2]["private"] is True
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "pushed adapter to https://huggingface.co/someone/quotes-lora"  # 05's line
    # 03's: the folder it pushed, and private
    assert printed[1] == f"pushed {show_path(folder)} to https://huggingface.co/someone/quotes-lora (private)"


def test_05s_push_cell_without_a_repo_id_or_token_pushes_nothing_and_says_what_to_set(monkeypatch, tmp_path,
                                                                                      capsys):
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(huggingface_hub, "HfApi", Hub)
    monkeypatch.setattr(Hub, "calls", [])
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "none"))
    scope = dict(adapter_dir=tmp_path, merged_dir=tmp_path / "merged", push_merged=False, save_merged=False,
                 private=True)
    run_cell(NOTEBOOK, "83a0faac", repo_id=None, **scope)
    run_cell(NOTEBOOK, "83a0faac", repo_id="someone/quotes-lora", **scope)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("push skipped: set the parameter repo_id")
    assert printed[1].startswith("push skipped: no HF_TOKEN")
    assert Hub.calls == []
