"""What each notebook holds at once, against a free Colab T4: the committed measurement
(gemmate_lib/notebook_copies.json, from the smoke run's ledgers), the table generated from it in
docs/full-shape.md and the README, and the fit line every notebook prints before its download. The smoke run
itself (tests/test_learner_path.py) measures the copies again and fails where they grew past what the table
says."""
import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from gemmate_lib import fit
from gemmate_lib.hardware import Precision
from tools.fit import notebook_fit

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
LOADS = ("load_model(", "AutoModelForCausalLM.from_pretrained(", "GemmaTEForCausalLM.from_pretrained(")


def test_every_notebook_was_measured():
    assert set(fit.measured()["notebooks"]) == {nb.stem for nb in NOTEBOOKS}
    assert 0.2e9 < fit.measured()["kernel_bytes"] < 3e9  # a kernel with torch, transformers, a tokenizer


def _cfg(folder, name):
    """What notebook_fit reads of a course config: the model and a T4's compute dtype for it."""
    dtype = torch.float16 if name == "gemma-2b" else torch.float32
    return SimpleNamespace(model=SimpleNamespace(model_name=str(folder)),
                           precision=Precision("cuda", dtype, "a T4"))


@pytest.mark.parametrize("model", list(notebook_fit.MODELS))
def test_each_notebooks_fit_line_says_what_the_table_says(model, tmp_path):
    """The line a notebook prints before its download, for each offered model at its real shape on a free T4,
    agrees with the generated table: fits, fits without its 16/32-bit part, or stops with the fix."""
    from tools.fit.full_shape import config_of

    config_of(model).save_pretrained(tmp_path)  # the config alone, as the notebook reads it before a download
    for row in (r for r in notebook_fit.rows() if r["model"] == model):
        notebook, params = row["notebook"], row["params"]  # a row per optional part: its parameters
        if row["fits"] == "no":
            with pytest.raises(fit.FitError) as err:
                fit.notebook_fit(notebook, _cfg(tmp_path, model), fit.FREE_COLAB, **params)
            assert "L4" in err.value.fix, notebook
            continue
        answer = fit.notebook_fit(notebook, _cfg(tmp_path, model), fit.FREE_COLAB, **params)
        assert answer.whole_copies == (row["fits"] == "yes"), notebook
        expected = ": fits" if row["fits"] == "yes" else f"it fits {row['fits']}"
        assert expected in answer.line, answer.line


def test_gemma_4_e2b_runs_every_notebooks_4_bit_path_on_a_free_t4():
    """The issue this table answers: no notebook's 4-bit path holds more than a T4 has with E2B."""
    found = [r for r in notebook_fit.rows() if r["model"] == "gemma-4-E2B"]
    assert not [r["notebook"] for r in found if r["fits"] == "no" and r["notebook"] != "01_load_4bit"]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_notebook_says_whether_it_fits_before_its_first_load(nb):
    """Each notebook prints its own line (fit.notebook_fit; 00 every notebook's), or, in the
    library-free page, its own arithmetic (gpu_need), in a cell before the first that loads weights."""
    cells = [("".join(c["source"]), c.get("id")) for c in json.loads(nb.read_text())["cells"]
             if c["cell_type"] == "code"]
    marker = "gpu_need" if nb.stem == "qlora_one_runtime" else "fit.notebook_fit("
    said = next((i for i, (source, _) in enumerate(cells) if marker in source), None)
    loads = [i for i, (source, cid) in enumerate(cells) if any(load in source for load in LOADS)
             and not (cid or "").startswith("ex")]
    assert said is not None, f"{nb.name} prints no fit line"
    if nb.stem != "00_setup":
        assert loads and said <= loads[0], f"{nb.name} loads weights in code cell {loads[0]}, before its line"
        source = cells[loads[0]][0]
        if said == loads[0]:  # the same cell: the line comes first
            assert source.index(marker) < min(source.index(x) for x in LOADS if x in source)


def test_a_notebook_that_holds_one_more_copy_is_caught(monkeypatch):
    """The smoke run's check (check_measured): a moment with one more 4-bit copy than committed is a fail."""
    committed = fit.measured()
    grown = json.loads(json.dumps(committed))
    moments = grown["notebooks"]["04_evaluation"]["moments"]
    moments.append({"copies": ["nf4", "nf4"], "loading": 0, "training": False, "cells": ["e28bd195"]})
    problems = notebook_fit.compare(committed, grown)
    assert any("04_evaluation" in p for p in problems)
    assert notebook_fit.compare(committed, committed) == []


def _moments(*moments):
    """A measured-copies document (notebook_copies.json's shape): one notebook, "nb", holding `moments`."""
    return {"kernel_bytes": int(0.6e9), "notebooks": {"nb": {"moments": list(moments),
                                                            "without_whole": "its 16/32-bit part"}}}


@pytest.fixture(scope="module")
def e2b():
    from tools.fit.full_shape import config_of

    return fit.shape_of(config_of("gemma-4-E2B"))


def test_a_whole_e2b_copy_does_not_fit_a_free_t4_and_its_4_bit_path_does(e2b):
    """The verdict itself, on a hand-made measurement (no committed doc): Gemma 4 E2B's 16/32-bit copy (about
    19 GiB in fp32) does not fit a T4's 14 GiB, its 4-bit copy (about 11.4 GiB at its load peak) does; a
    notebook holding both fits without the 16/32-bit part; holding only the whole copy, it does not."""
    whole = {"copies": ["whole"], "loading": 0, "training": False}
    nf4 = {"copies": ["nf4-fp32"], "loading": 0, "training": False}
    trains = {"copies": ["nf4-fp32"], "loading": None, "training": True}
    need = fit.notebook_need("nb", e2b, 4, _moments(whole, nf4, trains))
    assert need.gpu > fit.FREE_COLAB["gpu_bytes"] > need.gpu_without_whole > 10 * fit.GIB
    assert fit.fit_answer(need) == "without its 16/32-bit part"
    assert fit.fit_answer(fit.notebook_need("nb", e2b, 4, _moments(nf4, trains))) == "yes"
    assert fit.fit_answer(fit.notebook_need("nb", e2b, 4, _moments(whole))) == "no"
    two = {"copies": ["nf4-fp32", "nf4-fp32"], "loading": 0, "training": False}  # a second 4-bit copy beside
    assert fit.fit_answer(fit.notebook_need("nb", e2b, 4, _moments(two))) == "no"


def test_the_verdict_turns_at_the_runtimes_limits():
    """At the limit fits, a byte over does not: on the GPU and in RAM, each on its own."""
    need = fit.NotebookNeed(copies=1, gpu=10.0, ram=5.0, gpu_without_whole=4.0, ram_without_whole=2.0,
                            without_whole="")
    runtime = {"gpu": "T4", "gpu_bytes": 10.0, "ram_bytes": 5.0, "disk_bytes": 1e12}
    assert fit.fit_answer(need, runtime) == "yes"
    assert fit.fit_answer(need, {**runtime, "gpu_bytes": 9.9}) == "no"
    assert fit.fit_answer(need, {**runtime, "ram_bytes": 4.9}) == "no"
    assert fit.fit_answer(need, {**runtime, "gpu_bytes": None}) == "yes"  # a CPU: RAM decides alone
    partial = fit.NotebookNeed(1, 10.0, 5.0, 4.0, 2.0, "the merge")
    assert fit.fit_answer(partial, {**runtime, "gpu_bytes": 9.9}) == "without the merge"
    assert fit.fit_answer(partial, {**runtime, "gpu_bytes": 3.9}) == "no"
    assert fit.fit_answer(partial, {**runtime, "gpu_bytes": 9.9, "ram_bytes": 1.9}) == "no"


def test_an_optional_part_counts_only_when_the_parameters_run_it(e2b):
    """03's part 2 holds a 16/32-bit arm: with compare=False the notebook fits E2B on a T4 whole; with
    compare=True it fits without section 7. An exercise's solution counts only for that exercise."""
    base = {"copies": ["nf4-fp32"], "loading": 0, "training": False}
    arm = {"copies": ["whole"], "loading": 0, "training": False, "part": "compare"}
    solution = {"copies": ["nf4-fp32", "nf4-fp32"], "loading": 0, "training": False, "part": "exercise 05-2"}
    data = _moments(base, arm, solution)
    assert fit.parts_of("03_lora_sft", {"compare": False, "chat_steps": None}) == frozenset()
    assert fit.parts_of("03_lora_sft", {"compare": True}) == {"compare", "chat"}
    assert fit.parts_of("03_lora_sft", {"compare": True, "chat_steps": 0}) == {"compare"}
    assert fit.parts_of("05_save_and_push", {"export_gguf": True}) == {"export_gguf"}
    assert fit.fit_answer(fit.notebook_need("nb", e2b, 4, data)) == "yes"
    compare = fit.notebook_need("nb", e2b, 4, data, parts=frozenset({"compare"}))
    assert fit.fit_answer(compare).startswith("without")
    assert fit.fit_answer(fit.notebook_need("nb", e2b, 4, data, parts=frozenset({"exercise 05-2"}))) == "no"


def test_a_moment_with_a_child_process_adds_the_childs_own_memory(e2b):
    """05's reload in a fresh process: the child's Python and libraries are RAM on top of the copy."""
    kernel = {"copies": ["nf4-fp32"], "loading": 0, "training": False}
    child = {**kernel, "child": True}
    alone = fit.moment_need(kernel, e2b, 4, _moments(kernel))
    with_child = fit.moment_need(child, e2b, 4, _moments(child))
    assert with_child["ram"] - alone["ram"] == pytest.approx(fit.LOAD_BASELINE)
    assert with_child["gpu"] == alone["gpu"]


def _nbval(notebook: Path, ipython_dir: Path | None) -> subprocess.CompletedProcess:
    import os
    import sys

    env = {**os.environ, "IPYTHONDIR": str(ipython_dir)} if ipython_dir else dict(os.environ)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "--nbval-lax", "-p", "no:cacheprovider",
                           str(notebook)], capture_output=True, text=True, env=env, cwd=notebook.parent)


@pytest.mark.slow
@pytest.mark.maintainer  # make test-tools; make test keeps a cheaper test of it (CONTRIBUTING.md)
def test_nbval_on_a_faked_machine_fails_a_checked_cell_that_prints_the_machines_ram(tmp_path):
    """make nbval's kernels start on another machine (tests/fake_machine.py: RAM, free disk, cores): a checked
    cell whose committed output holds this machine's RAM (as 06's fit line did) fails there, while a checked
    cell whose output no machine changes passes; without the fake both pass on this machine."""
    import fake_machine
    import nbformat
    from nbclient import NotebookClient

    from tools.fit.ledger import startup_dir

    def checked(source):
        cell = nbformat.v4.new_code_cell(source)
        cell.metadata["tags"] = ["nbval-check-output"]
        return cell

    ram = "import os\nprint(os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') // 10**9)"
    cores = "import os\nprint(os.cpu_count())"
    disk = "import shutil\nprint(shutil.disk_usage('.').free // 10**9)"
    cases = (("ram", ram, True), ("cores", cores, True), ("disk", disk, True),
             ("plain", "print(6 * 7)", False))
    for name, source, fails in cases:
        node = nbformat.v4.new_notebook(cells=[checked(source)])
        NotebookClient(node, kernel_name="python3").execute()  # the committed output: this machine's
        path = tmp_path / f"{name}.ipynb"
        nbformat.write(node, path)
        assert _nbval(path, None).returncode == 0
        faked = _nbval(path, Path(fake_machine.startup_dir(startup_dir(tmp_path / f"ipython-{name}"))))
        assert (faked.returncode != 0) == fails, faked.stdout[-2000:]


@pytest.mark.after_nbval
def test_nbval_ran_every_notebook_on_the_faked_machine_within_the_committed_copies():
    """make nbval's run: each notebook's kernel had the faked machine (its mark beside the kernel's ledger),
    and held no more model copies at once than the committed measurement says for the parts it ran."""
    from nbval_run import run_folder, wait_for

    wait_for()  # in make nbval's session: every notebook has ended
    run = run_folder()
    found = notebook_fit.ledgers(run)
    assert sorted(stem for stem, _ in found) == sorted(nb.stem for nb in NOTEBOOKS)
    faked = {p.name.rsplit("-", 1)[1] for p in (run / "ledger").glob("fake-machine-*")}
    assert {ledger.stem.rsplit("-", 1)[1] for _, ledger in found} <= faked
    assert notebook_fit.check_run(run) == []


def test_the_whole_line_names_the_parts_the_runtime_and_the_peak(tmp_path):
    from tools.fit.full_shape import config_of

    config_of("gemma-2b").save_pretrained(tmp_path)
    cfg = _cfg(tmp_path, "gemma-2b")
    need = fit.notebook_need("03_lora_sft", fit.shape_of(config_of("gemma-2b")), 2,
                             parts=frozenset({"compare", "chat"}))
    answer = fit.notebook_fit("03_lora_sft", cfg, fit.FREE_COLAB, compare=True, chat_steps=None)
    copies = f"{need.copies} model cop{'y' if need.copies == 1 else 'ies'}"
    start = (f"03_lora_sft with part 2 (compare=True), the chat run (chat_steps), {tmp_path} on T4 "
             f"(14.0 GiB): at most {copies} at once")
    if answer.whole_copies:
        assert answer.line == (f"{start}, peak about {need.gpu / fit.GIB:.1f} GiB of GPU memory and "
                               f"{need.ram / 1e9:.1f} GB of RAM (estimates): fits")
    else:
        assert answer.line.startswith(f"{start}; ") and f"fits without {need.without_whole}" in answer.line
        assert f"peak about {need.gpu_without_whole / fit.GIB:.1f} GiB" in answer.line
    assert answer.need == need and answer.runtime == fit.FREE_COLAB
    plain = fit.notebook_fit("03_lora_sft", cfg, fit.FREE_COLAB, compare=False, chat_steps=0)
    assert plain.line.startswith(f"03_lora_sft, {tmp_path} on T4 (14.0 GiB): at most 1 model copy at once")


def test_on_a_cpu_the_copies_live_in_ram_and_the_line_names_no_gpu(tmp_path):
    from tools.fit.full_shape import config_of

    config_of("gemma-3-1b-pt").save_pretrained(tmp_path)
    cfg = SimpleNamespace(model=SimpleNamespace(model_name=str(tmp_path)),
                          precision=Precision("cpu", torch.float32, "fp32 on this CPU"))
    shape = fit.shape_of(config_of("gemma-3-1b-pt"))
    need = fit.notebook_need("04_evaluation", shape, 4, cpu=True)
    assert need.gpu == 0.0 and need.ram > fit.notebook_need("04_evaluation", shape, 4).ram
    roomy = {"gpu": "T4", "gpu_bytes": 1.0, "ram_bytes": need.ram, "disk_bytes": 1e12}  # its GPU is not used
    answer = fit.notebook_fit("04_evaluation", cfg, roomy)
    assert answer.line == (f"04_evaluation, {tmp_path} on this CPU: at most {need.copies} model "
                           f"cop{'y' if need.copies == 1 else 'ies'} at once, peak about "
                           f"{need.ram / 1e9:.1f} GB of RAM (estimates): fits")
    assert answer.runtime["gpu_bytes"] is None
    with pytest.raises(fit.FitError):
        fit.notebook_fit("04_evaluation", cfg, {**roomy, "ram_bytes": need.ram - 1})


def test_a_gated_models_config_is_read_with_the_learners_token(tmp_path, monkeypatch):
    from transformers import AutoConfig

    from tools.fit.full_shape import config_of

    asked = []
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr(AutoConfig, "from_pretrained",
                        lambda where, **kwargs: asked.append((where, kwargs)) or config_of("gemma-2b"))
    cfg = SimpleNamespace(model=SimpleNamespace(model_name="google/gemma-2b"),
                          precision=Precision("cuda", torch.float16, "a T4"))
    fit.notebook_fit("04_evaluation", cfg, fit.FREE_COLAB)
    assert asked == [("google/gemma-2b", {"token": "hf_not_a_real_token"})]


def test_the_line_counts_copies_and_is_what_an_out_of_memory_message_quotes(tmp_path, monkeypatch, e2b):
    """On a hand-made measurement of E2B on a free T4: two 4-bit copies at once stop the notebook with its
    figures; a 16/32-bit part beside the 4-bit path is left out with the estimate it was judged on; and the
    last line computed is the one an out-of-memory error quotes."""
    from gemmate_lib.guard_rails.errors import LAST_FIT, out_of_memory_error
    from tools.fit.full_shape import config_of

    config_of("gemma-4-E2B").save_pretrained(tmp_path)
    cfg = _cfg(tmp_path, "gemma-4-E2B")
    whole = {"copies": ["whole"], "loading": 0, "training": False}
    nf4 = {"copies": ["nf4-fp32"], "loading": 0, "training": False}
    two = {"copies": ["nf4-fp32", "nf4-fp32"], "loading": 0, "training": False}  # the load peak
    data = _moments(whole, nf4)
    data["notebooks"]["two"] = {"moments": [two]}
    monkeypatch.setattr(fit, "measured", lambda: data)
    try:
        answer = fit.notebook_fit("nb", cfg, fit.FREE_COLAB)
        assert not answer.whole_copies and "fits without its 16/32-bit part" in answer.line
        assert answer.need == fit.notebook_need("nb", e2b, 4, data) and answer.runtime == fit.FREE_COLAB
        with pytest.raises(fit.FitError) as err:
            fit.notebook_fit("two", cfg, fit.FREE_COLAB)
        assert "at most 2 model copies at once" in str(err.value) and "will not fit" in str(err.value)
        roomy = {**fit.FREE_COLAB, "gpu_bytes": 1e15, "ram_bytes": 1e15}
        line = fit.notebook_fit("two", cfg, roomy).line
        assert line.endswith("(estimates): fits") and LAST_FIT["line"] == line.removesuffix(": fits")
        said = out_of_memory_error("a training step", torch.OutOfMemoryError("CUDA out of memory"))
        assert said.problem.endswith(f"the course estimated: {line.removesuffix(': fits')}")
    finally:
        LAST_FIT.clear()
