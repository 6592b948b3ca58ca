"""The figures 04 and 07 draw from their own results (gemmate_lib.plots, and 04's written-out bars)."""
import matplotlib
import pytest

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


def _drawn(monkeypatch):
    """Keeps every figure a plot draws (plots._subplots' result), to read back what it drew."""
    from gemmate_lib import plots

    figures, real = [], plots._subplots
    monkeypatch.setattr(plots, "_subplots", lambda *a, **k: figures.append(made := real(*a, **k)) or made)
    return figures


def _error_bars(ax) -> list[tuple[float, float]]:
    """(low, high) of every error bar drawn on `ax`, in drawing order (vertical or horizontal)."""
    from matplotlib.container import ErrorbarContainer

    spans = []
    for container in ax.containers:
        if isinstance(container, ErrorbarContainer):
            for segment in container.lines[2][0].get_segments():
                (x0, y0), (x1, y1) = segment
                spans.append((min(y0, y1), max(y0, y1)) if x0 == x1 else (min(x0, x1), max(x0, x1)))
    return spans


def test_04s_metric_bars_draw_each_value_with_its_interval_even_one_that_misses_its_estimate(tmp_path,
                                                                                          monkeypatch):
    """04 on ten held-out rows: the bootstrap interval of perplexity lay above the estimate and the plot
    raised. Each bar is the value; its error bar spans the interval, cut at the estimate where it misses."""
    import matplotlib.pyplot as plt
    from test_notebook_recipes import run_cell

    figures, real = [], plt.subplots  # every figure 04's cell draws, to read back what it drew
    monkeypatch.setattr(plt, "subplots", lambda *a, **k: figures.append(made := real(*a, **k)) or made)
    for outside in (False, True):
        run_cell("04_evaluation.ipynb", "abccb0c2", table=_table(outside), out=tmp_path)
        assert (tmp_path / "metrics.png").stat().st_size > 1000
        shares, perplexities = figures[-1][1]
        assert [b.get_height() for b in shares.patches] == [0.5] * 10  # 5 shares x 2 models
        assert [b.get_height() for b in perplexities.patches] == [30.0] * 4
        assert _error_bars(shares) == [pytest.approx((0.4, 0.6))] * 10
        perplexity = (30.0, 45.0) if outside else (24.0, 36.0)  # 1.05x-1.5x: from the estimate up
        assert _error_bars(perplexities) == [pytest.approx(perplexity), pytest.approx((24.0, 36.0))] * 2
        (tmp_path / "metrics.png").unlink()


def test_paired_differences_draws_each_difference_with_its_interval(tmp_path, monkeypatch):
    from gemmate_lib import plots

    figures = _drawn(monkeypatch)
    diffs = {"rouge_l": {"difference": 0.1, "ci95": [0.12, 0.3]},
             "perplexity": {"difference": -2.0, "ci95": [-5, -1]}}
    path = tmp_path / "diffs.png"
    plots.paired_differences(diffs, "fine-tuned - baseline", path)
    assert path.stat().st_size > 1000
    shares, perplexities = figures[-1][1]
    assert _error_bars(shares) == [pytest.approx((0.1, 0.3))]  # the interval misses 0.1: cut there
    assert _error_bars(perplexities) == [pytest.approx((-5.0, -1.0))]


def _tick_values(axis) -> list[float]:
    """The major ticks the axis shows (inside its view), after drawing."""
    low, high = sorted(axis.get_view_interval())
    return [t for t in axis.get_majorticklocs() if low <= t <= high]


def test_07s_year_axes_tick_whole_years_only_and_its_heat_map_shows_samples_unblended(tmp_path, monkeypatch):
    """07's plots: a year axis ticked at 2007.5 names no year; the heat map draws each sampled value
    (nearest), not a blend of a fast feature's neighbours."""
    import numpy as np
    import pandas as pd

    from gemmate_lib import plots

    figures = _drawn(monkeypatch)
    conditions = pd.MultiIndex.from_product([["after, test", "after, val"], ["constant", "true"]])
    summary = pd.DataFrame({"year accuracy": [0.1, 0.9, 0.1, 0.9]}, index=conditions)
    years = np.arange(2007, 2027)  # 20 years: matplotlib's own ticks land at 2007.5, 2010.0, 2012.5, ...
    true_table = pd.DataFrame({"true_year": years, "year": years - (years > 2020) * 5,
                               "year_ok": years <= 2020})
    plots.ablation(summary, true_table, tmp_path / "ablation.png", train_years=(2007, 2020))
    plots.year_histogram(list(years) * 3, "years", tmp_path / "years.png")
    grid = np.linspace(1990, 2040, 201)
    feats = np.sin(np.outer(grid, np.arange(1, 9)))
    plots.temporal_features(grid, grid - 2006, feats, 2006.4, (2007, 2026), 1.0, tmp_path / "features.png")
    ablation, histogram, features = (fig for fig, _ in figures)
    axes = [ablation.axes[1].xaxis, ablation.axes[1].yaxis, histogram.axes[0].xaxis,
            features.axes[0].xaxis, features.axes[1].xaxis]
    for axis in axes:
        ticks = _tick_values(axis)
        assert len(ticks) >= 3 and all(float(t).is_integer() for t in ticks), ticks
    assert features.axes[1].images[0].get_interpolation() == "nearest"
