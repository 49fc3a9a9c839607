"""Stage 04 · QNet training: the BC backbone plus the MLP value head, MSE on the normalized Q targets of stage
03; evaluated on held-out trees (MSE next to the targets' variance, Spearman, sibling accuracy next to its
random baseline, calibration); QNets on the ablation targets are trained the same way.  Next to each QNet's
sibling accuracy stands the BC policy's own (its log-probability of each sibling action, ``qlass_lib.method.prior``):
search samples from that policy, so a QNet that does not rank siblings better than it cannot help.

Artifacts (``runs/<id>/04_qnet_training/``): ``qnet_q/`` (+ ``qnet_<target>/``), ``qnet_metrics.csv``,
``qnet_metrics.json``, ``calibration.csv``, ``prior_sweep.csv`` (validation sibling accuracy of Q + w·log π:
where ``search.prior_weight`` is chosen), ``qnet_training.png``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from qlass_lib.stages import close_figure


@dataclass
class QNetResult:
    out: Path
    metrics: dict                 # the q QNet on validation (and, as train_*, training) trees
    history: pd.DataFrame         # per step: train loss; every eval_every steps: validation numbers
    calibration: pd.DataFrame     # calibration.csv
    table: pd.DataFrame           # qnet_metrics.csv: one row per target (q first, then the ablation targets)
    train_seconds: float
    prior_sweep: pd.DataFrame | None = None  # prior_sweep.csv: Q + w·log π on the validation sibling groups, per w
    best_prior_weight: float = 0.0
    figures: dict = field(default_factory=dict)


def _figure(history: pd.DataFrame, targets: list[float], pred: np.ndarray, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from qlass_lib.viz import plots
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    if "train_loss" in history:
        tr = history.dropna(subset=["train_loss"])
        axes[0].plot(tr["step"], tr["train_loss"].rolling(10, min_periods=1).mean(), label="train (rolling mean)")
    if "val_mse" in history:
        va = history.dropna(subset=["val_mse"])
        axes[0].plot(va["step"], va["val_mse"], "o-", label="validation MSE (scored groups)")
    axes[0].set_xlabel("step")
    axes[0].set_title("QNet training")
    axes[0].legend()
    axes[1].scatter(targets, pred, s=8, alpha=0.5)
    axes[1].plot([0, 1], [0, 1], "k--", lw=1)
    axes[1].set_xlabel("target Q (normalized)")
    axes[1].set_ylabel("predicted")
    axes[1].set_title("held-out trees")
    close_figure(plots.save(fig, path))
    return path


def run(ctx) -> QNetResult:
    from qlass_lib.core.artifacts import write_json
    from qlass_lib.core.series import STAGES
    from qlass_lib.method.prior import best_prior_weight
    from qlass_lib.method.qnet_metrics import calibration_table
    from qlass_lib.method.qnet_train import fit_qnet
    cfg, out = ctx.cfg, ctx.stage_dir("04")
    data_dir = ctx.run_dir / STAGES["03"]
    policy_dir = ctx.run_dir / STAGES["01"] / "policy"
    _, result, metrics, pred, val = fit_qnet(cfg, policy_dir, data_dir, out / "qnet_q", "q")
    history = pd.DataFrame(result["history"])
    figures = {"training": _figure(history, [e["target"] for e in val], pred, out / "qnet_training.png")}
    cal = calibration_table(pred, val)
    cal.to_csv(out / "calibration.csv", index=False)
    rows = [metrics]
    for target in cfg.qnet.ablation_targets:
        rows.append(fit_qnet(cfg, policy_dir, data_dir, out / f"qnet_{target}", target)[2])
    prior, sweep = _policy_prior(cfg, policy_dir, data_dir, [r["target"] for r in rows], pred)
    sweep.to_csv(out / "prior_sweep.csv", index=False)
    best_w = best_prior_weight(sweep)
    rows = [{**r, **prior[r["target"]]} for r in rows]
    metrics = rows[0]
    table = pd.DataFrame(rows)
    table.to_csv(out / "qnet_metrics.csv", index=False)
    write_json(out / "qnet_metrics.json", {"schema_version": 2, "qnets": rows, "train_seconds": result["train_seconds"],
                                           "best_prior_weight": best_w, "prior_sweep": sweep.to_dict("records")})
    return QNetResult(out, metrics, history, cal, table, result["train_seconds"], sweep, best_w, figures)


def _policy_prior(cfg, policy_dir: Path, data_dir: Path, targets: list[str],
                  q_pred) -> tuple[dict[str, dict], pd.DataFrame]:
    """The BC policy's own log-probability as a sibling ranker, per target (``policy_sibling_accuracy`` on the
    validation trees, ``train_policy_sibling_accuracy`` on the training trees): the reference a QNet must beat;
    and the sweep of Q + w·log π on the validation trees (``q_pred``: the q QNet's validation predictions)."""
    import gc

    from qlass_lib.models.loading import load_policy
    from qlass_lib.method.prior import prior_sibling_metrics, prior_weight_sweep, sibling_logprobs
    model, tok = load_policy(policy_dir, cfg.model)
    try:  # the policy scores each split's sibling records once; both read-outs share them
        L, B = cfg.qnet.max_length, cfg.qnet.batch_size
        scored = {split: sibling_logprobs(model, tok, data_dir, split, L, B) for split in ("val", "train")}
        return (prior_sibling_metrics(model, tok, data_dir, targets, L, B, scored),
                prior_weight_sweep(model, tok, data_dir, q_pred, L, batch_size=B, scored=scored["val"]))
    finally:
        del model
        gc.collect()


def load(stage_dir: Path) -> dict:
    """What a finished stage 04 wrote, for ``report``."""
    d, out = Path(stage_dir), {}
    if (d / "qnet_metrics.csv").is_file():
        out["table"] = pd.read_csv(d / "qnet_metrics.csv")
    if (d / "calibration.csv").is_file():
        out["calibration"] = pd.read_csv(d / "calibration.csv")
    if (d / "prior_sweep.csv").is_file():
        out["prior_sweep"] = pd.read_csv(d / "prior_sweep.csv")
    return out
