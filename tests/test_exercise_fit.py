"""What gemmate_lib/exercises decides outside the 28 rules: whether an exercise fits the learner's runtime and
model (its fit line, from the fit table tools/fit/exercise_fit.py commits and the measured copies), whether a
model's weights are on this machine already (00-3's record), and a fault exercise's stop line. Hand-made
measurements, manifests and files; the Hub's cache faked at huggingface_hub's function."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from gemmate_lib import exercises, fit
from gemmate_lib.exercises import checks_00_03, judging
from gemmate_lib.hardware import Precision
from tools.fit import exercise_fit


@pytest.fixture(scope="module")
def e2b():
    from tools.fit.full_shape import config_of

    return fit.shape_of(config_of("gemma-4-E2B"))


WHOLE = {"copies": ["whole"], "loading": 0, "training": False}
NF4 = {"copies": ["nf4-fp32"], "loading": 0, "training": False}


def _data(**notebooks) -> dict:
    """A measured-copies document: {stem: [moments]}, each notebook leaving out its 16/32-bit part."""
    return {"kernel_bytes": int(0.6e9), "notebooks": {
        stem: {"moments": list(moments), "without_whole": "its 16/32-bit part"} for stem, moments in
        notebooks.items()}}


def _need(stem, shape, data, params):
    return fit.notebook_need(stem, shape, 4, data, False, fit.parts_of(stem, params))


def _fit(name, shape, runtime, data, cpu=False):
    """exercise_fit with the fit table's row that tools/fit/exercise_fit.py computes from `data`."""
    row = {name: exercise_fit.entry(name, data)}
    return exercises.exercise_fit(name, shape, 4, runtime, data, cpu=cpu, table=row)


def test_the_committed_fit_table_is_what_the_tool_computes_now():
    """gemmate_lib/exercises/fit_table.json cannot drift from the exercises' registry and the committed
    copies: `python -m tools.fit.exercise_fit` regenerates it."""
    assert exercises.fit_table() == exercise_fit.table()
    assert exercise_fit.main(["--check"]) == 0
    assert list(exercises.fit_table()) == list(judging.EXERCISES)  # every exercise, in the course's order


def test_an_exercise_that_does_not_read_the_left_out_part_fits_without_it(e2b):
    data = _data(**{"05_save_and_push": [WHOLE, NF4]})
    need = _need("05_save_and_push", e2b, data, {"exercise": "05-2"})
    assert fit.fit_answer(need) == "without its 16/32-bit part"
    assert _fit("05-2", e2b, fit.FREE_COLAB, data) == {
        "fits": True, "gpu": need.gpu_without_whole, "ram": need.ram_without_whole, "why": ""}


def test_an_exercise_that_reads_the_left_out_part_does_not_fit_and_says_which(e2b):
    data = _data(**{"05_save_and_push": [WHOLE, NF4]})
    need = _need("05_save_and_push", e2b, data, {"exercise": "05-1"})
    assert _fit("05-1", e2b, fit.FREE_COLAB, data) == {
        "fits": False, "gpu": need.gpu, "ram": need.ram,
        "why": f"it needs 05's merge (a 16/32-bit copy): about {need.gpu / fit.GIB:.1f} GiB"}


def test_a_solution_that_loads_a_whole_copy_itself_needs_it(e2b):
    own = {**WHOLE, "part": "exercise 05-2"}
    data = _data(**{"05_save_and_push": [NF4, WHOLE, own]})
    need = _need("05_save_and_push", e2b, data, {"exercise": "05-2"})
    assert _fit("05-2", e2b, fit.FREE_COLAB, data) == {
        "fits": False, "gpu": need.gpu, "ram": need.ram,
        "why": f"it needs a 16/32-bit copy of the model: about {need.gpu / fit.GIB:.1f} GiB"}
    # another exercise's whole copy is not this one's
    other = _data(**{"04_evaluation": [NF4, WHOLE, {**WHOLE, "part": "exercise 04-3"}]})
    assert _fit("04-2", e2b, fit.FREE_COLAB, other)["fits"] is True
    # a solution that holds a second 4-bit copy beside the lesson's: E2B's two do not fit a T4
    second = {**NF4, "copies": ["nf4-fp32", "nf4-fp32"], "part": "exercise 04-2"}
    two = _data(**{"04_evaluation": [NF4, second]})
    answer = _fit("04-2", e2b, fit.FREE_COLAB, two)
    assert not answer["fits"] and answer["why"].startswith("04 itself needs about")


def test_an_exercise_whose_notebook_does_not_fit_says_so(e2b):
    data = {"kernel_bytes": int(0.6e9), "notebooks": {"01_load_4bit": {"moments": [WHOLE]}}}
    need = _need("01_load_4bit", e2b, data, {"exercise": "01-1"})
    assert _fit("01-1", e2b, fit.FREE_COLAB, data) == {
        "fits": False, "gpu": need.gpu, "ram": need.ram,
        "why": f"01 itself needs about {need.gpu / fit.GIB:.1f} GiB"}


def test_a_rerun_exercise_needs_the_most_of_its_runs():
    """04-1 reruns 03, then 04; with copies that fit (Gemma 3 1B), its peak is the larger run's."""
    from tools.fit.full_shape import config_of

    small = fit.shape_of(config_of("gemma-3-1b-pt"))
    data = _data(**{"03_lora_sft": [NF4], "04_evaluation": [NF4, {**WHOLE, "copies": ["whole", "nf4-fp32"]}]})
    needs = [_need(stem, small, data, params) for stem, params in exercise_fit.exercise_runs("04-1")]
    assert needs[1].gpu > needs[0].gpu and needs[1].ram > needs[0].ram
    assert _fit("04-1", small, fit.FREE_COLAB, data) == {
        "fits": True, "gpu": needs[1].gpu, "ram": needs[1].ram, "why": ""}


def test_on_a_cpu_an_exercise_needs_ram_only(e2b):
    data = _data(**{"04_evaluation": [NF4]})
    answer = _fit("04-2", e2b, {**fit.FREE_COLAB, "gpu_bytes": None, "ram_bytes": 1e12}, data, cpu=True)
    assert answer["fits"] and answer["gpu"] == 0.0 and answer["ram"] > 0


def test_a_lesson_exercise_is_measured_as_its_solution_after_the_lesson():
    assert exercise_fit.exercise_runs("05-2") == [("05_save_and_push", {"exercise": "05-2"})]
    assert exercise_fit.entry("05-2") == {"runs": [["05_save_and_push", ["exercise 05-2"], 8]], "needs": ""}
    # a rerun exercise's runs: its parameters' parts and LoRA rank, each run
    runs = exercise_fit.entry("06-2")["runs"]
    assert runs == [["06_compare_methods", [], 8], ["06_compare_methods", [], 128]]


def test_registering_an_exercise_builds_its_spec(monkeypatch):
    monkeypatch.setattr(judging, "EXERCISES", {})

    def rule(ex, lesson):
        return True, ""

    assert judging.exercise("99-1", ("a.json",), "section 9", "it works", folders=("ex99_1a",),
                            lesson=("b.json",), parameters=(("03_lora_sft", {"lora_r": 2}),))(rule) is rule
    spec = judging.EXERCISES["99-1"]
    assert spec == judging.exercise_spec("99-1", rule, ("a.json",), "section 9", "it works", ("ex99_1a",),
                                         ("b.json",), (("03_lora_sft", {"lora_r": 2}),))
    judging.exercise("99-2", "c.json", "run solution 2", "it works too")(rule)
    assert judging.EXERCISES["99-2"].folders == ("ex99_2",)  # its own folder, by its name


def test_the_28_checks_register_in_the_courses_order():
    names = list(judging.EXERCISES)
    assert len(names) == 28 and names == sorted(names) and names[0] == "00-1" and names[-1] == "07-3"


# ---- the fit lines a notebook prints above its exercises ----

def _cfg(name, device="cuda", dtype=torch.float16):
    return SimpleNamespace(model=SimpleNamespace(model_name=name), precision=Precision(device, dtype, "x"))


def test_each_exercise_gets_a_fit_line_on_a_gpu(tmp_path, e2b, monkeypatch):
    from tools.fit.full_shape import config_of

    config_of("gemma-4-E2B").save_pretrained(tmp_path)
    monkeypatch.setattr(fit, "measured", lambda: _data(**{"05_save_and_push": [WHOLE, NF4]}))
    lines = exercises.fit_lines("05", _cfg(str(tmp_path), dtype=torch.float32), fit.FREE_COLAB).splitlines()
    assert [line.split(":")[0] for line in lines] == [f"exercise 05-{i}" for i in (1, 2, 3, 4)]
    place = f"T4 ({fit.FREE_COLAB['gpu_bytes'] / fit.GIB:.1f} GiB)"
    two = exercises.exercise_fit("05-2", e2b, 4, fit.FREE_COLAB, fit.measured())
    assert lines[1] == (f"exercise 05-2: fits {place} with {tmp_path} (peak about {two['gpu'] / fit.GIB:.1f} "
                        f"GiB of GPU memory, {two['ram'] / 1e9:.1f} GB of RAM, estimates)")
    one = exercises.exercise_fit("05-1", e2b, 4, fit.FREE_COLAB, fit.measured())
    assert lines[0] == (f"exercise 05-1: does not fit {place} with {tmp_path}: {one['why']} (an estimate). "
                        f"Skip it here, or do it with google/gemma-3-1b-pt as the course's model (00), or on "
                        f"{fit.BIGGER}")


def test_on_a_cpu_the_fit_line_names_this_cpu_and_ram_only(tmp_path, monkeypatch):
    from tools.fit.full_shape import config_of

    config_of("gemma-3-1b-pt").save_pretrained(tmp_path)
    monkeypatch.setattr(fit, "measured", lambda: _data(**{"03_lora_sft": [NF4], "04_evaluation": [NF4]}))
    roomy = {**fit.FREE_COLAB, "ram_bytes": 1e12}
    line = exercises.fit_lines("04", _cfg(str(tmp_path), "cpu", torch.float32), roomy).splitlines()[1]
    need = exercises.exercise_fit("04-2", fit.shape_of(config_of("gemma-3-1b-pt")), 4, roomy, cpu=True)
    assert line == (f"exercise 04-2: fits this CPU with {tmp_path} (peak about {need['ram'] / 1e9:.1f} GB of "
                    "RAM, estimates)")


def test_a_gated_models_config_is_read_with_the_learners_token_for_the_exercises(monkeypatch):
    from transformers import AutoConfig

    from tools.fit.full_shape import config_of

    asked = []
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr(AutoConfig, "from_pretrained",
                        lambda where, **kwargs: asked.append((where, kwargs)) or config_of("gemma-2b"))
    exercises.fit_lines("04", _cfg("google/gemma-2b"), fit.FREE_COLAB)
    assert asked == [("google/gemma-2b", {"token": "hf_not_a_real_token"})]


# ---- 00-3: are the weights on this machine already? ----

def model_on_disk(name: str) -> bool:
    """00-3's solution's own `model_on_disk` (the code before its loads), as the learner copies it."""
    from test_exercise_solutions import solution

    scope = {}
    exec(compile(solution("00-3").split("\nex = ")[0], "solution 00-3", "exec"), scope)  # noqa: S102
    return scope["model_on_disk"](name)


def test_the_embedded_model_is_on_disk_once_converted(tmp_path, monkeypatch):
    from gemmate_lib import models
    from gemmate_lib.config import EMBEDDED

    monkeypatch.setattr(models, "cache_dir", lambda: tmp_path)
    assert not model_on_disk(EMBEDDED)
    (tmp_path / "gemma-3-270m").mkdir()
    (tmp_path / "gemma-3-270m" / "model.safetensors").write_bytes(b"x")
    assert model_on_disk(EMBEDDED)
    assert model_on_disk(str(tmp_path))  # a local folder


@pytest.mark.parametrize("cache, on_disk", [
    ({}, False),
    ({"model.safetensors": "blob"}, True),
    ({"model.safetensors.index.json": {"a": "s1", "b": "s2"}, "s1": "blob", "s2": "blob"}, True),
    ({"model.safetensors.index.json": {"a": "s1", "b": "s2"}, "s1": "blob"}, False),  # one shard not fetched
    ({"model.safetensors.index.json": {}, "model.safetensors": "blob"}, False),  # an index with no shards
    ({"model.safetensors.index.json": None, "model.safetensors": "blob"}, False),  # one with no weight map
    ({"model.safetensors": object()}, False),  # the cache's "known not to exist" marker
])
def test_a_hub_model_is_on_disk_when_every_weight_file_is_in_the_cache(tmp_path, monkeypatch, cache, on_disk):
    import huggingface_hub

    def try_to_load_from_cache(repo_id, filename):
        assert repo_id == "google/gemma-2b"
        value = cache.get(filename)
        if isinstance(value, dict) or (value is None and filename in cache):
            path = tmp_path / filename
            mapped = {"weight_map": value} if value is not None else {}
            path.write_text(json.dumps({"metadata": {}, **mapped}))
            return str(path)
        return str(tmp_path / filename) if value == "blob" else value

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", try_to_load_from_cache)
    assert model_on_disk("google/gemma-2b") is on_disk


# ---- a fault exercise's stop, and 03's Author lines ----

def test_a_stop_in_another_shape_or_at_another_line_is_named():
    with pytest.raises(TypeError, match="^stopped_by is a list, not a dict$"):
        checks_00_03._stopped({"stopped_by": [1]}, ("a",), "the fault", "made")
    stop = {"check": "loss", "value": "9.1", "expected": "< 8"}
    ok, said = checks_00_03._stopped({"stopped_by": stop}, ("labels", "rows"), "the fault", "made")
    assert not ok and said == ("made; the pre-flight stopped at 'loss': 9.1 (expected < 8) (not a line that "
                               "names this fault: 'labels' or 'rows')")


def test_an_author_line_counts_from_the_prompt_and_completion_together(tmp_path):
    pd.DataFrame({"prompt": ["Quote: a\nAuthor:", "Quote: b\n", "Quote: b2\n", "Quote: c\nAuthor:",
                             "Quote: d\nAuthor:"],
                  "completion": [" Oscar Wilde", "Author: Maya Angelou", "Author: Rumi", "", "NA"]}).to_csv(
        tmp_path / "generations_after.csv", index=False)
    # an empty completion names nobody; "NA" is a name as written
    assert checks_00_03._authored(tmp_path) == 4
