"""Q-guided stepwise search (paper Algorithm 2) and its baselines, all under one budget counter.

- greedy: the BC policy's greedy decoding;
- Best-of-N: N sampled trajectories;
- QLASS: at each step sample M candidates together, drop duplicate actions (every generated token is still
  charged), score the distinct ones with the QNet, execute the argmax; N trajectories;
- QLASS-prior (``search.prior_weight`` w > 0): the same, executing the argmax of Q + w·log π(a|s), where log π is
  the policy's own log-probability of the candidate's tokens (read at generation, no extra pass): the QNet
  re-ranks what the policy prefers instead of overriding it with a near-tie;
- -aug variants: the task description is paraphrased to diversify candidates (BoN-aug: trajectory i sees
  paraphrase i; QLASS-aug: candidate j of every step is generated from paraphrase j, scored on the original).

Each method with N trajectories is reported three ways (:mod:`qlass_lib.method.selection`): the first trajectory (no
selection), the one the QNet values most (no reward read: what a deployed agent can do), and the best by
environment outcome (the paper's protocol: an *oracle*).  Every episode is seeded from (seed, method, task,
trajectory), so a resumed run equals an uninterrupted one and several seeds give independent repeats.

Honesty: a chooser sees only the state (the observations of executed actions).  The environment is
stepped only with the chosen action, so no reward of an unexecuted candidate is ever read.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from qlass_lib.text import prompts
from qlass_lib.models.policy import Policy
from qlass_lib.method.rollout import episode_record, greedy_chooser, run_episode, sampling_chooser  # noqa: F401 (re-exported)
from qlass_lib.core.artifacts import ResumableLog
from qlass_lib.core.budget import Budget
from qlass_lib.envs import TaskRef
from qlass_lib.text.paraphrase import Paraphraser, with_task_text


def episode_seed(seed: int, method: str, task_id: str, traj: int) -> int:
    """A stable per-episode seed (independent of run order and of how often the stage resumed)."""
    return int(hashlib.sha256(f"{seed}|{method}|{task_id}|{traj}".encode()).hexdigest()[:12], 16)


def action_key(action: str | None, text: str) -> tuple:
    """What makes two candidates the same: their normalized action, or the raw text when none was parsed."""
    return ("a", prompts.normalize_action(action)) if action is not None else ("t", text.strip())


def distinct(cands: list) -> list[int]:
    """Indices of the first candidate of each distinct action."""
    seen, keep = set(), []
    for i, c in enumerate(cands):
        key = action_key(c.action, c.text)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return keep


@dataclass
class Ranked:
    """One ranked step: the M samples, the first of each distinct action, and the executed one."""
    cands: list           # the M sampled candidates, in order
    keep: list[int]       # index in ``cands`` of each distinct action's first sample
    pool: list            # those candidates
    best: int             # position in ``pool`` of the executed candidate
    values: dict | None   # per-candidate values of the pool by name ("rank" is maximized); None: one distinct


def ranked_chooser(propose, value, describe, dedup: bool = True):
    """The one QLASS step, sample M → drop duplicate actions → score → argmax, for any scoring function.

    ``propose(state)`` samples the M candidates; ``value(state, pool)`` returns named per-candidate values whose
    ``"rank"`` entry is maximized (QLASS: the QNet's Q; QLASS-prior: Q + w·log π; the lookahead diagnostic's
    rankers); ``describe(ranked)`` gives the turn's record.  With one distinct candidate nothing is scored."""
    def choose(state, turn):
        cands = propose(state)
        keep = distinct(cands) if dedup else list(range(len(cands)))
        pool = [cands[i] for i in keep]
        values = value(state, pool) if len(pool) > 1 else None
        best = 0 if values is None else int(np.argmax(values["rank"]))
        r = Ranked(cands, keep, pool, best, values)
        return pool[best], describe(r)
    return choose


def qlass_chooser(policy: Policy, qnet, m: int, sampling, budget: Budget, paraphrases: list[str] | None = None,
                  original: str | None = None, dedup: bool = True, prior_weight: float = 0.0):
    """QLASS: sample ``m`` candidates, score the distinct ones with the QNet on the original state, execute the
    argmax of Q + ``prior_weight`` · log π (the candidate's own log-probability under the policy).

    With one distinct candidate there is nothing to choose and the QNet is not called (``q`` is None)."""
    def propose(state):
        if paraphrases:
            states = [with_task_text(state, original, paraphrases[j % len(paraphrases)]) for j in range(m)]
            return policy.propose_many(states, sampling, budget)
        return policy.propose(state, m, sampling, budget)

    def value(state, pool):
        q = qnet.score(state, [c.text for c in pool], budget)
        return {"rank": guided_scores(q, pool, prior_weight), "q": q}
    return ranked_chooser(propose, value, _qlass_turn, dedup)


def _qlass_turn(r: Ranked) -> dict:
    if r.values is None:
        return {"q": None, "distinct": 1, "candidates": [{"action": c.action, "text": c.text, "q": None}
                                                          for c in r.cands]}
    qs = dict(zip(r.keep, r.values["q"]))
    return {"q": r.values["q"][r.best], "distinct": len(r.pool),
            "candidates": [{"action": c.action, "text": c.text, "q": qs.get(i), "logprob": c.logprob}
                           for i, c in enumerate(r.cands)]}


def guided_scores(values: list[float], pool: list, prior_weight: float) -> np.ndarray:
    """What QLASS maximizes: the QNet's values, plus ``prior_weight`` times each candidate's log-probability."""
    q = np.asarray(values, dtype=float)
    if prior_weight == 0:
        return q
    if any(c.logprob is None for c in pool):
        raise RuntimeError("search.prior_weight > 0 needs each candidate's log-probability, and the generation "
                           "backend returned none (an OpenAI-compatible server must honour `logprobs`)")
    return q + prior_weight * np.array([c.logprob for c in pool])


def episode_key(r: dict) -> tuple:
    """What identifies a record of an episode log: (method, task, trajectory, seed)."""
    return r["method"], r["task"], r["traj"], r.get("seed", 0)


def run_method(executor, tasks: list[TaskRef], method: str, make_chooser, n_traj: int, out_path: str | Path,
               paraphraser: Paraphraser | None = None, per_trajectory_task_text: bool = False, seed: int = 0,
               **tag) -> list[dict]:
    """Run ``n_traj`` trajectories per task on ``executor`` (:mod:`qlass_lib.method.executor`); each finished episode is
    appended to ``out_path`` in (task, trajectory) order (resumable).

    ``make_chooser(ws, budget, i)`` builds the chooser of trajectory i from the workspace (its policy and QNets).
    """
    log = ResumableLog(out_path, key=episode_key)
    todo = log.todo([(t, i) for t in tasks for i in range(n_traj)], lambda x: (method, x[0].id, x[1], seed))
    text = paraphraser if per_trajectory_task_text else None
    executor.run(todo, partial(_episode_job, method, make_chooser, seed, text, tag), log, f"{method} seed {seed}")
    wanted = {t.id for t in tasks}
    return log.records(lambda r: r["method"] == method and r["task"] in wanted and r.get("seed", 0) == seed)


def _episode_job(method: str, make_chooser, seed: int, paraphraser, tag: dict, ws, item) -> dict:
    task, i = item
    torch.manual_seed(episode_seed(seed, method, task.id, i))
    budget = Budget()
    text_fn = None
    if paraphraser is not None and i > 0:
        text_fn = lambda text: paraphraser(text, i)  # noqa: E731
    ep = run_episode(ws.env, task, make_chooser(ws, budget, i), budget, example=ws.example, task_text_fn=text_fn)
    return episode_record(ep, task, budget, method=method, traj=i, seed=seed, **tag)


def run_suite(executor, tasks: list[TaskRef], search_cfg, out_path: str | Path, paraphraser: Paraphraser) -> list[dict]:
    """Greedy, Best-of-N, QLASS for every M (and QLASS-prior when ``search.prior_weight`` > 0), and (when
    ``search.augmented``) BoN-aug and QLASS-aug at the largest M, on ``tasks``, once per seed in
    ``search.seeds``; QLASS is guided by the workspace's QNet "q".
    Greedy is deterministic: it runs under the first seed and its episodes are reused for the others."""
    s, N = search_cfg.sampling, search_cfg.n_trajectories
    m_max = max(search_cfg.m_candidates)
    dd = search_cfg.dedup_candidates
    eps = []
    for seed in search_cfg.seeds:
        if seed == search_cfg.seeds[0]:
            eps += run_method(executor, tasks, "greedy", lambda ws, b, i: greedy_chooser(ws.policy, b), 1, out_path,
                              seed=seed)
        else:
            eps += reuse_greedy(tasks, out_path, search_cfg.seeds[0], seed)
        eps += run_method(executor, tasks, "BoN", lambda ws, b, i: sampling_chooser(ws.policy, s, b), N, out_path,
                          seed=seed)
        if search_cfg.augmented:
            eps += run_method(executor, tasks, "BoN-aug", lambda ws, b, i: sampling_chooser(ws.policy, s, b), N,
                              out_path, paraphraser, per_trajectory_task_text=True, seed=seed)
        for m in search_cfg.m_candidates:
            eps += run_method(executor, tasks, f"QLASS-M{m}",
                              lambda ws, b, i, m=m: qlass_chooser(ws.policy, ws.qnets["q"], m, s, b, dedup=dd), N,
                              out_path, m=m, seed=seed)
        if search_cfg.prior_weight > 0:
            w = search_cfg.prior_weight
            for m in search_cfg.m_candidates:
                eps += run_method(executor, tasks, f"QLASS-prior-M{m}",
                                  lambda ws, b, i, m=m: qlass_chooser(ws.policy, ws.qnets["q"], m, s, b, dedup=dd,
                                                                      prior_weight=w),
                                  N, out_path, m=m, seed=seed, prior_weight=w)
        if search_cfg.augmented:
            eps += run_method(executor, tasks, f"QLASS-aug-M{m_max}",
                              lambda ws, b, i: _aug_chooser(ws.policy, ws.qnets["q"], m_max, s, b, paraphraser, dd),
                              N, out_path, m=m_max, seed=seed)
    return eps


def reuse_greedy(tasks: list[TaskRef], out_path: str | Path, from_seed: int, seed: int) -> list[dict]:
    """Greedy decoding draws no random number, so its episode is the same under every seed: the records of
    ``from_seed`` are appended again under ``seed`` (marked ``reused_from_seed``) instead of being rerun.
    Resumable like :func:`run_method`; a task whose ``from_seed`` record is missing is an error."""
    log = ResumableLog(out_path, key=episode_key)
    first = {r["task"]: r for r in log.records(lambda r: r["method"] == "greedy" and r.get("seed", 0) == from_seed)}
    for t in tasks:
        if ("greedy", t.id, 0, seed) in log.done:
            continue
        if t.id not in first:
            raise RuntimeError(f"{out_path}: no greedy episode of seed {from_seed} for {t.id} to reuse")
        log.append({**first[t.id], "seed": seed, "reused_from_seed": from_seed})
    wanted = {t.id for t in tasks}
    return log.records(lambda r: r["method"] == "greedy" and r["task"] in wanted and r.get("seed", 0) == seed)


def _aug_chooser(policy, qnet, m, sampling, budget, paraphraser, dedup=True):
    """QLASS-aug: candidate j of each step comes from paraphrase j of the task text (j = 0 is the original)."""
    cache: dict[str, list[str]] = {}

    def choose(state, turn):
        original = prompts.task_text_of(state)
        if original not in cache:
            cache[original] = [paraphraser(original, j) for j in range(m)]
        return qlass_chooser(policy, qnet, m, sampling, budget, cache[original], original, dedup)(state, turn)
    return choose


def run_ablation(executor, tasks: list[TaskRef], targets: list[str], search_cfg, out_path: str | Path) -> list[dict]:
    """The process-reward ablation: QLASS at the largest M guided by the workspace's QNet of each training target
    in ``targets``, ``search.ablation_trajectories`` per task, once per seed of ``search.ablation_seeds``
    (default: ``search.seeds``); methods are named ``ablation-<target>``."""
    m = max(search_cfg.m_candidates)
    seeds = search_cfg.seeds if search_cfg.ablation_seeds is None else search_cfg.ablation_seeds
    eps = []
    for target in targets:
        for seed in seeds:
            eps += run_method(executor, tasks, f"ablation-{target}",
                              lambda ws, b, i, t=target: qlass_chooser(ws.policy, ws.qnets[t], m, search_cfg.sampling, b,
                                                                       dedup=search_cfg.dedup_candidates),
                              search_cfg.ablation_trajectories, out_path, seed=seed, m=m, target=target)
    return eps


def case_study(episodes: list[dict], method: str, k: int) -> pd.DataFrame:
    """The first-step candidates of ``k`` tasks with their Q scores (which one was executed)."""
    rows = []
    firsts = [e for e in episodes if e["method"] == method and e["traj"] == 0 and e.get("seed", 0) ==
              min(x.get("seed", 0) for x in episodes)][:k]
    for e in firsts:
        t0 = e["turns"][0]
        for c in t0.get("candidates", []):
            rows.append({"task": e["task"], "candidate": c["action"],
                         "q": None if c["q"] is None else round(c["q"], 4),
                         "chosen": c["text"] == t0["text"], "episode_reward": e["reward"]})
    return pd.DataFrame(rows)


def candidate_diversity(episodes: list[dict]) -> pd.DataFrame:
    """Per QLASS method: steps, mean distinct actions among the M candidates, share of steps with > 1."""
    rows = []
    for e in episodes:
        for t in e["turns"]:
            if "candidates" in t:
                n = len({action_key(c["action"], c["text"]) for c in t["candidates"]})
                rows.append({"method": e["method"], "distinct": n})
    if not rows:
        return pd.DataFrame(columns=["method", "steps", "mean_distinct", "share_steps_with_choice"])
    df = pd.DataFrame(rows)
    return df.groupby("method", sort=False).agg(steps=("distinct", "size"), mean_distinct=("distinct", "mean"),
                                                share_steps_with_choice=("distinct", lambda x: (x > 1).mean())
                                                ).reset_index()
