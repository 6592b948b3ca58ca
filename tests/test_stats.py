"""Intervals and paired differences for small evaluation sets (stats.py, 04_evaluation)."""
import math
import random

import pytest

from gemmate_lib.stats import bootstrap_ci, paired_difference, wilson


def test_bootstrap_interval():
    assert bootstrap_ci([1.0] * 10) == (1.0, 1.0)
    lo, hi = bootstrap_ci([0.0, 1.0] * 20)
    assert 0.2 < lo < 0.5 < hi < 0.8


def test_wilson_interval_is_never_degenerate_and_matches_hand_values():
    low, high = wilson(0, 30)
    assert low == 0 and high == pytest.approx(3.8415 / 33.8415, rel=1e-4)  # z^2 / (n + z^2): not [0, 0]
    assert wilson(30, 30)[0] == pytest.approx(30 / 33.8415, rel=1e-4)
    assert wilson(30, 30)[1] == pytest.approx(1)
    low, high = wilson(15, 30)
    assert low == pytest.approx(0.3315, abs=1e-3) and high == pytest.approx(0.6685, abs=1e-3)
    with pytest.raises(ValueError, match=r"^wilson .*n >= 1$"):  # who refuses, and what it needs
        wilson(0, 0)


def test_paired_difference_sees_what_overlapping_intervals_hide():
    rng = random.Random(1)
    a = [rng.random() for _ in range(30)]  # items of very different difficulty
    b = [x + 0.05 for x in a]  # the same items, each a little better
    lo_a, hi_a = bootstrap_ci(a)
    lo_b, hi_b = bootstrap_ci(b)
    assert lo_b < hi_a  # the separate intervals overlap ...
    d = paired_difference(a, b)
    assert d["difference"] == pytest.approx(0.05) and d["ci95"][0] > 0.04  # ... the paired one excludes zero
    assert d["share_positive"] == 1.0 and d["method"] == "paired bootstrap"
    same = paired_difference(a, a)
    assert same["difference"] == 0 and same["ci95"] == [0, 0]
    assert same["share_positive"] == 0  # no resample finds b better than itself
    with pytest.raises(ValueError, match="same non-zero number of items, got 30 and 3"):
        paired_difference(a, b[:3])
    with pytest.raises(ValueError, match="same non-zero number of items, got 0 and 0"):
        paired_difference([], [])


def test_wilson_interval_holds_its_own_share_for_every_count():
    """0 of 3 gave a low end of 5.6e-17 above the share 0, which failed 04's "every value lies inside its
    interval" check and matplotlib's error bars on a ten-row evaluation."""
    for n in range(1, 60):
        for k in range(n + 1):
            low, high = wilson(k, n)
            assert 0 <= low <= k / n <= high <= 1, (k, n, low, high)


def test_bonferroni_level_widens_the_paired_interval_from_the_same_resamples():
    a = [0.0, 1.0] * 20
    b = [1.0, 1.0, 0.0, 1.0] * 10
    d = paired_difference(a, b, level=1 - 0.05 / 7)
    assert d["ci"][0] <= d["ci95"][0] <= d["ci95"][1] <= d["ci"][1]
    assert d["ci"] != d["ci95"] and d["level"] == 1 - 0.05 / 7  # the record names its interval's level
    assert paired_difference(a, b)["ci95"] == d["ci95"]  # the 95% interval is unchanged by the extra level


def test_the_95_percent_interval_leaves_2_5_percent_of_the_resamples_on_each_side():
    """A percentile interval: of the resampled differences, 2.5% lie below its low end and 2.5% above its high
    end. Moving b by t moves every resampled difference by t (the seed draws the same resamples), so the share
    of resamples with b ahead, once an end sits just below 0, counts the resamples beyond that end."""
    rng = random.Random(3)
    a, b = [rng.random() for _ in range(30)], [rng.random() for _ in range(30)]
    low, high = paired_difference(a, b)["ci95"]

    def share_above(t):
        return paired_difference(a, [x - t for x in b])["share_positive"]

    assert share_above(low - 1e-9) == pytest.approx(0.975)  # the low end and all above it
    assert share_above(high + 1e-9) == pytest.approx(0.025)  # above the high end


def test_perplexity_is_exp_of_the_nll_per_token_over_the_whole_set():
    """Perplexity (ratio_exp): each item brings its summed NLL and its token count (the weight), and the
    statistic is exp(total NLL / total tokens), not a mean of the items' own values."""
    tokens = [1.0, 3.0, 5.0]
    at_two_nats = [2.0 * n for n in tokens]  # every item at 2 nats per token: every resample too
    assert bootstrap_ci(at_two_nats, tokens, ratio_exp=True) == pytest.approx((math.exp(2.0),) * 2)
    nll_a, nll_b, tokens = [3.0, 1.0, 8.0], [2.0, 0.5, 5.0], [2.0, 1.0, 4.0]
    d = paired_difference(nll_a, nll_b, tokens, tokens, ratio_exp=True)
    assert d["difference"] == pytest.approx(math.exp(7.5 / 7) - math.exp(12 / 7))  # b's perplexity minus a's
    assert d["ci95"][1] < 0 and d["share_positive"] == 0  # b is better (lower) on every item


def test_a_rerun_prints_the_same_intervals():
    rng = random.Random(5)
    a, b = [rng.random() for _ in range(20)], [rng.random() for _ in range(20)]
    assert bootstrap_ci(a) == bootstrap_ci(a) and paired_difference(a, b) == paired_difference(a, b)
