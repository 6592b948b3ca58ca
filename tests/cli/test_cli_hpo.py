"""`gemmate hpo` (cli/hpo.py): a small search writes its table and the best config."""
import pytest
from processes import QUICK


@pytest.mark.slow
def test_tiny_hpo_writes_a_table_and_a_best_config(tmp_path, tiny_folder):
    """Optuna's wiring (trials, table, best config) is plumbing: the tiny random Gemma."""
    import pandas as pd

    from gemmate_cli.hpo import search
    from gemmate_cli.parser import load_config

    out = tmp_path / "hpo"
    cfg = load_config(None, {k.lstrip("-"): v for k, v in zip(QUICK[::2], QUICK[1::2])} | {
        "max_steps": "2", "output_dir": str(out), "device": "cpu", "model_name": str(tiny_folder),
        "max_length": "128"})
    search(cfg, n_trials=2)
    table = pd.read_csv(out / "hpo_results.csv")
    assert len(table) == 2 and table.eval_loss.notna().all()
    best = load_config(out / "best_config.yaml")
    winner = table.sort_values("eval_loss").iloc[0]
    assert best.course.train.learning_rate == pytest.approx(winner["params_learning_rate"])
