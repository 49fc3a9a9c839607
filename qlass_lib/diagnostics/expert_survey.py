"""Expert survey: how often an environment's expert wins, in how many steps, and how long it takes per game.

On a seeded random sample of a split (``per_type`` tasks of every task type), per task: the expert's actions are
computed and timed (for ALFWorld's ``planner`` that is fast-downward on the game's state; the ``searcher`` adds its
search), then replayed from a fresh reset, and the replay's final score is what counts as a win (never the expert's
own claim).  With ``repeats`` > 1 the expert is run again on the task and its actions compared, which checks that
it is deterministic.  Exceptions of the expert or the env become a row with ``error`` set (a lost game), so one
bad game does not end the survey.  Rows are appended to ``expert_survey.jsonl`` as they finish, so a crashed
survey resumes where it stopped.  ``python -m qlass_lib expert-survey PARAMS`` runs it (see ``--help``).
"""
from __future__ import annotations

import random
import time
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from qlass_lib.core.artifacts import append_jsonl, read_jsonl, repair_jsonl, write_json
from qlass_lib.envs.base import TaskRef, TextEnv, replay

SCHEMA_VERSION = 1


def sample_tasks(tasks: list[TaskRef], per_type: int, seed: int) -> list[TaskRef]:
    """``per_type`` tasks of every task type drawn without replacement with ``random.Random(seed)`` (all of a type
    when it has fewer), each type's draw in the split's order; types keep their first-appearance order."""
    by_type: dict[str, list[TaskRef]] = {}
    for t in tasks:
        by_type.setdefault(t.task_type, []).append(t)
    rng = random.Random(seed)
    out: list[TaskRef] = []
    for group in by_type.values():
        picked = set(rng.sample(range(len(group)), min(per_type, len(group))))
        out += [t for i, t in enumerate(group) if i in picked]
    return out


def survey_task(env: TextEnv, task: TaskRef, repeats: int = 1) -> dict:
    """One task: the expert's actions (timed; a failed expert's time until it failed), their replay from reset,
    and (``repeats`` > 1) a rerun check."""
    row = {"schema_version": SCHEMA_VERSION, "id": task.id, "task_type": task.task_type.split("@")[0],
           "variation": task.variation, "expert": getattr(env, "expert", "gold"), "won": False,
           "reward": 0.0, "steps": 0, "expert_seconds": None, "replay_seconds": None,
           "deterministic": None, "error": None}
    t0 = time.perf_counter()
    try:
        actions = list(env.gold_actions(task))
        row["expert_seconds"] = time.perf_counter() - t0
        if repeats > 1:
            row["deterministic"] = all(list(env.gold_actions(task)) == actions for _ in range(repeats - 1))
        cap = env.max_turns
        env.max_turns = max(cap, len(actions) + 1)  # the turn cap is an agent budget, not the expert's
        try:
            t0 = time.perf_counter()
            _, steps = replay(env, task, actions)
            row["replay_seconds"] = time.perf_counter() - t0
        finally:
            env.max_turns = cap
    except Exception as exc:  # noqa: BLE001 - a failing game is a lost game with its reason, not a crash
        row["error"] = f"{type(exc).__name__}: {exc}"[:500]
        if row["expert_seconds"] is None:  # the expert failed (a time limit, say): its time until then counts
            row["expert_seconds"] = time.perf_counter() - t0
        return row
    score = steps[-1].info["score"] if steps else 0.0
    row.update(reward=float(score), won=bool(score >= 1.0 - 1e-9), steps=len(steps), planned_steps=len(actions))
    return row


def run_survey(env: TextEnv, tasks: list[TaskRef], out_path: str | Path, repeats: int = 1) -> pd.DataFrame:
    """Survey ``tasks`` into ``out_path`` (JSONL, resumable: tasks already there are not run again)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    repair_jsonl(out_path)
    done = {r["id"] for r in read_jsonl(out_path)} if out_path.exists() else set()
    for task in tqdm([t for t in tasks if t.id not in done], desc="expert survey"):
        append_jsonl(out_path, survey_task(env, task, repeats))
    wanted = {t.id for t in tasks}
    return pd.DataFrame([r for r in read_jsonl(out_path) if r["id"] in wanted])


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per task type and overall: games, wins, win rate (%), steps of the won games (mean, median, max), the
    expert's seconds per game (mean, max), games checked deterministic of those rerun, and errors."""
    def one(name: str, g: pd.DataFrame) -> dict:
        won = g[g["won"]]
        rerun = g["deterministic"].dropna()
        return {"task_type": name, "games": len(g), "won": int(g["won"].sum()),
                "win_rate": 100.0 * g["won"].mean() if len(g) else float("nan"),
                "steps_mean": won["steps"].mean(), "steps_median": won["steps"].median(),
                "steps_max": won["steps"].max(), "seconds_mean": g["expert_seconds"].mean(),
                "seconds_max": g["expert_seconds"].max(),
                "deterministic": f"{int(rerun.astype(bool).sum())}/{len(rerun)}" if len(rerun) else "not rerun",
                "errors": int(g["error"].notna().sum())}
    out = [one(name, g) for name, g in rows.groupby("task_type", sort=False)]
    return pd.DataFrame(out + [one("all", rows)])


def markdown(table: pd.DataFrame) -> str:
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table.iterrows():
        lines.append("| " + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(lines)


def survey(params: str | Path, out_dir: str | Path, split: str = "train", per_type: int = 10, seed: int = 0,
           repeats: int = 1, overrides: dict | None = None) -> dict:
    """The CLI's survey: env of a params file, sample, rows, per-type table (CSV) and a manifest."""
    from qlass_lib.core.paths import project_root
    from qlass_lib.run.context import absolutize
    from qlass_lib.envs import make_env
    from qlass_lib.run.pipeline import load_run_config
    from qlass_lib.run.preflight import check_data, check_task_types
    cfg, _ = load_run_config(params, overrides)
    cfg = absolutize(cfg, project_root())
    check_task_types(cfg)
    check_data(cfg, project_root())  # a missing data folder is one clear error, before any work
    out_dir = Path(out_dir)
    env = make_env(cfg.env)
    t0 = time.perf_counter()
    try:
        tasks = sample_tasks(env.tasks(split), per_type, seed)
        rows = run_survey(env, tasks, out_dir / "expert_survey.jsonl", repeats)
    finally:
        env.close()
    table = summary(rows)
    table.to_csv(out_dir / "expert_survey_summary.csv", index=False)
    manifest = {"schema_version": SCHEMA_VERSION, "params": str(params), "overrides": overrides or {},
                "env": cfg.env.name, "expert": rows["expert"].iloc[0] if len(rows) else None, "split": split,
                "per_type": per_type, "seed": seed, "repeats": repeats, "tasks": len(tasks),
                "wall_seconds_this_call": time.perf_counter() - t0}
    write_json(out_dir / "manifest.json", manifest)
    return {"rows": rows, "table": table, "manifest": manifest, "out": out_dir}
