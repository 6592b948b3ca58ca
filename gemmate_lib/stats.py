"""Intervals and paired differences for small evaluation sets (04_evaluation): Wilson intervals for
proportions (never degenerate: 0 of 30 gives [0, 0.114]), percentile bootstraps for the rest, and paired
bootstraps, in which item difficulty cancels."""
from __future__ import annotations

import math
import random

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
BOOTSTRAP = 1000  # bootstrap resamples for the 95% intervals


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of the proportion successes / n."""
    if n <= 0:
        raise ValueError("wilson needs n >= 1")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # exact arithmetic keeps p inside; rounding does not (0 of 3 gave a low end of 5.6e-17)
    return min(max(0.0, centre - half), p), max(min(1.0, centre + half), p)


def _statistic(values, weights, idx, ratio_exp):
    total, count = sum(values[i] for i in idx), sum(weights[i] for i in idx)
    return math.exp(total / count) if ratio_exp else total / count


def _percentiles(stats: list[float], level: float = 0.95) -> tuple[float, float]:
    stats, tail = sorted(stats), (1 - level) / 2
    return stats[int(tail * len(stats))], stats[int((1 - tail) * len(stats)) - 1]


def bootstrap_ci(values, weights=None, ratio_exp: bool = False, samples: int = BOOTSTRAP, seed: int = 0):
    """Percentile 95% interval of a mean (or of exp(sum/sum weights) for perplexity) over examples."""
    rng = random.Random(seed)
    n = len(values)
    weights = weights or [1.0] * n
    return _percentiles([_statistic(values, weights, [rng.randrange(n) for _ in range(n)], ratio_exp)
                         for _ in range(samples)])


def paired_difference(a, b, weights_a=None, weights_b=None, ratio_exp: bool = False, samples: int = BOOTSTRAP,
                      seed: int = 0, level: float = 0.95) -> dict:
    """b minus a on the same items (one value each, same order; perplexity: summed NLLs, token counts as
    weights, ratio_exp=True), with a paired-bootstrap 95% interval, the share of resamples with b > a, and
    "ci" at `level` from the same resamples (Bonferroni for k tests: level = 1 - 0.05 / k)."""
    n = len(a)
    if n != len(b) or n == 0:
        raise ValueError(f"a paired difference needs the same non-zero "
                         f"number of items, got {len(a)} and {len(b)}")
    weights_a, weights_b = weights_a or [1.0] * n, weights_b or [1.0] * n

    def difference(idx):
        return _statistic(b, weights_b, idx, ratio_exp) - _statistic(a, weights_a, idx, ratio_exp)

    rng = random.Random(seed)
    diffs = [difference([rng.randrange(n) for _ in range(n)]) for _ in range(samples)]
    return {"difference": difference(range(n)), "ci95": list(_percentiles(diffs)),
            "ci": list(_percentiles(diffs, level)), "level": level,
            "share_positive": sum(d > 0 for d in diffs) / samples, "method": "paired bootstrap"}
