"""Figures shared by the notebooks; every figure is also saved as PNG beside the tables."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd


def save(fig, path: str | Path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


def loss_curves(history: list[dict], path, title: str = "behavior cloning"):
    df = pd.DataFrame(history)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if "train_loss" in df:
        tr = df.dropna(subset=["train_loss"])
        ax.plot(tr["step"], tr["train_loss"], alpha=0.3, label="train (per step)")
        ax.plot(tr["step"], tr["train_ema"], label="train (EMA)")
    if "val_loss" in df:
        va = df.dropna(subset=["val_loss"])
        ax.plot(va["step"], va["val_loss"], "o-", label="validation")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("agent-token loss")
    ax.set_title(title)
    ax.legend()
    return save(fig, path)


def bar_by_group(table: pd.DataFrame, group: str, value: str, path, title: str = ""):
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.barh(table[group].astype(str), table[value])
    ax.set_xlabel(value)
    ax.set_title(title)
    return save(fig, path)


def self_training_bars(results: pd.DataFrame, path: str | Path):
    """Held-out reward per method with bootstrap intervals (the layout of the paper's Fig. 4)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(results)), 3.4))
    y = results.mean_reward_x100.to_numpy()
    err = [y - results.ci_low.to_numpy(), results.ci_high.to_numpy() - y]
    ax.bar(range(len(results)), y, yerr=err, capsize=4,
           color=["0.6" if m.startswith("SFT") else "C1" if m == "RFT" else "C0" for m in results.method])
    ax.set_xticks(range(len(results)), results.method, rotation=20, ha="right")
    ax.set_ylabel("held-out reward x100 (greedy)")
    ax.set_title("self-training: data from Q-guided generation vs RFT vs SFT")
    return save(fig, path)
