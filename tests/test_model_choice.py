"""One place to choose the model: 00_setup keeps a model named in its parameters in the run folder (on Google
Drive in Colab), 01-07 run it when their own `model_name` is None, and a notebook's own parameter wins (a
papermill `-p model_name ...` included). Before, switching models meant editing eight parameter cells."""
import ast
import json
from pathlib import Path

import pytest

from gemmate_lib.guard_rails import run_folder
from gemmate_lib.guard_rails.errors import ParameterError

ROOT = Path(__file__).resolve().parents[1]
LATER = sorted((ROOT / "notebooks").glob("0[1-7]_*.ipynb"))


@pytest.fixture()
def lesson(tmp_path, monkeypatch):
    """The lesson's run folder, as `make course` or a learner's session names it."""
    folder = tmp_path / "runs" / "interactive"
    folder.mkdir(parents=True)
    monkeypatch.setenv("GEMMATE_RUN_DIR", str(folder))
    return folder


def test_the_model_named_in_00_is_run_later_and_a_notebooks_own_parameter_wins(lesson, tmp_path, capsys):
    assert run_folder.chosen_model(None) is None  # nothing chosen: the profile decides
    assert "profile decides" in run_folder.remember_model(lesson, None)
    assert not (lesson / run_folder.MODEL_CHOICE).exists()  # None keeps nothing

    run_folder.remember_model(lesson, "google/gemma-3-1b-pt")  # 00 with model_name = "google/gemma-3-1b-pt"
    assert run_folder.chosen_model(None) == "google/gemma-3-1b-pt"
    assert "chosen in 00_setup" in capsys.readouterr().out  # the notebook says where the model came from
    assert run_folder.chosen_model("google/gemma-2b") == "google/gemma-2b"  # a notebook's own parameter wins

    exercise = tmp_path / "runs" / "ex03_1"  # an exercise's own run folder: the lesson's choice
    assert run_folder.chosen_model(None, exercise) == "google/gemma-3-1b-pt"
    run_folder.remember_model(exercise, "embedded")  # a run folder's own choice comes first
    assert run_folder.chosen_model(None, exercise) == "embedded"

    (lesson / run_folder.MODEL_CHOICE).write_text("google/gemma-2b")  # hand-edited into something else
    with pytest.raises(ParameterError, match="model choice"):
        run_folder.chosen_model(None)


def _setup_until_config(notebook: Path) -> tuple[str, str]:
    """The parameters cell, and the notebook's setup code up to its first `cfg = course_config(...)`."""
    cells = json.loads(notebook.read_text())["cells"]
    params = next("".join(c["source"]) for c in cells if "parameters" in c["metadata"].get("tags", []))
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and "cfg = course_config(" in source:
            kept = []
            for node in ast.parse(source).body:
                kept.append(node)
                targets = [getattr(t, "id", None) for t in getattr(node, "targets", [])]
                if isinstance(node, ast.Assign) and "cfg" in targets:
                    return params, ast.unparse(ast.Module(body=kept, type_ignores=[]))
    raise AssertionError(f"{notebook.name} has no cfg = course_config(...)")


@pytest.mark.parametrize("notebook", LATER, ids=lambda p: p.stem)
def test_each_later_notebook_configures_the_model_chosen_in_00(notebook, lesson, tiny_folder, capsys):
    run_folder.remember_model(lesson, str(tiny_folder))  # 00 with model_name = the tiny Gemma's folder
    params, setup = _setup_until_config(notebook)
    # each pair: the notebook's own model_name, the model its config then names (None: 00's; a parameter wins)
    for given, runs in ((None, str(tiny_folder)), ("embedded", "embedded")):
        scope = {}
        exec(params, scope)
        scope["model_name"] = given
        exec(setup, scope)
        assert scope["cfg"].model.model_name == runs, (notebook.name, given)


@pytest.mark.parametrize("notebook", ["04_evaluation", "05_save_and_push"])
def test_04_and_05_evaluate_on_the_split_and_base_that_03_trained_with(notebook, lesson, tiny_folder):
    """04 and 05 take 03's recorded dataset, split and quantization (its manifest entry) when theirs are None:
    with the profile's data_seed after 03 trained with data_seed=7, 26 of 04's 29 "held-out" quotes were
    quotes the adapter trained on. Another seed or fraction on 03's dataset stops with the fix."""
    from gemmate_lib.config import config_summary, course_config

    trained = course_config(model_name=str(tiny_folder), data_seed=7, eval_fraction=0.2, quantization="nf4",
                            max_length=96)
    run_folder.update_manifest(lesson, "03_lora_sft", config=config_summary(trained))
    params, setup = _setup_until_config(ROOT / "notebooks" / f"{notebook}.ipynb")
    scope = {}
    exec(params, scope)
    scope["model_name"] = str(tiny_folder)
    exec(setup, scope)
    cfg = scope["cfg"]
    assert (cfg.data.data_seed, cfg.data.eval_fraction, cfg.model.quantization, cfg.train.max_length) == (
        7, 0.2, "nf4", 96)
    scope["data_seed"] = 42  # the profile's seed, given on purpose
    with pytest.raises(ParameterError, match="03 trained with data_seed=7"):
        exec(setup, scope)
    other = lesson.parent / "mine.jsonl"
    other.write_text('{"quote": "Be kind.", "author": "Me"}\n{"quote": "Be brave.", "author": "You"}\n')
    scope |= {"data_seed": 42, "dataset": str(other)}
    exec(setup, scope)  # another dataset: its own rows, split with the seed given
    assert (scope["cfg"].data.dataset, scope["cfg"].data.data_seed, scope["cfg"].model.quantization) == (
        str(other), 42, "nf4")
