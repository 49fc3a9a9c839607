"""The fewer-annotations experiment (paper: WebShop with 1,000 vs 200 expert trajectories): the series once per
share of the expert data BC trains on (``bc.expert_fraction``), the trees and QNet on the same task pool, then
one table of SFT, Best-of-N and QLASS at each share.

``python -m qlass_lib annotations params/default.yaml --fractions 1 0.5 0.25`` runs ``runs/<run_id>`` (share 1,
the ordinary run, reused when finished) and ``runs/<run_id>-expert50`` etc., and writes
``runs/<run_id>-annotations/annotations.csv`` and ``annotations.png``.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from qlass_lib.core.series import STAGES


def run_id_for(base: str, fraction: float) -> str:
    return base if fraction >= 1.0 else f"{base}-expert{int(round(100 * fraction))}"


def run_fractions(params: str | Path, fractions: list[float], overrides: dict | None = None, log=print,
                  reuse: bool = False, **run_kw) -> list[Path]:
    """The series once per share (each its own run folder, resumable like any run); ``run_kw`` goes to
    :func:`qlass_lib.run.pipeline.run` (``root``, ``execute``)."""
    from qlass_lib.core.config import ConfigError, deep_merge
    from qlass_lib.run.pipeline import load_run_config, run
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise ConfigError(f"--fractions: {bad[0]} is not in (0, 1]")
    cfg, _ = load_run_config(params, overrides)
    dirs = []
    for f in fractions:
        over = deep_merge(dict(overrides or {}), {"bc": {"expert_fraction": float(f)}})
        log(f"== expert share {f:g}: run {run_id_for(cfg.run_id, f)}")
        dirs.append(run(params, overrides=over, run_id=run_id_for(cfg.run_id, f), log=log, reuse=reuse, **run_kw))
    return dirs


def table(run_dirs: list[str | Path]) -> pd.DataFrame:
    """One row per (run, method): SFT (stage 01's greedy policy) and every search method of stage 05, first
    trajectory / QNet-selected / oracle best of N, with the BC data size of the run."""
    from qlass_lib.core.artifacts import read_json
    rows = []
    for rd in map(Path, run_dirs):
        met = read_json(rd / STAGES["01"] / "bc_metrics.json")
        allrow = next(r for r in met["per_type"] if r["task_type"] == "all")
        n_bc = met.get("bc_trajectories")
        if n_bc is None and (rd / STAGES["01"] / "bc_result.json").is_file():  # runs recorded before the field
            res = read_json(rd / STAGES["01"] / "bc_result.json")
            n_bc = res["train_tasks"] + res["val_tasks"]
        base = {"run": rd.name, "expert_fraction": met.get("expert_fraction", 1.0), "bc_trajectories": n_bc}
        rows.append({**base, "method": "SFT (greedy)", "reward_x100_first": allrow["mean_reward_x100"],
                     "success_pct_first": allrow["success_rate_pct"]})
        res = rd / STAGES["05"] / "results.csv"
        if res.is_file():
            t = pd.read_csv(res)
            keep = [c for c in ("reward_x100_first", "success_pct_first", "reward_x100_qnet_selected",
                                "reward_x100_oracle_bestofN", "gen_tokens_per_task") if c in t]
            for r in t[t.method != "greedy"][["method"] + keep].to_dict("records"):
                rows.append({**base, **r})
    return pd.DataFrame(rows)


def comparisons(run_dirs: list[str | Path]) -> pd.DataFrame:
    """Each run's paired differences (stage 05's ``comparisons.csv``: per task, bootstrap 95% intervals), side by side."""
    from qlass_lib.core.artifacts import read_json
    frames = []
    for rd in map(Path, run_dirs):
        p = rd / STAGES["05"] / "comparisons.csv"
        if p.is_file():
            frac = read_json(rd / STAGES["01"] / "bc_metrics.json").get("expert_fraction", 1.0)
            frames.append(pd.read_csv(p).assign(run=rd.name, expert_fraction=frac))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def figure(tab: pd.DataFrame, path: str | Path):
    """First-trajectory reward per method against the share of expert data."""
    import matplotlib.pyplot as plt

    from qlass_lib.viz import plots
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for method, g in tab.groupby("method", sort=False):
        g = g.sort_values("expert_fraction")
        ax.plot(g.expert_fraction, g.reward_x100_first, "o-", label=method)
    ax.set_xlabel("share of expert trajectories BC trains on")
    ax.set_ylabel("held-out reward x100 (first trajectory)")
    ax.legend(fontsize=7)
    return plots.save(fig, path)


def write(run_dirs: list[Path], out_dir: str | Path) -> pd.DataFrame:
    import matplotlib.pyplot as plt
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tab = table(run_dirs)
    tab.to_csv(out / "annotations.csv", index=False)
    comparisons(run_dirs).to_csv(out / "annotations_comparisons.csv", index=False)
    plt.close(figure(tab, out / "annotations.png"))
    return tab


__all__ = ["run_id_for", "run_fractions", "table", "comparisons", "figure", "write"]
