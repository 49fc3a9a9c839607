"""Choosing among N trajectories, and the tables and budget curves built on those choices.

- ``first``: trajectory 0, no selection (what one deployed run gets);
- ``qnet``: the trajectory whose final action the QNet values most (reads no reward: deployable);
- ``oracle``: the best trajectory by environment outcome (the paper's protocol; not deployable).

Scores are kept per (method, task, seed), so differences between methods are paired by task
(:mod:`qlass_lib.core.stats`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from qlass_lib.text import prompts
from qlass_lib.core.artifacts import ResumableLog
from qlass_lib.core.stats import bootstrap_mean_ci

SELECTIONS = ("first", "qnet", "oracle")


def _key(e: dict) -> tuple:
    return (e["method"], e["task"], e["traj"], e.get("seed", 0))


def final_state(e: dict, env_name: str, example=None) -> tuple[list[dict], str]:
    """The state before an episode's last turn (the original task text) and that turn's text."""
    if "first_observation" not in e:
        raise ValueError(f"episode {_key(e)} has no first_observation (written by an older version): rerun stage 05")
    state = prompts.initial_state(env_name, e.get("original_task_text", e["task_text"]), e["first_observation"],
                                  example)
    for t in e["turns"][:-1]:
        state = prompts.extend(state, t["text"], t["observation"])
    return state, e["turns"][-1]["text"]


def final_values(episodes: list[dict], qnet, env_name: str, out_path: str | Path, example=None) -> dict[tuple, float]:
    """The QNet's value of each episode's final action (resumable JSONL keyed by method/task/traj/seed)."""
    log = ResumableLog(out_path, key=_key)
    have = {_key(r): r["value"] for r in log.records()}
    for e in tqdm([e for e in log.todo(episodes, _key) if e["turns"]], desc="QNet values of final actions",
                  leave=False):
        state, text = final_state(e, env_name, example)
        v = float(qnet.score(state, [text])[0])
        log.append({"method": e["method"], "task": e["task"], "traj": e["traj"], "seed": e.get("seed", 0), "value": v})
        have[_key(e)] = v
    return have


def task_scores(episodes: list[dict], values: dict[tuple, float] | None = None) -> pd.DataFrame:
    """One row per (method, task, seed): reward/success of the first, QNet-selected and oracle trajectory,
    and the tokens of all N trajectories."""
    rows = []
    groups: dict[tuple, list[dict]] = {}
    for e in episodes:
        groups.setdefault((e["method"], e["task"], e.get("seed", 0)), []).append(e)
    for (method, task, seed), eps in groups.items():
        eps = sorted(eps, key=lambda e: e["traj"])
        first = eps[0]
        oracle = max(eps, key=lambda e: e["reward"])
        row = {"method": method, "task": task, "seed": seed, "task_type": first.get("task_type"), "N": len(eps),
               "first": first["reward"], "first_success": float(first["success"]),
               "oracle": oracle["reward"], "oracle_success": float(oracle["success"]),
               "gen_tokens": sum(e["budget"]["gen_tokens"] for e in eps),
               "qnet_tokens": sum(e["budget"]["qnet_tokens"] for e in eps),
               "prompt_tokens": sum(e["budget"].get("prompt_tokens", 0) for e in eps),
               "env_steps": sum(e["budget"]["env_steps"] for e in eps),
               "wall_s": sum(e["budget"]["wall_s"] for e in eps)}
        if values is not None:
            chosen = max(eps, key=lambda e: (values.get(_key(e), -np.inf), -e["traj"]))
            row.update(qnet=chosen["reward"], qnet_success=float(chosen["success"]))
        rows.append(row)
    return pd.DataFrame(rows)


def results_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Per method: reward x100 and success % under each selection (mean over tasks and seeds), tokens per task."""
    rows = []
    for method, g in scores.groupby("method", sort=False):
        r = {"method": method, "tasks": g.task.nunique(), "seeds": g.seed.nunique(), "N": int(g.N.max())}
        for sel in SELECTIONS:
            if sel in g:
                name = "oracle_bestofN" if sel == "oracle" else ("qnet_selected" if sel == "qnet" else sel)
                r[f"reward_x100_{name}"] = 100 * g[sel].mean()
                r[f"success_pct_{name}"] = 100 * g[f"{sel}_success"].mean()
        r.update(gen_tokens_per_task=g.gen_tokens.mean(), qnet_tokens_per_task=g.qnet_tokens.mean(),
                 prompt_tokens_per_task=g.prompt_tokens.mean(), env_steps_per_task=g.env_steps.mean(), wall_s_per_task=g.wall_s.mean())
        rows.append(r)
    return pd.DataFrame(rows)


def budget_curve(episodes: list[dict], method: str, select: str = "oracle", values: dict | None = None,
                 n_boot: int = 2000) -> pd.DataFrame:
    """Mean reward of the best of the first k trajectories (by outcome, or by QNet value) and mean cumulative
    completion tokens, k = 1..N, with a bootstrap 95% interval over tasks (seeds averaged per task)."""
    eps = [e for e in episodes if e["method"] == method]
    cols = ["method", "select", "k", "tokens", "reward_x100", "ci_low", "ci_high"]
    if not eps:
        return pd.DataFrame(columns=cols)
    n = max(e["traj"] for e in eps) + 1
    by: dict[tuple, dict[int, dict]] = {}
    for e in eps:
        by.setdefault((e["task"], e.get("seed", 0)), {})[e["traj"]] = e
    rows = []
    for k in range(1, n + 1):
        per = []
        for (task, _seed), trajs in by.items():
            first_k = [trajs[i] for i in range(k) if i in trajs]
            if select == "oracle":
                r = max(t["reward"] for t in first_k)
            else:
                r = max(first_k, key=lambda t: ((values or {}).get(_key(t), -np.inf), -t["traj"]))["reward"]
            per.append({"task": task, "reward": r, "tokens": sum(t["budget"]["gen_tokens"] for t in first_k)})
        df = pd.DataFrame(per).groupby("task").mean()
        mean, lo, hi = bootstrap_mean_ci(100 * df.reward.to_numpy(), n_boot)
        rows.append({"method": method, "select": select, "k": k, "tokens": float(df.tokens.mean()),
                     "reward_x100": mean, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows, columns=cols)


def tokens_to_reach(curve: pd.DataFrame, target_x100: float) -> float | None:
    """Fewest mean tokens at which a curve reaches ``target_x100`` (linear interpolation), or None."""
    prev_t, prev_r = 0.0, None
    for _, row in curve.sort_values("k").iterrows():
        if row.reward_x100 >= target_x100 - 1e-9:
            if prev_r is None or row.reward_x100 == prev_r:
                return float(row.tokens)
            frac = (target_x100 - prev_r) / (row.reward_x100 - prev_r)
            return float(prev_t + max(0.0, frac) * (row.tokens - prev_t))
        prev_t, prev_r = float(row.tokens), float(row.reward_x100)
    return None


def budget_ratio(bon: pd.DataFrame, qlass: pd.DataFrame) -> dict:
    """Tokens QLASS needs to reach Best-of-N's best reward, divided by Best-of-N's tokens for it.

    Undefined (``ratio`` None) when Best-of-N never scores above 0: there is nothing to reach."""
    best = bon.reward_x100.max()
    if not best > 0:
        return {"bon_best_reward_x100": float(best), "bon_tokens": None, "qlass_tokens_to_reach": None, "ratio": None}
    bon_tokens = float(bon.loc[bon.reward_x100.idxmax(), "tokens"])
    bon_first = tokens_to_reach(bon, best)
    q = tokens_to_reach(qlass, best)
    return {"bon_best_reward_x100": float(best), "bon_tokens": bon_first if bon_first is not None else bon_tokens,
            "qlass_tokens_to_reach": q, "ratio": None if q is None or not bon_first else q / bon_first}


def standard_pairs(methods: list[str]) -> list[tuple[str, str, str]]:
    """The comparisons the paper's claim rests on: each QLASS variant against greedy (first trajectory) and
    against Best-of-N under every selection."""
    out = []
    for m in methods:
        if m.startswith("QLASS") and "aug" not in m:
            out.append(("first", m, "greedy"))
            out += [(sel, m, "BoN") for sel in SELECTIONS]
            if "-prior-" in m and m.replace("-prior", "") in methods:  # what the policy prior adds to the Q alone
                out.append(("first", m, m.replace("-prior", "")))
    if "BoN" in methods:
        out.append(("first", "BoN", "greedy"))
    return out
