"""Stage 02 · exploration trees: the BC policy explores one tree per training task (depth <= D, width <= W,
pre-pruning of zero-reward branches), appended to ``trees.jsonl`` as each finishes (resumable).

Artifacts (``runs/<id>/02_tree_construction/``): ``trees.jsonl``, ``tree_stats.csv``, ``tree_summary.json``,
``tree_stats.png``, ``example_tree.png``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from qlass_lib.stages import close_figure


@dataclass
class TreesResult:
    out: Path
    description: str            # tasks, D, W, rollouts, temperature, expert branches
    records: list[dict]         # one serialized tree per training task
    stats: pd.DataFrame         # tree_stats.csv: one row per tree
    summary: dict               # tree_summary.json
    figures: dict = field(default_factory=dict)

    @property
    def per_type(self) -> pd.DataFrame:
        cols = ["nodes", "max_depth", "mean_branching", "share_pruned", "duplicates_rejected", "nonzero_leaves",
                "env_steps", "gen_tokens", "wall_s"]
        return self.stats.groupby("task_type")[cols].mean().round(2)

    def example_tree(self):
        """The largest tree with a non-zero leaf, with display Q values (stage 03 computes the stored ones)."""
        from qlass_lib.method.tree import Tree
        return Tree.from_dict(max(self.records, key=lambda r: (r["stats"]["nonzero_leaves"] > 0, r["stats"]["nodes"])))


def summarize(stats: pd.DataFrame, env_errors: dict) -> dict:
    return {
        "trees": len(stats), "mean_nodes": stats.nodes.mean(), "mean_branching": stats.mean_branching.mean(),
        "share_pruned": stats.pruned.sum() / max(1, (stats.pruned + stats.expanded).sum()),
        "duplicates_rejected": int(stats.duplicates_rejected.sum()),
        "share_trees_with_nonzero_leaf": (stats.nonzero_leaves > 0).mean(),
        "share_trees_with_nonzero_policy_leaf": (stats.nonzero_policy_leaves > 0).mean(),
        "env_steps": int(stats.env_steps.sum()), "replay_mismatches": int(stats.replay_mismatches.sum()),
        "trees_with_env_errors": env_errors["with_env_errors"],
        "gen_tokens": int(stats.gen_tokens.sum()), "prompt_tokens": int(stats.prompt_tokens.sum()), "gen_s": stats.gen_s.sum(), "env_s": stats.env_s.sum(),
        "wall_s": stats.wall_s.sum()}


def _figures(records, stats, out: Path, tree, qcfg) -> dict:
    import matplotlib.pyplot as plt

    from qlass_lib.viz import plots
    from qlass_lib.method import qvalues
    from qlass_lib.viz.widgets import plot_tree
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    stats.nodes.plot.hist(ax=axes[0], bins=15, title="nodes per tree")
    pd.Series([n["depth"] for r in records for n in r["nodes"]]).value_counts().sort_index().plot.bar(
        ax=axes[1], title="nodes by depth")
    stats[["gen_s", "env_s"]].sum().plot.bar(ax=axes[2], title="time (s): generation vs env")
    close_figure(plots.save(fig, out / "tree_stats.png"))
    qvalues.compute([tree], qcfg.gamma, "tree")
    close_figure(plot_tree(tree, out / "example_tree.png"))
    return {"stats": out / "tree_stats.png", "example_tree": out / "example_tree.png"}


def run(ctx) -> TreesResult:
    from qlass_lib.core.artifacts import write_json
    from qlass_lib.envs import make_env
    from qlass_lib.method.evaluation import check_env_errors
    from qlass_lib.method.executor import make_executor
    from qlass_lib.method.tree import build_trees, stats_frame, tree_tasks
    cfg, out = ctx.cfg, ctx.stage_dir("02")
    env = make_env(cfg.env)
    try:
        policy = ctx.policy(env.name)
        tasks = tree_tasks(env, cfg)  # disjoint from BC's tasks when tree.disjoint_from_bc
        expert = ctx.expert_actions() if cfg.tree.attach_expert else {}
        t = cfg.tree
        desc = (f"{len(tasks)} training tasks; D={t.depth} W={t.width} max rollouts={t.max_rollouts} "
                f"T={t.sampling.temperature}; expert branches available for {sum(x.id in expert for x in tasks)}; "
                f"generation {cfg.generation.backend}, executor {cfg.executor.kind}")
        runner = make_executor(ctx, env, policy)
        try:
            records = build_trees(runner, tasks, out / "trees.jsonl", t, expert, cfg.seed)
        finally:
            runner.close()
        env_errors = check_env_errors(records, cfg.env.max_error_share, "trees")
    finally:
        env.close()
    stats = stats_frame(records)
    stats.to_csv(out / "tree_stats.csv", index=False)
    summary = summarize(stats, env_errors)
    write_json(out / "tree_summary.json", summary)
    res = TreesResult(out, desc, records, stats, summary)
    res.figures = _figures(records, stats, out, res.example_tree(), cfg.qvalues)
    return res


def load(stage_dir: Path) -> dict:
    """What a finished stage 02 wrote, for ``report``."""
    from qlass_lib.core.artifacts import read_json
    p = Path(stage_dir) / "tree_summary.json"
    return {"summary": read_json(p)} if p.is_file() else {}
