"""The printed solutions themselves, run on the tiny random Gemma (or, where a solution needs no model, on
the course's config, or on a rerun's hand-written results): the code a learner copies from the notebook's
solution writes the files its check reads, in the shape the check reads them, or reads the files the reruns
wrote by the paths the notebook writes them to. A check and its solution that drifted apart would show
NOT RUN YET or "could not be read" here. The tiny model learns and knows nothing, so where its numbers decide
the verdict these tests ask for a verdict (PASS or FAIL) read from the files; where the point of the exercise
decides it, for PASS.

Every one of the 28 printed solutions runs here, as far as it is cheap: the solution-type ones whole (00-1
to 05-4, 03-2's file, the faults to break on purpose 03-4 to 03-6), the rerun ones' reading code on the files
tests/test_exercise_checks.py writes as the reruns do. What is left to `make exercises`
(tools/runners/exercises.py): the reruns themselves (03-1, 03-2, 03-3, 04-1, 06-1 to 06-3, 07-1 to 07-3 run
whole notebooks again) and every solution on the embedded model, where the numbers are real."""
from __future__ import annotations

import json
import random
import re
import types
from pathlib import Path

import pytest
import torch
from test_exercise_checks import runs, write  # noqa: F401 - the fixture: a course folder in tmp_path

from gemmate_lib import exercises
from gemmate_lib.exercises import checks_00_03, checks_04_07, judging
from gemmate_lib.guard_rails import files, run_folder

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


def run_solution(name: str, namespace: dict, capsys, *more: str) -> str:
    """Exercise `name`'s solution (after the solutions `more` it builds on) in the lesson's namespace, then
    its check."""
    lesson = {"run_folder": run_folder, "files": files, **namespace}  # the lesson's names the solution uses
    for other in (*more, name):
        exec(compile(solution(other), f"solution {other}", "exec"), lesson)
    capsys.readouterr()
    return exercises.exercise_check(name)


def run_wrong(name: str, old: str, new: str, namespace: dict, capsys) -> str:
    """A wrong attempt at exercise `name`: its solution with `old` replaced by `new`, in the lesson's
    namespace, then its check."""
    wrong = solution(name).replace(old, new)
    assert wrong != solution(name), old
    lesson = {"run_folder": run_folder, "files": files, **namespace}
    exec(compile(wrong, f"wrong solution {name}", "exec"), lesson)
    capsys.readouterr()
    return exercises.exercise_check(name)


def judged(line: str, name: str) -> bool:
    return re.match(rf"exercise {name}: (PASS|FAIL)", line) is not None and "could not be read" not in line


def tiny_cfg(tiny_folder, **settings):
    from gemmate_lib.config import course_config

    return course_config(model_name=str(tiny_folder), device="cpu", dtype="fp32", **settings)


def test_00_1_and_00_2_the_config_solutions_pass(runs, capsys):  # noqa: F811
    from gemmate_lib.config import config_summary, course_config
    from gemmate_lib.guard_rails.errors import ParameterError
    from gemmate_lib.hardware import pick_precision

    lesson = dict(course_config=course_config, config_summary=config_summary, pick_precision=pick_precision,
                  ParameterError=ParameterError, model_name=None, dataset=None)
    for name in ("00-1", "00-2"):
        line = run_solution(name, lesson, capsys)
        assert line.startswith(f"exercise {name}: PASS"), line


@pytest.mark.slow  # a few seconds: loads, NF4 copies, evaluation or training of the tiny model
def test_00_3_three_loads_of_the_tiny_model_each_say_where_its_weights_were(runs, capsys, tiny_folder):  # noqa: F811
    import time

    cfg = tiny_cfg(tiny_folder)
    line = run_solution("00-3", dict(cfg=cfg, time=time, torch=torch), capsys)
    assert judged(line, "00-3"), line  # tiny loads take milliseconds: their ratio is noise
    loads = json.loads((runs / "ex00_3" / "load_seconds.json").read_text())
    assert [load["on_disk"] for load in loads] == [True] * 3  # a model folder is on disk
    assert all(load["checked_at"] <= load["started_at"] for load in loads)  # asked before each load
    assert {load["loaded"] for load in loads} == {"Gemma3ForCausalLM"}  # the model was timed


def test_01_1_counting_the_scales_on_the_tiny_model_passes(runs, capsys, tiny_folder):  # noqa: F811
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from gemmate_lib.hardware import pick_precision

    cfg = types.SimpleNamespace(precision=pick_precision("cpu", "fp32"))
    lesson = dict(AutoModelForCausalLM=AutoModelForCausalLM, BitsAndBytesConfig=BitsAndBytesConfig,
                  torch=torch, cfg=cfg, path=str(tiny_folder), hub_kwargs={})
    line = run_solution("01-1", lesson, capsys)
    assert line.startswith("exercise 01-1: PASS"), line  # 8-bit scales against fp32 ones: the point itself


@pytest.mark.slow  # a few seconds: loads, NF4 copies, evaluation or training of the tiny model
def test_01_2_and_01_3_the_4bit_variants_of_the_tiny_model_are_judged(runs, capsys, tiny_folder,  # noqa: F811
                                                                      tiny_tokenizer):
    """Solution 2 and 3 build on solution 1's `load_4bit` and on the lesson's `sizes` and `losses`."""
    from tiny import ROWS
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from gemmate_lib.evaluation import held_out_loss
    from gemmate_lib.hardware import pick_precision
    from gemmate_lib.models import footprint_mib, load_model

    precision = pick_precision("cpu", "fp32")
    cfg = types.SimpleNamespace(precision=precision)
    full = load_model(str(tiny_folder), precision)
    nf4 = load_model(str(tiny_folder), precision, quantization="nf4")
    sizes = {"fp32 (unquantized)": footprint_mib(full), "NF4 (4-bit)": footprint_mib(nf4)}
    losses = {"unquantized": held_out_loss(full, tiny_tokenizer, ROWS),
              "NF4": held_out_loss(nf4, tiny_tokenizer, ROWS)}
    lesson = dict(AutoModelForCausalLM=AutoModelForCausalLM, BitsAndBytesConfig=BitsAndBytesConfig,
                  torch=torch, cfg=cfg, path=str(tiny_folder), hub_kwargs={}, sizes=sizes, losses=losses,
                  held_out_loss=held_out_loss, footprint_mib=footprint_mib, tokenizer=tiny_tokenizer,
                  data=types.SimpleNamespace(held_out=ROWS))
    for name in ("01-2", "01-3"):
        line = run_solution(name, lesson, capsys, "01-1")
        assert judged(line, name), line


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
    assert all(r["samples"] == 5 for r in json.loads((runs / "ex02_3" / "sampling.json").read_text()))


def test_03_2_the_solution_writes_the_file_the_rerun_reads(runs, capsys):  # noqa: F811
    lesson = {"run_folder": run_folder, "files": files}
    exec(compile(solution("03-2"), "solution 03-2", "exec"), lesson)
    written = runs / "ex03_2" / "my_quotes.jsonl"
    rows = [json.loads(line) for line in written.read_text().splitlines()]
    assert len(rows) == 11 and sum(not r["author"] for r in rows) == 1
    assert f'dataset = "{written}"' in capsys.readouterr().out  # the path the parameters cell takes
    assert judging.EXERCISES["03-2"].parameters[0][1]["dataset"] == "ex03_2/my_quotes.jsonl"


@pytest.mark.slow  # a few seconds: loads, NF4 copies, evaluation or training of the tiny model
def test_04_2_your_own_quotes_on_the_tiny_model_pass(runs, capsys, tiny_model, tiny_tokenizer,  # noqa: F811
                                                     monkeypatch, tmp_path):
    """No file of the learner's: the solution writes eight well-known quotes and evaluates them with 04's
    `tuned` (base + adapter). Run inside `tuned.disable_adapter()`, as 04 evaluates the baseline, it evaluates
    the base model: the check says FAIL."""
    from peft import LoraConfig, get_peft_model

    from gemmate_lib.config import course_config
    from gemmate_lib.data import load_quotes
    from gemmate_lib.evaluation import evaluate_model

    monkeypatch.chdir(tmp_path)  # the notebook's folder, where a file of the learner's would be
    tuned = get_peft_model(tiny_model, LoraConfig(r=2, target_modules=["q_proj"]))
    lesson = dict(load_quotes=load_quotes, evaluate_model=evaluate_model, tuned=tuned,
                  tokenizer=tiny_tokenizer, cfg=course_config(),
                  train_authors=["Albert Einstein", "Oscar Wilde"])
    line = run_solution("04-2", lesson, capsys)
    assert line.startswith("exercise 04-2: PASS"), line  # eight quotes, seen and unseen authors
    with tuned.disable_adapter():  # the wrong attempt: the base model's answers
        line = run_solution("04-2", lesson, capsys)
    assert line.startswith("exercise 04-2: FAIL") and "adapter off" in line, line

    def without_train_authors(*args, train_authors=None, **kwargs):  # the other: no split by author
        return evaluate_model(*args, **kwargs)

    line = run_solution("04-2", {**lesson, "evaluate_model": without_train_authors}, capsys)
    assert line.startswith("exercise 04-2: FAIL") and "pass train_authors" in line, line


def test_04_3_the_resampling_solution_passes(runs, capsys):  # noqa: F811
    rng = random.Random(1)
    a = [rng.random() for _ in range(300)]
    b = [min(1.0, x + rng.gauss(0.1, 0.2)) for x in a]
    lesson = dict(baseline=types.SimpleNamespace(items={"rouge_l": (a, None)}),
                  finetuned=types.SimpleNamespace(items={"rouge_l": (b, None)}))
    line = run_solution("04-3", lesson, capsys)
    assert line.startswith("exercise 04-3: PASS"), line  # ten times the quotes, about sqrt(10) narrower
    widths = json.loads((runs / "ex04_3" / "widths.json").read_text())
    assert all(w["baseline"] == w["fine-tuned"] and len(w["baseline"]) == int(n) for n, w in widths.items())


@pytest.fixture
def merging(tiny_folder, tiny_tokenizer, tmp_path):
    """05's names after its section 3, with a tiny adapter whose B is not zero (so that merging changes the
    weights, as a trained one's does)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from gemmate_lib import fit
    from gemmate_lib.hardware import free_memory, pick_precision
    from gemmate_lib.models import footprint_mib, load_model
    from gemmate_lib.text_generation import STANDARD_PROMPTS, generate

    precision = pick_precision("cpu", "fp32")
    torch.manual_seed(0)
    lora = get_peft_model(load_model(str(tiny_folder), precision),
                          LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    enc = tiny_tokenizer(STANDARD_PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        reference = lora(**enc).logits.float()
        diff = (lora.merge_and_unload()(**enc).logits.float() - reference).abs().max().item()
    return dict(PeftModel=PeftModel, load_model=load_model, generate=generate,
                STANDARD_PROMPTS=STANDARD_PROMPTS, free_memory=free_memory, tokenizer=tiny_tokenizer,
                merge_precision=precision, pick_precision=pick_precision, enc=enc,
                real=enc["attention_mask"].bool(), diff=diff, reference=reference, torch=torch, fit=fit,
                footprint_mib=footprint_mib,
                fits=types.SimpleNamespace(whole_copies=True),  # 05's fit line: the merge fits here
                cfg=types.SimpleNamespace(model=types.SimpleNamespace(model_name=str(tiny_folder))),
                adapter_dir=tmp_path / "adapter")


@pytest.mark.slow  # a few seconds: loads, NF4 copies, evaluation or training of the tiny model
def test_05_1_merging_in_another_dtype_is_judged(runs, capsys, merging):  # noqa: F811
    line = run_solution("05-1", merging, capsys)
    assert judged(line, "05-1"), line
    record = json.loads((runs / "ex05_1" / "merge.json").read_text())
    assert set(record["diffs"]) == {"fp32", "bf16"} and record["reference_vs_section_3"] > 0


@pytest.mark.slow  # a few seconds: loads, NF4 copies, evaluation or training of the tiny model
@pytest.mark.parametrize("name", ["05-1", "05-4"])
def test_a_merge_measured_against_section_3s_logits_fails(runs, capsys, merging, name):  # noqa: F811
    """The wrong attempt: the merge compared with section 3's 16/32-bit `reference`, not with the same model
    before merging in the merge's dtype (bf16; the 4-bit base)."""
    line = run_wrong(name, "before = unmerged(**enc).logits.float()", "before = reference",
                     {**merging, "tolerance": checks_04_07.MERGE_TOLERANCE["fp32"]}, capsys)
    assert line.startswith(f"exercise {name}: FAIL") and "compared with section 3's logits" in line, line


@pytest.mark.slow  # a few seconds: loads, NF4 copies, evaluation or training of the tiny model
def test_05_2_a_third_adapter_on_the_tiny_model_is_judged(runs, capsys, merging, tiny_folder,  # noqa: F811
                                                          tiny_tokenizer, tmp_path):
    """Two tiny training steps: the third adapter joins the lesson's two (section 6's `both`) on one base. One
    copy of the base at a time: section 6's is gone before the solution loads another (two NF4 copies of Gemma
    4 E2B overflow a free Colab's RAM)."""
    import gc
    import shutil
    import weakref

    from tiny import ROWS

    from gemmate_lib.adapters import load_adapter, save_adapter
    from gemmate_lib.training import train_lora

    out = tmp_path / "lesson"  # the lesson's run folder: section 6's second adapter in it
    shutil.copytree(merging["adapter_dir"], out / "adapter_reverse")
    base = merging["load_model"](str(tiny_folder), merging["merge_precision"])
    both = load_adapter(base, merging["adapter_dir"], adapter_name="quotes")
    both.load_adapter(out / "adapter_reverse", adapter_name="reverse")
    short = tiny_cfg(tiny_folder, max_steps=2, batch_size=2, steps_freq=1)
    held = weakref.ref(base)  # section 6's base, held by `both` alone

    def load_model(*args, **kwargs):
        gc.collect()
        assert held() is None, "section 6's copy of the base is still held while the solution loads another"
        return merging["load_model"](*args, **kwargs)

    reverse = [{**r, "text": f"Author: {r['author']}\nQuote: {r['quote']}"} for r in ROWS]  # section 6's
    lesson = {**merging, "run_folder": run_folder, "files": files, "cfg": tiny_cfg(tiny_folder), "out": out,
              "data": types.SimpleNamespace(train=ROWS), "reverse": reverse, "short": short, "both": both,
              "load_model": load_model, "train_lora": train_lora, "save_adapter": save_adapter,
              "load_adapter": load_adapter}
    del base, both  # the lesson's namespace holds the only reference, as in the notebook
    exec(compile(solution("05-2"), "solution 05-2", "exec"), lesson)
    capsys.readouterr()
    line = exercises.exercise_check("05-2")
    assert judged(line, "05-2") and "the third trained" in line, line  # two steps move B off zero
    written = json.loads((runs / "ex05_2" / "generations.json").read_text())
    assert sorted(written) == ["quotes", "reverse", "said"]
    trained_on = json.loads((runs / "ex05_2" / "trained_on.json").read_text())
    assert sorted(trained_on) == sorted(written) and len(set(trained_on.values())) == 3


def test_05_3_the_timing_solution_records_what_it_timed(runs, capsys, merging):  # noqa: F811
    line = run_solution("05-3", merging, capsys)
    assert judged(line, "05-3"), line
    timing = json.loads((runs / "ex05_3" / "timing.json").read_text())
    assert timing["lora_layers_adapter"] == 2 and timing["lora_layers_merged"] == 0  # two layers' q_proj
    assert 0.9 < timing["merged_mib"] / timing["adapter_mib"] < 1  # one precision, less the LoRA matrices
    assert [timing[f"{key}_{m}"] for m in ("adapter", "merged") for key in ("timed_runs", "warm_up")] == [
        2, True, 2, True]  # each after a warm-up, the faster of two timed runs


def test_05_3_one_timing_each_fails(runs, capsys, merging):  # noqa: F811
    """The wrong attempt: each model timed once (a single timing, its set-up included)."""
    line = run_wrong("05-3", "runs=2", "runs=1", merging, capsys)
    assert line.startswith("exercise 05-3: FAIL") and "timed 1 time(s)" in line, line


@pytest.mark.parametrize("name", ["05-1", "05-3", "05-4"])
def test_a_solution_that_needs_the_skipped_merge_says_so_in_one_line(runs, capsys, name):  # noqa: F811
    """Gemma 4 E2B on a free T4: section 3 skips the merge, so merge_precision, enc, real and diff were never
    bound; the solution names what runs it instead of stopping with a NameError."""
    from peft import PeftModel

    from gemmate_lib import fit
    from gemmate_lib.config import course_config
    from gemmate_lib.hardware import free_memory, pick_precision
    from gemmate_lib.models import load_model

    # what 05 binds on that path: section 3's imports, and None for what its merge would have made
    lesson = {"run_folder": run_folder, "files": files, "fit": fit, "torch": torch, "PeftModel": PeftModel,
              "pick_precision": pick_precision, "free_memory": free_memory, "load_model": load_model,
              "cfg": course_config(), "merged": None, "diff": None, "tolerance": None,
              "fits": types.SimpleNamespace(whole_copies=False)}
    exec(compile(solution(name), f"solution {name}", "exec"), lesson)
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == [f"exercise {name} needs section 3's merge, which this runtime skipped: run it on "
                       f"{fit.BIGGER}, or with google/gemma-3-1b-pt as the course's model (00)"]
    assert exercises.exercise_check(name).startswith(f"exercise {name}: NOT RUN YET")


# ---- break it on purpose: each solution breaks one batch or one copy, and the course's check catches it ----


@pytest.fixture
def preflighting(tiny_folder, tiny_tokenizer):
    """03's names after *Run all* on the tiny model: section 4's first batch as the trainer's collator makes
    it (text + <eos>, labels as the input ids, padding -100), the tokenizer, the config, and `max_start_loss`
    at a level a random tiny model passes (it starts at chance, which a real base never does)."""
    from tiny import ROWS
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from gemmate_lib.data import to_dataset

    rows = to_dataset(ROWS, tiny_tokenizer)
    batch = DataCollatorForLanguageModeling(pad_token_id=tiny_tokenizer.pad_token_id)(list(rows))
    return dict(batch=batch, tokenizer=tiny_tokenizer, cfg=tiny_cfg(tiny_folder), max_start_loss=3.0)


@pytest.mark.parametrize("name, stopped_at", [("03-4", "share of labelled tokens"),
                                              ("03-5", "end token inside the mask"),
                                              ("03-6", "logits with and without the KV cache")])
def test_03s_faults_made_on_the_tiny_model_are_caught_by_the_preflight(runs, capsys, preflighting,  # noqa: F811
                                                                       name, stopped_at):
    """Each solution loads a fresh copy (the lesson freed section 4's), breaks the batch or the copy, and
    the pre-flight stops at the line that names the fault, which the solution records with the fault."""
    batch = {k: v.clone() for k, v in preflighting["batch"].items()}
    line = run_solution(name, preflighting, capsys)
    assert line.startswith(f"exercise {name}: PASS"), line
    record = json.loads((runs / f"ex{name.replace('-', '_')}" / "fault.json").read_text())
    assert record["stopped_by"]["check"] == stopped_at and record["stopped_by"]["line"].startswith(
        f"pre-flight check failed: {stopped_at} is ")
    assert all(torch.equal(batch[k], preflighting["batch"][k]) for k in batch)  # section 4's batch unchanged
    if name == "03-6":  # only the uncached path broken: the cached one gives the sound copy's logits
        assert record["cached_gap"] < checks_00_03.CACHE_FAULT <= record["gap"]


def test_03_6_noise_on_every_pass_fails(runs, capsys, preflighting):  # noqa: F811
    """The wrong attempt: the wrap noises every forward pass, the cached one too, which the pre-flight's KV
    cache line sees the same (the two paths disagree); only the record of the cached path tells it."""
    line = run_wrong("03-6", 'if kwargs.get("use_cache") is False:', "if True:", preflighting, capsys)
    assert line.startswith("exercise 03-6: FAIL") and "the cached one is broken too" in line, line


@pytest.mark.slow  # a few seconds: loads, NF4 copies, evaluation or training of the tiny model
def test_05_4_merging_into_the_4bit_base_is_caught_by_05s_merge_check(runs, capsys, merging):  # noqa: F811
    """The tiny adapter merged into an NF4 copy of the tiny base: its logits move past section 3's fp32
    tolerance, which the 16/32-bit merge (the fixture's `diff`) stays within."""
    line = run_solution("05-4", {**merging, "tolerance": checks_04_07.MERGE_TOLERANCE["fp32"]}, capsys)
    assert line.startswith("exercise 05-4: PASS"), line
    record = json.loads((runs / "ex05_4" / "fault.json").read_text())
    assert record["base_4bit"] is True and record["diff"] > record["tolerance"] > merging["diff"]
    assert record["reference_vs_section_3"] > 0  # compared with the 4-bit model before merging


def test_the_fit_lines_answer_for_the_faults_too(tiny_folder):
    """03 and 05 print a fit line for each exercise, those to break on purpose included (the lesson's copies:
    each loads one copy after the lesson freed its own)."""
    for prefix, names in (("03", ["03-4", "03-5", "03-6"]), ("05", ["05-4"])):
        lines = exercises.fit_lines(prefix, tiny_cfg(tiny_folder)).splitlines()
        assert [line.split(":")[0] for line in lines][-len(names):] == [f"exercise {n}" for n in names]
        assert all(" fits this CPU with " in line for line in lines[-len(names):]), lines


READING = ["04-1", "06-1", "06-2", "06-3", "07-1", "07-2", "07-3"]  # rerun exercises whose solutions read


@pytest.mark.parametrize("name", READING)
def test_a_rerun_exercises_solution_reads_what_the_reruns_wrote(runs, name, capsys, monkeypatch):  # noqa: F811
    """Its reading code, on the files the reruns write (hand-written as in test_exercise_checks): it finds
    them by the notebook's paths, and leaves the check's verdict as it was (create=False: it records nothing).
    """
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    write(runs, name)
    before = exercises.exercise_check(name)
    line = run_solution(name, {"pd": pd, "json": json}, capsys)
    assert line == before and line.startswith(f"exercise {name}: PASS"), line
    monkeypatch.setitem(run_folder._KERNEL, "model_name", "another/model")
    names = {"run_folder": run_folder, "pd": pd, "json": json}
    exec(compile(solution(name), f"solution {name}", "exec"), names)
    assert not exercises.exercise_check(name).startswith(f"exercise {name}: PASS")  # reading stamps nothing
