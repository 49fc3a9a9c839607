"""Self-training with the QNet (QLASS-ST, paper Table 2 and Fig. 4) and its rejection-sampling baseline (RFT).

- **QLASS-ST**: on training tasks the BC policy generates trajectories with Q-guided generation (M candidates per
  step, the QNet's argmax executed, N trajectories per task); the successful ones join the expert data and the
  policy is fine-tuned again from the same base with the BC recipe.
- **Process-reward comparison** (paper Fig. 4): the same, once per QNet target (``q``, ``avg_reward``,
  ``outcome``): only the QNet that guides generation differs.
- **RFT**: the BC policy samples trajectories on the same tasks until it has generated as many tokens per task
  as QLASS-ST did; the same reward rule keeps trajectories; the same fine-tune.

Data generation runs on *training* tasks and reads their rewards (that is how training data is chosen);
evaluation is greedy on the held-out tasks of stage 01, so SFT's own evaluation is the paired reference.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from qlass_lib.text import prompts
from qlass_lib.core.artifacts import ResumableLog
from qlass_lib.core.budget import Budget
from qlass_lib.envs import TaskRef, TextEnv
from qlass_lib.text.expert import SCHEMA_VERSION, to_conversations

TARGET_METHODS = {"q": "QLASS-ST", "avg_reward": "QLASS-ST (avg_reward)", "outcome": "QLASS-ST (outcome)"}


def slug(method: str) -> str:
    """A folder-safe name: ``QLASS-ST (avg_reward)`` -> ``qlass-st_avg_reward``."""
    return method.lower().replace(" (", "_").replace(")", "").replace(" ", "_")


def episode_record(ep: dict, env_name: str, example=None) -> dict:
    """A generated episode as an SFT record in the expert format (the conversation as the policy saw it, the
    final observation left out: nothing is learned from it)."""
    state = prompts.initial_state(env_name, ep["task_text"], ep["first_observation"], example)
    for t in ep["turns"]:
        state = prompts.extend(state, t["text"], t["observation"])
    return {"schema_version": SCHEMA_VERSION, "id": ep["task"], "task_type": ep["task_type"],
            "variation": ep["variation"], "reward": ep["reward"], "actions": [t["action"] for t in ep["turns"]],
            "task_text": ep["task_text"], "first_observation": ep["first_observation"],
            "source": ep.get("method", "generated"), "conversations": to_conversations(state[:-1])}


def select(episodes: list[dict], min_reward: float) -> tuple[list[dict], dict]:
    """Trajectories that reach ``min_reward``, every turn with a parsed action, each distinct action sequence of a
    task once (in generation order).  Returns (kept, counts of why the others were left out)."""
    kept, seen = [], set()
    why = {"generated": len(episodes), "below_min_reward": 0, "unparsed_turn": 0, "duplicate": 0}
    for e in episodes:
        if e["reward"] < min_reward - 1e-9:
            why["below_min_reward"] += 1
            continue
        if any(t["action"] is None for t in e["turns"]):
            why["unparsed_turn"] += 1
            continue
        key = (e["task"], tuple(prompts.normalize_action(t["action"]) for t in e["turns"]))
        if key in seen:
            why["duplicate"] += 1
            continue
        seen.add(key)
        kept.append(e)
    why["kept"] = len(kept)
    return kept, why


def guided_generation(env: TextEnv, tasks: list[TaskRef], policy, qnet, st_cfg, out_path: str | Path, method: str,
                      seed: int, example=None) -> list[dict]:
    """``st_cfg.trajectories_per_task`` Q-guided trajectories per task (M = ``st_cfg.m_candidates``), appended to
    ``out_path`` under ``method`` (resumable, seeded per episode)."""
    from qlass_lib.method.executor import local
    from qlass_lib.method.search import qlass_chooser, run_method
    return run_method(local(env, policy, {"q": qnet}, example), tasks, method,
                      lambda ws, budget, i: qlass_chooser(ws.policy, ws.qnets["q"], st_cfg.m_candidates,
                                                          st_cfg.sampling, budget),
                      st_cfg.trajectories_per_task, out_path, seed=seed)


def tokens_per_task(episodes: list[dict]) -> dict[str, int]:
    """Generated tokens per task, summed over its episodes."""
    out: dict[str, int] = {}
    for e in episodes:
        out[e["task"]] = out.get(e["task"], 0) + int(e["budget"]["gen_tokens"])
    return out


def rft_generation(env: TextEnv, tasks: list[TaskRef], policy, sampling, token_budget: dict[str, int],
                   max_per_task: int, out_path: str | Path, seed: int, example=None, method: str = "RFT") -> list[dict]:
    """Sample trajectories per task until their generated tokens reach ``token_budget[task]`` (at least one, at
    most ``max_per_task``).  Resumable: a rerun continues each task from the episodes already in the log."""
    import torch

    from qlass_lib.method.rollout import episode_record, run_episode, sampling_chooser
    from qlass_lib.method.search import episode_key, episode_seed
    log = ResumableLog(out_path, key=episode_key)
    mine = [r for r in log.records() if r["method"] == method and r.get("seed", 0) == seed]
    for task in tqdm(tasks, desc=method, leave=False):
        have = sorted((r for r in mine if r["task"] == task.id), key=lambda r: r["traj"])
        spent, i = sum(int(r["budget"]["gen_tokens"]) for r in have), len(have)
        while i < max_per_task and (i == 0 or spent < token_budget.get(task.id, 0)):
            torch.manual_seed(episode_seed(seed, method, task.id, i))
            budget = Budget()
            ep = run_episode(env, task, sampling_chooser(policy, sampling, budget), budget, example=example)
            log.append(episode_record(ep, task, budget, method=method, traj=i, seed=seed))
            spent += budget.gen_tokens
            i += 1
    wanted = {t.id for t in tasks}
    return log.records(lambda r: r["method"] == method and r["task"] in wanted and r.get("seed", 0) == seed)


def generation_table(generated: dict[str, list[dict]], kept: dict[str, dict]) -> pd.DataFrame:
    """Per method: tasks, trajectories, mean reward and success of what was generated, tokens, and what was kept."""
    rows = []
    for method, eps in generated.items():
        df = pd.DataFrame([{"task": e["task"], "reward": e["reward"], "success": e["success"],
                            "tokens": e["budget"]["gen_tokens"]} for e in eps])
        rows.append({"method": method, "tasks": df.task.nunique(), "trajectories": len(df),
                     "mean_reward_x100": 100 * df.reward.mean(), "success_pct": 100 * df.success.mean(),
                     "gen_tokens": int(df.tokens.sum()), "tokens_per_task": df.tokens.sum() / df.task.nunique(),
                     **{k: v for k, v in kept[method].items() if k != "generated"}})
    return pd.DataFrame(rows)


def results_table(evals: dict[str, list[dict]], train: dict[str, dict]) -> pd.DataFrame:
    """Held-out greedy reward x100 and success per fine-tuned policy (the first row is the reference, SFT)."""
    from qlass_lib.core.stats import bootstrap_mean_ci
    rows = []
    for method, eps in evals.items():
        r = [e["reward"] for e in eps]
        mean, lo, hi = bootstrap_mean_ci([100 * x for x in r])
        rows.append({"method": method, "tasks": len(eps), "mean_reward_x100": mean, "ci_low": lo, "ci_high": hi,
                     "success_pct": 100 * sum(e["success"] for e in eps) / max(1, len(eps)),
                     "train_trajectories": train.get(method, {}).get("train_tasks"),
                     "train_steps": train.get(method, {}).get("steps")})
    return pd.DataFrame(rows)


def comparisons(evals: dict[str, list[dict]], pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """Paired per-task differences of held-out reward x100 (A - B) with bootstrap 95% intervals."""
    from qlass_lib.core.stats import paired_difference
    per = {m: pd.Series({e["task"]: 100 * e["reward"] for e in eps}) for m, eps in evals.items()}
    rows = [{"A": a, "B": b, **paired_difference(per[a], per[b])} for a, b in pairs if a in per and b in per]
    return pd.DataFrame(rows)


def standard_pairs(methods: list[str]) -> list[tuple[str, str]]:
    """Every method against SFT, QLASS-ST against RFT, and the process-reward order q > avg_reward > outcome."""
    pairs = [(m, "SFT") for m in methods if m != "SFT"]  # incl. "SFT (seed k)": the training-noise floor
    q, avg, out = (TARGET_METHODS[t] for t in ("q", "avg_reward", "outcome"))
    pairs += [p for p in [(q, "RFT"), (q, avg), (avg, out), (q, out)] if p[0] in methods and p[1] in methods]
    return pairs


__all__ = ["TARGET_METHODS", "slug", "episode_record", "select", "guided_generation", "tokens_per_task",
           "rft_generation", "generation_table", "results_table", "comparisons", "standard_pairs"]
