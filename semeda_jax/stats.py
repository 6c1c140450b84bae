"""Paired-seed statistics and the decision rule of the pre-registered protocols (docs/results.md), shared by
benchmarks/protocol.py (and the benchmarks built on it) and semeda_jax/compare.py.

Per metric over n paired seeds, delta_s = arm_s - baseline_s: the mean delta, its standard deviation (ddof 1),
the 95% confidence interval mean +- t_{0.975, n-1} * std / sqrt(n) (t distribution, n - 1 degrees of freedom)
and the seeds won (delta > 0). With one seed the std and the interval are NaN.
Decision rule: better when the interval lies above 0, worse when it lies below 0, otherwise no difference shown.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats


def paired_statistics(arm_rows: Sequence[dict], base_rows: Sequence[dict], metrics: Sequence[str]) -> dict:
    """Per metric over paired rows (row s of each: seed s): mean delta (arm - baseline), std (ddof 1),
    95% t CI, seeds won -> {metric: {mean_delta, std, ci95: [low, high], seeds_won, seeds}}."""
    out = {}
    for metric in metrics:
        deltas = np.array([a[metric] - b[metric] for a, b in zip(arm_rows, base_rows)], np.float64)
        n = len(deltas)
        std = float(deltas.std(ddof=1)) if n > 1 else math.nan
        half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else math.nan
        mean = float(deltas.mean())
        out[metric] = dict(mean_delta=mean, std=std, ci95=[mean - half, mean + half],
                           seeds_won=int((deltas > 0).sum()), seeds=n)
    return out


def decision(stat: dict) -> str:
    """The decision rule on one metric's paired_statistics: 'better' (CI above 0), 'worse' (CI below 0),
    'no difference shown', or 'n/a' (no interval: one seed, or a score missing)."""
    low, high = stat["ci95"]
    if not (math.isfinite(low) and math.isfinite(high)):
        return "n/a"
    return "better" if low > 0 else "worse" if high < 0 else "no difference shown"


def paired_cell(stat: dict) -> str:
    """One metric's paired_statistics as 'mean delta [95% CI], std, seeds won' in points (x100)."""
    return (f"{100 * stat['mean_delta']:+.2f} [{100 * stat['ci95'][0]:+.2f}, {100 * stat['ci95'][1]:+.2f}], "
            f"{100 * stat['std']:.2f}, {stat['seeds_won']}/{stat['seeds']}")
