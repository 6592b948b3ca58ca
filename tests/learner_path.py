"""The learner's path, run here: every notebook headless, GPU profile, in a Colab-like kernel.

What a Colab T4 learner runs, except the device and the model size:
- the GPU profile's settings (GEMMATE_PROFILE=gpu): NF4 through bitsandbytes' CPU kernels,
  `prepare_model_for_kbit_training`, paged 8-bit AdamW, gradient checkpointing, batch 1 x 4
  accumulation, the fast loss off, and a 16-bit load and compute dtype (bf16 here, standing in for
  a T4's fp16), so the dtype mix that k-bit preparation creates shows up as it does on a GPU;
- a tiny random Gemma 1 (gemma-2b's architecture: one key/value head) with the real embedded
  Gemma tokenizer, a handful of steps, and the first 100 embedded quotes as a .jsonl file (10 held out);
- a kernel that looks like Colab's at the module boundary (tests/colab_runtime): `google.colab`
  imported at start, its shell class, the HF_TOKEN secret (a canary), and the course importable
  only through `sys.path` after the install cell, in the kernel and in every child process;
- then the one-page recipe (notebooks/qlora_one_runtime.ipynb), which has no such install cell: a last
  cell that the smoke run appends proves that `gemmate_lib` was never imported and cannot be.

`python tests/learner_path.py [RUN_DIR]` runs it by hand; tests/test_learner_path.py runs it in `make test`.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "tests" / "colab_runtime"
sys.path.insert(0, str(ROOT / "tests"))

# Every notebook's parameters for the smoke run (each notebook gets the keys it declares): a few steps,
# a few examples. The thresholds of the checks that judge learning are the notebooks' own smoke ones.
SMOKE_PARAMS = {
    "max_steps": 3, "compare_steps": 2, "steps": 2, "second_steps": 2,  # 03, its side-by-side arms, 06, 05
    "chat_steps": 1,  # 03's chat run: its cell says whether the loss counted only the model's turn
    "n_train": 24, "n_test": 8, "n_val": 8, "n_far": 6, "n_python": 12, "python_epochs": 1.0,
    "num_epochs": 1.0,  # 07
    "max_new_tokens": 8,  # 02
    # 06's format check on 2 held-out quotes, without prompt and prefix tuning's second copy for the loss
    # before training (the every-branch run below takes it); the page's Author-line share on 4 prompts
    "format_quotes": 2, "start_losses": False, "share_prompts": 4,
    # 03's pre-flight: a random model starts at a uniform guess, ln(vocabulary size), which it refuses for a
    # real base model (the one-page recipe gets the same below)
    "max_start_loss": 1.2,
    # 05's GGUF export: off, as in Colab (where llama-cpp-python must build first). Its cell runs under nbval
    # on the embedded Gemma 3, Gemma 1's conversion in tests/test_export.py; make drift turns it on here
    # (GEMMATE_SMOKE_EXPORT=1) wherever llama.cpp is installed (a bare GPU machine, make gpu-smoke, has none)
    "export_gguf": (os.environ.get("GEMMATE_SMOKE_EXPORT") == "1"
                    and importlib.util.find_spec("llama_cpp") is not None),
}
# The branches a T4's defaults leave off, which the every-branch run (make rehearse-learner, and the
# ledger's regeneration: python -m tools.fit.notebook_fit) takes so that the ledger measures what each
# part holds; with each notebook's printed exercise solutions after it. make test's smoke run takes the
# defaults and checks that no notebook held more copies than the committed ledger says (check_run).
EVERY_BRANCH = {
    # 03's part 2 (the masking arm, section 7's 16-bit LoRA arm beside the NF4 one), so that 03's fit
    # line answers for compare=True (tools/fit/notebook_fit.py)
    "compare": True, "masking_steps": 2,
    # 06: every method, each on its own copy: those whose GPU route differs from 03's (TRL's own loss head:
    # full fine-tuning, prompt and prefix tuning with gemma-2b's one key/value head, IA3), and LoRA and QLoRA,
    # whose copies (16-bit and NF4) the ledger measures for 06's fit line and a T4's default list
    "methods": ["full", "lora_r8", "qlora", "prompt", "prefix", "ia3"],
    "start_losses": True,  # 06's second copy of prompt and prefix tuning, which the smoke run leaves out
}
# the smoke run's dataset: this many embedded quotes, so 10 are held out (eval_fraction 0.1)
SMOKE_QUOTES = 100
# The smoke run's last cell in a notebook that must run without the course (the one-page recipe): the course
# was never imported, and the kernel cannot find it (no install cell put it on sys.path, and the runtime hides
# the venv's editable install).
# A Colab runtime reclaimed mid-training, as 03's kernel meets it: the process dies right after the trainer
# wrote its checkpoint at step 2 (tests/test_learner_path.py runs 03 again, which resumes from it)
KILL_AFTER_CHECKPOINT = """import os
import signal

from transformers import TrainerCallback


class _Reclaimed(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= 2:
            os.kill(os.getpid(), signal.SIGKILL)


trainer.add_callback(_Reclaimed())"""
NO_COURSE_PROBE = """import importlib.util
import sys

assert "gemmate_lib" not in sys.modules, "this notebook imported gemmate_lib"
assert importlib.util.find_spec("gemmate_lib") is None, "gemmate_lib is importable in this kernel"
print("gemmate_lib importable in this kernel: False")"""


CHAT_LOSS = "the loss counts only the model's turn:"  # what 03's chat cell prints about its labels
# Each exercise's printed solution, after the lesson's last cell in the same kernel, as a learner runs it on a
# T4 after Run all: the ledger measures what it holds (its part, GEMMATE_FIT_PART), for the exercise's fit
# line; a solution that raises (a name only one path defines) fails the smoke run
SOLUTION = """# exercise {name}: its printed solution, after Run all, in the GPU profile
import os as _os

_os.environ["GEMMATE_FIT_PART"] = "exercise {name}"
try:
    exec(compile({code!r}, "solution {name}", "exec"), globals())
finally:
    _os.environ.pop("GEMMATE_FIT_PART", None)
"""


def solutions(nb: Path) -> list[str]:
    """The cells that run each solution-type exercise of notebook `nb` (a rerun exercise reruns the notebook
    with its parameters, which the smoke run measures as they are: gemmate_lib.fit.PART_PARAMETERS)."""
    from gemmate_lib.exercises.judging import EXERCISES
    from tools.runners.exercises import solution_code

    found = []
    for name, spec in EXERCISES.items():
        code = solution_code(name) if name.startswith(nb.name[:2] + "-") and not spec.parameters else None
        if code:
            found.append(SOLUTION.format(name=name, code=code))
    return found


def printed(executed: Path, marker: str) -> str:
    """Everything the first code cell of the executed notebook `executed` whose source holds `marker`
    printed (its stream outputs)."""
    cells = json.loads(executed.read_text())["cells"]
    cell = next(c for c in cells if c["cell_type"] == "code" and marker in "".join(c["source"]))
    return "".join("".join(o.get("text", "")) for o in cell.get("outputs", []))


def notebooks_in_order() -> list[Path]:
    """00-07, then the notebooks that sort apart from them (the one-page recipe), as `make course` runs
    them."""
    every = sorted((ROOT / "notebooks").glob("*.ipynb"))
    return [p for p in every if p.name[:2].isdigit()] + [p for p in every if not p.name[:2].isdigit()]


def with_cells(nb: Path, last: str | list[str] | None = None, after: list[tuple[str, str]] = ()):
    """`nb` with `last` appended as its last code cell(s) (NO_COURSE_PROBE for a notebook that imports nothing
    of the course; the exercises' solutions) and each (marker, source) of `after` inserted right after the
    first code cell whose source holds marker (make gpu-smoke's probes: after `trainer.train()`, before the
    notebook frees the trainer)."""
    import nbformat

    node = nbformat.read(nb, as_version=4)
    for marker, source in after:
        at = next(i for i, c in enumerate(node.cells) if c.cell_type == "code" and marker in c.source)
        node.cells.insert(at + 1, nbformat.v4.new_code_cell(source))
    for source in [last] if isinstance(last, str) else last or []:
        node.cells.append(nbformat.v4.new_code_cell(source))
    return node


def tiny_gemma(folder: Path) -> Path:
    """A random 2-layer Gemma 1 (gemma-2b's architecture, one key/value head) with the embedded tokenizer.
    Every linear layer is a multiple of 32 wide, as in the real models: on a CPU with AVX512_BF16,
    bitsandbytes packs NF4 weights in blocks of 32 output rows (and asserts that they fit)."""
    import torch
    from transformers import GemmaConfig, GemmaForCausalLM

    from gemmate_lib.models import load_tokenizer

    if (folder / "config.json").exists():
        return folder
    # make gpu-smoke, on a machine without the embedded model, brings its tokenizer (tools/gpu/gpu_wheels.py)
    tokenizer = load_tokenizer(os.environ.get("GEMMATE_SMOKE_TOKENIZER", "embedded"))
    config = GemmaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                         max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = GemmaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # as google/gemma-2b's folder has: tokenizer.model (05's export) and the added tokens in the config
    for name in ("tokenizer.model", "tokenizer_config.json"):
        if (Path(tokenizer.name_or_path) / name).is_file():
            shutil.copy(Path(tokenizer.name_or_path) / name, folder / name)
    return folder


def tiny_generation(folder: Path, key: str) -> Path:
    """A random tiny model of Gemma generation `key` ("gemma3", "gemma4": tests/tiny.py, Gemma 4 in its
    multimodal wrapper) with a byte-level tokenizer that has the generation's turn tokens and shipped chat
    template, saved as a model folder."""
    from tiny import make_generation_tokenizer, make_tiny_generation

    if not (folder / "config.json").exists():
        tokenizer = make_generation_tokenizer(key)
        make_tiny_generation(key, tokenizer).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


def smoke_quotes(path: Path, n: int = SMOKE_QUOTES) -> Path:
    """The first `n` embedded quotes as a .jsonl file: every
    notebook's held-out evaluation stays a few rows."""
    from gemmate_lib.data import load_quotes

    if not path.exists():
        data = load_quotes("embedded")
        rows = (data.train + data.held_out)[:n]
        path.write_text("".join(json.dumps({"quote": r["quote"],
                                            "author": r["author"]}) + "\n" for r in rows))
    return path


def colab_site(folder: Path) -> tuple[str, dict[str, str]]:
    """A Python whose own site-packages stands for Colab's dist-packages: a venv at `folder`, layered on this
    one (a .pth adds this venv's site-packages behind its own), holding Colab's preinstalled packages that
    break the course unless its install cells deal with them. Today one: Colab's torchao (its version from
    tools/environments/colab_snapshot), which peft 0.21 refuses for every LoRA layer on a 16-bit base. pip in
    that Python upgrades and uninstalls there as pip in Colab does in dist-packages, and leaves this venv as
    it is. The wheels come from `make install` (.venv/colab-wheels): the package index is the faked boundary.
    Returns the kernel's Python and its environment."""
    import subprocess
    import sysconfig

    wheels = ROOT / ".venv" / "colab-wheels"
    if not any(wheels.glob("torchao-*.whl")):
        raise RuntimeError(f"no Colab wheels in {wheels}: run `make install`")
    freeze = ROOT / "tools" / "environments" / "colab_snapshot" / "pip-freeze.gpu.txt"
    colab_torchao = next(line.split("==")[1] for line in freeze.read_text().splitlines()
                         if line.startswith("torchao=="))
    shutil.rmtree(folder, ignore_errors=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = str(folder / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "colab-like-runtime.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    env = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels), "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           # llama.cpp's converter stays where `make install` put it (gemmate_lib.export looks in sys.prefix,
           # which is now this venv's): docs/export.md sets the same variable in Colab
           "GEMMATE_CONVERTER": str(Path(sys.prefix) / "llama-convert")}
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", f"torchao=={colab_torchao}"],
                   check=True, env={**os.environ, **env})
    return python, env


def colab_kernel(jupyter_dir: Path, python: str | None = None, env: dict[str, str] | None = None,
                 name: str = "colab-like") -> str:
    """A kernelspec `name` whose kernel starts like Colab's: google.colab imported, Colab's shell class, no
    installed course. Its Python is `python` (colab_site), else GEMMATE_KERNEL_PYTHON (make colab-replica:
    Colab's own packages), else this one; `env` adds to its environment."""
    spec = jupyter_dir / "kernels" / name
    spec.mkdir(parents=True, exist_ok=True)
    start = "import google.colab; from ipykernel.kernelapp import launch_new_instance; launch_new_instance()"
    python = python or os.environ.get("GEMMATE_KERNEL_PYTHON", sys.executable)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [python, "-c", start, "--IPKernelApp.kernel_class=google.colab._kernel.Kernel",
                 "-f", "{connection_file}"],
        "display_name": f"Colab-like ({name})", "language": "python",
        # a PYTHONPATH already set (make gpu-smoke's folder of carried packages) stays behind the runtime
        "env": {"PYTHONPATH": os.pathsep.join(filter(None, [str(RUNTIME), os.environ.get("PYTHONPATH")])),
                **(env or {})}}))
    return name


def run(run_dir: Path, notebooks: list[Path] | None = None, profile: str = "gpu",
        generation: str = "gemma", probes: dict[str, list] | None = None,
        params: dict | None = None, every_branch: bool = True) -> dict[str, dict]:
    """Run every notebook; {name: {"seconds", "status"}}. Stops at the first failure, like `make course`.
    `profile`: GEMMATE_PROFILE for the kernels: "gpu" (the GPU's own precision) or "t4" (fp16, make
    gpu-smoke). `generation`: the tiny model's Gemma generation, "gemma" (Gemma 1 with the embedded
    tokenizer), "gemma3" or "gemma4" (tiny_generation). `probes`: {notebook stem: [(marker, source)]}, cells
    run in its kernel right after its first cell that holds marker (make gpu-smoke's checks, with_cells).
    `params`: values over SMOKE_PARAMS (each notebook gets those it declares). `every_branch`: also
    EVERY_BRANCH's parts and each exercise's printed solution (what the ledger measures)."""

    saved = os.environ.copy()  # the GPU profile is for the notebooks' kernels only: restored at the end
    try:
        with colab_content():
            return _run(run_dir, notebooks, profile, generation, probes or {}, params or {}, every_branch)
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def colab_content():
    """Colab's /content, which the Colab-like kernel's Google Drive stand-in writes into (the course mounts
    Drive at /content/drive): removed afterwards when it was not there before, so that a run leaves this
    machine as it found it."""
    content = Path("/content")
    existed = content.exists()
    try:
        yield
    finally:
        if not existed:
            shutil.rmtree(content, ignore_errors=True)


def _run(run_dir: Path, notebooks: list[Path] | None, profile: str = "gpu",
         generation: str = "gemma", probes: dict[str, list] | None = None,
         extra: dict | None = None, every_branch: bool = True) -> dict[str, dict]:
    import papermill as pm
    from canary import CANARY
    from nbclient.exceptions import DeadKernelError

    run_dir.mkdir(parents=True, exist_ok=True)
    model = (tiny_gemma(run_dir.parent / "tiny-gemma-1") if generation == "gemma"
             else tiny_generation(run_dir.parent / f"tiny-{generation}", generation))
    quotes = smoke_quotes(run_dir.parent / "smoke_quotes.jsonl")
    os.environ.update(JUPYTER_PATH=str(run_dir.parent / "jupyter"), GEMMATE_PROFILE=profile,
                      GEMMATE_SMOKE="1", HF_HUB_OFFLINE="1",
                      HF_DATASETS_OFFLINE="1", COLAB_SIM_SECRET=CANARY,
                      COLAB_SIM_LOG=str(run_dir / "colab.log"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "GEMMATE_RUN_DIR"):
        os.environ.pop(name, None)  # the token comes from the (fake) Colab secret only
    # Colab's preinstalled torchao, unless the kernel is Colab's own set already (make colab-replica) or a
    # bare GPU machine runs it (make gpu-smoke carries no Colab wheels)
    # Colab's preinstalled torchao under the kernel, unless the kernel is Colab's own set already (make
    # colab-replica), a bare GPU machine runs it (make gpu-smoke) or the install cells may not install (make
    # drift): GEMMATE_SMOKE_COLAB_SITE=0
    use_site = "GEMMATE_KERNEL_PYTHON" not in os.environ and os.environ.get("GEMMATE_SMOKE_COLAB_SITE") != "0"
    python, env = colab_site(run_dir.parent / "colab-site") if use_site else (None, {})
    kernel = colab_kernel(run_dir.parent / "jupyter", python, env)
    # every kernel keeps a ledger of the model copies it holds (tools/fit/ledger.py):
    # run_dir/ledger/<notebook>.jsonl
    sys.path.insert(0, str(ROOT))
    from tools.fit.ledger import startup_dir

    os.environ["IPYTHONDIR"] = startup_dir(run_dir.parent / "ipython")
    (run_dir / "ledger").mkdir(exist_ok=True)
    rows = {}
    for nb in notebooks or notebooks_in_order():
        os.environ["GEMMATE_LEDGER"] = str(run_dir / "ledger" / f"{nb.stem}.jsonl")
        declared = set(pm.inspect_notebook(str(nb)))
        given = {**SMOKE_PARAMS, **(EVERY_BRANCH if every_branch else {}), **(extra or {}),
                 "model_name": str(model), "dataset": str(quotes), "run_dir": str(run_dir),
                 "output_dir": str(run_dir / nb.stem)}
        params = {k: v for k, v in given.items() if k in declared}
        if generation != "gemma" and "export_gguf" in params:
            # llama.cpp's converter reads a Gemma's SentencePiece vocabulary, which the tiny byte-level
            # tokenizer of a newer generation does not have: 05's export runs on Gemma 1 (above, make drift)
            # and on the embedded Gemma 3 (nbval); Gemma 4's conversion is tested with a Gemma vocabulary
            # (test_export)
            params["export_gguf"] = False
        if generation != "gemma" and "max_start_loss" in params:
            # tests/tiny.py's newer generations start with large random logits (initializer_range 0.2, so
            # that a LoRA can move them), above a uniform guess: the pre-flight's band of their one-page test
            params["max_start_loss"] = 3.0
        standalone = not nb.name[:2].isdigit()  # the one-page recipe: must run without the course
        if standalone:  # its self-check judges learning with no smoke exception: a tiny random model needs
            params.update(learning_rate=1e-2, warmup_steps=0)  # larger steps to learn measurably in a few
            # a random model starts at a uniform guess, ln(vocabulary size), which the pre-flight refuses
            # for a real base model; and Drive stays off here: the Colab-like runtime's mount writes /content
            params.update(max_start_loss=1.2, keep_on_drive=False)
        start, status = time.time(), "pass"
        try:
            # Gemma 1's every-branch run: every solution too
            last = solutions(nb) if generation == "gemma" and every_branch else None
            cells = {"last": NO_COURSE_PROBE if standalone else last,
                     "after": (probes or {}).get(nb.stem, [])}
            pm.execute_notebook(with_cells(nb, **cells) if any(cells.values()) else str(nb),
                                str(run_dir / nb.name),
                                parameters=params,
                                cwd=str(nb.parent), kernel_name=kernel, progress_bar=False)
        except pm.PapermillExecutionError as err:
            status = f"FAIL at cell {err.exec_count}: {err.ename}: {' '.join(str(err.evalue).split())[:300]}"
        except DeadKernelError:  # the kernel died (a probe killed it, as a reclaimed runtime does)
            status = "kernel died"
        rows[nb.stem] = {"seconds": round(time.time() - start, 1), "status": status}
        print(f"{nb.stem:28} {rows[nb.stem]['seconds']:6.0f} s  {status}", flush=True)
        if status != "pass":
            break
    return rows


if __name__ == "__main__":
    import tempfile

    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()) / "run"
    results = run(target)
    print(f"{sum(r['seconds'] for r in results.values()):.0f} s in all; executed notebooks in {target}")
    sys.exit(0 if all(r["status"] == "pass" for r in results.values())
             and len(results) == len(notebooks_in_order()) else 1)
