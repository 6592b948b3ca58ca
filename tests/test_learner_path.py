"""The learner's path (Colab, a T4, gemma-2b), tested where it breaks: each test failed before its fix.

The last test runs every notebook end to end in the GPU profile, in a Colab-like kernel
(tests/learner_path.py). Faked only at the outer boundary: `google.colab` (tests/colab_runtime),
CUDA's capability, and the Hub (no network here).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gemmate_lib.config import course_config
from gemmate_lib.hardware import Precision

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "tests" / "colab_runtime"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
ONE_PAGE = ROOT / "notebooks" / "qlora_one_runtime.ipynb"  # the smoke run runs it last, without the course


def colab_child_env(**extra) -> dict:
    """The environment of a process in a Colab-like runtime: the course is not installed, only on sys.path."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "GEMMATE_PROFILE", "GEMMATE_SMOKE")}
    return {**env, "PYTHONPATH": str(RUNTIME), **extra}


def test_the_colab_runtime_really_hides_the_installed_course(tmp_path):
    probe = subprocess.run([sys.executable, "-c", "import gemmate_lib"], cwd=tmp_path, env=colab_child_env(),
                           capture_output=True, text=True)
    assert "No module named 'gemmate_lib'" in probe.stderr  # else the tests below prove nothing


def test_a_child_process_finds_the_course_that_the_kernel_has_only_on_sys_path(tmp_path):
    """06's fresh-process reload died with ModuleNotFoundError in Colab."""
    code = ("import os, subprocess, sys; sys.path.insert(0, sys.argv[1]); "
            "from gemmate_lib.guard_rails.hf_token import subprocess_env; "
            "r = subprocess.run([sys.executable, '-c', 'import gemmate_lib'], "
            "env=subprocess_env(), capture_output=True, text=True); print(r.returncode, r.stderr[-200:])")
    kernel = subprocess.run([sys.executable, "-c", code, str(ROOT)], cwd=tmp_path, env=colab_child_env(),
                            capture_output=True, text=True)
    assert kernel.stdout.startswith("0 "), kernel.stdout + kernel.stderr


@pytest.mark.slow
def test_the_fresh_process_reload_loads_the_base_as_the_parent_did(tiny_folder, tmp_path):
    """The child loaded the base unquantized while the parent generated with NF4."""
    from test_notebook_recipes import reload_in_05

    from gemmate_lib.adapters import load_adapter, save_adapter
    from gemmate_lib.models import load_model, load_tokenizer
    from gemmate_lib.text_generation import generate
    from gemmate_lib.training import attach_lora

    bf16 = Precision("cpu", torch.bfloat16, "16-bit, as a T4's fp16")
    cfg = course_config(device="cpu", dtype="bf16", quantization="nf4")
    tokenizer = load_tokenizer(str(tiny_folder))
    trained = attach_lora(load_model(str(tiny_folder), bf16, quantization="nf4"), cfg, quiet=True)
    with torch.no_grad():  # a LoRA B that is not zero, so the adapter changes the generations
        for name, p in trained.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    save_adapter(trained, tokenizer, tmp_path / "adapter", str(tiny_folder))
    prompts = ["Quote: Be yourself", "Quote: Imagination is more"]
    parent = load_adapter(load_model(str(tiny_folder), bf16, quantization="nf4"), tmp_path / "adapter")
    here = generate(parent, tokenizer, prompts, max_new_tokens=12).completion.tolist()
    child = reload_in_05(tmp_path / "adapter", str(tiny_folder), prompts, 12, bf16, "nf4")
    assert child == here
    # what the old child loaded
    unquantized = load_adapter(load_model(str(tiny_folder), bf16), tmp_path / "adapter")
    assert generate(unquantized, tokenizer, prompts, max_new_tokens=12).completion.tolist() != here


@pytest.mark.slow
def test_a_gemmate_model_trained_in_nf4_reloads_with_identical_logits(tiny_folder, tmp_path):
    """04's reload compared a k-bit-prepared trained model with a fresh 16-bit NF4 one."""
    from gemmate_lib.models import load_model, load_tokenizer
    from gemmate_lib.temporal.model import GemmaTEForCausalLM
    from gemmate_lib.temporal.training import attach_temporal_lora
    from gemmate_lib.training import prepare_base

    cfg = course_config("temporal", device="cpu", dtype="bf16", quantization="nf4",
                        gradient_checkpointing=True)
    tokenizer = load_tokenizer(str(tiny_folder))
    te = attach_temporal_lora(GemmaTEForCausalLM(load_model(str(tiny_folder), cfg.precision, "nf4")), cfg)
    with torch.no_grad():
        te.temporal_projection.weight.normal_(0, 0.1)
    te.eval()
    folder = te.save_pretrained(tmp_path / "te")
    probe = tokenizer(["Written: May 2014"], return_tensors="pt")
    stamp = [1_400_000_000_000]
    with torch.no_grad():
        before = te(**probe, timestamps=stamp).logits
        nf4 = load_model(str(tiny_folder), cfg.precision, "nf4")
        like_trained = GemmaTEForCausalLM.from_pretrained(prepare_base(nf4, cfg), folder)
        plain = GemmaTEForCausalLM.from_pretrained(load_model(str(tiny_folder), cfg.precision, "nf4"), folder)
        assert torch.equal(before, like_trained(**probe, timestamps=stamp).logits)
        assert not torch.equal(before, plain(**probe, timestamps=stamp).logits)  # what the old check compared


def _fake_gpu(monkeypatch, capability):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "a faked GPU")


def test_gemma_3_never_computes_in_fp16_on_a_t4_and_gemma_1_does(monkeypatch, tiny_folder):
    """The no-token GPU fallback ran Gemma 3 270M in fp16, where its activations overflow."""
    _fake_gpu(monkeypatch, (7, 5))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("gemmate_lib.guard_rails.hf_token.get_token", lambda: None)
    fallback = course_config(model_name="embedded")
    assert fallback.model.model_name == "embedded" and fallback.precision.dtype == torch.float32
    assert "Gemma 3" in fallback.precision.reason
    monkeypatch.setattr("gemmate_lib.guard_rails.hf_token.get_token", lambda: "a token")
    assert course_config().model.model_name == "google/gemma-2b"
    assert course_config().precision.dtype == torch.float16  # Gemma 1 keeps fp16 with loss scaling
    assert course_config(model_name=str(tiny_folder)).precision.dtype == torch.float32  # a Gemma 3 folder
    _fake_gpu(monkeypatch, (8, 0))
    assert course_config(model_name="embedded").precision.dtype == torch.bfloat16


@pytest.mark.parametrize("params, online", [(None, False), ("params/gpu.yaml", True)])
def test_make_course_is_offline_for_the_embedded_profile_only(tmp_path, params, online):
    """The Makefile exported HF_HUB_OFFLINE=1 for
    every run, so a GPU run failed at the first download."""
    from tools.runners.course import hub_environment, notebook_parameters

    env = {k: v for k,
           v in os.environ.items() if not k.startswith(("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "MAKE"))}
    spy = tmp_path / "spy.sh"
    spy.write_text('#!/bin/sh\necho "HF_HUB_OFFLINE=${HF_HUB_OFFLINE-unset}"\n')
    spy.chmod(0o755)
    make = subprocess.run(["make", "-s", "-o", "install", "course",
                           f"PY={spy}"] + ([f"PARAMS={params}"] if params else []),
                          cwd=ROOT, env=env, capture_output=True, text=True)
    # make leaves it to the course
    assert make.stdout.strip() == "HF_HUB_OFFLINE=unset", make.stdout + make.stderr
    per = notebook_parameters(NOTEBOOKS, str(ROOT / params) if params else None)
    assert (hub_environment(per) == {}) == online


def test_05_keeps_the_merged_model_only_when_it_is_small(capsys):
    """05 (then 06) wrote gemma-2b's ~5 GB merged copy into the learner's Google Drive by default."""
    import types

    from test_notebook_recipes import run_cell

    def keeps(n, dtype, save_merged=None, push_merged=False, repo_id="someone/quotes"):
        cfg = types.SimpleNamespace(precision=types.SimpleNamespace(dtype=dtype))
        merged = torch.nn.Linear(1, n, bias=False, device="meta") if n else None  # None: section 3 skipped
        return run_cell("05_save_and_push.ipynb", "5d1e2f30", merged=merged, cfg=cfg, save_merged=save_merged,
                        push_merged=push_merged, repo_id=repo_id)["save_merged"]

    # gemma-2b's size in fp16: ~4.7 GiB
    assert keeps(2_500_000_000, torch.float16) is False
    assert "4.7 GiB in float16; not saved (set save_merged=True" in capsys.readouterr().out
    assert keeps(268_000_000, torch.float32) is True  # the embedded model: ~1 GiB
    assert keeps(2_500_000_000, torch.float16, save_merged=True) is True  # asked for
    assert keeps(2_500_000_000, torch.float16, push_merged=True) is True  # push_merged needs the files
    assert keeps(2_500_000_000, torch.float16, push_merged=True, repo_id=None) is False  # no push: no repo
    capsys.readouterr()
    assert keeps(0, torch.float16, save_merged=True) is False  # section 3 merged nothing: nothing to save
    assert capsys.readouterr().out == ""


def test_the_last_cell_flushes_google_drive(tmp_path, monkeypatch):
    """Nothing flushed Drive, so 05 and 06 in new runtimes could find no adapter or half of one."""
    from gemmate_lib.guard_rails import colab

    monkeypatch.setitem(sys.modules, "google.colab", type(sys)("google.colab"))
    flushed = []
    monkeypatch.setattr(colab, "DRIVE", tmp_path / "drive")
    assert colab.flush_drive(lambda: flushed.append(1)) is False  # Drive not mounted: nothing to do
    (tmp_path / "drive" / "MyDrive").mkdir(parents=True)
    assert colab.flush_drive(lambda: flushed.append(1)) is True and flushed == [1]


def test_the_fp16_gradient_scaler_steps_with_the_trainers_fp32_lora_weights(tiny_folder, tiny_tokenizer,
                                                                            tmp_path):
    """accelerate turns fp16's autocast and scaler
    off on a CPU, so a trainer built here never used them.

    torch's own CPU autocast and GradScaler do run here: one
    scaled step on the trainer's model, as a T4 takes it.
    """
    from gemmate_lib.models import load_model
    from gemmate_lib.training import attach_lora, sft_trainer

    cfg = course_config(device="cpu", dtype="fp16", quantization="nf4", max_steps=1, batch_size=2)
    model = attach_lora(load_model(str(tiny_folder), cfg.precision, "nf4"), cfg)
    trainer = sft_trainer(model, tiny_tokenizer, [{"text": "Quote: a b\nAuthor: c"}] * 4, [], cfg, tmp_path)
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    batch = tiny_tokenizer(["Quote: a b\nAuthor: c"], return_tensors="pt")
    before = [p.detach().clone() for p in trainable]
    for _ in range(30):  # the first steps overflow at the initial scale (65536) and are skipped, as on a T4
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = trainer.model(**batch, labels=batch["input_ids"]).loss
        scaler.scale(loss).backward()
        # raises "Attempting to unscale FP16 gradients" on an fp16 trainable weight
        scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()
        if any(not torch.equal(a, p) for a, p in zip(before, trainable)):
            break
    assert torch.isfinite(loss) and scaler.get_scale() < 65536.0
    assert any(not torch.equal(a, p) for a, p in zip(before, trainable))  # a scaled step was taken


def test_the_gpu_smoke_fp16_arm_runs_the_one_page_recipe_in_fp16(tmp_path):
    """make gpu-smoke on an H200: the fp16 arm ran the one-page recipe in bf16, since the page picks its dtype
    from the GPU's compute capability and reads no GEMMATE_PROFILE. The arm now inserts a T4's choice after
    the page's dtype cell, before any cell reads the dtype."""
    from learner_path import with_cells

    from tools.gpu.gpu_probes import arm_probes

    code = [c.source for c in with_cells(ONE_PAGE, after=arm_probes("fp16")[ONE_PAGE.stem]).cells
            if c.cell_type == "code"]
    picks = [i for i, source in enumerate(code) if "compute_dtype, why = " in source]
    reads = [i for i, source in enumerate(code) if "=compute_dtype" in source.replace(" ", "")]
    from transformers import GemmaConfig

    GemmaConfig().save_pretrained(tmp_path)  # the arm's model: a Gemma 1 (gemma-2b's architecture)
    namespace = {"torch": torch, "model_name": str(tmp_path), "token": None}
    for i in picks:
        exec(code[i], namespace)
    assert namespace["compute_dtype"] == torch.float16
    assert reads and max(picks) < min(reads)


def _install_cell(notebook: Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    return "".join(next(c for c in cells if c["cell_type"] == "code")["source"])


def test_a_failed_clone_stops_the_install_cell_with_one_line(tmp_path):
    """A failed `git clone` printed an error, and the next line failed with ModuleNotFoundError."""
    from IPython.core.inputtransformer2 import TransformerManager

    from gemmate_lib.guard_rails.colab import COURSE_REPO
    from tools.runners.timings import CLONE

    cell = _install_cell(NOTEBOOKS[0]).replace(f"https://github.com/{COURSE_REPO}",
                                               str(tmp_path / "no-such-repo"))
    cell = cell.replace(CLONE, str(tmp_path / "clone"))
    header = "import google.colab\nfrom IPython import get_ipython\n"
    script = header + TransformerManager().transform_cell(cell)
    (tmp_path / "cell.py").write_text(script)
    run = subprocess.run([sys.executable, "-m", "IPython", "--quick", "--no-banner",
                          str(tmp_path / "cell.py")],
                         cwd=tmp_path, env=colab_child_env(), capture_output=True, text=True, timeout=120)
    shown = run.stdout + run.stderr
    assert "could not clone" in shown and "Fix:" in shown, shown
    assert "ModuleNotFoundError" not in shown and not (tmp_path / "clone").exists()


def test_a_fork_changes_the_course_repository_in_one_place(tmp_path, monkeypatch):
    """Every badge and install cell named the course's repository separately."""
    import shutil

    from gemmate_lib.guard_rails import colab, files
    from tools.runners import timings

    for path in NOTEBOOKS + [ROOT / "notebooks" / "course_timings.json"]:
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "notebooks").mkdir()
    for path in tmp_path.glob("*.*"):
        path.rename(tmp_path / "notebooks" / path.name)
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    monkeypatch.setattr(files, "repo_root", lambda: tmp_path)
    monkeypatch.setattr(timings, "repo_root", lambda: tmp_path)
    assert timings.sync() == []  # the committed notebooks are in sync with the one setting
    monkeypatch.setattr(colab, "COURSE_REPO", "a-learner/my-fork")
    assert len(timings.sync()) == len(NOTEBOOKS)
    for path in sorted((tmp_path / "notebooks").glob("*.ipynb")):
        text = path.read_text()
        assert "gemmate-course/gemmate" not in text
        assert f"github/a-learner/my-fork/blob/main/notebooks/{path.name}" in text
        assert "https://github.com/a-learner/my-fork" in _install_cell(path)


@pytest.mark.slow
@pytest.mark.xdist_group("content")  # the Colab-like kernel's Drive writes /content: one at a time
def test_every_notebook_runs_to_the_end_in_the_gpu_profile_in_a_colab_like_kernel(tmp_path):
    """The learner's path, end to end, with a T4's defaults: tests/learner_path.py (its docstring says what is
    real and what is not). No notebook holds more model copies at once than the committed ledger says for the
    parts that ran (the every-branch run below measures each part; make rehearse-learner)."""
    import time

    from canary import CANARY
    from learner_path import CHAT_LOSS, SMOKE_PARAMS, printed, run

    start = time.time()
    rows = run(tmp_path / "run", every_branch=False)
    print(f"learner's path smoke run: {time.time() - start:.0f} s for {len(rows)} notebooks")
    every = [nb.stem for nb in NOTEBOOKS + [ONE_PAGE]]
    assert [name for name in rows] == every
    assert {name: row["status"] for name, row in rows.items()} == {name: "pass" for name in every}
    # the one-page recipe ran without the course: the smoke run's last cell found
    # gemmate_lib neither imported nor importable in that kernel
    page = json.loads((tmp_path / "run" / ONE_PAGE.name).read_text())
    probe = "".join("".join(o.get("text", "")) for o in page["cells"][-1]["outputs"])
    assert "gemmate_lib importable in this kernel: False" in probe
    setup = json.loads((tmp_path / "run" / "00_setup.ipynb").read_text())
    installed = "".join("".join(o.get("text", "")) for o in setup["cells"][1]["outputs"])
    # the Colab branch of the install cell ran (under `make drift` it finds newer releases than its pins)
    assert "the course's packages are installed" in installed or "package(s) Colab lacks" in installed
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["notebooks"]["05_save_and_push"]["reload_identical"] == "4/4"
    if SMOKE_PARAMS["export_gguf"]:  # make drift: 05 exported the tiny Gemma 1, llama.cpp loaded every file
        report = json.loads((tmp_path / "run" / "gguf" / "verification.json").read_text())
        assert {"model-f16.gguf", "model-q8_0.gguf", "model-q4_k_m.gguf"} <= set(report["files"])
    assert manifest["notebooks"]["00_setup"]["config"]["profile"] == "gpu-on-cpu"
    # 03's chat run ran in the GPU profile (NF4, k-bit preparation); its labels count only the model's turn
    assert f"{CHAT_LOSS} True" in printed(tmp_path / "run" / "03_lora_sft.ipynb", "assistant_only_loss=True")
    leaks = [p.name for p in (tmp_path / "run").rglob("*")
             if p.is_file() and CANARY.encode() in p.read_bytes()]
    assert leaks == []
    from tools.fit import notebook_fit

    assert notebook_fit.check_run(tmp_path / "run") == []


@pytest.mark.slow
@pytest.mark.long  # make rehearse-learner; make test's smoke run above checks the copies of the parts it ran
@pytest.mark.xdist_group("content")
def test_every_branch_and_solution_holds_the_committed_model_copies(tmp_path):
    """Every part a T4's defaults leave off (03's part 2, all six of 06's methods) and each exercise's printed
    solution, in the GPU profile: the model copies each kernel held at once (tests/learner_path.py's ledgers)
    are as committed, and no notebook holds more than the course says a free T4 runs (docs/full-shape.md,
    tools/fit/notebook_fit.py). A changed ledger: regenerate it from this run (tools.fit.notebook_fit)."""
    from learner_path import run

    from gemmate_lib import fit
    from tools.fit import notebook_fit

    rows = run(tmp_path / "run")
    assert {name: row["status"] for name, row in rows.items()} == {name: "pass" for name in rows}
    assert notebook_fit.compare(fit.measured(), notebook_fit.collect(tmp_path / "run")) == []


@pytest.mark.slow
# make rehearse-learner; in make test, tests/test_temporal_training.py's stopped run resumes bitwise
# in-process and tests/cli's SIGKILL test kills a real process
@pytest.mark.long
@pytest.mark.xdist_group("content")
def test_03_killed_mid_training_resumes_to_the_uninterrupted_adapter_bitwise(tmp_path):
    """A runtime reclaimed mid-training: 03's kernel (GPU profile, Colab-like) dies right after its checkpoint
    at step 2; running 03 again resumes there and ends with an uninterrupted run's adapter, bitwise."""
    from learner_path import KILL_AFTER_CHECKPOINT, printed, run
    from safetensors.torch import load_file

    three = [nb for nb in NOTEBOOKS if nb.stem == "03_lora_sft"]
    quick = {"save_steps": 1, "compare": False, "chat_steps": 0}  # a checkpoint at every step, part 2 off
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    assert run(straight, three, params=quick)["03_lora_sft"]["status"] == "pass"
    killed = run(resumed, three, probes={"03_lora_sft": [("trainer = SFTTrainer(", KILL_AFTER_CHECKPOINT)]},
                 params=quick)
    assert killed["03_lora_sft"]["status"] == "kernel died" and not (resumed / "adapter").exists()
    assert run(resumed, three, params=quick)["03_lora_sft"]["status"] == "pass"
    assert "resuming from step 2" in printed(resumed / "03_lora_sft.ipynb", "resume_point(")
    mine, uninterrupted = (load_file(folder / "adapter" / "adapter_model.safetensors")
                           for folder in (resumed, straight))
    assert mine.keys() == uninterrupted.keys() and all(mine[k].equal(uninterrupted[k]) for k in mine)


@pytest.mark.slow
@pytest.mark.generations
@pytest.mark.xdist_group("content")
# make rehearse-learner and make drift; in make test, tests/test_logit_cap.py and tests/test_generations.py
# train each tiny generation in-process (the loss, chat training, NF4 on the text layers)
@pytest.mark.long
@pytest.mark.parametrize("key", ["gemma3", "gemma4"])
def test_the_learners_path_runs_on_a_tiny_gemma_of_each_newer_generation(key, tmp_path):
    """00-05 of the learner's path (NF4 load, k-bit preparation, LoRA on the text layers, the pre-flight,
    training, 03's chat run with assistant-only loss, save, merge, reload in a fresh process) with a tiny
    Gemma 3 or Gemma 4 (in its multimodal wrapper) as the model: each notebook's self-check judges it.
    Gemma 1 is the main smoke run above."""
    from learner_path import CHAT_LOSS, notebooks_in_order, printed, run

    ordered = [nb for nb in notebooks_in_order() if nb.name[:2] in {"00", "01", "02", "03", "04", "05"}]
    rows = run(tmp_path / "run", ordered, generation=key)
    assert {name: row["status"] for name, row in rows.items()} == {nb.stem: "pass" for nb in ordered}
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["notebooks"]["05_save_and_push"]["reload_identical"] == "4/4"
    # 03's chat run, in the generation's own turn markers, counts only the model's turn
    assert f"{CHAT_LOSS} True" in printed(tmp_path / "run" / "03_lora_sft.ipynb", "assistant_only_loss=True")
