"""Paired comparisons with bootstrap confidence intervals.

Methods are compared on the same tasks, so every difference is computed per task first (method A's value on
task t minus method B's on the same t, averaged over seeds when there are several), then resampled over tasks:
the interval says how much the mean difference moves when the task sample changes.  Where tasks come in groups
that are not independent (ScienceWorld builds the same world for one variation number of every task type), a
second interval resamples whole groups (``clusters``): the honest one when the groups are correlated.
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


def cluster_bootstrap_ci(values, clusters, n_boot: int = 10_000, alpha: float = 0.05,
                         seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of the mean of ``values``, resampling whole clusters (entry i
    belongs to ``clusters[i]``) with replacement."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    keys, inverse = np.unique(np.asarray([str(c) for c in clusters]), return_inverse=True)
    sums, counts = np.bincount(inverse, weights=x), np.bincount(inverse).astype(float)
    idx = np.random.default_rng(seed).integers(0, len(keys), size=(n_boot, len(keys)))
    means = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def paired_difference(a: pd.Series, b: pd.Series, n_boot: int = 10_000, seed: int = 0,
                      clusters: dict | None = None) -> dict:
    """Mean of a - b over the tasks both have (Series indexed by task), with a bootstrap 95% interval; with
    ``clusters`` (task -> group), also the interval that resamples whole groups."""
    common = a.index.intersection(b.index)
    d = (a.loc[common] - b.loc[common]).to_numpy(dtype=float)
    mean, lo, hi = bootstrap_mean_ci(d, n_boot, seed=seed)
    out = {"tasks": int(len(common)), "mean_diff": mean, "ci_low": lo, "ci_high": hi,
           "a_wins": int((d > 1e-9).sum()), "b_wins": int((d < -1e-9).sum()),
           "excludes_zero": bool(len(common) > 0 and (lo > 0 or hi < 0))}
    if clusters is not None:
        groups = [clusters[t] for t in common]
        clo, chi = cluster_bootstrap_ci(d, groups, n_boot, seed=seed)
        out.update(clusters=len(set(groups)), cluster_ci_low=clo, cluster_ci_high=chi,
                   cluster_excludes_zero=bool(len(common) > 0 and (clo > 0 or chi < 0)))
    return out


def per_task(frame: pd.DataFrame, value: str) -> pd.Series:
    """Per-task mean of ``value`` over seeds (rows with columns task, seed, value)."""
    return frame.groupby("task")[value].mean()


def comparison_table(scores: pd.DataFrame, pairs: list[tuple[str, str, str]], scale: float = 100.0,
                     n_boot: int = 10_000, seed: int = 0, clusters: dict | None = None) -> pd.DataFrame:
    """Paired differences for ``pairs`` of (column, method A, method B) over a long table with columns
    method, task, seed and the score columns; values are multiplied by ``scale`` (reward x100); ``clusters``
    (task -> group) adds the group-resampling interval (:func:`paired_difference`)."""
    rows = []
    for col, ma, mb in pairs:
        a, b = scores[scores.method == ma], scores[scores.method == mb]
        if a.empty or b.empty or col not in scores:
            continue
        r = paired_difference(scale * per_task(a, col), scale * per_task(b, col), n_boot, seed, clusters)
        rows.append({"score": col, "A": ma, "B": mb, **r})
    return pd.DataFrame(rows)


def shared_world_clusters(env_name: str, tasks) -> dict | None:
    """Task -> group for tasks that are not independent: ScienceWorld seeds a variation's world by its number, so
    one variation of several task types is one group; None where no two tasks share a group."""
    if env_name != "scienceworld":
        return None
    groups = {t.id: f"v{t.variation}" for t in tasks}
    return groups if len(set(groups.values())) < len(groups) else None
