"""The Colab path, simulated here: faked only at the outer
boundary (google.colab, CUDA, the huggingface_hub API)."""
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from gemmate_lib.guard_rails import colab, hf_token
from gemmate_lib.guard_rails.errors import ModelLoadError, TokenError

ROOT = Path(__file__).resolve().parents[1]
FAKE = "hf_" + "COLABcolab" * 3 + "0000"  # built at run time: not a token-shaped literal in the repo


@pytest.fixture()
def fake_colab(fake_colab):
    """conftest's Colab runtime, with the learner's HF_TOKEN secret added."""
    fake_colab.secret = FAKE
    return fake_colab


def test_the_colab_secret_is_the_token_and_reaches_a_subprocess(fake_colab):
    assert hf_token.get_token() == FAKE and "found in Colab secrets" in hf_token.describe_token()
    assert FAKE not in hf_token.describe_token()
    assert hf_token.subprocess_env()["HF_TOKEN"] == FAKE  # a child process has no kernel to ask Colab


@pytest.mark.parametrize("secret, words", [("refused", "was refused access"),
                                           (None, "no secret named HF_TOKEN"),
                                           ("broken", "could not read the HF_TOKEN secret"),
                                           ("vs code", "outside the Colab web page")])
def test_each_colab_secret_failure_has_its_own_message(fake_colab, secret, words):
    from gemmate_lib.models import resolve_model

    secret = {"refused": fake_colab.NotebookAccessError("declined"), "broken": RuntimeError("vault broke"),
              "vs code": RuntimeError("Secrets can only be fetched when running from the Colab UI."),
              None: None}[secret]
    fake_colab.secret = secret
    with pytest.warns() if secret is not None else _nothing():
        assert hf_token.get_token() is None
    assert words in hf_token.describe_token()
    with pytest.raises(ModelLoadError) as err:
        resolve_model("google/gemma-2b")
    assert words in err.value.fix


def test_a_colab_runtime_without_a_gpu_stops_in_one_line_unless_the_cpu_is_chosen(fake_colab, fake_gpu,
                                                                                    monkeypatch):
    """Every badge opened a CPU runtime, and the notebooks fell back in silence to the 270M model on two
    vCPUs, even with HF_TOKEN set. Outside Colab the CPU profile stays the default."""
    from gemmate_lib.config import course_config
    from gemmate_lib.guard_rails.errors import HardwareError, one_line

    fake_gpu(None)
    monkeypatch.delenv("GEMMATE_PROFILE", raising=False)
    assert hf_token.get_token() == FAKE  # the learner did add the token
    with pytest.raises(HardwareError) as err:
        course_config(model_name=None, dataset=None)  # the notebooks' parameters as they open
    line = one_line(err.value)
    assert "Runtime > Change runtime type > T4 GPU" in line and 'model_name="embedded"' in line
    assert "\n" not in line
    assert course_config(model_name="embedded").profile == "cpu-embedded"  # the CPU on purpose
    assert course_config("methods", device="cpu").precision.device == "cpu"
    monkeypatch.delitem(sys.modules, "google.colab")
    assert course_config().profile == "cpu-embedded"  # not Colab: the CPU profile, as on this machine


def test_a_secret_added_after_the_first_hub_call_needs_a_restart_and_every_message_says_so(fake_colab):
    """huggingface_hub reads Colab's secret once per process: the learner who adds HF_TOKEN after the message
    still has no token until Runtime > Restart session, so the message must say to restart."""
    from gemmate_lib.models import resolve_model

    fake_colab.secret = None  # no secret yet
    assert hf_token.get_token() is None
    assert "Restart session" in hf_token.describe_token()
    fake_colab.secret = FAKE  # the learner adds it, as the message says ...
    assert hf_token.get_token() is None  # ... and this process still has none: the secret was read once
    assert "Restart session" in hf_token.describe_token()
    with pytest.raises(TokenError) as err:
        hf_token.check_token()
    assert "Restart session" in err.value.fix
    with pytest.raises(ModelLoadError) as err:
        resolve_model("google/gemma-2b")
    assert "Restart session" in err.value.fix and FAKE not in str(err.value)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _whoami(role=None, status=None, scopes=()):
    def whoami(token):
        assert token == FAKE
        if status:
            import httpx2
            from huggingface_hub.errors import HfHubHTTPError

            response = httpx2.Response(status,
                                       request=httpx2.Request("GET", "https://huggingface.co/api/whoami-v2"))
            raise HfHubHTTPError(f"{status} Client Error", response=response)
        access = {"role": role}
        if role == "fineGrained":
            access["fineGrained"] = {"scoped": [{"permissions": list(scopes)}], "global": []}
        return {"name": "learner", "auth": {"accessToken": access}}
    return types.SimpleNamespace(whoami=whoami)


@pytest.mark.parametrize("api, need_write, words", [
    (_whoami(status=401), False, "invalid, revoked or expired"),
    (_whoami(role="read"), True, "read-only, so it cannot push"),
    (_whoami(role="fineGrained", scopes=["repo.content.read"]), True, "no write access to repositories"),
])
def test_each_token_problem_has_its_own_message(fake_colab, api, need_write, words):
    with pytest.raises(TokenError) as err:
        hf_token.check_token(need_write=need_write, api=api)
    assert words in err.value.problem and FAKE not in str(err.value)


def test_a_write_token_passes_the_check(fake_colab):
    assert "role write" in hf_token.check_token(need_write=True, api=_whoami(role="write"))
    fine = _whoami(role="fineGrained", scopes=["repo.content.read", "repo.write"])
    assert "fineGrained" in hf_token.check_token(need_write=True, api=fine)


def test_the_colab_requirements_never_touch_torch_jupyter_or_dev_tools():
    wanted = colab.pins(ROOT / "requirements-colab.txt")
    forbidden = {"torch", "torchvision", "torchaudio", "jupyter", "jupyterlab", "ipykernel", "notebook",
                 "papermill",
                 "nbval", "nbformat", "pytest", "optuna", "ruff", "pandas", "protobuf"}
    assert not forbidden & set(wanted)
    course = colab.pins(ROOT / "requirements.txt")
    colab_only = {"torchao"}  # Colab preinstalls an old one that peft refuses; the course never needs it
    assert {name: course[name] for name in set(wanted) - colab_only} == {
        name: pin for name, pin in wanted.items() if name not in colab_only}  # the same pins as the course


def installed_package(folder: Path, name: str, version: str) -> Path:
    """`folder` holding the metadata of `name` at `version`, as pip leaves an installed package: put on
    sys.path, importlib.metadata finds it (a preinstalled package of Colab's, faked at its boundary)."""
    info = folder / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return folder


def test_install_brings_only_what_differs_and_holds_colabs_torch(tmp_path, monkeypatch):
    """Colab's torch is held at its build by a constraints file; only the pins that differ are installed, and
    Colab's torchao (older than peft accepts) is one of them; where torchao is absent, none is installed."""
    (tmp_path / "requirements-colab.txt").write_text(f"peft=={colab.installed_version('peft')}\n"
                                                     "torchao==0.17.0\n")
    assert colab.install(tmp_path, run=lambda *a, **k: 1 / 0) == "ready"  # no torchao here: nothing to do
    monkeypatch.syspath_prepend(str(installed_package(tmp_path / "site", "torchao", "0.10.0")))
    seen = {}

    def pip(cmd, **kwargs):
        seen["cmd"] = cmd
        seen["held"] = Path(cmd[cmd.index("-c") + 1]).read_text() if "-c" in cmd else ""
        return types.SimpleNamespace(returncode=0, stderr="")

    colab.install(tmp_path, run=pip)
    assert [arg for arg in seen["cmd"] if "==" in arg] == ["torchao==0.17.0"]
    assert f"torch=={torch.__version__}" in seen["held"].split()


@pytest.mark.slow
def test_pip_stops_rather_than_replace_colabs_torch(tmp_path, venv_with_this_torch):
    """A pin that needs another torch (torchvision 0.26 needs torch 2.11) ends in one line naming the
    conflict; pip, run for real (a dry run) in a venv that has this machine's torch, never replaces it."""
    py = venv_with_this_torch
    (tmp_path / "requirements-colab.txt").write_text("torchvision==0.26.0\n")

    def dry_run(cmd, **kwargs):
        return subprocess.run([py, *cmd[1:4], "--dry-run", *cmd[4:]], **kwargs, timeout=900)

    with pytest.raises(ModelLoadError) as err:
        colab.install(tmp_path, run=dry_run)
    assert f"torch=={torch.__version__}" in str(err.value) and "never reinstall torch" in str(err.value)


@pytest.fixture(scope="module")
def venv_with_this_torch(tmp_path_factory) -> str:
    """A fresh venv that has this machine's torch (its files and dist-info linked in: no multi-GB copy), as
    Colab has its own; its python. One venv for the two pip tests of this module: both only dry-run pip in it
    (--dry-run installs nothing), so neither sees the other's."""
    venv = tmp_path_factory.mktemp("colab-like") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = str(venv / "bin" / "python")
    target = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, check=True).stdout.strip())
    source = Path(torch.__file__).resolve().parents[1]
    for item in [source / "torch", *source.glob(f"torch-{torch.__version__}*.dist-info")]:
        (target / item.name).symlink_to(item)
    return py


@pytest.mark.slow
def test_pip_would_not_reinstall_torch_in_a_venv_that_has_it(tmp_path, venv_with_this_torch):
    """A dry run of the Colab install into a fresh venv holding
    torch 2.13: torch stays, the course's pins come in."""
    import torch as installed_torch

    py = venv_with_this_torch
    check = subprocess.run([py, "-m", "pip", "show", "torch"], capture_output=True, text=True)
    assert f"Version: {installed_torch.__version__}" in check.stdout
    report = tmp_path / "report.json"
    proc = subprocess.run([py, "-m", "pip", "install", "-q", "--dry-run", "--report", str(report), "-r",
                           str(ROOT / "requirements-colab.txt")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    print(f"the Colab install would add {len(names)} distributions, none of them torch")
    assert "transformers" in names and "bitsandbytes" in names
    assert not names & {"torch", "torchvision",
                        "torchaudio"} and not any(n.startswith("nvidia-") for n in names)


def test_install_is_harmless_to_rerun_and_says_when_to_restart(tmp_path, monkeypatch, capsys):
    (tmp_path / "requirements-colab.txt").write_text("peft==0.21.2\n")
    calls = []
    # already there
    assert colab.install(tmp_path, run=lambda *a, **k: calls.append(a)) == "ready" and calls == []
    (tmp_path / "requirements-colab.txt").write_text("peft==9.9.9\n")
    import peft

    monkeypatch.setattr(peft, "__version__", "0.1.0")  # this kernel imported an older peft
    done = types.SimpleNamespace(returncode=0, stderr="")
    assert colab.install(tmp_path, run=lambda *a, **k: done) == colab.RESTART
    assert "Runtime > Restart session" in capsys.readouterr().out


def test_drive_is_the_default_run_folder_on_colab_and_declining_it_is_explained(fake_colab, monkeypatch,
                                                                                capsys, tmp_path):
    # Colab's /content, here a fresh folder: this machine's own /content (if any) plays no part
    monkeypatch.setattr(colab, "DRIVE", tmp_path / "drive")
    monkeypatch.setattr(colab, "DRIVE_RUNS", tmp_path / "drive" / "MyDrive" / "gemmate" / "runs")
    assert colab.default_run_dir("03", mount=lambda path: None) == colab.DRIVE_RUNS / "03"

    def decline(path):
        raise RuntimeError("mount failed: user declined")

    assert colab.default_run_dir("03", mount=decline) is None
    assert "adapter_repo" in capsys.readouterr().out
    monkeypatch.delitem(sys.modules, "google.colab")
    assert colab.default_run_dir("03", mount=decline) is None  # not Colab: the usual runs/ folder


def test_05_and_06_find_the_adapter_in_the_run_folder_on_the_hub_or_say_how(tmp_path, fake_colab):
    with pytest.raises(ModelLoadError) as err:
        colab.find_adapter(tmp_path)
    assert "adapter_repo" in err.value.fix and "Google Drive" in err.value.fix
    got = []

    def download(repo_id, local_dir, token):  # the huggingface_hub API boundary
        got.append((repo_id, token))
        Path(local_dir).mkdir(parents=True)
        (Path(local_dir) / "adapter_config.json").write_text("{}")
        return local_dir

    assert colab.find_adapter(tmp_path, "learner/quotes-lora", download=download) == tmp_path / "adapter"
    assert got == [("learner/quotes-lora", FAKE)]
    assert colab.find_adapter(tmp_path) == tmp_path / "adapter"  # now in the run folder: no second download


@pytest.mark.parametrize("dtype, trained", [("fp16", torch.float32), ("fp32", torch.float32),
                                             ("bf16", torch.bfloat16)])
def test_trainable_weights_are_fp32_wherever_compute_is_not_bf16_on_a_4bit_model(tiny_folder, tiny_tokenizer,
                                                                                 tmp_path, dtype, trained):
    """TRL casts a quantized model's LoRA weights to bf16 whatever the compute dtype: fp16's grad scaler needs
    fp32 ones (a T4 with gemma-2b), and fp32 compute (a T4 with Gemma 3) must not train bf16 weights; under
    bf16 compute they stay TRL's bf16 (the QLoRA paper's choice)."""
    from gemmate_lib.config import course_config
    from gemmate_lib.models import load_model
    from gemmate_lib.training import attach_lora, sft_trainer

    cfg = course_config(device="cpu", dtype=dtype, quantization="nf4", max_steps=1, batch_size=2)
    model = attach_lora(load_model(str(tiny_folder), cfg.precision, "nf4"), cfg)
    trainer = sft_trainer(model, tiny_tokenizer, [{"text": "Quote: a b\nAuthor: c"}] * 4, [], cfg, tmp_path)
    assert (trainer.args.fp16, trainer.args.bf16) == (dtype == "fp16", dtype == "bf16")
    dtypes = {p.dtype for p in trainer.model.parameters() if p.requires_grad}
    assert dtypes == {trained}


def cuda_unscale_kernel(monkeypatch):
    """torch's CPU kernel of the grad scaler's unscale accepts bf16 gradients; CUDA's dispatches on float,
    double and half only and raises NotImplementedError for bf16 (github.com/huggingface/trl/issues/4901, a T4
    on torch 2.11). This gives the CPU kernel CUDA's refusal, so a scaled step here fails where it would fail
    on a T4."""
    cpu_kernel = torch._amp_foreach_non_finite_check_and_unscale_

    def unscale(grads, found_inf, inv_scale):
        if any(grad.dtype == torch.bfloat16 for grad in grads):
            raise NotImplementedError('"_amp_foreach_non_finite_check_and_unscale_cuda" not implemented '
                                      "for 'BFloat16'")
        return cpu_kernel(grads, found_inf, inv_scale)

    monkeypatch.setattr(torch, "_amp_foreach_non_finite_check_and_unscale_", unscale)


def test_the_emulated_cuda_unscale_kernel_refuses_bf16_gradients_as_cuda_does(monkeypatch):
    def scaled_unscale():
        weight = torch.nn.Parameter(torch.ones(2, dtype=torch.bfloat16))
        scaler = torch.amp.GradScaler("cpu")
        scaler.scale((weight * 2).sum()).backward()
        scaler.unscale_(torch.optim.SGD([weight], lr=0.1))

    scaled_unscale()  # the CPU kernel: bf16 is fine here, so a CPU test cannot see the T4's failure
    cuda_unscale_kernel(monkeypatch)
    with pytest.raises(NotImplementedError):
        scaled_unscale()


def test_a_scaled_fp16_step_on_the_trainers_weights_passes_cudas_unscale_kernel(tiny_folder, tiny_tokenizer,
                                                                                 tmp_path, monkeypatch):
    """The fp16 path on a T4: autocast, the scaled loss, unscale (CUDA's kernel, emulated), step. Without the
    trainer's fp32 cast of TRL's bf16 LoRA weights, the unscale raises as on a T4."""
    from gemmate_lib.config import course_config
    from gemmate_lib.models import load_model
    from gemmate_lib.training import attach_lora, sft_trainer

    cuda_unscale_kernel(monkeypatch)
    cfg = course_config(device="cpu", dtype="fp16", quantization="nf4", max_steps=1, batch_size=2)
    model = attach_lora(load_model(str(tiny_folder), cfg.precision, "nf4"), cfg)
    trainer = sft_trainer(model, tiny_tokenizer, [{"text": "Quote: a b\nAuthor: c"}] * 4, [], cfg, tmp_path)
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    batch = tiny_tokenizer(["Quote: a b\nAuthor: c"], return_tensors="pt")
    with torch.autocast("cpu", dtype=torch.float16):
        loss = trainer.model(**batch, labels=batch["input_ids"]).loss
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    assert {p.grad.dtype for p in trainable} == {torch.float32}


def test_ddp_ranks_load_nf4_on_their_own_gpu(monkeypatch, fp32):
    """device_map follows LOCAL_RANK instead of putting every rank's model on GPU 0."""
    from gemmate_lib import models

    seen = {}

    class Auto:
        @staticmethod
        def from_pretrained(path, **kwargs):
            seen.update(kwargs)
            return torch.nn.Linear(1, 1)

    monkeypatch.setattr("transformers.AutoModelForCausalLM", Auto)
    monkeypatch.setattr(models, "resolve_model", lambda name: (name, {}))
    monkeypatch.setenv("LOCAL_RANK", "1")
    gpu = type(fp32)("cuda", torch.float16, "faked T4")
    models.load_model("some/model", gpu, quantization="nf4")
    assert seen["device_map"] == {"": 1}


def test_gpu_check_dry_run_builds_every_notebooks_t4_and_a100_config(capsys):
    from tools.gpu.gpu_check import main

    assert main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    notebooks = len(list((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")))
    assert out.count("T4 (7.5)") == out.count("A100 (8.0)") == notebooks == 8 and " NO" not in out
    # its QLoRA arm carries the GPU recipe (the other methods are checked in test_methods)
    assert "06_compare_methods" in out
    # a T4 computes the embedded Gemma 3 in fp32 (it overflows in fp16), an A100 in bf16
    assert "compute fp32 ok" in out and "compute bf16 ok" in out and "paged_adamw_8bit ok" in out


def test_gpu_check_fp16_arm_really_computes_in_fp16(capsys, monkeypatch, tmp_path, tiny_folder, fake_gpu):
    """`make gpu-check PRECISION=fp16` ran the embedded Gemma 3, which the course computes in fp32 on a T4's
    profile, so fp16 never ran. Its arm is a Gemma 1 now: the dry run's rows and the real run's config."""
    from gemmate_lib.config import course_config
    from gemmate_lib.training import training_kwargs
    from tools.gpu.gpu_check import FP16_CARD, fp16_arm, main

    assert main(["--dry-run"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if FP16_CARD in line]
    assert len(rows) == 8 and all("compute fp16 ok" in row and " NO" not in row for row in rows)
    # the real run's arm on a bf16 GPU (faked at torch.cuda), with the smoke run's tiny Gemma 1
    monkeypatch.setenv("GEMMATE_SMOKE_TOKENIZER", str(tiny_folder))  # its tokenizer, not the embedded one
    params, env = fp16_arm(None, tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    fake_gpu((9, 0), name="H100")
    cfg = course_config(**params)
    assert cfg.precision.dtype == torch.float16 and cfg.model.quantization == "nf4"
    assert training_kwargs(cfg, tmp_path, has_eval=True)["fp16"]


@pytest.mark.parametrize("model_type", ["gemma", "gemma3_text", "gemma4"])
def test_gpu_check_t4_arm_gives_the_one_page_recipe_what_it_picks_on_a_t4(fake_gpu, model_type):
    """A newer GPU cannot report a T4's compute capability to the one-page recipe's kernel, so `make gpu-check
    --precision t4` (and gpu-smoke's fp16 arm) inserts a cell after the page's dtype cell: it must pick what
    the page picks on a T4."""
    import nbformat

    from tools.gpu.gpu_probes import T4_DTYPE

    page = nbformat.read(ROOT / "notebooks" / "qlora_one_runtime.ipynb", as_version=4)
    cell = next(c.source for c in page.cells if c.cell_type == "code" and "compute_dtype, why = " in c.source)
    fake_gpu((7, 5))
    on_t4, stand_in = {"torch": torch, "model_type": model_type}, {"torch": torch, "model_type": model_type}
    # the page's rule, with model_type given instead of read from the model's config
    rule = [line for line in cell.splitlines() if not line.startswith(("from ", "model_type ="))]
    exec("\n".join(rule), on_t4)
    exec(T4_DTYPE, stand_in)
    assert stand_in["compute_dtype"] == on_t4["compute_dtype"]


def test_gpu_check_without_a_gpu_is_one_clear_line(capsys, fake_gpu):
    from gemmate_cli.errors import run_cli
    from tools.gpu.gpu_check import main

    fake_gpu(None)
    assert run_cli(main, []) == 2 and "needs a CUDA GPU" in capsys.readouterr().err


def test_lora_on_an_unquantized_base_never_upcasts_it_even_under_the_nf4_profile(tiny_tokenizer):
    from tiny import make_tiny_gemma

    from gemmate_lib.config import course_config
    from gemmate_lib.training import attach_lora

    base = make_tiny_gemma(tiny_tokenizer).to(torch.bfloat16)
    # 05's second adapter on a GPU profile
    cfg = course_config(device="cpu", dtype="bf16", quantization="nf4")
    model = attach_lora(base, cfg)
    assert {p.dtype for n, p in model.named_parameters() if "lora" not in n} == {torch.bfloat16}


@pytest.mark.parametrize("capability", [(7, 5), (8, 0)])
def test_a_gpu_without_a_token_stops_at_the_parameters_in_one_line_naming_both_fixes(fake_colab, fake_gpu,
                                                                                    monkeypatch, capability):
    """Without the HF_TOKEN secret, the GPU profile used to fall back to Gemma 3 270M in silence."""
    from gemmate_lib.config import course_config
    from gemmate_lib.guard_rails.errors import ParameterError

    fake_gpu(capability)
    fake_colab.secret = None  # the learner forgot the secret
    with pytest.raises(ParameterError) as caught:
        course_config(model_name=None, dataset=None, max_steps=None)  # what 03's parameters cell passes
    problem, fix = str(caught.value).split("\n")
    assert "no Hugging Face token" in problem and "google/gemma-2b" in problem
    assert "HF_TOKEN" in fix and 'model_name="embedded"' in fix
    chosen = course_config(model_name="embedded")  # the small model on purpose: the GPU profile on it
    assert chosen.profile == "gpu-embedded" and chosen.model.quantization == "nf4"
    fake_colab.secret = FAKE  # the secret added, and the session restarted (huggingface_hub reads it once)
    monkeypatch.setattr("huggingface_hub.utils._auth._IS_GOOGLE_COLAB_CHECKED", False)
    assert course_config().model.model_name == "google/gemma-2b"
