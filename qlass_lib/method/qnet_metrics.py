"""How well a QNet's predictions match the targets of a node set: MSE next to the targets' variance (R²),
Spearman correlation, sibling accuracy next to its random baseline, and a calibration table."""
from __future__ import annotations

import numpy as np
import pandas as pd

from qlass_lib.core.stats import bootstrap_mean_ci


def sibling_groups(exs: list[dict]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, e in enumerate(exs):
        groups.setdefault((e["task"], e["parent"]), []).append(i)
    return {k: v for k, v in groups.items() if len(v) > 1}


def informative_examples(exs: list[dict]) -> list[dict]:
    """The examples of sibling groups whose targets differ (all that sibling accuracy looks at)."""
    keep = []
    for ids in sibling_groups(exs).values():
        t = [exs[i]["target"] for i in ids]
        if max(t) - min(t) >= 1e-9:
            keep.extend(ids)
    return [exs[i] for i in sorted(keep)]


def sibling_hit(pred, target) -> tuple[float, float] | None:
    """One sibling group's (hit, random baseline): the share of the children tied at the highest prediction that
    have the best target (tied predictions share the credit, so a constant predictor scores the random
    baseline), and the share of all children with the best target; None when the targets do not differ."""
    pred, t = np.asarray(pred, dtype=float), np.asarray(target, dtype=float)
    if t.max() - t.min() < 1e-9:
        return None
    best = set(np.flatnonzero(np.abs(t - t.max()) < 1e-9))
    top = np.flatnonzero(pred >= pred.max() - 1e-12)
    return sum(int(i) in best for i in top) / len(top), len(best) / len(t)


def evaluate_qnet(pred: np.ndarray, exs: list[dict]) -> dict:
    """MSE, Spearman correlation, and sibling accuracy next to its random baseline, with bootstrap 95% intervals
    over sibling groups for the accuracy (``sibling_accuracy_low``/``_high``) and for its gain over the random
    baseline (``sibling_gain``, ``_low``, ``_high``): a few dozen groups leave both wide.

    Sibling accuracy: among parents with >= 2 children whose targets differ, the share where the child with
    the highest prediction is one of the best-target children (children tied at the highest prediction share
    the credit, so a constant predictor scores the random baseline); the random baseline picks a child uniformly.
    """
    from scipy.stats import spearmanr
    tgt = np.array([e["target"] for e in exs])
    out = {"examples": len(exs), "mse": float(np.mean((pred - tgt) ** 2)) if len(exs) else float("nan")}
    out["target_variance"] = float(np.var(tgt)) if len(exs) else float("nan")
    out["r2"] = 1.0 - out["mse"] / out["target_variance"] if len(exs) and out["target_variance"] > 0 else float("nan")
    # undefined (nan) when either side is constant, e.g. a QNet that has not moved off its initial value
    defined = len(exs) > 2 and np.std(tgt) > 0 and np.std(pred) > 0
    out["spearman"] = float(spearmanr(pred, tgt).statistic) if defined else float("nan")
    groups = [h for ids in sibling_groups(exs).values() if (h := sibling_hit(pred[ids], tgt[ids])) is not None]
    hits, base = np.array([h[0] for h in groups]), np.array([h[1] for h in groups])
    acc, lo, hi = bootstrap_mean_ci(hits, n_boot=2000)
    gain, glo, ghi = bootstrap_mean_ci(hits - base, n_boot=2000)
    out.update(sibling_groups=len(groups), sibling_accuracy=acc, sibling_random_baseline=float(base.mean())
               if len(groups) else float("nan"), sibling_accuracy_low=lo, sibling_accuracy_high=hi,
               sibling_gain=gain, sibling_gain_low=glo, sibling_gain_high=ghi)
    return out


def calibration_table(pred: np.ndarray, exs: list[dict], bins: int = 5) -> pd.DataFrame:
    """Predictions binned by quantile: mean prediction vs mean target per bin."""
    df = pd.DataFrame({"pred": pred, "target": [e["target"] for e in exs]})
    if df.empty:
        return df
    df["bin"] = pd.qcut(df["pred"].rank(method="first"), q=min(bins, len(df)), labels=False)
    return df.groupby("bin").agg(n=("pred", "size"), pred_min=("pred", "min"), pred_max=("pred", "max"),
                                 mean_pred=("pred", "mean"), mean_target=("target", "mean")).reset_index()
