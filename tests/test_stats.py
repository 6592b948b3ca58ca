"""Intervals and paired differences for small evaluation sets (stats.py, 04_evaluation)."""
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
    with pytest.raises(ValueError):
        wilson(0, 0)


def test_paired_difference_sees_what_overlapping_intervals_hide():
    import random

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
    with pytest.raises(ValueError, match="same non-zero number"):
        paired_difference(a, b[:3])


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
    assert d["ci"] != d["ci95"]
    assert paired_difference(a, b)["ci95"] == d["ci95"]  # the 95% interval is unchanged by the extra level
