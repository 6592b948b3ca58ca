"""Papermill runs, tried as a practitioner would: a wrong parameter type must fail early and clearly."""
from pathlib import Path

import papermill as pm
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wrong_parameter_type_stops_the_notebook_with_a_clear_message(tmp_path):
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(ROOT / "notebooks" / "03_lora_sft.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters={"max_steps": "ten", "run_dir": str(tmp_path)},
                            cwd=str(ROOT / "notebooks"), kernel_name="python3", progress_bar=False)
    assert err.value.ename == "ParameterError"
    assert "max_steps='ten'" in err.value.evalue and "must be int" in err.value.evalue
    assert err.value.exec_count <= 4  # the config cell, before any model is loaded
    assert not (tmp_path / "adapter").exists()


@pytest.mark.slow
def test_missing_data_file_names_the_path(tmp_path):
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(ROOT / "notebooks" / "03_lora_sft.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters={"dataset": "my_quotes.jsonl", "run_dir": str(tmp_path)},
                            cwd=str(ROOT / "notebooks"), kernel_name="python3", progress_bar=False)
    assert err.value.ename == "ParameterError" and "my_quotes.jsonl" in err.value.evalue
    assert err.value.exec_count <= 4  # the config cell, before any model is loaded


def test_params_file_reaches_exactly_the_notebooks_that_declare_each_key(tmp_path):
    from gemmate_lib.errors import ParameterError
    from tools.course import notebook_parameters

    root = Path(__file__).resolve().parents[1]
    notebooks = sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    declared = pm.inspect_notebook(str(root / "notebooks" / "03_lora_sft.ipynb"))
    assert {"seed", "data_seed"} <= set(declared)  # the training seed and the split seed, separately
    per = notebook_parameters(notebooks, str(root / "params" / "cpu-quick.yaml"))
    assert per["03_lora_sft.ipynb"] == {"max_steps": 10}
    assert per["07_temporal_encoding.ipynb"] == {"n_train": 200, "num_epochs": 1.0, "n_python": 100,
                                                 "python_epochs": 1.0}
    assert per["00_setup.ipynb"] == {}
    assert notebook_parameters(notebooks, str(root / "params" / "gpu.yaml"))["04_evaluation.ipynb"] == {
        "model_name": "google/gemma-2b", "dataset": "Abirate/english_quotes"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_step: 10\n")
    with pytest.raises(ParameterError, match="no notebook has a parameter named max_step") as info:
        notebook_parameters(notebooks, str(bad))
    assert "max_steps" in info.value.fix
    with pytest.raises(ParameterError, match="does not exist"):
        notebook_parameters(notebooks, str(tmp_path / "missing.yaml"))
