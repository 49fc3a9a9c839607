"""Paired comparisons with bootstrap confidence intervals.

Methods are compared on the same tasks, so every difference is computed per task first (method A's value on
task t minus method B's on the same t, averaged over seeds when there are several), then resampled over tasks:
the interval says how much the mean difference moves when the task sample changes.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def bootstrap_mean_ci(values, n_boot: int = 10_000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``values`` and its percentile bootstrap (1 - alpha) interval, resampling entries."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(x.mean()), float(lo), float(hi)


def paired_difference(a: pd.Series, b: pd.Series, n_boot: int = 10_000, seed: int = 0) -> dict:
    """Mean of a - b over the tasks both have (Series indexed by task), with a bootstrap 95% interval."""
    common = a.index.intersection(b.index)
    d = (a.loc[common] - b.loc[common]).to_numpy(dtype=float)
    mean, lo, hi = bootstrap_mean_ci(d, n_boot, seed=seed)
    return {"tasks": int(len(common)), "mean_diff": mean, "ci_low": lo, "ci_high": hi,
            "a_wins": int((d > 1e-9).sum()), "b_wins": int((d < -1e-9).sum()),
            "excludes_zero": bool(len(common) > 0 and (lo > 0 or hi < 0))}


def per_task(frame: pd.DataFrame, value: str) -> pd.Series:
    """Per-task mean of ``value`` over seeds (rows with columns task, seed, value)."""
    return frame.groupby("task")[value].mean()


def comparison_table(scores: pd.DataFrame, pairs: list[tuple[str, str, str]], scale: float = 100.0,
                     n_boot: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """Paired differences for ``pairs`` of (column, method A, method B) over a long table with columns
    method, task, seed and the score columns; values are multiplied by ``scale`` (reward x100)."""
    rows = []
    for col, ma, mb in pairs:
        a, b = scores[scores.method == ma], scores[scores.method == mb]
        if a.empty or b.empty or col not in scores:
            continue
        r = paired_difference(scale * per_task(a, col), scale * per_task(b, col), n_boot, seed)
        rows.append({"score": col, "A": ma, "B": mb, **r})
    return pd.DataFrame(rows)
