"""The one-page recipe, notebooks/qlora_one_runtime.ipynb: the whole QLoRA recipe with every value a literal.

Its T4 values are the course's GPU profile (gemmate_lib.config: SEED_QLORA over the settings' defaults),
read from its `parameters` cell, so the two cannot drift apart; its pins are requirements.txt's; no line of
it imports the course. `make course`, nbval and the smoke run execute it (tools/course.py,
tests/learner_path.py).
"""
import ast
import json
import re
from pathlib import Path

import papermill as pm
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "notebooks" / "qlora_one_runtime.ipynb"
# the page's parameter -> the course settings that hold the same value in the GPU profile
SAME_AS = {
    "model_name": ("model_name",), "dataset": ("dataset",), "max_steps": ("max_steps",),
    "batch_size": ("batch_size",), "gradient_accumulation_steps": ("gradient_accumulation_steps",),
    "learning_rate": ("learning_rate",), "warmup_steps": ("warmup_steps",), "optim": ("optim",),
    "gradient_checkpointing": ("gradient_checkpointing",), "logging_steps": ("steps_freq",),
    "eval_steps": ("val_steps_freq",), "max_length": ("max_length",), "lora_r": ("lora_r",),
    "lora_alpha": ("lora_alpha",), "lora_dropout": ("lora_dropout",),
    "lora_target_modules": ("lora_target_modules",), "eval_fraction": ("eval_fraction",),
    "seed": ("seed", "data_seed"),  # one seed on the page: the split, LoRA's initialization, the batch order
    "max_new_tokens": ("max_new_tokens",),
}
PAGE_ONLY = {"output_dir", "push_repo_id"}  # where the run goes: nothing the profile sets


def code_cells() -> list[dict]:
    return [c for c in json.loads(PAGE.read_text())["cells"] if c["cell_type"] == "code"]


def tagged(tag: str) -> list[dict]:
    return [c for c in code_cells() if tag in c["metadata"].get("tags", [])]


def literals(source: str) -> dict:
    """{name: value} of every assignment of literals in `source` (`a, b = 1, 2` too), at any depth."""
    found = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            if isinstance(target, ast.Name):
                pairs = [(target, node.value)]
            elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                pairs = list(zip(target.elts, node.value.elts))
            else:
                continue
            for name, value in pairs:
                try:
                    found[name.id] = ast.literal_eval(value)
                except ValueError:
                    pass  # not a literal (e.g. os.path.join(...))
    return found


def page_parameters() -> dict:
    [cell] = tagged("parameters")
    return literals("".join(cell["source"]))


def gpu_profile(monkeypatch):
    """The course's GPU profile with a token: google/gemma-2b, Abirate/english_quotes, SEED_QLORA's values."""
    from gemmate_lib.config import course_config

    monkeypatch.setenv("GEMMATE_PROFILE", "gpu")
    monkeypatch.setattr("gemmate_lib.hf_token.get_token", lambda: "a token")
    cfg = course_config()
    assert cfg.profile.startswith("gpu") and cfg.model.quantization == "nf4"  # the page's 4-bit base
    return cfg


def differences(page: dict, cfg) -> list[str]:
    out = []
    for name, settings in SAME_AS.items():
        for setting in settings:
            course = cfg.get(setting)
            if (list(course) if isinstance(course, tuple) else course) != page.get(name):
                out.append(f"{name}={page.get(name)!r} on the page, {setting}={course!r} in the GPU profile")
    return out


def test_the_page_sorts_apart_from_the_ordered_notebooks_and_has_one_parameters_cell():
    assert PAGE.exists() and not re.match(r"\d\d_", PAGE.name)
    assert len(tagged("parameters")) == 1
    cells = code_cells()
    assert "parameters" in cells[1]["metadata"]["tags"]  # right after the install cell


def test_every_value_of_the_page_has_a_course_setting_or_is_the_pages_own():
    assert set(page_parameters()) == set(SAME_AS) | PAGE_ONLY
    assert page_parameters()["push_repo_id"] is None  # no push unless asked for


def test_the_pages_t4_values_are_the_courses_gpu_profile(monkeypatch):
    assert differences(page_parameters(), gpu_profile(monkeypatch)) == []


def test_an_edit_on_either_side_fails_the_comparison(monkeypatch):
    import gemmate_lib.config as config

    page = page_parameters()
    edited = {**page, "max_steps": page["max_steps"] + 1, "lora_target_modules": ["q_proj", "v_proj"]}
    found = differences(edited, gpu_profile(monkeypatch))
    assert len(found) == 2 and found[0].startswith("max_steps=")
    monkeypatch.setitem(config.SEED_QLORA, "val_steps_freq", 50)  # the profile changes, the page does not
    assert differences(page, gpu_profile(monkeypatch)) == [
        "eval_steps=25 on the page, val_steps_freq=50 in the GPU profile"]


def test_no_line_of_the_page_imports_or_names_the_course():
    for cell in code_cells():
        source = "".join(cell["source"])
        assert "gemmate_lib" not in source, source[:200]
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "gemmate_lib" for a in node.names)
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "gemmate_lib"


def test_the_install_cell_pins_what_the_colab_requirements_pin_never_torch_and_runs_only_in_colab():
    from gemmate_lib.colab import pins

    install = "".join(code_cells()[0]["source"])
    page_pins = literals(install)["PINS"]
    pinned = pins(ROOT / "requirements-colab.txt")  # the course's Colab pins (torchao among them)
    assert {name: pinned[name.replace("_", "-")] for name in page_pins} == page_pins
    needed = {"transformers", "trl", "peft", "bitsandbytes", "datasets", "accelerate", "huggingface_hub",
              "torchao"}
    assert needed <= set(page_pins)
    assert "torch" not in page_pins and 'if "google.colab" in sys.modules:' in install


def test_the_cpu_stand_in_uses_the_steps_that_make_course_passes():
    """Without a GPU and offline (nbval, make notebooks) the cell after the parameters swaps in what
    tools/course.py passes to `make course`, so the committed outputs and `make course` run alike."""
    from tools.course import ONE_PAGE, ONE_PAGE_CPU

    assert ONE_PAGE == PAGE.name
    stand_in = "".join(code_cells()[2]["source"])
    assert "nbval-check-output" in code_cells()[2]["metadata"]["tags"]
    assert "torch.cuda.is_available()" in stand_in and "is_offline_mode()" in stand_in
    values = literals(stand_in)
    assert {k: values[k] for k in ONE_PAGE_CPU} == ONE_PAGE_CPU
    assert set(ONE_PAGE_CPU) <= set(page_parameters())


def test_make_course_runs_the_page_last_with_cpu_parameters_offline(tmp_path):
    from tools.course import ONE_PAGE_CPU, course_notebooks, notebook_parameters, one_page_parameters

    notebooks = course_notebooks(ROOT)
    assert notebooks[-1] == PAGE and [p.name[:2] for p in notebooks[:-1]] == [f"0{i}" for i in range(8)]
    offline = one_page_parameters(tmp_path / "model", tmp_path / "run", offline=True)
    assert offline["model_name"] == str(tmp_path / "model") and offline["dataset"].endswith(".jsonl")
    assert {k: offline[k] for k in ONE_PAGE_CPU} == ONE_PAGE_CPU
    assert offline["output_dir"] == str(tmp_path / "run" / "qlora_one_runtime")
    assert one_page_parameters(tmp_path / "model", tmp_path / "run", offline=False) == {
        "output_dir": str(tmp_path / "run" / "qlora_one_runtime")}
    # a params file reaches the page by the same names as the ordered notebooks
    assert notebook_parameters(notebooks, str(ROOT / "params" / "gpu.yaml"))[PAGE.name] == {
        "model_name": "google/gemma-2b", "dataset": "Abirate/english_quotes", "max_steps": 100}
    assert set(pm.inspect_notebook(str(PAGE))) == set(SAME_AS) | PAGE_ONLY


def test_the_quotes_file_has_the_hub_datasets_columns(tmp_path, monkeypatch):
    from tools.course import prepare_one_page_data

    monkeypatch.setenv("GEMMATE_CACHE", str(tmp_path))
    rows = [json.loads(line) for line in prepare_one_page_data().read_text().splitlines()]
    assert len(rows) > 300 and all(set(r) == {"quote", "author", "tags"} for r in rows)


def test_make_drift_and_the_smoke_run_find_the_page_by_its_name():
    from learner_path import notebooks_in_order

    from tools.drift import one_page_notebooks

    assert one_page_notebooks() == [PAGE]

    assert notebooks_in_order()[-1] == PAGE and len(notebooks_in_order()) == 9


def test_the_page_stays_a_page():
    cells = json.loads(PAGE.read_text())["cells"]
    text = " ".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    assert len(text.split()) < 1400
    assert "**Runtime**:" in "".join(cells[0]["source"])
    badge = "https://colab.research.google.com/github/gemmate-course/gemmate/blob/main/notebooks/" + PAGE.name
    assert badge in "".join(cells[0]["source"])


def test_the_pages_perplexity_lines_count_what_the_librarys_held_out_loss_counts(tiny_model, tiny_tokenizer):
    """The page's few visible lines (the model's own loss, padding excluded, text + EOS) equal 04's."""
    import torch
    from tiny import ROWS

    from gemmate_lib.evaluation import held_out_loss

    cell = next("".join(c["source"]) for c in code_cells() if "def held_out_loss" in "".join(c["source"]))
    [page_fn] = [node for node in ast.parse(cell).body
                 if isinstance(node, ast.FunctionDef) and node.name == "held_out_loss"]
    namespace = {"torch": torch, "tokenizer": tiny_tokenizer}
    exec(compile(ast.Module([page_fn], type_ignores=[]), str(PAGE), "exec"), namespace)
    texts = [row["text"] for row in ROWS]
    page = namespace["held_out_loss"](tiny_model, texts, batch_size=3)  # two batches, one of them padded
    assert page == pytest.approx(held_out_loss(tiny_model, tiny_tokenizer, ROWS), rel=1e-5)


def test_the_install_cell_holds_colabs_torch_and_brings_what_differs(monkeypatch):
    """In Colab the cell installs only the pins that differ (Colab's torchao among them) and holds torch at
    the runtime's build with a constraints file, so pip can never replace it."""
    import subprocess
    import sys
    import types

    import torch

    seen = {}

    def pip(cmd, **kwargs):
        seen["cmd"] = cmd
        seen["held"] = Path(cmd[cmd.index("-c") + 1]).read_text() if "-c" in cmd else ""
        return types.SimpleNamespace(returncode=0)

    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(subprocess, "run", pip)
    exec("".join(code_cells()[0]["source"]), {})
    installs = [arg for arg in seen["cmd"] if "==" in arg]
    assert "torchao==0.17.0" in installs and not any(a.startswith("torch==") for a in installs)
    assert f"torch=={torch.__version__}" in seen["held"].split()
