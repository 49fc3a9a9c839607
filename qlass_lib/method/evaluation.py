"""Run a chooser over a task list with resumable per-episode JSONL, and summarize the results."""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

import pandas as pd

from qlass_lib.method.rollout import Chooser, episode_record, run_episode
from qlass_lib.core.artifacts import ResumableLog, had_env_errors
from qlass_lib.core.budget import Budget
from qlass_lib.envs import TaskRef
from qlass_lib.method.executor import Workspace


def evaluate(executor, tasks: list[TaskRef], make_chooser: Callable[[Workspace, Budget], Chooser],
             out_path: str | Path, desc: str = "evaluate", tag: dict | None = None) -> list[dict]:
    """One episode per task on ``executor`` (:mod:`qlass_lib.method.executor`); ``make_chooser(ws, budget)`` builds the
    chooser from the workspace's policy.  Each finished episode is appended to ``out_path`` and skipped on rerun."""
    log = ResumableLog(out_path, key=lambda r: r["task"])
    executor.run(log.todo(tasks, lambda t: t.id), partial(_episode_job, make_chooser, tag or {}), log, desc)
    wanted = {t.id for t in tasks}
    return log.records(lambda r: r["task"] in wanted)


def _episode_job(make_chooser, tag: dict, ws: Workspace, task: TaskRef) -> dict:
    budget = Budget()
    ep = run_episode(ws.env, task, make_chooser(ws, budget), budget, ws.example)
    return episode_record(ep, task, budget, **tag)


def check_env_errors(records: list[dict], max_share: float, what: str) -> dict:
    """Count episodes (or trees) that hit an environment exception; stop the stage when their share exceeds
    ``max_share`` (a dying simulator must not look like a policy that scores 0)."""
    n = len(records)
    hit = sum(1 for r in records if had_env_errors(r))
    share = hit / n if n else 0.0
    if share > max_share:
        raise RuntimeError(f"{hit} of {n} {what} hit an environment exception ({100 * share:.0f}% > "
                           f"env.max_error_share {100 * max_share:.0f}%): the environment is failing, not the "
                           f"policy; see the 'Error from the environment' observations in the episode files")
    return {"records": n, "with_env_errors": hit, "share": share}


def summarize(episodes: list[dict], by: str = "task_type") -> pd.DataFrame:
    """Mean reward x100, success rate (%), mean steps and generated tokens per group, plus an 'all' row."""
    if not episodes:
        return pd.DataFrame(columns=[by, "episodes", "mean_reward_x100", "success_rate_pct", "mean_steps"])
    df = pd.DataFrame([{by: e[by], "reward": e["reward"], "success": e["success"], "steps": e["steps"],
                        "gen_tokens": e.get("budget", {}).get("gen_tokens", 0),
                        "env_errors": e.get("env_errors", 0)} for e in episodes])

    def agg(g):
        return pd.Series({"episodes": len(g), "mean_reward_x100": 100 * g.reward.mean(),
                          "success_rate_pct": 100 * g.success.mean(), "mean_steps": g.steps.mean(),
                          "gen_tokens_per_episode": g.gen_tokens.mean(),
                          "episodes_with_env_errors": int((g.env_errors > 0).sum())})
    table = df.groupby(by).apply(agg, include_groups=False).reset_index()
    total = agg(df).to_frame().T
    total.insert(0, by, "all")
    return pd.concat([table, total], ignore_index=True)
