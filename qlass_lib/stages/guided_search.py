"""Stage 05 · Q-guided search vs greedy and Best-of-N on held-out tasks, every method once per seed, with the
three selections (first / QNet-selected / oracle), paired differences with bootstrap intervals, budget curves
(paper Fig. 3), the budget ratio, a case study and the process-reward ablation.

Artifacts (``runs/<id>/05_guided_search/``): ``search_episodes.jsonl``, ``selection_values.jsonl``,
``task_scores.csv``, ``results.csv``, ``comparisons.csv``, ``candidate_diversity.csv``, ``budget_curves.csv``,
``budget_curves.png``, ``budget_ratio.json``, ``total_cost.json`` (:mod:`qlass_lib.analysis.cost`), ``case_study.csv``, ``ablation_episodes.jsonl``, ``ablation.csv``,
``ablation_comparisons.csv``, ``search_summary.json``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from qlass_lib.stages import close_figure


@dataclass
class SearchResult:
    out: Path
    description: str              # tasks, split, N, M, seeds
    paraphrase_example: str
    episodes: list[dict]
    env_errors: dict
    table: pd.DataFrame           # results.csv: per method, first / QNet-selected / oracle, tokens
    comparisons: pd.DataFrame     # comparisons.csv: paired differences with bootstrap 95% intervals
    diversity: pd.DataFrame       # distinct candidates per QLASS step
    curves: pd.DataFrame          # budget_curves.csv
    ratios: dict                  # budget_ratio.json
    case_study: pd.DataFrame
    ablation: pd.DataFrame
    ablation_comparisons: pd.DataFrame
    figures: dict = field(default_factory=dict)
    cost: dict = field(default_factory=dict)  # total_cost.json: trees, QNet training and search, break-even


def budget_figure(curves: pd.DataFrame, table: pd.DataFrame, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from qlass_lib.viz import plots
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    g = table.set_index("method").loc["greedy"]
    for ax, sel in zip(axes, ("oracle", "qnet")):
        for m, c in curves[curves["select"] == sel].groupby("method", sort=False):
            line, = ax.plot(c.tokens, c.reward_x100, "o-" if m.startswith("QLASS") else "s--", label=m)
            ax.fill_between(c.tokens, c.ci_low, c.ci_high, color=line.get_color(), alpha=0.12)
        ax.scatter([g.gen_tokens_per_task], [g.reward_x100_first], marker="*", s=150, c="k", label="greedy", zorder=3)
        ax.set_xlabel("completion tokens per task")
        ax.set_title(f"best of k by {'outcome (oracle)' if sel == 'oracle' else 'QNet value'}")
    axes[0].set_ylabel("mean reward x100")
    axes[0].legend(fontsize=8)
    close_figure(plots.save(fig, path))
    return path


def budget_ratios(curves: pd.DataFrame, methods: list[str]) -> dict:
    """Tokens QLASS needs to reach Best-of-N's best oracle reward ÷ Best-of-N's tokens (per QLASS variant)."""
    from qlass_lib.method import selection
    oc = curves[curves["select"] == "oracle"]
    ratios = {m: selection.budget_ratio(oc[oc.method == "BoN"], oc[oc.method == m])
              for m in methods if m.startswith("QLASS")}
    ratios.update({f"{m} vs BoN-aug": selection.budget_ratio(oc[oc.method == "BoN-aug"], oc[oc.method == m])
                   for m in methods if m.startswith("QLASS-aug")})
    return ratios


def ablation(runner, tasks, ctx, out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    from qlass_lib.method import search, selection
    from qlass_lib.core import stats
    cfg = ctx.cfg
    if not cfg.qnet.ablation_targets:  # nothing to compare the Q-target QNet with: no ablation episodes, no files
        return pd.DataFrame(), pd.DataFrame()
    targets = ["q", *cfg.qnet.ablation_targets]
    eps = search.run_ablation(runner, tasks, targets, cfg.search, out / "ablation_episodes.jsonl")
    scores = selection.task_scores(eps)
    table = selection.results_table(scores)
    table.insert(0, "target", table.method.str.replace("ablation-", ""))
    table.to_csv(out / "ablation.csv", index=False)
    pairs = [("first", "ablation-q", f"ablation-{t}") for t in cfg.qnet.ablation_targets]
    cmp = stats.comparison_table(scores, pairs, seed=cfg.seed,
                                 clusters=stats.shared_world_clusters(cfg.env.name, tasks))
    cmp.to_csv(out / "ablation_comparisons.csv", index=False)
    return table, cmp


def run(ctx) -> SearchResult:
    from qlass_lib.method import search, selection
    from qlass_lib.core import stats
    from qlass_lib.core.artifacts import write_json
    from qlass_lib.core.series import STAGES
    from qlass_lib.analysis.cost import total_cost
    from qlass_lib.envs import eval_tasks, make_env
    from qlass_lib.method.evaluation import check_env_errors
    from qlass_lib.method.executor import make_executor
    from qlass_lib.text.paraphrase import make_paraphraser
    from qlass_lib.method.qnet import load_qnet
    cfg, out, s = ctx.cfg, ctx.stage_dir("05"), ctx.cfg.search
    env = make_env(cfg.env)
    runner = None
    try:
        policy = ctx.policy(env.name)
        qnet_dirs = {t: ctx.run_dir / STAGES["04"] / f"qnet_{t}" for t in ["q", *cfg.qnet.ablation_targets]}
        qnets = {t: load_qnet(d, cfg.model) for t, d in qnet_dirs.items()}
        qnet = qnets["q"]
        runner = make_executor(ctx, env, policy, qnets, qnet_dirs)
        tasks = eval_tasks(env, cfg.env, s.tasks_per_type)
        paraphraser = make_paraphraser(s)
        desc = (f"{len(tasks)} held-out tasks ({cfg.env.eval_split}); N={s.n_trajectories} M={s.m_candidates} "
                f"seeds={s.seeds}; generation {cfg.generation.backend}, executor {cfg.executor.kind}")
        para = paraphraser("Your task is to find a(n) animal. First, focus on the thing. Then, move it to the red "
                           "box in the kitchen.", 1)
        episodes = search.run_suite(runner, tasks, s, out / "search_episodes.jsonl", paraphraser)
        env_errors = check_env_errors(episodes, cfg.env.max_error_share, "search episodes")
        values = selection.final_values(episodes, qnet, env.name, out / "selection_values.jsonl", ctx.example())
        scores = selection.task_scores(episodes, values)
        scores.to_csv(out / "task_scores.csv", index=False)
        table = selection.results_table(scores)
        table.to_csv(out / "results.csv", index=False)
        clusters = stats.shared_world_clusters(env.name, tasks)
        comparisons = stats.comparison_table(scores, selection.standard_pairs(list(table.method)), seed=cfg.seed,
                                             clusters=clusters)
        comparisons.to_csv(out / "comparisons.csv", index=False)
        diversity = search.candidate_diversity(episodes)
        diversity.to_csv(out / "candidate_diversity.csv", index=False)
        methods = [m for m in table.method if m != "greedy"]
        curves = pd.concat([selection.budget_curve(episodes, m, sel, values) for sel in ("oracle", "qnet")
                            for m in methods])
        curves.to_csv(out / "budget_curves.csv", index=False)
        figures = {"budget_curves": budget_figure(curves, table, out / "budget_curves.png")}
        ratios = budget_ratios(curves, methods)
        write_json(out / "budget_ratio.json", ratios)
        cost = total_cost(ctx.run_dir, table, ratios)
        write_json(out / "total_cost.json", cost)
        case = search.case_study(episodes, f"QLASS-M{max(s.m_candidates)}", s.case_study_tasks)
        case.to_csv(out / "case_study.csv", index=False)
        abl, abl_cmp = ablation(runner, tasks, ctx, out)
    finally:
        if runner is not None:
            runner.close()
        env.close()
    write_json(out / "search_summary.json", {
        "schema_version": 2, "split": cfg.env.eval_split, "tasks": [t.id for t in tasks], "seeds": s.seeds,
        "results": table.to_dict("records"), "comparisons": comparisons.to_dict("records"), "budget_ratio": ratios,
        "ablation": abl.to_dict("records"), "ablation_comparisons": abl_cmp.to_dict("records"),
        "env_errors": env_errors})
    return SearchResult(out, desc, para, episodes, env_errors, table, comparisons, diversity, curves, ratios, case,
                        abl, abl_cmp, figures, cost)


def load(stage_dir: Path) -> dict:
    """What a finished stage 05 wrote, for ``report``."""
    from qlass_lib.core.artifacts import read_json
    d, out = Path(stage_dir), {}
    for key, name in (("table", "results.csv"), ("comparisons", "comparisons.csv"), ("ablation", "ablation.csv"),
                      ("ablation_comparisons", "ablation_comparisons.csv")):
        if (d / name).is_file():
            out[key] = pd.read_csv(d / name)
    for key, name in (("ratios", "budget_ratio.json"), ("summary", "search_summary.json"), ("cost", "total_cost.json")):
        if (d / name).is_file():
            out[key] = read_json(d / name)
    return out
