"""Confidence intervals of a mean over seeds: the one interval every miars report prints.

A report averages a metric over the cells of a setting that differ only in their seed
(typically 3). The interval is the **Student-t interval of the mean**::

    mean +/- t_{1 - (1 - level) / 2, n - 1} * s / sqrt(n)      (s: sample standard deviation, ddof=1)

It is exact when the per-seed values are independent draws from a normal distribution, whatever
its variance, and it needs no resampling, so the same values always give the same interval.
With 3 seeds ``t_{0.975, 2} = 4.30``: the interval is about 2.6 times as wide as the seeds'
range on average (normal values). A percentile bootstrap of 3 values, which miars printed
before, is the seeds' range itself and covers the true mean 75% of the time.

Assumption and its limit: per-seed values far from normal (strongly skewed, e.g. a ROC-AUC
pressed against 1) lower the coverage at 3 seeds to about 88-92% (simulated: exponential 0.88,
Beta(20, 1) 0.89, Beta(50, 2) 0.92; see docs/notes.md). More seeds restore it.

``bounds`` clips the interval to the metric's possible range (``(0, 1)`` for rates and
ROC-AUC): the true mean lies inside that range, so clipping never uncovers it and the
coverage is unchanged. One value: the mean and no interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: ``ci_method`` of an interval in tables.csv and defenses.csv, and its wording in the reports.
METHOD = "student-t"
NO_INTERVAL = "none"
LEVEL = 0.95
DESCRIPTION = ("Student-t 95% CI of the mean over seeds (mean +/- t(0.975, n-1) s / sqrt(n); assumes per-seed values "
               "are roughly normal; no interval with one seed)")


@dataclass
class Estimate:
    """Mean over seeds and its confidence interval (``ci_low``/``ci_high`` None with fewer than two values)."""

    mean: float
    ci_low: float | None
    ci_high: float | None
    n_seeds: int
    seeds: list = field(default_factory=list)
    method: str = NO_INTERVAL


def mean_ci(values, *, level: float = LEVEL, bounds: tuple[float, float] | None = (0.0, 1.0)) -> Estimate:
    """Mean of the finite ``values`` and its Student-t ``level`` interval, clipped to ``bounds`` (None: unbounded).

    None and non-finite values are dropped (``n_seeds`` counts the rest). One value: no
    interval. Equal values: a zero-width interval at the mean. Values outside ``bounds``
    (not the metric it names) leave the interval unclipped.
    """
    from scipy import stats

    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return Estimate(float("nan"), None, None, 0)
    mean = float(v.mean())
    if v.size == 1:
        return Estimate(mean, None, None, 1)
    half = float(stats.t.ppf(1 - (1 - level) / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    low, high = mean - half, mean + half
    if bounds is not None and bounds[0] <= v.min() and v.max() <= bounds[1]:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return Estimate(mean, low, high, int(v.size), method=METHOD)
