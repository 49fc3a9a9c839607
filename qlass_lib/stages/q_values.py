"""Stage 03 · Q values: Q(n) = r + gamma * max Q(children) on every tree, min-max normalized, next to the
ablation targets (average reward, outcome); exports the QNet dataset split by task.

Artifacts (``runs/<id>/03_q_values/``): ``trees_q.jsonl``, ``q_summary.json``, ``q_values.png``,
``qnet_train.jsonl``, ``qnet_val.jsonl``, ``qnet_paths_*.jsonl``, ``qnet_dataset.json``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from qlass_lib.stages import close_figure


@dataclass
class QValuesResult:
    out: Path
    info: dict                   # what qvalues.compute reports (degenerate trees, ...)
    scopes: pd.DataFrame         # the normalization choices side by side
    nodes: pd.DataFrame          # one row per non-root node: depth, q, q_norm, avg_reward, outcome, ...
    dataset: dict                # the exported QNet dataset: examples, tasks, informative sibling groups
    summary: dict                # q_summary.json
    figures: dict = field(default_factory=dict)

    @property
    def target_correlation(self) -> pd.DataFrame:
        return self.nodes[["q_norm", "avg_reward", "outcome"]].corr(method="spearman").round(3)


def normalization_table(trees, gamma: float) -> pd.DataFrame:
    from qlass_lib.method import qvalues
    rows = []
    for scope in ["tree", "dataset", "none"]:
        ts = copy.deepcopy(trees)
        r = qvalues.compute(ts, gamma, scope)
        vals = pd.Series([n.q_norm for t in ts for n in t.nodes if n.parent is not None])
        rows.append({"normalize": scope, "degenerate_trees": r["degenerate_trees"], "mean": vals.mean(),
                     "std": vals.std(), "share_zero": (vals == 0).mean(), "share_one": (vals == 1).mean()})
    return pd.DataFrame(rows)


def node_table(trees) -> pd.DataFrame:
    from qlass_lib.method import qvalues
    return pd.DataFrame([{"task": t.task.id, "depth": n.depth, "q": n.q, "q_norm": n.q_norm, "avg_reward": a[n.id],
                          "outcome": o[n.id], "final_reward": n.rollout_reward, "source": n.source}
                         for t in trees for a, o in [(qvalues.avg_reward(t), qvalues.outcome(t))]
                         for n in t.nodes if n.parent is not None])


def _figure(nodes: pd.DataFrame, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from qlass_lib.viz import plots
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    nodes.groupby("depth")[["q_norm", "avg_reward", "outcome"]].mean().plot(ax=axes[0], marker="o",
                                                                             title="mean target by depth")
    jitter = 0.02 * (pd.Series(range(len(nodes))) % 5 - 2)
    axes[1].scatter(nodes.final_reward + jitter, nodes.q_norm, s=6, alpha=0.5)
    axes[1].set_xlabel("final reward of the node's trajectory")
    axes[1].set_ylabel("normalized Q")
    axes[1].set_title("Q vs final reward")
    nodes.q_norm.plot.hist(ax=axes[2], bins=20, title="normalized Q")
    close_figure(plots.save(fig, path))
    return path


def run(ctx) -> QValuesResult:
    from qlass_lib.method import qvalues
    from qlass_lib.core.artifacts import append_jsonl, write_json
    from qlass_lib.core.series import STAGES
    from qlass_lib.method.tree import load_trees
    cfg, out = ctx.cfg, ctx.stage_dir("03")
    trees = load_trees(ctx.run_dir / STAGES["02"] / "trees.jsonl")
    info = qvalues.compute(trees, cfg.qvalues.gamma, cfg.qvalues.normalize)
    (out / "trees_q.jsonl").unlink(missing_ok=True)
    for t in trees:
        append_jsonl(out / "trees_q.jsonl", t.to_dict())
    scopes = normalization_table(trees, cfg.qvalues.gamma)
    nodes = node_table(trees)
    figures = {"q_values": _figure(nodes, out / "q_values.png")}
    dataset = qvalues.export_dataset(trees, cfg.env.name, out, cfg.qvalues.val_fraction, cfg.seed,
                                     example=ctx.example(), degenerate=cfg.qvalues.degenerate)
    dataset["degenerate_trees"] = info["degenerate_trees"]
    dataset = {k: v for k, v in dataset.items() if not k.endswith("_tasks")}
    summary = {**info, **dataset}
    write_json(out / "q_summary.json", summary)
    return QValuesResult(out, info, scopes, nodes, dataset, summary, figures)


def load(stage_dir: Path) -> dict:
    """What a finished stage 03 wrote, for ``report``."""
    from qlass_lib.core.artifacts import read_json
    p = Path(stage_dir) / "q_summary.json"
    return {"summary": read_json(p)} if p.is_file() else {}
