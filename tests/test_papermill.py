"""Papermill runs, tried as a practitioner would: a wrong parameter type must fail early and clearly."""
import papermill as pm
import pytest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wrong_parameter_type_stops_the_notebook_with_a_clear_message(tmp_path):
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(ROOT / "notebooks" / "03_lora_sft.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters={"max_steps": "ten", "run_dir": str(tmp_path)},
                            cwd=str(ROOT / "notebooks"), kernel_name="python3", progress_bar=False)
    assert err.value.ename == "ParameterError"
    assert "max_steps='ten'" in err.value.evalue and "must be int" in err.value.evalue
    assert err.value.exec_count <= 4  # the config cell, before any model is loaded
    assert not (tmp_path / "adapter").exists()


def test_missing_data_file_names_the_path(tmp_path):
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(ROOT / "notebooks" / "03_lora_sft.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters={"dataset": "my_quotes.jsonl", "run_dir": str(tmp_path)},
                            cwd=str(ROOT / "notebooks"), kernel_name="python3", progress_bar=False)
    assert err.value.ename == "DataError" and "my_quotes.jsonl" in err.value.evalue
