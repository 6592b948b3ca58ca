"""Is my run normal? (gemmate_lib/reference.py, tools/runners/reference_runs.py): a run inside its bands reads
normal, each figure outside its band is named with what to check, another model, runtime or settings gets no
verdict, the figures come from the run's own files (the learner's manifest stays as the run wrote it; the
tool's own cell keeps the record), and the committed bands were measured for the three notebooks."""
import json
from pathlib import Path

import pandas as pd
import pytest

from gemmate_lib import reference
from gemmate_lib.config import config_summary, course_config
from gemmate_lib.guard_rails import run_folder
from tools.runners.reference_runs import band_of, merge, record_of, with_record_cell

MACHINE = "2-core CPU with AVX512_BF16"
FIGURES = {"03_lora_sft": {"held_out_loss": 2.48, "seconds_per_step": 1.6, "peak_memory_gib": 3.9},
           "04_evaluation": {"format_share": 1.0, "perplexity": 12.3, "peak_memory_gib": 2.2},
           "07_temporal_encoding": {"year_accuracy": 0.91, "year_accuracy_constant": 0.07,
                                    "python_accuracy": 0.98, "seconds_per_step": 0.7, "peak_memory_gib": 4.1}}
SETTINGS = {"max_steps": 40, "batch_size": 8, "learning_rate": 0.0002, "lora_r": 8}
QUIET = {"seconds": 100.0, "load_average_before": 0.1, "load_average_during": 2.1}  # a notebook run alone


def record(notebook, figures=None, model="embedded", runtime=None, machine=MACHINE, **settings):
    return {"notebook": notebook, "model": model, "runtime": runtime or {"device": "cpu", "dtype": "bf16"},
            "machine": machine, "settings": {**SETTINGS, **settings},
            "figures": {**FIGURES[notebook], **(figures or {})}}


def bands_for(notebook, **key):
    """A band as the tool makes it: three runs around the figures above (plus and minus 1%)."""
    runs = [record(notebook, {k: v * f for k, v in FIGURES[notebook].items()}, **key)
            for f in (0.99, 1, 1.01)]
    return [band_of(runs, [42, 1, 2], [QUIET] * 3)]


def test_a_run_inside_its_bands_is_normal():
    line = reference.judge_run(record("03_lora_sft"), bands_for("03_lora_sft"))
    assert line.startswith("03_lora_sft (the embedded Gemma 3 270M, bf16 on a 2-core CPU with AVX512_BF16): ")
    for label in ("held-out loss 2.480 inside", "seconds per step 1.60 inside",
                  "peak memory 3.90 GiB inside"):
        assert label in line
    assert line.endswith("against the bands of 3 measured runs (seeds 42, 1, 2, "
                         f"{bands_for('03_lora_sft')[0]['date']}): normal")
    assert "ABOVE" not in line and "BELOW" not in line


OUTSIDE = [  # (notebook, figure, value, side, what the line tells to check)
    ("03_lora_sft", "held_out_loss", 4.2, "ABOVE", "a mask that labels nothing"),
    ("03_lora_sft", "held_out_loss", 1.5, "BELOW", "held-out rows in the training data"),
    ("03_lora_sft", "seconds_per_step", 3.5, "ABOVE", "another job on the cores"),
    ("03_lora_sft", "peak_memory_gib", 5.0, "ABOVE", "a second copy of the model held"),
    ("04_evaluation", "format_share", 0.3, "BELOW", "an adapter that is not loaded"),
    ("04_evaluation", "perplexity", 70.0, "ABOVE", "an adapter that is not this run's 03"),
    ("04_evaluation", "peak_memory_gib", 3.0, "ABOVE", "a second copy of the model held"),
    ("07_temporal_encoding", "year_accuracy", 0.3, "BELOW", "timestamps not reaching the model"),
    ("07_temporal_encoding", "year_accuracy_constant", 0.6, "ABOVE", "the note text giving the year away"),
    ("07_temporal_encoding", "python_accuracy", 0.2, "BELOW", "python_epochs"),
    ("07_temporal_encoding", "seconds_per_step", 2.0, "ABOVE", "bf16 on a CPU without native bf16"),
    ("07_temporal_encoding", "peak_memory_gib", 6.0, "ABOVE", "gc.collect()"),
]


@pytest.mark.parametrize("notebook,name,value,side,check", OUTSIDE,
                         ids=[f"{n[:2]}-{f}-{s}" for n, f, _, s, _ in OUTSIDE])
def test_each_figure_outside_its_band_is_named_with_what_to_check(notebook, name, value, side, check):
    line = reference.judge_run(record(notebook, {name: value}), bands_for(notebook))
    label = reference.FIGURES[name].label
    shown = reference.figure_text(value, reference.FIGURES[name])
    assert f"{label} {shown} {side} " in line and "(check: " in line and check in line
    assert line.endswith("1 outside the bands of 3 measured runs (seeds 42, 1, 2, "
                         f"{bands_for(notebook)[0]['date']}): not normal")
    others = [reference.FIGURES[n].label for n in FIGURES[notebook] if n != name]
    assert all(f"{other} " in line for other in others) and line.count(" inside ") == len(others)


def test_a_figure_outside_on_its_harmless_side_is_said_but_keeps_the_run_normal():
    line = reference.judge_run(record("03_lora_sft", {"seconds_per_step": 0.5}), bands_for("03_lora_sft"))
    assert "seconds per step 0.50 BELOW 0.95-2.26 (fine: a faster or quieter machine)" in line
    assert line.endswith(": normal")


def test_another_model_or_runtime_or_settings_gets_no_reference():
    bands = bands_for("03_lora_sft")
    t4 = reference.judge_run(record("03_lora_sft", model="google/gemma-2b", machine="Tesla T4",
                                runtime={"device": "cuda", "dtype": "fp16"}), bands)
    assert t4 == ("03_lora_sft: no reference for google/gemma-2b in fp16 on a Tesla T4 yet: bands come from "
                  "measured runs only")
    other_steps = reference.judge_run(record("03_lora_sft", max_steps=100, batch_size=1), bands)
    assert other_steps.startswith("03_lora_sft: no reference for the embedded Gemma 3 270M in bf16 on a "
                                  f"{MACHINE} with these settings (batch_size 1 (measured: 8), max_steps 100 "
                                  "(measured: 40)): bands come from measured runs only")
    assert "inside" not in other_steps and "ABOVE" not in other_steps
    fp32 = reference.judge_run(record("03_lora_sft", runtime={"device": "cpu", "dtype": "fp32"}), bands)
    assert fp32.startswith("03_lora_sft: no reference for the embedded Gemma 3 270M in fp32")


def test_on_another_machine_only_the_quality_figures_are_compared():
    """Seconds and memory depend on the machine: an 8-core CPU's are not judged by a 2-core one's band, while
    its held-out loss is (same model, dtype and settings)."""
    faster = record("03_lora_sft", {"seconds_per_step": 0.3}, machine="8-core CPU with AMX")
    line = reference.judge_run(faster, bands_for("03_lora_sft"))
    assert "held-out loss 2.480 inside" in line
    assert ("seconds per step and peak memory: no reference for a 8-core CPU with AMX (measured on a "
            f"{MACHINE})" in line) and "BELOW" not in line


def write_03_run(folder, cfg, eval_loss=2.48, train_seconds=64.0):
    run_folder.update_manifest(folder, "03_lora_sft", seed=42, config=config_summary(cfg),
                               train_seconds=train_seconds)
    pd.DataFrame({"step": [10, 20, 40], "loss": [3.1, 2.6, 2.4], "eval_loss": [3.0, 2.6, eval_loss],
                  "learning_rate": [2e-4] * 3}).to_csv(folder / "loss_log.csv", index=False)


def test_the_line_reads_the_runs_own_files_and_leaves_the_manifest_as_the_run_wrote_it(tmp_path):
    """03's figures: the trainer's last held-out loss (loss_log.csv), train seconds over max_steps and the
    peak memory the manifest recorded; 04 reads 03's settings; the line writes nothing into the run folder."""
    cfg = course_config(device="cpu", dtype="bf16")
    write_03_run(tmp_path, cfg)
    run_folder.update_manifest(tmp_path, "04_evaluation", n_examples=29, split="held_out",
                               metrics={"fine-tuned": {"format_compliance": 1.0, "perplexity": 12.3}})
    written = (tmp_path / "manifest.json").read_text()
    assert reference.normal_line("03_lora_sft", tmp_path, cfg, tmp_path / "none.json").startswith(
        "03_lora_sft: no reference for the embedded Gemma 3 270M in bf16 on a ")
    assert (tmp_path / "manifest.json").read_text() == written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss_log.csv", "manifest.json"]
    kept = reference.run_record("03_lora_sft", tmp_path, cfg)
    figures = kept["figures"]
    assert figures["held_out_loss"] == 2.48 and figures["seconds_per_step"] == 64.0 / 40
    assert figures["peak_memory_gib"] > 0 and kept["settings"]["max_steps"] == 40
    assert kept["runtime"] == {"device": "cpu", "dtype": "bf16"} and "seed" not in kept["settings"]
    four = reference.run_record("04_evaluation", tmp_path, cfg)
    assert four["figures"]["format_share"] == 1.0 and four["settings"]["learning_rate"] == 2e-4
    assert four["settings"]["split"] == "held_out"

    bands = tmp_path / "bands.json"
    runs = [kept | {"figures": kept["figures"] | {"held_out_loss": loss}} for loss in (2.45, 2.5, 2.55)]
    bands.write_text(json.dumps(merge(bands, [band_of(runs, [42, 1, 2], [QUIET] * 3)])))
    assert reference.normal_line("03_lora_sft", tmp_path, cfg, bands).endswith(": normal")
    write_03_run(tmp_path, cfg, eval_loss=4.3)  # a run that learned nothing
    line = reference.normal_line("03_lora_sft", tmp_path, cfg, bands)
    assert "held-out loss 4.300 ABOVE 2.328-2.678 (check: a run that trained but learned little" in line
    assert "peak memory " in line and " GiB inside " in line


@pytest.mark.parametrize("notebook", list(reference.PER_NOTEBOOK))
def test_the_tools_added_cell_keeps_what_the_notebooks_line_compared(tmp_path, notebook):
    """tools/runners/reference_runs.py runs each notebook with one cell added after its normal line: run with
    the notebook's own `out` and `cfg`, it keeps run_record's record, which the tool reads back (and a run
    with nothing to compare stops the tool)."""
    cfg = course_config(device="cpu", dtype="bf16")
    cells = with_record_cell(notebook).cells
    at = [i for i, c in enumerate(cells) if "normal_line(" in c.source]
    assert len(at) == 1 and "run_record(" in cells[at[0] + 1].source  # right after the line it records
    cell = cells[at[0] + 1]
    assert record_of(tmp_path, notebook) is None
    exec(cell.source, {"out": tmp_path, "cfg": cfg})  # noqa: S102 - the tool's own cell
    nothing = f"{notebook} in .* has nothing to compare: this run folder's manifest has no {notebook} entry"
    with pytest.raises(SystemExit, match=nothing):
        record_of(tmp_path, notebook)
    if notebook == "03_lora_sft":
        write_03_run(tmp_path, cfg)
        exec(cell.source, {"out": tmp_path, "cfg": cfg})  # noqa: S102
        assert record_of(tmp_path, notebook) == reference.run_record(notebook, tmp_path, cfg)
        assert record_of(tmp_path, notebook)["figures"]["held_out_loss"] == 2.48


def test_nothing_to_compare_before_the_run_wrote_its_files(tmp_path):
    cfg = course_config(device="cpu", dtype="bf16")
    assert reference.normal_line("07_temporal_encoding", tmp_path, cfg) == (
        "07_temporal_encoding: nothing to compare yet: this run folder's manifest has no "
        "07_temporal_encoding entry yet (its save cell writes it)")


def test_the_tools_bands_span_the_seeds_widened_by_the_stated_margin_and_replace_their_own_key(tmp_path):
    runs = [record("04_evaluation", {"format_share": s, "perplexity": p})
            for s, p in ((0.97, 12.0), (1.0, 13.0), (0.93, 12.5))]
    band = band_of(runs, [42, 1, 2], [QUIET] * 3)
    assert band["figures"]["format_share"] == {"low": 0.83, "high": 1.0, "min": 0.93, "max": 1.0,
                                               "runs": [0.97, 1.0, 0.93]}  # 0.1 each side, a share <= 1
    assert band["figures"]["perplexity"]["low"] == pytest.approx(12.0 * 0.85)
    assert band["figures"]["perplexity"]["high"] == pytest.approx(13.0 * 1.15)
    with pytest.raises(SystemExit, match="seed 1 ran 04_evaluation with another settings"):
        band_of([runs[0], record("04_evaluation", max_steps=100)], [42, 1], [QUIET] * 2)
    path = tmp_path / "bands.json"
    other = band_of([record("04_evaluation", lora_r=2)] * 2, [42, 1], [QUIET] * 2)
    path.write_text(json.dumps(merge(path, [band, other])))
    doc = merge(path, [band_of(runs[:2], [42, 1], [QUIET] * 2)])
    assert len(doc["bands"]) == 2 and {b["seeds"] == [42, 1] for b in doc["bands"]} == {True}
    assert doc["margins"]["format_share"] == "0.1 beyond the lowest and highest run"


def test_seconds_measured_beside_other_jobs_make_no_band_and_the_line_says_why(monkeypatch):
    """Another job on the cores slows every step: seconds measured so are no reference for a learner's run,
    while the held-out loss and the memory are."""
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    busy = {**QUIET, "load_average_during": 4.5}
    runs = [record("03_lora_sft", {k: v * f for k, v in FIGURES["03_lora_sft"].items()})
            for f in (0.99, 1.01)]
    band = band_of(runs, [42, 1], [QUIET, busy])
    assert set(band["figures"]) == {"held_out_loss", "peak_memory_gib"}
    assert band["left_out"] == {"seconds_per_step": "the runs shared the cores with other jobs (mean load "
                                                    "average up to 4.5 on 2 cores)"}
    assert "seconds_per_step" in band_of(runs, [42, 1], [QUIET, QUIET])["figures"]
    assert band_of(runs, [42, 1], [QUIET, None])["left_out"] == {"seconds_per_step": "a run's load was not "
                                                                                     "recorded"}
    line = reference.judge_run(record("03_lora_sft"), [band])
    assert ("seconds per step 1.60: no band (the runs shared the cores with other jobs (mean load average up "
            "to 4.5 on 2 cores))") in line and "held-out loss 2.480 inside" in line
    assert line.endswith(": normal")


def test_the_committed_bands_were_measured_for_each_notebook_on_the_embedded_model():
    """Bands from real runs only: at least two seeds each, every run inside its own band, and each notebook's
    band keyed by the settings of the notebook's defaults on this profile (03 with part 2 off)."""
    bands = reference.load_bands()
    assert {b["notebook"] for b in bands} >= set(reference.PER_NOTEBOOK)
    for band in bands:
        assert len(set(band["seeds"])) >= 2 and band["cpu"] and band["date"] and band["model"] == "embedded"
        assert set(band["figures"]) | set(band["left_out"]) == set(reference.PER_NOTEBOOK[band["notebook"]])
        for name, figure in band["figures"].items():
            assert len(figure["runs"]) == len(band["seeds"])
            assert figure["low"] <= min(figure["runs"]) <= max(figure["runs"]) <= figure["high"], name



# ---- the learner's line, figure by figure (each band written out: the numbers the line must show) ----

DATE = "2026-11-20"


def band(notebook="03_lora_sft", figures=None, machine=MACHINE, settings=None, **extra):
    """A band as reference_bands.json holds it, with low and high given per figure."""
    spans = figures or {"held_out_loss": (2.35, 2.6), "seconds_per_step": (0.95, 2.26),
                        "peak_memory_gib": (3.5, 4.3)}
    return {"notebook": notebook, "model": "embedded", "runtime": {"device": "cpu", "dtype": "bf16"},
            "machine": machine, "settings": settings or SETTINGS,
            "figures": {name: {"low": low, "high": high} for name, (low, high) in spans.items()},
            "left_out": {}, "seeds": [42, 1, 2], "date": DATE} | extra


HEAD = f"03_lora_sft (the embedded Gemma 3 270M, bf16 on a {MACHINE}): "
RUNS = f"3 measured runs (seeds 42, 1, 2, {DATE})"


def test_the_whole_line_of_a_normal_and_of_an_abnormal_run():
    assert reference.judge_run(record("03_lora_sft"), [band()]) == (
        HEAD + "held-out loss 2.480 inside 2.350-2.600; seconds per step 1.60 inside 0.95-2.26; "
        f"peak memory 3.90 GiB inside 3.50-4.30 GiB; against the bands of {RUNS}: normal")
    learned_nothing = record("03_lora_sft", {"held_out_loss": 4.2, "seconds_per_step": 0.5,
                                             "peak_memory_gib": 5.123})
    assert reference.judge_run(learned_nothing, [band()]) == (
        HEAD + "held-out loss 4.200 ABOVE 2.350-2.600 (check: a run that trained but learned little: a mask "
        "that labels nothing (the gradient tripwire's line), the learning rate, the KV cache path (the "
        "pre-flight's first line), or other data than the settings say); seconds per step 0.50 BELOW "
        "0.95-2.26 (fine: a faster or quieter machine); peak memory 5.12 GiB ABOVE 3.50-4.30 GiB (check: a "
        "second copy of the model held (a cell run twice, a model not freed: del it, gc.collect(), "
        "torch.cuda.empty_cache()), or a larger batch than the settings say); 2 outside the bands of "
        f"{RUNS}: not normal")


@pytest.mark.parametrize("loss, words", [(2.35, "inside"), (2.6, "inside"), (2.34, "BELOW"), (2.61, "ABOVE")])
def test_a_band_holds_its_own_edges(loss, words):
    line = reference.judge_run(record("03_lora_sft", {"held_out_loss": loss}), [band()])
    assert f"held-out loss {loss:.3f} {words} 2.350-2.600" in line
    assert line.endswith(": normal" if words == "inside" else ": not normal")


@pytest.mark.parametrize("value", [None, float("nan")])
def test_a_figure_the_run_did_not_record_is_said_and_keeps_the_run_normal(value):
    """A manifest entry written before course_config noted the machine has no peak memory; a trainer that
    logged a NaN loss has no loss to judge."""
    unrecorded = record("03_lora_sft", {"held_out_loss": value, "peak_memory_gib": value})
    assert reference.judge_run(unrecorded, [band()]) == (
        HEAD + "held-out loss: not recorded; seconds per step 1.60 inside 0.95-2.26; peak memory: not "
        f"recorded; against the bands of {RUNS}: normal")


@pytest.mark.parametrize("left_out, why", [
    ({"seconds_per_step": "a run's load was not recorded"}, "a run's load was not recorded"),
    ({}, "not measured"), (None, "not measured")])  # None: a band written before the tool gave reasons
def test_a_figure_left_out_of_its_band_says_why(left_out, why):
    spans = {"held_out_loss": (2.35, 2.6), "peak_memory_gib": (3.5, 4.3)}
    kept = band(figures=spans, left_out=left_out)
    if left_out is None:
        del kept["left_out"]
    line = reference.judge_run(record("03_lora_sft", {"seconds_per_step": 9.9}), [kept])
    assert f"; seconds per step 9.90: no band ({why}); peak memory " in line and line.endswith(": normal")


def test_a_band_without_its_seeds_or_date_still_reads():
    """A band written by hand or by an older tool: the line says what it does not know."""
    undated = band()
    del undated["date"]
    assert reference.judge_run(record("03_lora_sft"), [undated]).endswith(
        "against the bands of 3 measured runs (seeds 42, 1, 2, undated): normal")
    del undated["seeds"]
    assert reference.judge_run(record("03_lora_sft"), [undated]).endswith(
        "against the bands of 0 measured runs (seeds , undated): normal")


def test_another_notebooks_bands_are_no_reference():
    """04's band has the same model, runtime and settings: it is still no band of 03's figures."""
    assert reference.judge_run(record("03_lora_sft"), [band("04_evaluation")]) == (
        f"03_lora_sft: no reference for the embedded Gemma 3 270M in bf16 on a {MACHINE} yet: bands come "
        "from measured runs only")


NO_SETTINGS = ("03_lora_sft: no reference for the embedded Gemma 3 270M in bf16 on a {machine} with these "
               "settings ({differ}): bands come from measured runs only, and runs with other settings are "
               "never compared")
STEPS_BATCH_RATE = {"max_steps": 100, "batch_size": 1, "learning_rate": 0.001}
NAMED = "batch_size 8 (measured: 1), learning_rate 0.0002 (measured: 0.001), "
DIFFER = [  # (the band's settings, the line's words): three named, sorted, the rest counted
    ({**SETTINGS, "lora_r": 16}, "lora_r 8 (measured: 16)"),
    ({**SETTINGS, **STEPS_BATCH_RATE}, NAMED + "max_steps 40 (measured: 100)"),
    ({**SETTINGS, **STEPS_BATCH_RATE, "lora_r": 16}, NAMED + "lora_r 8 (measured: 16) and 1 more"),
    ({**SETTINGS, **STEPS_BATCH_RATE, "lora_r": 16, "lora_dropout": 0.1},
     NAMED + "lora_dropout None (measured: 0.1) and 2 more"),
    ({k: v for k, v in SETTINGS.items() if k != "lora_r"}, "lora_r 8 (measured: None)"),  # a newer setting
]


@pytest.mark.parametrize("theirs, differ", DIFFER, ids=["one", "three", "four", "five", "a-newer-setting"])
def test_the_settings_that_differ_are_named_with_the_measured_values(theirs, differ):
    line = reference.judge_run(record("03_lora_sft"), [band(settings=theirs)])
    assert line == NO_SETTINGS.format(machine=MACHINE, differ=differ)


def test_the_settings_named_are_those_of_the_closest_band():
    far = band(settings={**SETTINGS, **STEPS_BATCH_RATE})
    close = band(settings={**SETTINGS, "lora_r": 16})
    for bands in ([far, close], [close, far]):
        assert reference.judge_run(record("03_lora_sft"), bands) == NO_SETTINGS.format(
            machine=MACHINE, differ="lora_r 8 (measured: 16)")


def test_of_two_bands_with_the_same_settings_the_one_of_this_machine_judges():
    """A band on an 8-core CPU (where steps take a third of the time) listed first: this 2-core run's seconds
    are judged by its own machine's band; a run on a third machine by the first band's quality figures."""
    fast = band(figures={"held_out_loss": (2.35, 2.6), "seconds_per_step": (0.3, 0.7),
                         "peak_memory_gib": (3.5, 4.3)}, machine="8-core CPU with AMX", seeds=[7, 8])
    line = reference.judge_run(record("03_lora_sft"), [fast, band()])
    assert "seconds per step 1.60 inside 0.95-2.26" in line and line.endswith(f"{RUNS}: normal")
    slower = record("03_lora_sft", machine="4-core CPU without native bf16")
    other = reference.judge_run(slower, [fast, band()])
    assert other.endswith("; seconds per step and peak memory: no reference for a 4-core CPU without native "
                          "bf16 (measured on a 8-core CPU with AMX); against the bands of 2 measured runs "
                          f"(seeds 7, 8, {DATE}): normal")


@pytest.mark.parametrize("content, bands", [(None, []), ("{not json", []), ("{}", []),
                                            ('{"bands": [{"notebook": "03_lora_sft"}]}',
                                             [{"notebook": "03_lora_sft"}])])
def test_the_bands_file_reads_as_no_bands_when_missing_or_unreadable(tmp_path, content, bands):
    path = tmp_path / "reference_bands.json"
    if content is not None:
        path.write_text(content)
    assert reference.load_bands(path) == bands


# ---- which machine, and what the run's own files say ----

def cpu(monkeypatch, cores, flags):
    """This machine as `cores` cores whose /proc/cpuinfo shows these flags."""
    read_text = Path.read_text
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    monkeypatch.setattr(Path, "read_text", lambda path, *a, **k: f"processor\t: 0\nflags\t\t: {flags}\n"
                        if str(path) == "/proc/cpuinfo" else read_text(path, *a, **k))


@pytest.mark.parametrize("cores, flags, words", [(2, "fpu avx512_bf16 amx_bf16", "2-core CPU with AMX"),
                                                 (8, "fpu avx512_bf16", "8-core CPU with AVX512_BF16"),
                                                 (4, "fpu avx2", "4-core CPU without native bf16")])
def test_the_machine_is_named_by_its_cores_and_bf16_units_or_by_its_gpu(monkeypatch, fake_gpu, cores, flags,
                                                                       words):
    cpu(monkeypatch, cores, flags)
    fake_gpu(None)
    assert reference.machine("cpu") == words
    fake_gpu((7, 5))
    assert (reference.machine("cuda"), reference.machine("cpu")) == ("Tesla T4", words)


def write_manifest(folder, **entries):
    (folder / "manifest.json").write_text(json.dumps({"notebooks": entries}))


def log_of(steps, eval_loss):
    """loss_log.csv as training.loss_log writes it: a row per logged step, NaN where a step logged no
    held-out loss or no training loss (the last row: the final evaluation only)."""
    n = len(steps)
    evals = [None if i % 2 == 0 else 2.9 - 0.1 * i for i in range(n - 1)]
    return pd.DataFrame({"step": steps, "loss": [3.1 - 0.1 * i for i in range(n - 1)] + [None],
                         "eval_loss": evals + [eval_loss], "learning_rate": [2e-4] * (n - 1) + [None]})


def settings_of(cfg, keys=reference.COMPARED_SETTINGS) -> dict:
    summary = config_summary(cfg)
    return {name: summary[group][name] for group, name in keys}


@pytest.mark.parametrize("max_steps, steps, per_step", [(40, [10, 20, 30, 40], 64.0 / 40),
                                                        (50, [10, 20, 30, 40], 64.0 / 50),
                                                        (-1, [10, 20, 30, 37], 64.0 / 37),
                                                        (1, [1], 64.0)])
def test_03s_record_is_read_from_its_manifest_and_loss_log(tmp_path, monkeypatch, max_steps, steps, per_step):
    """Seconds per step: the train seconds over max_steps, or over the log's last step where the run trained
    num_epochs (max_steps -1); the held-out loss: the log's last one."""
    cpu(monkeypatch, 2, "fpu avx512_bf16 amx_bf16")
    cfg = course_config(device="cpu", dtype="bf16", max_steps=max_steps)
    write_manifest(tmp_path, **{"03_lora_sft": {"seed": 42, "config": config_summary(cfg),
                                                "train_seconds": 64.0, "peak_memory_gib": 3.25}})
    log_of(steps, 2.48).to_csv(tmp_path / "loss_log.csv", index=False)
    assert reference.run_record("03_lora_sft", tmp_path, cfg) == {
        "notebook": "03_lora_sft", "model": "embedded", "runtime": {"device": "cpu", "dtype": "bf16"},
        "machine": "2-core CPU with AMX", "settings": settings_of(cfg),
        "figures": {"held_out_loss": 2.48, "seconds_per_step": per_step, "peak_memory_gib": 3.25}}


def test_04s_record_takes_03s_settings_and_its_own_split(tmp_path, monkeypatch):
    cpu(monkeypatch, 2, "fpu avx512_bf16")
    cfg = course_config(device="cpu", dtype="bf16")
    metrics = {"base": {"format_compliance": 0.1, "perplexity": 40.0},
               "fine-tuned": {"format_compliance": 0.93, "perplexity": 12.3}}
    write_manifest(tmp_path, **{"03_lora_sft": {"config": config_summary(cfg), "train_seconds": 64.0},
                                "04_evaluation": {"n_examples": 29, "split": "held_out", "metrics": metrics,
                                                  "peak_memory_gib": 2.2}})
    assert reference.run_record("04_evaluation", tmp_path, cfg) == {
        "notebook": "04_evaluation", "model": "embedded", "runtime": {"device": "cpu", "dtype": "bf16"},
        "machine": "2-core CPU with AVX512_BF16",
        "settings": settings_of(cfg) | {"split": "held_out", "n_examples": 29},
        "figures": {"format_share": 0.93, "perplexity": 12.3, "peak_memory_gib": 2.2}}


RECORDED = {"learning_rate": 5e-4, "n_train": 200}  # 07's own settings, as its save cell records them


@pytest.mark.parametrize("steps, per_step, settings", [(100, 0.7, RECORDED), (1, 70.0, RECORDED),
                                                       (100, 0.7, None)])  # None: no settings recorded
def test_07s_record_takes_its_configs_settings_and_those_it_recorded_but_the_seed(tmp_path, monkeypatch,
                                                                                  steps, per_step, settings):
    """Bands span seeds: 07's recorded seed is no setting; its other recorded settings override the
    config's."""
    cpu(monkeypatch, 2, "fpu avx2")
    cfg = course_config("temporal", device="cpu", dtype="fp32")
    entry = {"year_accuracy_true": 0.91, "year_accuracy_constant": 0.07, "train_seconds": 70.0,
             "steps": steps, "python_releases": {"test": {"accuracy": 0.98}, "validation": {"accuracy": 0.5}},
             "peak_memory_gib": 4.1, "seed": 42}
    if settings is not None:
        entry["settings"] = {**settings, "seed": 42}
    write_manifest(tmp_path, **{"07_temporal_encoding": entry})
    assert reference.run_record("07_temporal_encoding", tmp_path, cfg) == {
        "notebook": "07_temporal_encoding", "model": "embedded",
        "runtime": {"device": "cpu", "dtype": "fp32"}, "machine": "2-core CPU without native bf16",
        "settings": settings_of(cfg, reference.COMPARED_SETTINGS + reference.TEMPORAL_SETTINGS)
                    | (settings or {}),
        "figures": {"year_accuracy": 0.91, "year_accuracy_constant": 0.07, "python_accuracy": 0.98,
                    "seconds_per_step": per_step, "peak_memory_gib": 4.1}}


def test_a_run_on_a_gpu_is_recorded_with_the_gpus_name_and_dtype(tmp_path, fake_gpu):
    import dataclasses

    import torch

    from gemmate_lib.hardware import Precision

    cfg = course_config(device="cpu", dtype="bf16")
    t4 = dataclasses.replace(cfg, precision=Precision("cuda", torch.float16, "a T4"))
    write_03_run(tmp_path, t4)
    fake_gpu((7, 5))
    kept = reference.run_record("03_lora_sft", tmp_path, t4)
    assert (kept["runtime"], kept["machine"]) == ({"device": "cuda", "dtype": "fp16"}, "Tesla T4")


def test_a_config_recorded_without_a_group_reads_its_settings_as_none(tmp_path):
    """A manifest an older course wrote: the settings it lacks differ from every band's, so it is not
    compared."""
    cfg = course_config(device="cpu", dtype="bf16")
    summary = {k: v for k, v in config_summary(cfg).items() if k != "lora"}
    write_manifest(tmp_path, **{"03_lora_sft": {"config": summary, "train_seconds": 64.0}})
    log_of([10, 20, 30, 40], 2.48).to_csv(tmp_path / "loss_log.csv", index=False)
    settings = reference.run_record("03_lora_sft", tmp_path, cfg)["settings"]
    assert settings["lora_r"] is None and settings["max_steps"] == 40


NO_ENTRY = "this run folder's manifest has no {} entry yet (its save cell writes it)"
NO_03 = "this run folder does not say how 03_lora_sft trained the adapter (run 03 into it)"
NO_EVAL_LOSS = "step,loss,eval_loss,learning_rate\n10,3.1,,2e-4\n"
NOTHING = [  # (notebook, the run folder's files, why there is nothing to compare); "03": 03's entry
    ("03_lora_sft", {}, NO_ENTRY.format("03_lora_sft")),
    ("03_lora_sft", {"manifest.json": "{}"}, NO_ENTRY.format("03_lora_sft")),
    ("04_evaluation", {"manifest.json": "{half written"}, NO_ENTRY.format("04_evaluation")),
    ("04_evaluation", {"manifest.json": {"04_evaluation": {"n_examples": 29}}}, NO_03),
    ("03_lora_sft", {"manifest.json": {"03_lora_sft": {"train_seconds": 64.0}}}, NO_03),
    ("03_lora_sft", {"manifest.json": "03"}, "no loss_log.csv in this run folder (section 4 writes it)"),
    ("03_lora_sft", {"manifest.json": "03", "loss_log.csv": NO_EVAL_LOSS},
     "the trainer logged no held-out loss (eval_strategy)"),
]


@pytest.mark.parametrize("notebook, files, why", NOTHING, ids=[w.split(" (")[0][:40] for _, _, w in NOTHING])
def test_nothing_to_compare_says_which_file_is_missing(tmp_path, notebook, files, why):
    cfg = course_config(device="cpu", dtype="bf16")
    for name, content in files.items():
        if content == "03":  # 03's entry as its save cell writes it
            content = {"03_lora_sft": {"config": config_summary(cfg), "train_seconds": 64.0}}
        if isinstance(content, dict):
            write_manifest(tmp_path, **content)
        else:
            (tmp_path / name).write_text(content)
    assert reference.normal_line(notebook, tmp_path, cfg) == f"{notebook}: nothing to compare yet: {why}"


def test_a_notebook_without_reference_figures_is_refused(tmp_path):
    with pytest.raises(ValueError) as err:
        reference.run_record("05_save_and_push", tmp_path, course_config(device="cpu", dtype="bf16"))
    assert str(err.value) == ("no reference figures for 05_save_and_push: one of 03_lora_sft, 04_evaluation, "
                              "07_temporal_encoding")
