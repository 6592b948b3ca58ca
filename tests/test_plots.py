"""gemmate_lib.plots: the figures 04 draws from its own results."""
import matplotlib

matplotlib.use("Agg")

METRICS = ("author_accuracy", "author_accuracy_seen", "rouge_l", "bleu", "format_compliance", "perplexity",
           "perplexity_quote")


def _table(value_outside: bool):
    import pandas as pd

    rows = []
    for model in ("baseline", "fine-tuned"):
        for metric in METRICS:
            value = 30.0 if metric.startswith("perplexity") else 0.5
            low, high = value * 0.8, value * 1.2
            # a percentile bootstrap over 10 rows can miss the estimate
            if value_outside and metric == "perplexity":
                low, high = value * 1.05, value * 1.5
            rows.append({"model": model, "metric": metric, "value": value, "ci_low": low, "ci_high": high,
                         "interval": "bootstrap", "n": 10})
    return pd.DataFrame(rows)


def test_metric_bars_draws_an_interval_that_misses_its_estimate(tmp_path):
    """04 on ten held-out rows: the bootstrap interval of
    perplexity lay above the estimate and the plot raised."""
    from gemmate_lib import plots

    for outside in (False, True):
        path = tmp_path / f"metrics_{outside}.png"
        plots.metric_bars(_table(outside), path)
        assert path.stat().st_size > 1000


def test_paired_differences_draws_an_interval_that_misses_its_estimate(tmp_path):
    from gemmate_lib import plots

    diffs = {"rouge_l": {"difference": 0.1, "ci95": [0.12, 0.3]},
             "perplexity": {"difference": -2.0, "ci95": [-5, -1]}}
    path = tmp_path / "diffs.png"
    plots.paired_differences(diffs, "fine-tuned - baseline", path)
    assert path.stat().st_size > 1000
