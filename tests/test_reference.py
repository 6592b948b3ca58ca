"""Is my run normal? (gemmate_lib/reference.py, tools/runners/reference_runs.py): a run inside its bands reads
normal, each figure outside its band is named with what to check, another model, runtime or settings gets no
verdict, the figures come from the run's own files, and the committed bands were measured for the three
notebooks."""
import json

import pandas as pd
import pytest

from gemmate_lib import reference
from gemmate_lib.config import config_summary, course_config
from gemmate_lib.housekeeping import run_folder
from tools.runners.reference_runs import band_of, merge

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
    line = reference.judge(record("03_lora_sft"), bands_for("03_lora_sft"))
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
    line = reference.judge(record(notebook, {name: value}), bands_for(notebook))
    label = reference.FIGURES[name].label
    shown = reference.figure_text(value, reference.FIGURES[name])
    assert f"{label} {shown} {side} " in line and "(check: " in line and check in line
    assert line.endswith("1 outside the bands of 3 measured runs (seeds 42, 1, 2, "
                         f"{bands_for(notebook)[0]['date']}): not normal")
    others = [reference.FIGURES[n].label for n in FIGURES[notebook] if n != name]
    assert all(f"{other} " in line for other in others) and line.count(" inside ") == len(others)


def test_a_figure_outside_on_its_harmless_side_is_said_but_keeps_the_run_normal():
    line = reference.judge(record("03_lora_sft", {"seconds_per_step": 0.5}), bands_for("03_lora_sft"))
    assert "seconds per step 0.50 BELOW 0.95-2.26 (fine: a faster or quieter machine)" in line
    assert line.endswith(": normal")


def test_another_model_or_runtime_or_settings_gets_no_reference():
    bands = bands_for("03_lora_sft")
    t4 = reference.judge(record("03_lora_sft", model="google/gemma-2b", machine="Tesla T4",
                                runtime={"device": "cuda", "dtype": "fp16"}), bands)
    assert t4 == ("03_lora_sft: no reference for google/gemma-2b in fp16 on a Tesla T4 yet: bands come from "
                  "measured runs only")
    other_steps = reference.judge(record("03_lora_sft", max_steps=100, batch_size=1), bands)
    assert other_steps.startswith("03_lora_sft: no reference for the embedded Gemma 3 270M in bf16 on a "
                                  f"{MACHINE} with these settings (batch_size 1 (measured: 8), max_steps 100 "
                                  "(measured: 40)): bands come from measured runs only")
    assert "inside" not in other_steps and "ABOVE" not in other_steps
    fp32 = reference.judge(record("03_lora_sft", runtime={"device": "cpu", "dtype": "fp32"}), bands)
    assert fp32.startswith("03_lora_sft: no reference for the embedded Gemma 3 270M in fp32")


def test_on_another_machine_only_the_quality_figures_are_compared():
    """Seconds and memory depend on the machine: an 8-core CPU's are not judged by a 2-core one's band, while
    its held-out loss is (same model, dtype and settings)."""
    line = reference.judge(record("03_lora_sft", {"seconds_per_step": 0.3}, machine="8-core CPU with AMX"),
                           bands_for("03_lora_sft"))
    assert "held-out loss 2.480 inside" in line
    assert ("seconds per step and peak memory: no reference for a 8-core CPU with AMX (measured on a "
            f"{MACHINE})" in line) and "BELOW" not in line


def write_03_run(folder, cfg, eval_loss=2.48, train_seconds=64.0):
    run_folder.update_manifest(folder, "03_lora_sft", seed=42, config=config_summary(cfg),
                               train_seconds=train_seconds)
    pd.DataFrame({"step": [10, 20, 40], "loss": [3.1, 2.6, 2.4], "eval_loss": [3.0, 2.6, eval_loss],
                  "learning_rate": [2e-4] * 3}).to_csv(folder / "loss_log.csv", index=False)


def test_the_line_reads_the_runs_own_files_and_keeps_what_it_compared(tmp_path):
    """03's figures: the trainer's last held-out loss (loss_log.csv), train seconds over max_steps and the
    peak memory the manifest recorded; 04 reads 03's settings; the record goes into the manifest, where the
    tool reads it."""
    cfg = course_config(device="cpu", dtype="bf16")
    write_03_run(tmp_path, cfg)
    run_folder.update_manifest(tmp_path, "04_evaluation", n_examples=29, split="held_out",
                               metrics={"fine-tuned": {"format_compliance": 1.0, "perplexity": 12.3}})
    assert reference.normal_line("03_lora_sft", tmp_path, cfg, tmp_path / "none.json").startswith(
        "03_lora_sft: no reference for the embedded Gemma 3 270M in bf16 on a ")
    kept = json.loads((tmp_path / "manifest.json").read_text())["notebooks"]["03_lora_sft"][reference.RECORD]
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
    line = reference.judge(record("03_lora_sft"), [band])
    assert ("seconds per step 1.60: no band (the runs shared the cores with other jobs (mean load average up "
            "to 4.5 on 2 cores))") in line and "held-out loss 2.480 inside" in line
    assert line.endswith(": normal")


def test_the_committed_bands_were_measured_for_each_notebook_on_the_embedded_model():
    """Bands from real runs only: at least two seeds each, every run inside its own band, and each notebook's
    band keyed by the settings of the notebook's defaults on this profile (03 with part 2 off)."""
    bands = reference.load_bands()
    assert {b["notebook"] for b in bands} >= set(reference.NOTEBOOKS)
    for band in bands:
        assert len(set(band["seeds"])) >= 2 and band["cpu"] and band["date"] and band["model"] == "embedded"
        assert set(band["figures"]) | set(band["left_out"]) == set(reference.PER_NOTEBOOK[band["notebook"]])
        for name, figure in band["figures"].items():
            assert len(figure["runs"]) == len(band["seeds"])
            assert figure["low"] <= min(figure["runs"]) <= max(figure["runs"]) <= figure["high"], name
