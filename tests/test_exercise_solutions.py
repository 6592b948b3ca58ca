"""The printed solutions themselves, run on the tiny random Gemma (or, where a solution needs no model, on
the course's config): the code a learner copies from the notebook's solution writes the files its check reads,
in the shape the check reads them. A check and its solution that drifted apart would show NOT RUN YET or
"could not be read" here. The tiny model learns and knows nothing, so where its numbers decide the verdict
these tests ask for a verdict (PASS or FAIL) read from the files; where the point of the exercise decides it,
for PASS."""
from __future__ import annotations

import json
import random
import re
import types
from pathlib import Path

import pytest
import torch
from test_exercise_checks import runs  # noqa: F401 - the fixture: a course folder in tmp_path

from gemmate_lib import exercises, files, run_folder

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")  # the tiny model's 64-wide matrices: one thread is fastest


def solution(name: str) -> str:
    """The code of exercise `name`'s printed solution ("02-1": notebook 02's "Solution to 1")."""
    nb, k = name.split("-")
    path = next((ROOT / "notebooks").glob(f"{nb}_*.ipynb"))
    for cell in json.loads(path.read_text())["cells"]:
        text = "".join(cell["source"])
        if cell["cell_type"] == "markdown" and f"<summary>Solution to {k}" in text:
            return re.search(r"```python\n(.*?)```", text, re.S)[1]
    raise LookupError(name)


def run_solution(name: str, namespace: dict, capsys) -> str:
    lesson = {"run_folder": run_folder, "files": files, **namespace}  # the lesson's names the solution uses
    exec(compile(solution(name), f"solution {name}", "exec"), lesson)
    capsys.readouterr()
    return exercises.exercise_check(name)


def judged(line: str, name: str) -> bool:
    return re.match(rf"exercise {name}: (PASS|FAIL)", line) is not None and "could not be read" not in line


def test_00_1_and_00_2_the_config_solutions_pass(runs, capsys):  # noqa: F811
    from gemmate_lib.config import config_summary, course_config
    from gemmate_lib.errors import ParameterError
    from gemmate_lib.hardware import pick_precision

    lesson = dict(course_config=course_config, config_summary=config_summary, pick_precision=pick_precision,
                  ParameterError=ParameterError, model_name=None, dataset=None)
    for name in ("00-1", "00-2"):
        line = run_solution(name, lesson, capsys)
        assert line.startswith(f"exercise {name}: PASS"), line


def test_01_1_counting_the_scales_on_the_tiny_model_passes(runs, capsys, tiny_folder):  # noqa: F811
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from gemmate_lib.hardware import pick_precision

    cfg = types.SimpleNamespace(precision=pick_precision("cpu", "fp32"))
    lesson = dict(AutoModelForCausalLM=AutoModelForCausalLM, BitsAndBytesConfig=BitsAndBytesConfig,
                  torch=torch, cfg=cfg, path=str(tiny_folder), hub_kwargs={})
    line = run_solution("01-1", lesson, capsys)
    assert line.startswith("exercise 01-1: PASS"), line  # 8-bit scales against fp32 ones: the point itself


@pytest.fixture
def generating(tiny_model, tiny_tokenizer):
    from gemmate_lib.config import course_config
    from gemmate_lib.text_generation import STANDARD_PROMPTS, generate

    return dict(model=tiny_model, tokenizer=tiny_tokenizer, generate=generate,
                STANDARD_PROMPTS=STANDARD_PROMPTS, cfg=course_config(), torch=torch)


def test_02_1_and_02_2_the_generation_solutions_pass_on_the_tiny_model(runs, capsys, generating):  # noqa: F811
    for name in ("02-1", "02-2"):  # 10 and 80 new tokens; two prompts of the learner's own
        line = run_solution(name, generating, capsys)
        assert line.startswith(f"exercise {name}: PASS"), line


def test_02_3_the_sampling_solution_is_judged(runs, capsys, generating):  # noqa: F811
    greedy = generating["generate"](generating["model"], generating["tokenizer"], max_new_tokens=40)
    line = run_solution("02-3", {**generating, "baseline": greedy}, capsys)
    assert judged(line, "02-3"), line


def test_04_3_the_resampling_solution_passes(runs, capsys):  # noqa: F811
    rng = random.Random(1)
    a = [rng.random() for _ in range(300)]
    b = [min(1.0, x + rng.gauss(0.1, 0.2)) for x in a]
    lesson = dict(baseline=types.SimpleNamespace(items={"rouge_l": (a, None)}),
                  finetuned=types.SimpleNamespace(items={"rouge_l": (b, None)}))
    line = run_solution("04-3", lesson, capsys)
    assert line.startswith("exercise 04-3: PASS"), line  # ten times the quotes, about sqrt(10) narrower


def test_05_3_the_timing_solution_records_what_it_timed(runs, capsys, tiny_folder, tiny_tokenizer,  # noqa: F811
                                                        tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    from gemmate_lib.hardware import free_memory, pick_precision
    from gemmate_lib.models import load_model
    from gemmate_lib.text_generation import STANDARD_PROMPTS, generate

    precision = pick_precision("cpu", "fp32")
    lora = get_peft_model(load_model(str(tiny_folder), precision), LoraConfig(r=2, target_modules=["q_proj"]))
    lora.save_pretrained(tmp_path / "adapter")
    lesson = dict(PeftModel=PeftModel, load_model=load_model, generate=generate,
                  STANDARD_PROMPTS=STANDARD_PROMPTS, free_memory=free_memory, tokenizer=tiny_tokenizer,
                  merge_precision=precision,
                  cfg=types.SimpleNamespace(model=types.SimpleNamespace(model_name=str(tiny_folder))),
                  adapter_dir=tmp_path / "adapter")
    line = run_solution("05-3", lesson, capsys)
    assert judged(line, "05-3"), line
    timing = json.loads((runs / "ex05_3" / "timing.json").read_text())
    assert timing["lora_layers_adapter"] == 2 and timing["lora_layers_merged"] == 0  # two layers' q_proj
