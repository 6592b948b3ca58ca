"""The one-page recipe, notebooks/qlora_one_runtime.ipynb: the whole QLoRA recipe with every value a literal.

Its T4 values are the course's GPU profile (gemmate_lib.config: SEED_QLORA over the settings' defaults),
read from its `parameters` cell, so the two cannot drift apart; its pins are requirements.txt's; no line of
it imports the course. `make course`, `make notebooks`, nbval and the smoke run execute it with papermill
parameters (tools/runners/course.py, tests/learner_path.py); the page itself holds only the learner's values.
"""
import ast
import functools
import json
import os
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
# where the run goes and what the page alone does: nothing the profile sets
PAGE_ONLY = {"output_dir", "push_repo_id", "keep_on_drive", "max_start_loss", "save_merged", "save_steps",
             "chat_steps", "share_prompts"}


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
    monkeypatch.setattr("gemmate_lib.guard_rails.hf_token.get_token", lambda: "a token")
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
    assert page_parameters()["keep_on_drive"] is True  # the adapter outlives the Colab runtime unless off
    assert page_parameters()["save_merged"] is False  # the merged model: several GB, only when asked for


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
    from gemmate_lib.guard_rails.colab import pins

    install = "".join(code_cells()[0]["source"])
    page_pins = literals(install)["PINS"]
    pinned = pins(ROOT / "requirements-colab.txt")  # the course's Colab pins (torchao among them)
    assert {name: pinned[name.replace("_", "-")] for name in page_pins} == page_pins
    needed = {"transformers", "trl", "peft", "bitsandbytes", "datasets", "accelerate", "huggingface_hub",
              "torchao"}
    assert needed <= set(page_pins)
    assert "torch" not in page_pins and 'if "google.colab" in sys.modules:' in install


def test_no_cell_but_the_parameters_cell_assigns_a_parameter_and_none_reads_the_courses_machine():
    """The course's offline values reach the page as papermill parameters only (tools/runners/course.py: make
    course, make notebooks, nbval, make lab's and make lab-check's copy); the committed page has no
    injected-parameters cell that a learner in Colab would run, no cell but the parameters cell assigns a
    parameter, and no line reads the course's machine (its cache, its settings): the token cell used to switch
    to the course's offline copies when $GEMMATE_CACHE held them."""
    cells = json.loads(PAGE.read_text())["cells"]
    assert not [c for c in cells if "injected-parameters" in c["metadata"].get("tags", [])]
    names = set(page_parameters())
    for cell in code_cells():
        if "parameters" in cell["metadata"].get("tags", []):
            continue
        source = "".join(cell["source"])
        tree = ast.parse(source)
        stores = [n for n in ast.walk(tree) if isinstance(n, (ast.Assign, ast.AugAssign, ast.AnnAssign))]
        assigned = {t.id for node in stores
                    for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
                    for t in ast.walk(target) if isinstance(t, ast.Name)}
        assert not assigned & names, (assigned & names, source[:200])
    source = "".join("".join(c["source"]) for c in cells)
    for machinery in ("is_offline_mode", "make embedded", "make lab", "GEMMATE_", "english_quotes_embedded",
                      ".cache/gemmate", "gemma-3-270m"):
        assert machinery not in source, machinery


def _parameters_notebook(path: Path) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                           "display_name": "Python 3"}})
    nb.cells = [nbformat.v4.new_code_cell("steps = 100  # the learner's value"),
                nbformat.v4.new_code_cell("print('steps:', steps)")]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_make_notebooks_runs_the_page_with_the_parameters_and_commits_it_without_them(tmp_path):
    """`make notebooks` (execute_in_place) runs a page with the offline parameters, keeps the outputs of
    that run, and writes it back without papermill's injected cell: its parameters cell keeps the learner's
    value."""
    from tools.runners.course import execute_in_place

    path = _parameters_notebook(tmp_path / "page.ipynb")
    execute_in_place(path, tmp_path / "run", {"steps": 3})
    cells = json.loads(path.read_text())["cells"]
    assert len(cells) == 2 and "steps = 100" in "".join(cells[0]["source"])
    assert "".join(cells[1]["outputs"][0]["text"]) == "steps: 3\n"
    assert "papermill" not in json.loads(path.read_text())["metadata"]


def test_nbval_gets_a_copy_with_the_committed_outputs_and_the_offline_parameters(tmp_path):
    """nbval cannot pass parameters: make nbval runs a copy that carries them, with the outputs to compare."""
    from tools.runners.course import ONE_PAGE_CPU, nbval_copy

    copy = json.loads(nbval_copy(tmp_path / "nbval", tmp_path / "model", tmp_path / "nbval").read_text())
    committed = json.loads(PAGE.read_text())["cells"]
    def tagged_with(tag, cells):
        return [i for i, c in enumerate(cells) if tag in c["metadata"].get("tags", [])]

    injected = tagged_with("injected-parameters", copy["cells"])
    assert injected == [1 + tagged_with("parameters", committed)[0]]
    values = literals("".join(copy["cells"][injected[0]]["source"]))
    assert values["model_name"] == str(tmp_path / "model") and values["dataset"].endswith(".jsonl")
    assert {k: values[k] for k in ONE_PAGE_CPU} == ONE_PAGE_CPU
    rest = copy["cells"][:injected[0]] + copy["cells"][injected[0] + 1:]
    assert [c.get("outputs") for c in rest] == [c.get("outputs") for c in committed]


def test_make_nbval_checks_every_notebook_once_and_the_page_as_its_parameterized_copy(makefile=None):
    """What `make nbval` would run (make's dry run): the nbval command collects each course notebook exactly
    once; the one-page notebook only as the copy that `tools.runners.course --nbval-copy DIR` writes (its
    offline parameters injected), never the committed page, which nbval would run on gemma-2b."""
    from make_dry_run import make_commands

    from tools.runners.course import course_notebooks

    commands = make_commands("nbval", makefile)
    [copy_dir] = [Path(args[args.index("--nbval-copy") + 1]) for args in commands if "--nbval-copy" in args]
    [nbval] = [args for args in commands if "--nbval-lax" in args or "--nbval" in args]
    collected = [Path(p).resolve().relative_to(ROOT) for a in nbval if a.endswith(".ipynb")
                 for p in (sorted(ROOT.glob(a)) if "*" in a or "[" in a else [ROOT / a])]
    assert sorted(p.name for p in collected) == sorted(p.name for p in course_notebooks(ROOT))
    assert PAGE.relative_to(ROOT) not in collected
    assert (ROOT / copy_dir / PAGE.name).resolve().relative_to(ROOT) in collected


def test_make_course_runs_the_page_last_with_cpu_parameters_offline(tmp_path):
    from tools.runners.course import ONE_PAGE_CPU, course_notebooks, notebook_parameters, one_page_parameters

    notebooks = course_notebooks(ROOT)
    assert notebooks[-1] == PAGE and [p.name[:2] for p in notebooks[:-1]] == [f"0{i}" for i in range(8)]
    offline = one_page_parameters(tmp_path / "model", tmp_path / "run", offline=True)
    assert offline["model_name"] == str(tmp_path / "model") and offline["dataset"].endswith(".jsonl")
    assert {k: offline[k] for k in ONE_PAGE_CPU} == ONE_PAGE_CPU
    assert offline["output_dir"] == str(tmp_path / "run" / "qlora_one_runtime")
    assert set(offline) <= set(page_parameters())  # every offline value is one of the page's parameters
    assert one_page_parameters(tmp_path / "model", tmp_path / "run", offline=False) == {
        "output_dir": str(tmp_path / "run" / "qlora_one_runtime")}
    # from the folder its kernel starts in: the page prints where it saved, and the committed outputs showed
    # this machine's folder (/work/...) after make notebooks
    started = one_page_parameters(tmp_path / "model", tmp_path / "run", offline=False, start=tmp_path / "nb")
    assert started["output_dir"] == os.path.join("..", "run", "qlora_one_runtime")
    # a params file reaches the page by the same names as the ordered notebooks
    assert notebook_parameters(notebooks, str(ROOT / "params" / "gpu.yaml"))[PAGE.name] == {
        "model_name": "google/gemma-2b", "dataset": "Abirate/english_quotes", "max_steps": 100}
    assert set(pm.inspect_notebook(str(PAGE))) == set(SAME_AS) | PAGE_ONLY


def test_the_quotes_file_has_the_hub_datasets_columns(tmp_path, monkeypatch):
    from tools.runners.course import prepare_one_page_data

    monkeypatch.setenv("GEMMATE_CACHE", str(tmp_path))
    rows = [json.loads(line) for line in prepare_one_page_data().read_text().splitlines()]
    assert len(rows) > 300 and all(set(r) == {"quote", "author", "tags"} for r in rows)


def test_make_drift_and_the_smoke_run_find_the_page_by_its_name():
    from learner_path import notebooks_in_order

    from tools.environments.drift import one_page_notebooks

    assert one_page_notebooks() == [PAGE]

    assert notebooks_in_order()[-1] == PAGE and len(notebooks_in_order()) == 9


def test_the_page_stays_a_page_and_its_badge_opens_it_from_the_courses_repository():
    from tools.runners.timings import badge

    cells = json.loads(PAGE.read_text())["cells"]
    text = " ".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    assert len(text.split()) < 1650  # three sections more than the 1,400 it held before (own data, chat)
    intro = "".join(cells[0]["source"])
    assert "**Runtime**:" in intro
    # kept by hand: no measured time, which the next run of the page would leave stale
    runtime = next(line for line in intro.splitlines() if line.startswith("**Runtime**:"))
    assert not re.search(r"\d+ min \d+ s|measured|\d{4}-\d\d-\d\d", runtime), runtime
    assert badge(PAGE.name) in intro  # colab.COURSE_REPO's copy of this page (a fork's, once it sets its own)


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
    per_token, per_batch = namespace["held_out_loss"](tiny_model, texts, batch_size=3)  # 2 batches, 1 padded
    assert per_token == pytest.approx(held_out_loss(tiny_model, tiny_tokenizer, ROWS), rel=1e-5)
    assert per_batch != pytest.approx(per_token, rel=1e-6)  # the trainer's way weighs the tokens otherwise


def _cell(marker: str) -> str:
    return next("".join(c["source"]) for c in code_cells() if marker in "".join(c["source"]))


@functools.cache
def _stop_class():
    """The page's Stop, defined in its install cell: every stop on the page raises it (one class per run, so
    that `pytest.raises` catches what a cell raises)."""
    source = "".join(code_cells()[0]["source"])
    [stop] = [n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "Stop"]
    namespace = {}
    exec(compile(ast.Module([stop], type_ignores=[]), str(PAGE), "exec"), namespace)
    return namespace["Stop"]


def test_every_stop_on_the_page_is_one_line_in_jupyter_and_an_error_for_papermill_and_lab_check(tmp_path):
    """A `raise SystemExit` in a cell added IPython's "To exit: use 'exit', 'quit', or Ctrl-D." under the
    message, and a RuntimeError a traceback. The page's Stop shows one line (its `_render_traceback_`), and a
    kernel still reports it as an error: papermill stops there and make lab-check reads it as FAIL."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    from tools.environments.lab_check import outcome_of

    for cell in code_cells():
        source = "".join(cell["source"])
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Raise):  # every stop raises Stop(...)
                assert ast.get_source_segment(source, node).startswith("raise Stop("), source[:200]
    stop = _stop_class()
    assert stop("what went wrong. Fix: this")._render_traceback_() == ["Stop: what went wrong. Fix: this"]

    install = "".join(code_cells()[0]["source"])
    [definition] = [n for n in ast.parse(install).body if isinstance(n, ast.ClassDef) and n.name == "Stop"]
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(ast.get_source_segment(install, definition)),
        nbformat.v4.new_code_cell('raise Stop("google/gemma-2b is gated. Fix: add your token")'),
        nbformat.v4.new_code_cell("print('self-check: all 1 passed')")])
    with pytest.raises(CellExecutionError):
        NotebookClient(nb, kernel_name="python3", timeout=60, resources={"metadata": {"path": str(tmp_path)}}
                       ).execute()
    [error] = nb.cells[1].outputs
    assert error["output_type"] == "error" and error["ename"] == "Stop"
    # one line: no traceback, no "To exit" warning
    assert error["traceback"] == ["Stop: google/gemma-2b is gated. Fix: add your token"]
    result = outcome_of(nb)
    assert not result.passed
    assert result.detail == "cell 2 (raise Stop(\"google/gemma-2b is gated. Fix: add your token\")): Stop: " \
                            "google/gemma-2b is gated. Fix: add your token"


TRICKY_ROWS = [  # what the page's filter must treat as 03's does (gemmate_lib.data.clean_rows)
    {"quote": "\u201cBe yourself; everyone else is already taken.\u201d", "author": "Oscar Wilde"},
    {"quote": "Be yourself; everyone else is already taken.", "author": "Oscar Wilde,"},  # exact repeat
    {"quote": "BE YOURSELF - everyone else is already taken!", "author": "O. Wilde"},  # case and punctuation
    {"quote": "Don\u2019t count the days, make the days count", "author": "Muhammad Ali, boxer"},
    {"quote": "don't count the days; make the days count.", "author": "Ali"},  # a typographic apostrophe
    {"quote": "I never think of the future", "author": "it comes soon enough."},  # the quote's end
    {"quote": "Knowing is not enough", "author": "bell hooks"},  # a lowercase name stays
    {"quote": "\u201cAn opening mark never closed", "author": "Anon."},
    {"quote": "A closing mark never opened\u201d", "author": "J. R. R. Tolkien."},
    {"quote": "Quote: a marker inside", "author": "X"},
    {"quote": "two\nlines", "author": "Y"},
    {"quote": "   ", "author": "Z"},
    {"quote": "Stay hungry, stay foolish", "author": "Steve J."},  # an initial keeps its period
    {"quote": "Simplicity is the ultimate sophistication", "author": ""},
]


@pytest.mark.parametrize("source", ["embedded", "tricky rows"])
def test_the_pages_data_cell_keeps_and_splits_the_rows_that_03_keeps(source, tiny_folder, tmp_path,
                                                                      monkeypatch):
    """The page writes its filter out (no course import): on the embedded quotes as the page reads them (the
    .jsonl in the Hub dataset's columns, tools/runners/course.py) and on hand-written rows, it keeps the texts
    that 03's `load_quotes` keeps (repeats after folding case, punctuation and typographic quotes, and authors
    that are the quote's end, dropped too) and holds out the same ones: seeded shuffle, eval_fraction."""
    from gemmate_lib.data import load_quotes
    from tools.runners.course import prepare_one_page_data

    monkeypatch.setenv("GEMMATE_CACHE", str(tmp_path))
    if source == "embedded":
        path, dataset = prepare_one_page_data(), "embedded"
    else:
        path = tmp_path / "quotes.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in TRICKY_ROWS),
                        encoding="utf-8")
        dataset = str(path)
    page = page_parameters()
    namespace = {"model_name": str(tiny_folder), "token": None, "dataset": str(path), "seed": page["seed"],
                 "max_length": page["max_length"], "eval_fraction": page["eval_fraction"]}
    exec(compile(_cell("AutoTokenizer.from_pretrained(model_name"), str(PAGE), "exec"), namespace)
    data = load_quotes(dataset, page["eval_fraction"], page["seed"], namespace["tokenizer"],
                       page["max_length"])
    assert len(data.train) > (200 if source == "embedded" else 4)
    assert namespace["train_dataset"]["text"] == [r["text"] for r in data.train]
    assert namespace["eval_dataset"]["text"] == [r["text"] for r in data.held_out]


class _Trainer:  # what the pre-flight cell reads of TRL's SFTTrainer
    def __init__(self, model, tokenizer, texts, drop_end=False):
        self.model, self.train_dataset = model, [tokenizer(t + tokenizer.eos_token) for t in texts]
        self._end, self._pad, self._drop_end = tokenizer.eos_token_id, tokenizer.pad_token_id, drop_end

    def data_collator(self, rows):
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.tensor([r["input_ids"] + [self._pad] * (width - len(r["input_ids"])) for r in rows])
        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows])
        labels = ids.masked_fill(mask == 0, -100)
        if self._drop_end:  # a collator that leaves the end token out of the loss
            labels = labels.masked_fill(labels == self._end, -100)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _preflight(tiny_tokenizer, seed=0, drop_end=False, cache_name=None, broken_cache=False):
    """Run the page's pre-flight cell on a tiny random Gemma 3 with a LoRA adapter, as the page runs it.
    `cache_name`: the model knows its KV cache under that name only (transformers 5.24 renamed
    `past_key_values` to `cache`); `broken_cache`: its cached attention path computes something else."""
    import math

    import torch
    from peft import LoraConfig, get_peft_model
    from tiny import TEXTS, cache_name_of, make_tiny_gemma, speaking_only

    model = get_peft_model(make_tiny_gemma(tiny_tokenizer, seed), LoraConfig(r=4, target_modules=["q_proj"]))
    if cache_name is not None:
        inner = model.base_model.model
        inner.forward = speaking_only(inner.forward, cache_name, cache_name_of(inner),
                                      cached_shift=5.0 if broken_cache else 0.0)
    namespace = {"torch": torch, "math": math, "tokenizer": tiny_tokenizer, "compute_dtype": torch.float32,
                 "eval_dataset": [{"text": t} for t in TEXTS], "max_start_loss": 1.2,
                 "loss_before": math.log(len(tiny_tokenizer)),  # a random model: a uniform guess
                 "trainer": _Trainer(model, tiny_tokenizer, TEXTS, drop_end), "Stop": _stop_class()}
    exec(compile(_cell("pre-flight failed"), str(PAGE), "exec"), namespace)
    return namespace


@pytest.mark.parametrize("cache_name", [None, "past_key_values", "cache"])  # None: the installed model as is
def test_the_pre_flight_passes_a_sound_model(tiny_tokenizer, capsys, cache_name):
    """Under either name of the KV cache: a page that hands the cache back under one name only fails here."""
    _preflight(tiny_tokenizer, cache_name=cache_name)
    table = capsys.readouterr().out
    assert table.count("pass") == 6 and "FAIL" not in table


@pytest.mark.parametrize("fault, meaning", [
    (dict(drop_end=True), "the model never learns to stop"),
    *[(dict(cache_name=name, broken_cache=True), "the cached attention path computes another model")
      for name in ("past_key_values", "cache")],  # the injection fires under the name the page passes
])
def test_the_pre_flight_stops_on_an_injected_fault_and_says_what_it_means(tiny_tokenizer, capsys, fault,
                                                                          meaning):
    with pytest.raises(_stop_class(), match=meaning):
        _preflight(tiny_tokenizer, **fault)
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_merged_model_agrees_with_the_unmerged_adapter_within_the_pages_tolerance(tiny_tokenizer, dtype):
    """The page's agreement check: merged against the adapter on the same 16-bit (or fp32) base stays inside
    the tolerance that the page states; a merge of the wrong update does not."""
    import math

    import torch
    from peft import LoraConfig, get_peft_model
    from tiny import TEXTS, make_tiny_gemma

    namespace = {"torch": torch, "math": math, "compute_dtype": getattr(torch, dtype)}
    cell = ast.parse(_cell("pre-flight failed"))
    wanted = [n for n in cell.body
              if isinstance(n, ast.FunctionDef) and n.name in ("log_probs", "greatest_gap")
              or isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "tolerance"
              or isinstance(n, ast.Import)]
    exec(compile(ast.Module(wanted, type_ignores=[]), str(PAGE), "exec"), namespace)
    log_probs, greatest_gap, tolerance = (namespace[k] for k in ("log_probs", "greatest_gap", "tolerance"))

    def adapted(scale=1.0):
        torch.manual_seed(1)
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
        model = get_peft_model(make_tiny_gemma(tiny_tokenizer).to(getattr(torch, dtype)), lora)
        with torch.no_grad():  # a trained adapter: B is no longer zero
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn_like(p) * 0.5 * scale)
        return model.eval()

    batch = tiny_tokenizer(list(TEXTS), return_tensors="pt", padding=True)
    keep = batch["attention_mask"].bool()
    model = adapted()
    with torch.no_grad():
        unmerged = log_probs(model, **batch)
        merged = log_probs(model.merge_and_unload(), **batch)
        wrong = log_probs(adapted(scale=2.0).merge_and_unload(), **batch)
    assert greatest_gap(unmerged[keep], merged[keep]) <= tolerance
    assert greatest_gap(unmerged[keep], wrong[keep]) > tolerance


def test_a_colab_runtime_without_a_gpu_stops_in_one_line_that_names_the_fix(monkeypatch, fake_colab,
                                                                            fake_gpu):
    """Without the check, the page started gemma-2b on a Colab CPU runtime."""
    import sys

    fake_gpu(None)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    with pytest.raises(_stop_class(), match=r"no GPU\. Fix: Runtime > Change runtime type > T4 GPU"):
        exec(_cell("get_token()"), {"sys": sys, "model_name": "google/gemma-2b", "Stop": _stop_class()})


def test_the_adapter_is_kept_on_drive_and_flushed_in_colab(fake_colab, tmp_path, capsys):
    """With push_repo_id None the adapter would live only on the runtime's disk, gone with the runtime."""
    import sys

    adapter = tmp_path / "run" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    source = _cell("shutil.copytree(adapter_dir").replace("/content/drive", str(tmp_path / "drive"))
    exec(source, {"sys": sys, "os": __import__("os"), "keep_on_drive": True,
                  "output_dir": str(tmp_path / "run"), "adapter_dir": str(adapter)})
    kept = tmp_path / "drive" / "MyDrive" / "run" / "adapter" / "adapter_model.safetensors"
    assert kept.read_bytes() == b"weights" and fake_colab.flushed == ["flushed"]
    assert fake_colab.mounted == [str(tmp_path / "drive")]
    assert str(kept.parent) in capsys.readouterr().out


def test_the_install_cell_holds_colabs_torch_and_brings_what_differs(monkeypatch, tmp_path, fake_colab):
    """In Colab the cell installs only the pins that differ (Colab's torchao among them) and holds torch at
    the runtime's build with a constraints file, so pip can never replace it."""
    import subprocess
    import types

    import torch

    seen = {}

    def pip(cmd, **kwargs):
        seen["cmd"] = cmd
        seen["held"] = Path(cmd[cmd.index("-c") + 1]).read_text() if "-c" in cmd else ""
        return types.SimpleNamespace(returncode=0)

    from test_colab import installed_package

    monkeypatch.syspath_prepend(str(installed_package(Path(tmp_path), "torchao", "0.10.0")))  # Colab's
    monkeypatch.setattr(subprocess, "run", pip)
    try:
        exec("".join(code_cells()[0]["source"]), {})
    except Exception as stop:  # the page's Stop: an installed pin that differs was imported already (make
        if "Restart needed" not in str(stop):  # drift's newer transformers): the restart it asks for is right
            raise
    installs = [arg for arg in seen["cmd"] if "==" in arg]
    assert "torchao==0.17.0" in installs and not any(a.startswith("torch==") for a in installs)
    assert f"torch=={torch.__version__}" in seen["held"].split()


@pytest.mark.parametrize("key", ["gemma", "gemma3", "gemma4"])
@pytest.mark.parametrize("capability", [(7, 5), (8, 0)])
def test_the_pages_dtype_rule_is_the_courses_for_each_generation(key, capability, tmp_path, fake_gpu):
    """The compute-dtype cell on a T4 (7.5) and an A100 (8.0), faked at CUDA's boundary, for a model of each
    Gemma generation: the dtype that gemmate_lib.generations gives (Gemma 3 and 4 overflow in fp16)."""
    import torch
    from tiny import make_generation_tokenizer, make_tiny_generation

    from gemmate_lib.generations import GENERATIONS

    make_tiny_generation(key, make_generation_tokenizer(key)).config.save_pretrained(tmp_path)
    fake_gpu(capability)
    namespace = {"model_name": str(tmp_path), "token": None, "torch": torch}
    exec(_cell("compute_dtype, why"), namespace)
    generation = GENERATIONS[key]
    wanted = "bf16" if capability[0] >= 8 else generation.t4_dtype  # bf16 where native
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    assert namespace["compute_dtype"] == dtypes[wanted]


def test_gemma_4_needs_no_token_and_a_gated_gemma_stops_without_one(monkeypatch, tmp_path, capsys):
    """Gemma 4 is Apache-2.0 and ungated: the page asked for a token anyway."""
    import sys

    from huggingface_hub import constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-token"))
    cell = _cell("get_token()")
    exec(cell, {"sys": sys, "model_name": "google/gemma-4-E2B", "Stop": _stop_class()})
    assert "Hugging Face token: none" in capsys.readouterr().out
    for gated in ("google/gemma-2b", "google/gemma-3-1b-pt"):  # on this CPU: the no-GPU line names the fix
        with pytest.raises(_stop_class(), match=f"{gated} is gated"):
            exec(cell, {"sys": sys, "model_name": gated, "Stop": _stop_class()})


@pytest.mark.parametrize("gpu", [None, (7, 5)])
def test_a_gated_model_without_a_token_stops_in_one_line_that_names_the_fix_even_beside_offline_copies(
        monkeypatch, tmp_path, fake_gpu, gpu):
    """No token for a gated model: on a CPU (`make lab` with neither) the page switched to the course's
    offline copies when this machine held them, by code that only the course's machine could run. Now it stops
    in one line, there too: without a GPU the line names the parameters to give (a local model folder and a
    .jsonl), with one the token's fix."""
    import sys

    from huggingface_hub import constants

    from gemmate_lib.models import cache_dir
    from tools.runners.course import ONE_PAGE_QUOTES

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-token"))
    monkeypatch.setenv("GEMMATE_CACHE", str(tmp_path / "cache"))
    (cache_dir() / "gemma-3-270m").mkdir(parents=True)  # the course's offline copies, where it puts them
    (cache_dir() / ONE_PAGE_QUOTES).write_text("{}\n")
    fake_gpu(gpu)
    scope = {"sys": sys, "model_name": "google/gemma-2b", "dataset": "Abirate/english_quotes",
             "Stop": _stop_class()}
    with pytest.raises(_stop_class()) as stop:
        exec(_cell("get_token()"), scope)
    message = str(stop.value)
    assert "\n" not in message and "HF_TOKEN" in message
    if gpu is None:
        assert message.startswith("no GPU and no Hugging Face token: google/gemma-2b is gated")
        assert "set model_name to a local model folder and dataset to a local .jsonl in section 2" in message
    else:
        assert "is gated and no Hugging Face token was found" in message and "local .jsonl" not in message
    assert (scope["model_name"], scope["dataset"]) == ("google/gemma-2b", "Abirate/english_quotes")


def test_the_pages_cpu_only_lines_run_only_without_cuda():
    """bitsandbytes' AVX512_BF16 repacking and the warnings of pinned memory and paged optimizers concern a
    CPU only: in a GPU recipe they sit under `if not torch.cuda.is_available():`, with a comment on why."""
    for marker in ("support_avx512bf16_for_cpu", "Paged optimizers are not supported on CPU"):
        source = _cell(marker)
        guarded = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.If)
                   and ast.get_source_segment(source, n.test) == "not torch.cuda.is_available()"
                   and marker in ast.get_source_segment(source, n)]
        block = ast.get_source_segment(source, guarded[0]) if guarded else ""
        assert block.count(marker) == source.count(marker), marker
        assert "#" in block.splitlines()[0], "say why, on the if"


def test_the_version_table_names_what_the_page_calls():
    """Section 8's table of renamed arguments: every newer name in it is one the page's code uses."""
    cells = json.loads(PAGE.read_text())["cells"]
    table = next("".join(c["source"]) for c in cells
                 if c["cell_type"] == "markdown" and "| newer name | older name |" in "".join(c["source"]))
    code = "\n".join("".join(c["source"]) for c in code_cells())
    rows = [line.split("|")[1:4] for line in table.splitlines()[table.splitlines().index(
        "| newer name | older name | renamed in |") + 2:] if line.startswith("|")]
    assert len(rows) == 6
    for newer, _older, since in rows:
        name = re.search(r"`(?:\w+\()?(\w+)=?\)?`", newer).group(1)
        assert re.search(rf"\b{name}\b", code), name
        assert re.fullmatch(r" (TRL|transformers) \d+\.\d+ ", since), since


def _statements(marker: str, first: str, last_type: type) -> str:
    """The page's statements of the cell holding `marker`, from the one that starts with `first` to the
    first `last_type` statement after it."""
    source = _cell(marker)
    body = ast.parse(source).body
    start = next(i for i, n in enumerate(body) if ast.get_source_segment(source, n).startswith(first))
    end = next(i for i, n in enumerate(body) if i > start and isinstance(n, last_type))
    return ast.unparse(ast.Module(body[start:end + 1], type_ignores=[]))


def test_the_adapter_folder_gets_the_pages_model_card_instead_of_pefts_template(tiny_model, tmp_path):
    """The pushed adapter carried PEFT's empty card; 05 writes a real one, and so does the page now."""
    import math
    import os
    import types

    import torch
    from peft import LoraConfig, get_peft_model

    adapter_dir = tmp_path / "adapter"
    get_peft_model(tiny_model, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(adapter_dir)
    assert "Model Card for Model ID" in (adapter_dir / "README.md").read_text()  # PEFT's template
    scope = {"os": os, "math": math, "torch": torch, "adapter_dir": str(adapter_dir), **page_parameters(),
             "model_name": "google/gemma-4-E2B", "compute_dtype": torch.float16,
             "result": types.SimpleNamespace(global_step=100), "train_dataset": [0] * 9, "eval_dataset": [0],
             "before": ["a quote", "x"], "after": ["\nAuthor: Albert Einstein", "\nAuthor: Groucho Marx"],
             "PROMPTS": ["p1", "p2"], "loss_before": 3.5, "loss_after": 2.25,
             "before_held_out": ["x", "\nAuthor: A", "y"],
             "after_held_out": ["\nAuthor: A", "\nAuthor: B", "z"]}
    exec(_statements("def has_author_line", "def has_author_line", ast.FunctionDef), scope)
    exec(_statements("card = f", "n_before, n_after", ast.With), scope)
    card = (adapter_dir / "README.md").read_text()
    assert "Model Card for Model ID" not in card
    for line in ("base_model: google/gemma-4-E2B", "license: apache-2.0", "100 steps of 4 quotes",
                 "9 quotes trained on", "Loss 3.500 -> 2.250", "in 2 of 2 greedy generations (0 before",
                 "first words of 2 of 3 held-out quotes (1 before)"):
        assert line in card, line


def test_the_optional_merged_save_writes_a_folder_that_loads_without_peft(tiny_model, tiny_tokenizer,
                                                                          tmp_path, capsys):
    import os

    import torch
    from transformers import AutoModelForCausalLM

    cell = _cell('merged.save_pretrained(merged_dir, max_shard_size="2GB")')
    scope = {"os": os, "merged": tiny_model, "tokenizer": tiny_tokenizer, "output_dir": str(tmp_path)}
    exec(cell, {**scope, "save_merged": False})
    assert not (tmp_path / "merged").exists() and "not written" in capsys.readouterr().out
    exec(cell, {**scope, "save_merged": True})
    assert "1 safetensors file(s)" in capsys.readouterr().out
    exec(cell, {**scope, "save_merged": True, "merged": None})  # the merge was skipped: it would not fit
    assert "skipped the merge" in capsys.readouterr().out
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    ids = tiny_tokenizer(["Quote: Be yourself."], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(reloaded(**ids).logits, tiny_model(**ids).logits)


@pytest.mark.parametrize("name", ["gemma-2b", "gemma-3-1b-pt", "gemma-4-E2B"])
def test_the_pages_will_it_fit_is_the_planners_arithmetic_and_skips_a_merge_a_t4_cannot_hold(
        name, tmp_path, fake_gpu, monkeypatch, capsys):
    """The page writes the plan out in a few lines; the library's planner (held to the full-shape rehearsal)
    must agree with it, and on a T4 the page skips the merge exactly where a 16/32-bit copy will not fit."""
    import os

    import torch
    from transformers import AutoConfig

    from gemmate_lib import fit
    from tools.fit import full_shape, planner

    config = full_shape.config_of(name)
    config.save_pretrained(tmp_path)  # the config alone: shapes on the meta device, no weights
    fake_gpu((7, 5))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (int(14.6 * 2**30), int(14.6 * 2**30)))
    dtype = torch.float16 if name == "gemma-2b" else torch.float32  # a T4: Gemma 3 and 4 compute in fp32
    page = {"torch": torch, "os": os, "AutoConfig": AutoConfig, "model_name": str(tmp_path), "token": None,
            "compute_dtype": dtype, "max_steps": 100, "model_type": config.model_type, "batch_size": 1,
            "gradient_accumulation_steps": 4}
    exec(_cell("a 16/32-bit copy for the merge"), page)
    plan = planner.predict(fit.shape_of(config), dtype.itemsize)
    need = {k: v * 2**30 for k, v in page["gpu_need"].items()}
    four_bit = max(need["the 4-bit model while loading"], need["the 4-bit model while training"])
    assert four_bit == pytest.approx(plan["nf4"]["gpu"], rel=0.15)
    assert need["a 16/32-bit copy for the merge"] == pytest.approx(plan["load"]["gpu"], rel=0.02)
    assert page["merge_fits"] is (name != "gemma-4-E2B")  # E2B in fp32: ~19 GiB, more than a T4 has
    assert page["merge_fits"] is ("load GPU" not in planner.problems(plan))
    printed = capsys.readouterr().out
    assert "training on a T4: ~" in printed and "GPU memory for the 4-bit model while training" in printed
    # the T4 time of the page's own steps, as the planner counts it for 100 steps of 4 quotes
    assert page["t4_seconds"] == pytest.approx(plan["nf4"]["seconds"], rel=0.02)
    assert "for 100 steps of 4 quotes" in printed


def test_the_pages_per_layer_table_on_the_cpu_is_the_librarys():
    """Section 6's per_layer_table_to_cpu, run from the page on a tiny Gemma 4 whose table holds bf16 values
    (as
    the Hub's checkpoints do), does what models.lookup_tables_to_cpu does: the same logits to the bit, a bf16
    buffer on the CPU under the same name, and nothing else changed; on Gemma 1 it changes nothing."""
    import torch
    from tiny import make_generation_tokenizer, make_tiny_generation

    from gemmate_lib.models import lookup_tables_to_cpu

    scope = {"torch": torch}
    exec(_cell("def per_layer_table_to_cpu(model):"), scope)
    tokenizer = make_generation_tokenizer("gemma4")
    ids = tokenizer(["Quote: time flies", "Quote: a"], return_tensors="pt", padding=True)
    models = []
    for move in (scope["per_layer_table_to_cpu"], lookup_tables_to_cpu):
        model = make_tiny_generation("gemma4", tokenizer)
        for name, module in model.named_modules():
            if name.endswith("embed_tokens_per_layer"):
                module.weight.data = module.weight.data.to(torch.bfloat16).float()
        with torch.no_grad():
            before = model(**ids).logits
        move(model)
        model.to(torch.float32)
        with torch.no_grad():
            assert torch.equal(model(**ids).logits, before)
        models.append(model.state_dict())
    page, library = models
    assert page.keys() == library.keys()
    assert all(torch.equal(page[k], library[k]) and page[k].dtype == library[k].dtype for k in page)
    table = next(k for k in page if "embed_tokens_per_layer" in k)
    assert page[table].dtype == torch.bfloat16 and page[table].device.type == "cpu"
    gemma = make_tiny_generation("gemma", make_generation_tokenizer("gemma"))
    keys = {k: v.clone() for k, v in gemma.state_dict().items()}
    scope["per_layer_table_to_cpu"](gemma)
    assert all(torch.equal(v, keys[k]) for k, v in gemma.state_dict().items())


# ---- issue 63: the one-page recipe ready for the learner's own data


def test_the_cell_under_the_parameters_prints_every_value_the_run_used(capsys, monkeypatch, tmp_path):
    """The committed outputs were made with values papermill injected (max_length 64) under a parameters cell
    that says 128, and nothing on the page showed which ran: the first code cell after the parameters cell
    (after papermill's injected cell in a batch run) prints every parameter by name, with the home folder as
    ~ (a committed output names no machine's folder)."""
    cells = code_cells()
    at = next(i for i, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", []))
    source = "".join(cells[at + 1]["source"])
    for name in page_parameters():
        assert f"{{{name} = }}" in source, name
    monkeypatch.setenv("HOME", str(tmp_path))
    values = {**page_parameters(), "max_length": 64, "model_name": str(tmp_path / "models" / "gemma")}
    exec(source, dict(values))
    printed = capsys.readouterr().out
    assert "max_length = 64" in printed and "model_name = '~/models/gemma'" in printed
    assert str(tmp_path) not in printed
    assert len(printed.splitlines()) <= 10  # a few lines, not one per value


TRICKY_AUTHOR_LINES = [
    ".\nAuthor: Author: Author: Author:",  # the committed run's first "after" generation
    "important than knowledge.\nAuthor: Albert Einstein",
    "important than knowledge.\nAuthor: Albert Einstein\nQuote: another\nAuthor: Someone",  # two quotes
    "x\nAuthor:", "x\nAuthor:   ", "x\nAuthor: \u200b", "x\n Author: Indented", "x\nauthor: lower case",
    "x\nAuthor:Oscar Wilde", "x\nAuthor: Oscar Wilde\n", "x\nAuthor: Oscar Wilde, Author: of things",
    "Author: At the start", "x\r\nAuthor: Windows line end", "x\nAuthors: Many", "", "\n\n",
    "x\nAuthor: Oscar Wilde\nAuthor: Oscar Wilde",  # the same line twice
]


def test_the_pages_author_line_is_as_strict_as_the_librarys():
    """The page counted "Author: Author: Author: ..." as the format learned (4 of 4 after training in the
    committed run, one of them that); the library's rule does not. The page's has_author_line gives the
    library's answer on every tricky text."""
    from gemmate_lib.text_generation import has_author_line

    scope = {}
    exec(_statements("def has_author_line", "def has_author_line", ast.FunctionDef), scope)
    page = scope["has_author_line"]
    assert [page(t) for t in TRICKY_AUTHOR_LINES] == [has_author_line(t) for t in TRICKY_AUTHOR_LINES]
    assert not page(TRICKY_AUTHOR_LINES[0]) and page(TRICKY_AUTHOR_LINES[1])


def _before_training_functions() -> dict:
    """Section 8's functions (has_author_line, first_words, wilson, author_share), run from the page."""
    import math

    source = _cell("def has_author_line")
    wanted = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)
              and n.name in ("has_author_line", "first_words", "wilson", "author_share")]
    assert len(wanted) == 4
    scope = {"math": math}
    exec(compile(ast.Module(wanted, type_ignores=[]), str(PAGE), "exec"), scope)
    return scope


@pytest.mark.parametrize("k, n", [(0, 1), (1, 1), (0, 4), (4, 4), (3, 29), (0, 29), (29, 29), (120, 250),
                                  (1, 2508)])
def test_the_pages_wilson_interval_is_the_librarys(k, n):
    """The held-out share's 95% interval, written out on the page (z = 1.96), against gemmate_lib.stats."""
    from gemmate_lib.stats import wilson

    low, high = _before_training_functions()["wilson"](k, n)
    assert (low, high) == pytest.approx(wilson(k, n), abs=1e-4)
    assert 0.0 <= low <= k / n <= high <= 1.0


def test_the_held_out_share_prompts_every_held_out_quote_with_its_first_words():
    """Beside the four greedy prompts, one prompt per held-out quote (its first words, never the whole quote)
    generated before (section 8) and after training (section 13), and the share with an Author: line printed
    with its interval."""
    from gemmate_lib.stats import wilson

    scope = _before_training_functions()
    texts = ["Quote: Be yourself; everyone else is already taken.\nAuthor: Oscar Wilde",
             "Quote: Be.\nAuthor: Nobody", "Quote: Stay hungry.\nAuthor: Steve Jobs"]
    prompts = [scope["first_words"](t) for t in texts]
    assert prompts == ["Quote: Be yourself; everyone", "Quote: Be.", "Quote: Stay"]  # 3 of 7 words, 1 of 2
    assert all(t.startswith(p) for p, t in zip(prompts, texts))
    generations = ["\nAuthor: Oscar Wilde", "\nAuthor: Author: Author:", " and so on"]
    low, high = wilson(1, 3)
    assert scope["author_share"](generations) == f"1 of 3 (33%; 95% interval {low:.0%} to {high:.0%})"
    before, after = _cell("before_held_out = generate(model, HELD_OUT_PROMPTS)"), _cell("after_held_out = ")
    assert 'HELD_OUT_PROMPTS = [first_words(text) for text in eval_dataset["text"]]' in before
    assert "author_share(before_held_out)" in before
    assert "author_share(after_held_out)" in after and "author_share(before_held_out)" in after


def _own_data(capsys, monkeypatch, train, held_out, token_counts, **values):
    """Section 6's cell, run on hand-made rows with section 5's `folded` and section 4's time estimate;
    returns what it printed, the figure it drew and its namespace."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from datasets import Dataset

    figures = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: figures.append(plt.gcf()))
    data = ast.parse(_cell("AutoTokenizer.from_pretrained(model_name"))
    [folded] = [n for n in data.body if isinstance(n, ast.FunctionDef) and n.name == "folded"]
    scope = {"unicodedata": __import__("unicodedata")}
    exec(compile(ast.Module([folded], type_ignores=[]), str(PAGE), "exec"), scope)
    scope.update(train_dataset=Dataset.from_dict({"text": train}), eval_dataset=Dataset.from_dict(
        {"text": held_out}), token_counts=token_counts, max_length=64, max_steps=100, save_steps=50,
        per_step=4, t4_seconds=269.0, took="4 min", **values)
    exec(compile(_cell("suggested = 16 * math.ceil"), str(PAGE), "exec"), scope)
    return capsys.readouterr().out, figures, scope


def test_your_own_data_suggests_a_max_length_and_counts_planted_leaks(capsys, monkeypatch):
    """Section 6, before the download: the token lengths' histogram with max_length and a suggestion (the 99th
    percentile, nearest rank, rounded up to 16), held-out quotes that are also in training (folded, or one
    inside another) and held-out authors who wrote training quotes, and how far max_steps goes, with the T4
    time marked as an estimate."""
    train = ["Quote: Be yourself; everyone else is already taken.\nAuthor: Oscar Wilde",
             "Quote: Stay hungry, stay foolish.\nAuthor: Steve Jobs",
             "Quote: Imagination is more important than knowledge.\nAuthor: Albert Einstein",
             "Quote: Simplicity is the ultimate sophistication.\nAuthor: Leonardo da Vinci"]
    held_out = ["Quote: BE YOURSELF - everyone else is already taken!\nAuthor: O. Wilde",  # folded: a leak
                "Quote: Stay hungry\nAuthor: Anonymous",  # inside a training quote: a leak
                "Quote: Stay hungry, stay foolish, stay humble.\nAuthor: Unknown",  # holds one: a leak
                "Quote: Be yours\nAuthor: Nobody",  # a word cut ("yours" is not "yourself"): no leak
                "Quote: Logic will get you from A to B.\nAuthor: Albert Einstein",  # an author seen
                "Quote: Knowing is not enough.\nAuthor: albert einstein"]  # the same author, folded
    counts = list(range(10, 110))  # 100 quotes of 10 ... 109 tokens: the 99th is 108 -> 112
    printed, figures, scope = _own_data(capsys, monkeypatch, train, held_out, counts)
    assert scope["p99"] == 108 and scope["suggested"] == 112
    assert "99% of the 100 well-formed quotes have at most 108 tokens: max_length = 112 keeps 100; " \
           "max_length = 64 kept 55" in printed
    assert "held-out quotes also in training (folded, or one inside the other): 3 of 6" in printed
    assert "held-out authors who also wrote training quotes: 1 of 5 (the authors of 2 of the 6 held-out " \
           "quotes)" in printed
    assert "max_steps = 100 steps of 4 quotes: 100.00 passes over the 4 training quotes; on a T4 ~4 min " \
           "(section 4's estimate, not a measurement), a checkpoint every 50 steps (~2 min)" in printed
    [figure] = figures
    [axes] = figure.axes
    assert sum(p.get_height() for p in axes.patches) == len(counts)  # every quote in a bar
    assert sorted(line.get_xdata()[0] for line in axes.lines) == [64, 112]  # max_length and the suggestion


def test_the_private_api_step_says_so_and_names_the_pinned_versions():
    """Gemma 4's per-layer table helper replaces `_apply` and `forward` on a module instance: private API,
    said on the page next to it, with the versions it was tested with, which are requirements.txt's pins (a
    pin raised without the comment fails here), and that newer releases are checked."""
    source = _cell("def per_layer_table_to_cpu(model):")
    comment = " ".join(line.strip().lstrip("# ") for line in source.splitlines()
                       if line.strip().startswith("#"))
    pins = dict(line.split("#")[0].strip().split("==") for line in (ROOT / "requirements.txt").read_text()
                .splitlines() if "==" in line and not line.startswith("#"))
    assert "Private API" in comment and "_apply" in comment and "forward" in comment
    for package in ("torch", "transformers", "peft"):
        assert f"{package} {pins[package]}" in comment, package
    assert "newest releases" in comment
    assert source.index("Private API") < source.index("table._apply = ") < source.index("table.forward = ")


def test_a_skipped_merge_says_what_the_learner_can_do(capsys):
    """The skip pointed at a tensor-by-tensor merge "from the checkpoint's files", which the page cannot do:
    it now says to keep the adapter (the result) or to merge on a runtime with more GPU memory."""
    import torch

    scope = {"torch": torch, "merge_fits": False, "compute_dtype": torch.float32,
             "model_name": "google/gemma-4-E2B", "gpu_need": {"a 16/32-bit copy for the merge": 19.0},
             "gpu_have": 14.0, "adapter_dir": "gemma-quotes-qlora/adapter",
             **dict.fromkeys(["model", "peft_model", "trainer", "chat_model", "chat_trainer"])}
    exec(_cell("merge skipped: "), scope)
    printed = capsys.readouterr().out
    assert printed.startswith("merge skipped: a float32 copy of google/gemma-4-E2B needs about 19.0 GiB")
    for said in ("gemma-quotes-qlora/adapter is the result", "PeftModel.from_pretrained", "an L4 or A100"):
        assert said in printed, said
    assert "tensor by tensor" not in printed and "checkpoint" not in printed
    assert scope["merged"] is None


def test_the_trainer_writes_few_checkpoints_and_in_colab_on_google_drive(fake_colab, tmp_path):
    """Section 9: a checkpoint every save_steps steps, only the newest kept, in <output_dir>/trainer; in Colab
    with keep_on_drive, on Google Drive (mounted before training), so a reclaimed runtime keeps it."""
    import os
    import sys

    import torch

    source = _cell("trainer_dir = os.path.join(output_dir, ")
    source = source.replace("/content/drive", str(tmp_path / "drive"))
    page = page_parameters()
    scope = {**page, "os": os, "sys": sys, "torch": torch, "compute_dtype": torch.float32,
             "output_dir": str(tmp_path / "run")}
    exec(source, scope)
    config = scope["sft_config"]
    assert (config.save_strategy, config.save_steps, config.save_total_limit) == ("steps", page["save_steps"],
                                                                                  1)
    assert config.output_dir == str(tmp_path / "drive" / "MyDrive" / "run" / "trainer")
    assert fake_colab.mounted == [str(tmp_path / "drive")]
    fake_colab.leave()  # elsewhere: in the output folder
    outside = {**scope}
    exec(source, outside)
    assert outside["sft_config"].output_dir == os.path.join(str(tmp_path / "run"), "trainer")


class _FakeTrainer:  # what section 12 reads of TRL's SFTTrainer: train(resume_from_checkpoint=...)
    """Writes a checkpoint every 2 steps into `trainer_dir` as the real one does; killed (KeyboardInterrupt)
    after the checkpoint of step `killed_at`, if given."""

    def __init__(self, trainer_dir, max_steps=6, killed_at=None):
        self.dir, self.max_steps, self.killed_at = trainer_dir, max_steps, killed_at
        self.resumed_from, self.model = "not called", object()

    def train(self, resume_from_checkpoint=None):
        import types

        self.resumed_from = resume_from_checkpoint
        start = int(resume_from_checkpoint.rsplit("-", 1)[1]) if resume_from_checkpoint else 0
        for step in range(start + 2, self.max_steps + 1, 2):
            folder = self.dir / f"checkpoint-{step}"
            folder.mkdir(exist_ok=True)  # a save cut short left it: the Trainer writes into it
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step,
                                                                  "max_steps": self.max_steps}))
            if step == self.killed_at:
                raise KeyboardInterrupt  # the runtime was reclaimed
        return types.SimpleNamespace(global_step=self.max_steps, training_loss=1.5)


PAGE_RUN = dict(model_name="a-model", texts=("Quote: a\nAuthor: b", "Quote: c\nAuthor: d"),
                learning_rate=2e-4, seed=42, max_length=64, max_steps=6, batch_size=1, lora_r=8,
                lora_alpha=16, lora_dropout=0.05, double_quant=True)


def _run_page_training(trainer_dir, killed_at=None, **change):
    """Section 12's cell with the page's own objects built from PAGE_RUN's values, one of them `change`d;
    returns (the fake trainer, what the cell printed)."""
    import contextlib
    import io
    import os

    from peft import LoraConfig
    from transformers import BitsAndBytesConfig
    from trl import SFTConfig

    v = {**PAGE_RUN, **change}
    trainer = _FakeTrainer(trainer_dir, v["max_steps"], killed_at)
    scope = {
        "os": os, "trainer_dir": str(trainer_dir), "trainer": trainer, "max_steps": v["max_steps"],
        "model_name": v["model_name"], "gpu_memory": lambda when: None,
        "train_dataset": {"text": list(v["texts"])},
        "bnb_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                         bnb_4bit_use_double_quant=v["double_quant"]),
        "lora_config": LoraConfig(r=v["lora_r"], lora_alpha=v["lora_alpha"], lora_dropout=v["lora_dropout"],
                                  target_modules=r"model\.layers\.\d+\..*\.(q_proj|v_proj)",
                                  task_type="CAUSAL_LM"),
        "sft_config": SFTConfig(output_dir=str(trainer_dir), max_steps=v["max_steps"], use_cpu=True,
                                per_device_train_batch_size=v["batch_size"], learning_rate=v["learning_rate"],
                                seed=v["seed"], data_seed=v["seed"], max_length=v["max_length"],
                                report_to="none",
                                save_strategy="steps", save_steps=2, save_total_limit=1)}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            exec(_cell("resume_from_checkpoint="), scope)
        except KeyboardInterrupt:
            pass
    return trainer, out.getvalue()


def test_a_rerun_of_the_same_settings_resumes_where_the_killed_run_stopped(tmp_path):
    """Section 12 after a disconnect: the same settings resume from the last checkpoint, saying from which
    step.
    make gpu-smoke's probe still finds this cell first by `trainer.train()`."""
    assert next(c for c in code_cells() if "trainer.train()" in "".join(c["source"]))["id"] == next(
        c for c in code_cells() if "resume_from_checkpoint=" in "".join(c["source"]))["id"]
    trainer, printed = _run_page_training(tmp_path, killed_at=4)
    assert trainer.resumed_from is None and "resum" not in printed
    trainer, printed = _run_page_training(tmp_path)
    last = tmp_path / "checkpoint-4"
    assert trainer.resumed_from == str(last)
    assert f"resuming from {last}: step 4 of 6 done by an earlier run" in printed
    assert "resumed at step 4: 2 steps trained now" in printed
    assert "mean training loss over the 2 steps of this run: 1.500" in printed


def test_a_checkpoint_cut_short_by_a_disconnect_is_passed_over_for_the_one_before(tmp_path):
    """A runtime reclaimed during a save (slow on Google Drive) leaves a newest checkpoint-<step> without its
    trainer_state.json, which the Trainer writes last: the rerun took it (get_last_checkpoint takes the newest
    folder) and stopped with FileNotFoundError. It resumes from the last complete checkpoint now."""
    _run_page_training(tmp_path, killed_at=4)
    cut = tmp_path / "checkpoint-6"
    cut.mkdir()
    (cut / "adapter_model.safetensors").write_bytes(b"partial")
    (cut / "trainer_state.json").write_text('{"global_step": 6, "max_')  # cut short while written
    (tmp_path / "checkpoint-4 (1)").mkdir()  # Google Drive's copy of a folder written twice
    trainer, printed = _run_page_training(tmp_path)
    assert trainer.resumed_from == str(tmp_path / "checkpoint-4"), printed
    assert "step 4 of 6 done by an earlier run" in printed


PAGE_CHANGES = {  # a setting the page's parameters or data change -> the name the page gives it
    "model_name": ("other-model", "model"), "texts": (("Quote: e\nAuthor: f",), "data"),
    "learning_rate": (1e-4, "learning_rate"), "seed": (1, "seed"), "max_length": (128, "max_length"),
    "max_steps": (8, "max_steps"), "batch_size": (2, "per_device_train_batch_size"),
    "lora_r": (16, "lora r"), "lora_alpha": (32, "lora lora_alpha"),
    "lora_dropout": (0.0, "lora lora_dropout"),
    "double_quant": (False, "quantization"),
}


@pytest.mark.parametrize("setting", sorted(PAGE_CHANGES))
def test_a_rerun_with_one_setting_changed_starts_at_step_0_names_it_and_keeps_the_old_run(setting, tmp_path):
    """The page's "your own data" rerun, or any other changed setting, never resumes (or, for a finished run,
    re-saves) the earlier run: it trains from step 0 and says which setting differs; the earlier checkpoints
    are moved aside, not deleted."""
    value, name = PAGE_CHANGES[setting]
    _run_page_training(tmp_path, killed_at=4)
    trainer, printed = _run_page_training(tmp_path, **{setting: value})
    assert trainer.resumed_from is None, printed
    assert name in re.search(r"another run \(([^)]*) differ\)", printed).group(1).split(", "), printed
    assert (tmp_path / "previous-run-1" / "checkpoint-4" / "trainer_state.json").is_file()


def test_a_finished_run_trains_again_on_a_rerun(tmp_path):
    """Run all twice with the same settings: the second run trains every step again, it does not save the
    first run's adapter as its own; the first run's checkpoint is kept aside."""
    _run_page_training(tmp_path)
    trainer, printed = _run_page_training(tmp_path)
    assert trainer.resumed_from is None and "checkpoints of a finished run" in printed
    assert "mean training loss over the 6 steps of this run" in printed
    assert (tmp_path / "previous-run-1" / "checkpoint-6").is_dir()


@pytest.mark.slow
@pytest.mark.long  # make rehearse-learner; in make test, the section-12 tests above hold its resume rule
@pytest.mark.xdist_group("content")  # the Colab-like kernel's Google Drive is mounted at /content/drive
def test_a_run_killed_mid_training_resumes_from_its_checkpoint_on_drive_to_the_same_adapter_bitwise(
        tmp_path, monkeypatch):
    """A reclaimed Colab runtime, end to end: the page in the learner's Colab-like kernel
    (tests/learner_path.py, a tiny random Gemma 1, Google Drive's stand-in keeping its files across runtimes),
    killed with SIGKILL
    right after its checkpoint of step 2 of 4; a fresh kernel runs the page again, which resumes from that
    checkpoint on Drive and says so; its adapter equals an uninterrupted run's to the bit (dropout on, the
    paged 8-bit optimizer, the data order: all restored)."""
    import papermill as pm
    from learner_path import colab_content, colab_kernel, printed, smoke_quotes, tiny_gemma, with_cells
    from safetensors.torch import load_file

    model, quotes = tiny_gemma(tmp_path / "tiny-gemma-1"), smoke_quotes(tmp_path / "quotes.jsonl", n=24)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "COLAB_SIM_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("COLAB_SIM_DRIVE", str(tmp_path / "google-drive"))  # the files Drive keeps
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    kernel = colab_kernel(tmp_path / "jupyter")
    values = {"model_name": str(model), "dataset": str(quotes), "max_steps": 4, "save_steps": 2,
              "eval_steps": 4, "logging_steps": 1, "max_new_tokens": 4, "chat_steps": 0,
              "learning_rate": 1e-2, "warmup_steps": 0, "max_start_loss": 1.2, "keep_on_drive": True}
    reclaimed = ("trainer.model.print_trainable_parameters()", """import os
import signal

from transformers import TrainerCallback


class ReclaimedRuntime(TrainerCallback):  # Colab takes the runtime back right after the checkpoint of step 2
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 2:
            os.kill(os.getpid(), signal.SIGKILL)


trainer.add_callback(ReclaimedRuntime())""")

    mount = tmp_path / "content" / "drive"  # Colab's /content/drive; the machine's /content stays as is

    def run(name, output_dir, after=()):
        executed, page = tmp_path / f"{name}.ipynb", with_cells(PAGE, after=list(after))
        for cell in page.cells:
            cell.source = cell.source.replace("/content/drive", str(mount))
        pm.execute_notebook(page, str(executed), kernel_name=kernel, cwd=str(tmp_path), progress_bar=False,
                            parameters={**values, "output_dir": str(tmp_path / output_dir)})
        return executed

    drive = tmp_path / "google-drive"
    with colab_content():  # the runtime's unmount looks at /content/drive too
        with pytest.raises(Exception) as died:  # noqa: B017 - nbclient's DeadKernelError, whatever wraps it
            run("killed", "run", after=[reclaimed])
        assert "dead" in f"{type(died.value).__name__} {died.value}".lower(), died.value
        assert [p.name for p in (drive / "run" / "trainer").glob("checkpoint-*")] == ["checkpoint-2"]
        assert not (tmp_path / "run" / "adapter").exists()
        resumed = run("resumed", "run")
        run("straight", "straight")
    said = printed(resumed, "resume_from_checkpoint=")
    assert f"resuming from {mount}/MyDrive/run/trainer/checkpoint-2: step 2 of 4" in said
    assert "resumed at step 2: 2 steps trained now" in said
    assert [p.name for p in (drive / "run" / "trainer").glob("checkpoint-*")] == ["checkpoint-4"]  # one kept
    a = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch_equal(a[k], b[k]) for k in a)
    assert (drive / "run" / "adapter" / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "run" / "adapter" / "adapter_model.safetensors").read_bytes()


def torch_equal(a, b) -> bool:
    import torch

    return a.dtype == b.dtype and torch.equal(a, b)


def _chat_run(folder, tmp_path, fault: str | None = None) -> dict:
    """Section 15's two cells on a tiny random Gemma of a generation (its tokenizer has the turn tokens), as
    the page runs them after section 14: a LoRA model whose adapter is unloaded, one step of the chat run."""
    import os

    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from tiny import ROWS
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    lora = LoraConfig(r=4, target_modules=r"model\.(language_model\.)?layers\.\d+\..*\.(q_proj|v_proj)")
    scope = {**page_parameters(), "os": os, "torch": torch, "Dataset": Dataset,
             "AutoTokenizer": AutoTokenizer, "SFTConfig": SFTConfig, "SFTTrainer": SFTTrainer,
             "set_seed": set_seed, "Stop": _stop_class(),
             "model_name": str(folder), "token": None, "compute_dtype": torch.float32, "lora_config": lora,
             "peft_model": get_peft_model(AutoModelForCausalLM.from_pretrained(folder), lora),
             "train_dataset": Dataset.from_dict({"text": [r["text"] for r in ROWS]}),
             "output_dir": str(tmp_path), "chat_steps": 1, "batch_size": 2, "gradient_accumulation_steps": 1,
             "max_length": 64, "max_new_tokens": 4, "optim": "adamw_torch", "gradient_checkpointing": False,
             "warmup_steps": 0, "logging_steps": 1}
    exec(compile(_cell("CHAT_TEMPLATE = "), str(PAGE), "exec"), scope)
    train = _cell("assistant_only_loss=True")
    exec(compile(train.replace(*fault) if fault else train, str(PAGE), "exec"), scope)
    return scope


@pytest.mark.parametrize("key", ["gemma", "gemma4"])
def test_the_chat_run_counts_only_the_models_turn(key, generation_folder, tmp_path, capsys):
    """Section 15, the recipe in the chat format: conversations (a user turn, the model's turn with the quote
    and its author), the page's chat template with {% generation %} (Gemma 4: its own turn tokens), and
    assistant_only_loss=True; its check reads the labels: the first counted token begins the model's turn,
    and the turn's end is counted. It trains and answers."""
    scope = _chat_run(generation_folder(key), tmp_path)
    printed = capsys.readouterr().out
    turn_start, turn_end = ("<|turn>", "<turn|>") if key == "gemma4" else ("<start_of_turn>", "<end_of_turn>")
    assert f"<bos>{turn_start}user\nGive me a short quote and its author.{turn_end}\n{turn_start}model\n" \
           f"Be yourself.\nAuthor: Oscar Wilde{turn_end}\n" in printed
    assert printed.count(" pass") == 2 and "FAIL" not in printed
    assert f"the tokens the loss counts: 'Be yourself.\\nAuthor: Oscar Wilde{turn_end}\\n'" in printed
    assert "1 steps in the chat format" in printed and "the model ended its turn: before" in printed
    assert scope["chat_trainer"].args.assistant_only_loss


def test_the_chat_check_stops_the_page_when_the_loss_counts_the_question(generation_folder, tmp_path,
                                                                         capsys):
    """The fault it is there for, planted: without assistant_only_loss the loss counts the user's turn too,
    and the check stops the page in one line with the fix."""
    with pytest.raises(_stop_class(), match="chat check failed: the first counted token begins the model's "
                                            "turn: the loss counts the question too"):
        _chat_run(generation_folder("gemma"), tmp_path, fault=("assistant_only_loss=True",
                                                                "assistant_only_loss=False"))
    assert "FAIL" in capsys.readouterr().out


def test_make_lab_and_lab_check_pass_the_page_this_machines_offline_values_as_parameters(tmp_path):
    """The page no longer reads the course's machine: `make lab` writes an offline copy (its outputs cleared,
    the embedded model's folder, the .jsonl and CPU steps in papermill's injected cell after the parameters
    cell, where the learner sees them) into JupyterLab's folder, where git ignores it, before JupyterLab
    starts; `make lab-check` opens the same copy."""
    import os
    import subprocess

    from make_dry_run import make_commands

    from tools.environments.lab_check import prepare
    from tools.runners.course import LAB_COPY, ONE_PAGE_CPU, lab_copy

    def offline_values(copy: Path, run_dir: Path) -> dict:
        cells = json.loads(copy.read_text())["cells"]
        tags = [c["metadata"].get("tags", []) for c in cells]
        at = next(i for i, t in enumerate(tags) if "parameters" in t)
        assert "injected-parameters" in tags[at + 1] and sum("injected-parameters" in t for t in tags) == 1
        code = [c for c in cells if c["cell_type"] == "code"]
        assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
        values = literals("".join(cells[at + 1]["source"]))
        assert values["model_name"] == str(tmp_path / "model") and values["dataset"].endswith(".jsonl")
        assert {k: values[k] for k in ONE_PAGE_CPU} == ONE_PAGE_CPU
        assert os.path.normpath(copy.parent / values["output_dir"]) == str(run_dir / "qlora_one_runtime")
        return values

    folder = tmp_path / "repo" / LAB_COPY
    offline_values(lab_copy(folder, tmp_path / "model", tmp_path / "repo" / "runs" / "interactive"),
                   tmp_path / "repo" / "runs" / "interactive")
    commands = make_commands("lab")
    write = next(i for i, c in enumerate(commands) if "--lab-copy" in c)
    lab = next(i for i, c in enumerate(commands) if "jupyter" in c and "lab" in c)
    assert write < lab and Path(commands[write][commands[write].index("--lab-copy") + 1]) == LAB_COPY
    assert "--notebook-dir=notebooks" in commands[lab] and LAB_COPY.parts[0] == "notebooks"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(LAB_COPY / PAGE.name)], cwd=ROOT)
    assert ignored.returncode == 0, "make lab's copy would show up in git status"
    prepare(tmp_path / "check", [PAGE.name], tmp_path / "model")
    offline_values(tmp_path / "check" / "notebooks" / PAGE.name, tmp_path / "check" / "run")
