"""The plots of notebooks 03, 04, 06 and 07: each draws one figure, saves it into the run folder and shows
it. Each takes plain data (dicts, DataFrames, arrays), so a learner can call it on their own numbers."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def _subplots(*args, **kwargs):
    """plt.subplots, with pyplot imported only when a plot is drawn."""
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def _finish(fig, path: str | Path | None) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    plt.show()


def _whole_ticks(*axes, steps=(1, 2, 5, 10)) -> None:
    """Ticks at whole numbers only on these axes (a tick at 2007.5 names no year), `steps` apart."""
    from matplotlib.ticker import MaxNLocator

    for axis in axes:
        axis.set_major_locator(MaxNLocator(integer=True, steps=steps))


def loss_curve(log, title: str, path=None, ylabel: str = "cross-entropy (nats/token)"):
    """Training loss (and held-out loss when logged) against the optimizer step (03, 07)."""
    fig, ax = _subplots(figsize=(7, 3.4))
    train = log.dropna(subset=["loss"])
    ax.plot(train.step, train.loss, marker=".", label="training loss")
    if "eval_loss" in log:
        ev = log.dropna(subset=["eval_loss"])
        ax.plot(ev.step, ev.eval_loss, marker="o", label="held-out loss")
    ax.set(xlabel="optimizer step", ylabel=ylabel, title=title)
    ax.legend()
    return _finish(fig, path)


def compare_curves(logs: dict, title: str, path=None, ylabel: str = "training loss (nats/token)"):
    """Training-loss curves of several runs on one axis: the side-by-side runs of 03 and 06. Each point is the
    loss on that step's training batch, not the held-out loss."""
    fig, ax = _subplots(figsize=(8.5, 3.4))
    for name, log in logs.items():
        train = log.dropna(subset=["loss"])
        ax.plot(train.step, train.loss, marker=".", label=name)
    _whole_ticks(ax.xaxis, steps=None)  # optimizer steps are whole numbers (None: matplotlib's spacing)
    ax.set(xlabel="optimizer step", ylabel=ylabel, title=title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # outside: never over a curve
    return _finish(fig, path)


def temporal_features(years, x, feats, reference_year: float, task_years: tuple[int, int], tau: float,
                      path=None):
    """Left: the signed log transform over the years; right: every feature as a heat map (07)."""
    fig, (ax1, ax2) = _subplots(1, 2, figsize=(12, 3.8))
    ax1.plot(years, x)
    ax1.axvline(reference_year, color="red", ls="--", label="reference 2006-05-23")
    ax1.axvspan(task_years[0], task_years[1] + 1, color="grey", alpha=0.15, label="years of the task below")
    ax1.set(xlabel="date (year)", ylabel="x = sign(r) log(1 + |r| / 1 day)",
            title=f"signed log transform, {years[0]:.0f}-{years[-1]:.0f}")
    ax1.legend(loc="lower right")
    # nearest: each pixel one sampled value (smoothing blends a fast feature's red and blue into purple)
    ax2.imshow(feats.T, aspect="auto", cmap="coolwarm", interpolation="nearest",
               extent=[years[0], years[-1], feats.shape[1], 0])
    ax2.axvline(reference_year, color="black", ls="--")
    ax2.set(xlabel="date (year)", ylabel="feature", title=f"the {feats.shape[1]} features (tau = {tau})")
    _whole_ticks(ax1.xaxis, ax2.xaxis)
    return _finish(fig, path)


def year_histogram(years, title: str, path=None):
    """How many examples fall in each year (07)."""
    fig, ax = _subplots(figsize=(7, 2.8))
    ax.hist(years, bins=np.arange(min(years) - 0.5, max(years) + 1.5), rwidth=0.85)
    ax.set(xlabel="year written", ylabel="training notes", title=title)
    _whole_ticks(ax.xaxis)
    return _finish(fig, path)


def ablation(summary, true_table, path=None, train_years: tuple[int, int] | None = None):
    """Left: year accuracy per condition; right: predicted against true year after training (07). With
    `train_years`, the right panel shades the training years: points outside them are extrapolation."""
    fig, (ax1, ax2) = _subplots(1, 2, figsize=(12, 3.8))
    summary["year accuracy"].unstack().plot.bar(ax=ax1, rot=0, ylim=(0, 1.05))
    ax1.set(ylabel="exact-year accuracy", title="ablation on held-out timestamps")
    ok = true_table.year_ok.astype(bool)
    ax2.scatter(true_table.true_year[ok], true_table.year[ok], s=18, label="right year")
    ax2.scatter(true_table.true_year[~ok], true_table.year[~ok], s=30, color="red", marker="x",
                label="wrong year")
    low, high = true_table.true_year.min(), true_table.true_year.max()
    ax2.plot([low, high], [low, high], color="grey", lw=0.8)
    if train_years:
        ax2.axvspan(train_years[0] - 0.5, train_years[1] + 0.5, color="grey", alpha=0.12,
                    label="training years")
    ax2.set(xlabel="true year", ylabel="year the model wrote", title="after training, true timestamps")
    _whole_ticks(ax2.xaxis, ax2.yaxis)
    ax2.legend()
    return _finish(fig, path)


def paired_differences(diffs: dict, title: str, path=None):
    """Forest plot of paired differences (04): each metric's b - a with its paired-bootstrap 95% interval
    (thick) and, where compare_paired was given a level, the wider one at that level (thin: Bonferroni's).
    Coloured by evaluation.paired_support, the rule of 04's printed verdict."""
    from gemmate_lib.evaluation import paired_support

    colours = {"supported": "#27a", "suggestive": "#e80", "none": "#888"}
    groups = [[m for m in diffs if not m.startswith("perplexity")],
              [m for m in diffs if m.startswith("perplexity")]]
    fig, axes = _subplots(1, 2, figsize=(11, 3.2), gridspec_kw={"width_ratios": [3, 1.3]})
    for ax, names, label in zip(axes, groups, ("difference in share", "difference in perplexity")):
        for i, m in enumerate(names):
            d, colour = diffs[m]["difference"], colours[paired_support(diffs[m])]
            thin = [(diffs[m]["ci"], "none", 2, 0.8)] if diffs[m].get("ci") is not None else []
            for (lo, hi), fmt, cap, lw in thin + [(diffs[m]["ci95"], "o", 4, 2)]:
                ax.errorbar(d, i, xerr=[[max(d - lo, 0)], [max(hi - d, 0)]], fmt=fmt, capsize=cap, lw=lw,
                            color=colour)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(range(len(names)), [m.replace("_", " ") for m in names], fontsize=8)
        ax.set_xlabel(label)
    wide = any(diff.get("ci") is not None for diff in diffs.values())
    key = (" (thick: 95% interval, thin: Bonferroni's; blue: Bonferroni's excludes 0, "
           "orange: only the 95% one does, suggestive)" if wide else " (blue: the interval excludes 0)")
    fig.suptitle(title + key, fontsize=9)
    return _finish(fig, path)


def python_timeline(table, releases, path=None):
    """The newest Python 3 release over time (07): the truth as steps, the model's answers as points."""
    versions = [v for v, _ in releases]
    rank = {v: i for i, v in enumerate(versions)}
    when = np.array([datetime.fromtimestamp(ms / 1000, tz=timezone.utc) for ms in table.timestamp])
    fig, ax = _subplots(figsize=(11, 3.8))
    steps = [datetime.fromisoformat(day).replace(tzinfo=timezone.utc) for _, day in releases]
    ax.step(steps + [max(when)], list(range(len(versions))) + [len(versions) - 1], where="post", color="grey",
            lw=1, label="truth (python.org release dates)")
    ok, answer = table.ok.astype(bool).to_numpy(), np.array([rank.get(a, -1) for a in table.answer])
    ax.scatter(when[ok], answer[ok], s=12, label="right answer")
    ax.scatter(when[~ok], answer[~ok], s=40, color="red", marker="x", label="wrong answer (-1: no version)")
    ax.set_yticks(range(len(versions)), versions)
    ax.set(ylabel="newest Python 3 release", title="answers from the timestamp alone, on held-out dates")
    ax.legend(loc="upper left")
    return _finish(fig, path)


def methods_overview(table, path=None, untrained_loss: float | None = None):
    """06: a row per method (index: its name) with the columns of `panels`, optionally format_low /
    format_high and loss_start (held-out loss before training, NaN where unknown). Counts use a log scale."""
    panels = [("trainable", "trainable weights (log)", True), ("saved_mib", "saved on disk, MiB (log)", True),
              ("training_peak_mib", "peak memory added by training, MiB", False),
              ("seconds_per_step", "seconds per step", False),
              ("held_out_loss_text", "held-out loss, nats/token (lower is better)", False),
              ("format_compliance", "format compliance (higher is better)", False)]
    fig, axes = _subplots(2, 3, figsize=(13, 6.2), sharey=True)
    rows = range(len(table))
    for ax, (column, label, log) in zip(axes.flat, panels):
        values = table[column].astype(float)
        if column == "held_out_loss_text":  # dots, not bars: a loss axis from 0 would hide the differences
            if "loss_start" in table:
                start = table.loss_start.astype(float).to_numpy()
                known = [y for y in rows if start[y] == start[y]]  # x == x: not NaN
                for y in known:
                    ax.plot([start[y], values.iloc[y]], [y, y], color="#27a", lw=1, alpha=0.6)
                ax.plot(start[known], known, "o", mfc="white", color="#27a", label="before training")
            ax.plot(values, rows, "o", color="#27a", label="after training")
            if untrained_loss is not None:
                ax.axvline(untrained_loss, color="red", ls="--", lw=1, label="untrained model")
            ax.legend(fontsize=7, loc="best")
        else:
            err = None
            if column == "format_compliance" and {"format_low", "format_high"} <= set(table):
                err = [values - table.format_low.astype(float), table.format_high.astype(float) - values]
            ax.barh(rows, values, xerr=err, capsize=3, color="#27a")
        if log:
            ax.set_xscale("log")
        ax.set_yticks(rows, list(table.index))
        ax.set_xlabel(label, fontsize=9)
    axes[0, 0].invert_yaxis()  # shared y: once for all panels
    fig.suptitle("the same data, model and steps for every method")
    return _finish(fig, path)
