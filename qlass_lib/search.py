"""Q-guided stepwise search (paper Algorithm 2) and its baselines, all under one budget counter.

- greedy: the BC policy's greedy decoding;
- Best-of-N: N sampled trajectories; reported as the first trajectory (no selection) and the best of N by
  environment outcome (the paper's protocol: an oracle selection);
- QLASS: at each step sample M candidates together, score them with the QNet, execute the argmax; N
  trajectories; reported the same two ways;
- -aug variants: the task description is paraphrased to diversify candidates (BoN-aug: trajectory i sees
  paraphrase i; QLASS-aug: candidate j of every step is generated from paraphrase j, scored on the original).

Honesty: a chooser sees only the state (the observations of executed actions).  The environment is
stepped only with the chosen action, so no reward of an unexecuted candidate is ever read.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import prompts
from .agent import Policy, greedy_chooser, run_episode  # noqa: F401 (greedy_chooser re-exported)
from .artifacts import append_jsonl, read_jsonl, repair_jsonl
from .budget import Budget
from .envs import TaskRef, TextEnv
from .paraphrase import Paraphraser, with_task_text


def sampling_chooser(policy: Policy, sampling, budget: Budget):
    def choose(state, turn):
        return policy.propose(state, 1, sampling, budget)[0], {}
    return choose


def qlass_chooser(policy: Policy, qnet, m: int, sampling, budget: Budget, paraphrases: list[str] | None = None,
                  original: str | None = None):
    """Sample ``m`` candidates, score them with the QNet on the original state, return the argmax."""
    def choose(state, turn):
        if paraphrases:
            states = [with_task_text(state, original, paraphrases[j % len(paraphrases)]) for j in range(m)]
            cands = policy.propose_many(states, sampling, budget)
        else:
            cands = policy.propose(state, m, sampling, budget)
        values = qnet.score(state, [c.text for c in cands], budget)
        best = int(np.argmax(values))
        return cands[best], {"q": values[best], "candidates": [{"action": c.action, "text": c.text, "q": v}
                                                                for c, v in zip(cands, values)]}
    return choose


def run_method(env: TextEnv, tasks: list[TaskRef], method: str, make_chooser, n_traj: int, out_path: str | Path,
               paraphraser: Paraphraser | None = None, per_trajectory_task_text: bool = False, example=None,
               **tag) -> list[dict]:
    """Run ``n_traj`` trajectories per task; each finished episode is appended to ``out_path`` (resumable).

    ``make_chooser(budget, task_text, i)`` builds the chooser of trajectory i.
    """
    repair_jsonl(out_path)
    key = lambda r: (r["method"], r["task"], r["traj"])  # noqa: E731
    done = {key(r) for r in read_jsonl(out_path)}
    todo = [(t, i) for t in tasks for i in range(n_traj) if (method, t.id, i) not in done]
    for task, i in tqdm(todo, desc=method, leave=False):
        budget = Budget()
        text_fn = None
        if per_trajectory_task_text and paraphraser is not None and i > 0:
            text_fn = lambda text, i=i: paraphraser(text, i)  # noqa: E731
        chooser = make_chooser(budget, i)
        ep = run_episode(env, task, chooser, budget, example=example, task_text_fn=text_fn)
        append_jsonl(out_path, {"method": method, "traj": i, **tag, **ep.to_dict(), "task_type": task.task_type,
                                "variation": task.variation, "budget": budget.snapshot()})
    wanted = {t.id for t in tasks}
    return [r for r in read_jsonl(out_path) if r["method"] == method and r["task"] in wanted]


def results_table(episodes: list[dict]) -> pd.DataFrame:
    """Per method: first trajectory (non-oracle) and best-of-N by outcome (oracle), tokens per task."""
    df = pd.DataFrame([{"method": e["method"], "task": e["task"], "traj": e["traj"], "reward": e["reward"],
                        "success": e["success"], "gen_tokens": e["budget"]["gen_tokens"],
                        "qnet_tokens": e["budget"]["qnet_tokens"], "env_steps": e["budget"]["env_steps"],
                        "wall_s": e["budget"]["wall_s"]} for e in episodes])
    rows = []
    for method, g in df.groupby("method", sort=False):
        first = g[g.traj == 0]
        per_task = g.groupby("task")
        best = per_task.reward.max()
        rows.append({"method": method, "tasks": len(first), "N": int(per_task.size().max()),
                     "reward_x100_first": 100 * first.reward.mean(), "success_pct_first": 100 * first.success.mean(),
                     "reward_x100_oracle_bestofN": 100 * best.mean(),
                     "success_pct_oracle_bestofN": 100 * per_task.success.max().mean(),
                     "gen_tokens_per_task": per_task.gen_tokens.sum().mean(),
                     "gen_tokens_per_traj": g.gen_tokens.mean(),
                     "qnet_tokens_per_task": per_task.qnet_tokens.sum().mean(),
                     "env_steps_per_task": per_task.env_steps.sum().mean(),
                     "wall_s_per_task": per_task.wall_s.sum().mean()})
    return pd.DataFrame(rows)


def budget_curve(episodes: list[dict], method: str) -> pd.DataFrame:
    """Mean best-so-far reward (oracle) and mean cumulative completion tokens after k = 1..N trajectories."""
    eps = [e for e in episodes if e["method"] == method]
    if not eps:
        return pd.DataFrame(columns=["method", "k", "tokens", "reward_x100"])
    n = max(e["traj"] for e in eps) + 1
    by_task: dict[str, dict[int, dict]] = {}
    for e in eps:
        by_task.setdefault(e["task"], {})[e["traj"]] = e
    rows = []
    for k in range(1, n + 1):
        rew, tok = [], []
        for trajs in by_task.values():
            first_k = [trajs[i] for i in range(k) if i in trajs]
            rew.append(max(t["reward"] for t in first_k))
            tok.append(sum(t["budget"]["gen_tokens"] for t in first_k))
        rows.append({"method": method, "k": k, "tokens": float(np.mean(tok)), "reward_x100": 100 * float(np.mean(rew))})
    return pd.DataFrame(rows)


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


def run_suite(env: TextEnv, tasks: list[TaskRef], policy: Policy, qnet, search_cfg, out_path: str | Path,
              paraphraser: Paraphraser, example=None) -> list[dict]:
    """Greedy, Best-of-N, Best-of-N-aug, QLASS for every M, and QLASS-aug at the largest M, on ``tasks``."""
    s, N = search_cfg.sampling, search_cfg.n_trajectories
    m_max = max(search_cfg.m_candidates)
    ex = {"example": example}
    eps = run_method(env, tasks, "greedy", lambda b, i: greedy_chooser(policy, b), 1, out_path, **ex)
    eps += run_method(env, tasks, "BoN", lambda b, i: sampling_chooser(policy, s, b), N, out_path, **ex)
    eps += run_method(env, tasks, "BoN-aug", lambda b, i: sampling_chooser(policy, s, b), N, out_path,
                      paraphraser, per_trajectory_task_text=True, **ex)
    for m in search_cfg.m_candidates:
        eps += run_method(env, tasks, f"QLASS-M{m}", lambda b, i, m=m: qlass_chooser(policy, qnet, m, s, b), N,
                          out_path, m=m, **ex)
    eps += run_method(env, tasks, f"QLASS-aug-M{m_max}", lambda b, i: _aug_chooser(policy, qnet, m_max, s, b,
                                                                                     paraphraser), N, out_path,
                      m=m_max, **ex)
    return eps


def _aug_chooser(policy, qnet, m, sampling, budget, paraphraser):
    """QLASS-aug: candidate j of each step comes from paraphrase j of the task text (j = 0 is the original)."""
    cache: dict[str, list[str]] = {}

    def choose(state, turn):
        original = prompts.task_text_of(state)
        if original not in cache:
            cache[original] = [paraphraser(original, j) for j in range(m)]
        return qlass_chooser(policy, qnet, m, sampling, budget, cache[original], original)(state, turn)
    return choose


def case_study(episodes: list[dict], method: str, k: int) -> pd.DataFrame:
    """The first-step candidates of ``k`` tasks with their Q scores (which one was executed)."""
    rows = []
    firsts = [e for e in episodes if e["method"] == method and e["traj"] == 0][:k]
    for e in firsts:
        t0 = e["turns"][0]
        for c in t0.get("candidates", []):
            rows.append({"task": e["task"], "candidate": c["action"], "q": round(c["q"], 4),
                         "chosen": c["text"] == t0["text"], "episode_reward": e["reward"]})
    return pd.DataFrame(rows)
