"""Confidence intervals used by the evaluations: Wilson for a proportion, paired differences, means."""

import statistics


def wilson_ci(successes: int, n: int, z: float = 1.96):
    """Wilson score 95% interval of a proportion successes / n."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / den
    return mid - half, mid + half


def paired_diff_ci(a, b, z: float = 1.96, clusters=None):
    """Mean of a - b (paired 0/1 outcomes on the same items) with a normal-approximation 95% interval.

    ``clusters``: optional cluster id per item (e.g. the problem, when each problem is sampled several times with
    different seeds); the differences are averaged within a cluster first and the interval is taken over clusters
    (samples of one problem are not independent)."""
    d = [x - y for x, y in zip(a, b)]
    if clusters is not None:
        groups = {}
        for c, x in zip(clusters, d):
            groups.setdefault(c, []).append(x)
        d = [sum(g) / len(g) for g in groups.values()]
    n = len(d)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / max(n - 1, 1)
    half = z * (var / n) ** 0.5
    return mean, mean - half, mean + half


def mean_ci(values, z: float = 1.96):
    """Mean of `values` (NaNs dropped) with a normal-approximation 95% interval."""
    vals = [v for v in values if v == v]
    n = len(vals)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    m = sum(vals) / n
    half = z * (statistics.variance(vals) / n) ** 0.5 if n > 1 else float("nan")
    return m, m - half, m + half
