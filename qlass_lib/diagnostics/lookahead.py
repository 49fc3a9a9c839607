"""Lookahead diagnostic: what a perfect step-level ranker would gain on a run's tasks, and how well the QNet
ranks the candidates that search actually meets.  A diagnostic, never a method.

Stepwise search can beat plain sampling only where (a) the M candidates of a step differ in value and (b) the
ranker picks the better one.  Stage 04 measures (b) on the sibling groups of a few validation trees; this
module measures both on evaluation tasks, at the states search visits:

- every distinct candidate of a step gets a **lookahead value**: a second environment replays the episode's
  executed actions from reset, executes the candidate, and the policy finishes the episode greedily; the
  value is the final score.  It reads the rewards of actions the episode does not execute, so it is an
  *oracle*: its numbers are reported apart and never feed a deployed method;
- one seeded draw of M candidates per step (the draw stage 05's ``QLASS-M<m>`` makes for trajectory 0) is
  executed by several rankers on the same tasks: ``sample`` (the first draw: no ranking), ``policy`` (the
  highest log π), ``qnet`` (the highest Q: stage 05's QLASS-M<m> trajectory 0, token for token) and
  ``lookahead`` (the oracle).  Greedy decoding runs beside them;
- ranking accuracy: at every visited state whose distinct candidates' lookahead values differ, whether a
  predictor's top candidate has the best value (ties in the prediction share the credit), next to a random
  pick: the rule of the QNet's sibling accuracy (:func:`qlass_lib.method.qnet_metrics.sibling_hit`).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from qlass_lib.models.policy import Candidate
from qlass_lib.method.rollout import act, continuing, episode_record, greedy_chooser, play, run_episode
from qlass_lib.core.artifacts import ResumableLog, read_json, write_json
from qlass_lib.core.budget import Budget
from qlass_lib.models.kvcache import PrefixCache
from qlass_lib.method.search import episode_seed
from qlass_lib.method.search import ranked_chooser as search_chooser

SCHEMA_VERSION = 1
RANKERS = ("sample", "policy", "qnet", "lookahead")


class Lookahead:
    """Lookahead values of candidate actions, from a second environment and the policy's greedy completion.

    Values are cached per (task, executed turns, candidate turn): replay and greedy decoding are deterministic,
    so a state met again (by another ranker, whose episode shares the prefix) is not rolled out again."""

    def __init__(self, env, policy, example=None):
        self.env, self.example = env, example
        # its own prefix KV cache: the episode's policy computes its prompts in the chunks it would without us
        self.policy = (dataclasses.replace(policy, prefix=PrefixCache()) if dataclasses.is_dataclass(policy)
                       and hasattr(policy, "prefix") else policy)
        self.cache: dict[tuple, float] = {}
        self.rollouts = 0
        self.env_steps = 0

    def value(self, task, executed: list[Candidate], state: list[dict], cand: Candidate) -> float:
        key = (task.id, tuple(c.text for c in executed), cand.text)
        if key not in self.cache:
            self.cache[key] = self._rollout(task, executed, state, cand)
        return self.cache[key]

    def _rollout(self, task, executed: list[Candidate], state: list[dict], cand: Candidate) -> float:
        self.env.reset(task)
        for c in executed:
            act(self.env, c.action)
        self.env_steps += len(executed)
        for _, _, step, _ in play(self.env, state, continuing(cand, greedy_chooser(self.policy))):
            self.env_steps += 1
        self.rollouts += 1
        return float(step.info["score"])


def ranked_chooser(ranker: str, policy, qnet, oracle: Lookahead, task, m: int, sampling, budget: Budget):
    """QLASS's step (:func:`qlass_lib.method.search.ranked_chooser`: sample ``m``, keep the distinct ones) with
    every distinct candidate valued by the QNet, the policy's log-probability and lookahead, executing the
    ``ranker``'s choice.  The QNet is charged to the budget only when it is the ranker; with one distinct
    candidate nothing is scored (as in stage 05)."""
    if ranker not in RANKERS:
        raise ValueError(f"unknown ranker {ranker!r} (one of {', '.join(RANKERS)})")
    executed: list[Candidate] = []

    def value(state, pool):
        q = [float(v) for v in qnet.score(state, [c.text for c in pool], budget if ranker == "qnet" else None)]
        lp = [c.logprob for c in pool]
        la = [oracle.value(task, executed, state, c) for c in pool]
        by = {"sample": [0.0] * len(pool), "policy": lp, "qnet": q, "lookahead": la}[ranker]
        return {"rank": by, "q": q, "logprob": lp, "lookahead": la}

    def describe(r) -> dict:
        executed.append(r.pool[r.best])
        none = [None] * len(r.pool)
        v = r.values or {"q": none, "logprob": none, "lookahead": none}
        return {"distinct": len(r.pool), "prefix": [c.text for c in executed[:-1]],
                "candidates": [{"text": c.text, "action": c.action, "q": a, "logprob": b, "lookahead": x}
                               for c, a, b, x in zip(r.pool, v["q"], v["logprob"], v["lookahead"])]}
    return search_chooser(lambda state: policy.propose(state, m, sampling, budget), value, describe)


def run(policy, qnet, env, lookahead_env, tasks, m: int, sampling, seeds: list[int], out_path: str | Path,
        rankers=RANKERS, example=None) -> list[dict]:
    """Greedy once per task, then every ranker once per (task, seed); resumable JSONL of episodes."""
    oracle = Lookahead(lookahead_env, policy, example)
    log = ResumableLog(out_path, key=lambda r: (r["method"], r["task"], r["seed"]))
    items = [("greedy", t, seeds[0]) for t in tasks] + [(r, t, s) for s in seeds for r in rankers for t in tasks]
    for method, task, seed in tqdm(log.todo(items, lambda x: (x[0], x[1].id, x[2])), desc="lookahead", leave=False):
        budget = Budget()
        r0, s0, t0 = oracle.rollouts, oracle.env_steps, time.perf_counter()
        torch.manual_seed(episode_seed(seed, f"QLASS-M{m}", task.id, 0))
        choose = (greedy_chooser(policy, budget) if method == "greedy"
                  else ranked_chooser(method, policy, qnet, oracle, task, m, sampling, budget))
        ep = run_episode(env, task, choose, budget, example=example)
        log.append(episode_record(ep, task, budget, schema_version=SCHEMA_VERSION, method=method, seed=seed, traj=0,
                                  m=m, lookahead_rollouts=oracle.rollouts - r0, lookahead_env_steps=oracle.env_steps - s0,
                                  wall_s=time.perf_counter() - t0))
    wanted = {t.id for t in tasks}
    return log.records(lambda r: r["task"] in wanted and (r["method"] == "greedy" or r["seed"] in seeds))


def decision_groups(episodes: list[dict]) -> list[dict]:
    """Every distinct visited state with more than one distinct candidate, once (rankers share prefixes): its
    candidates' Q, log π and lookahead values."""
    seen, out = set(), []
    for e in episodes:
        for t in e["turns"]:
            if t.get("distinct", 1) < 2:
                continue
            key = (e["task"], e["seed"], tuple(t["prefix"]))
            if key in seen:
                continue
            seen.add(key)
            c = t["candidates"]
            out.append({"task": e["task"], "task_type": e["task_type"], "seed": e["seed"], "step": len(t["prefix"]),
                        "q": [x["q"] for x in c], "logprob": [x["logprob"] for x in c],
                        "lookahead": [x["lookahead"] for x in c]})
    return out


def ranking_table(groups: list[dict], seed: int = 0) -> pd.DataFrame:
    """Top-1 ranking accuracy against lookahead values at the decisive states (values differ), with a bootstrap
    95% interval over those states, for the QNet, the policy's log π and a random pick."""
    from qlass_lib.method.qnet_metrics import sibling_hit
    from qlass_lib.core.stats import bootstrap_mean_ci
    hits: dict[str, list[float]] = {"qnet": [], "policy (log π)": [], "random": []}
    for g in groups:
        h = sibling_hit(g["q"], g["lookahead"])
        if h is None:
            continue
        hits["qnet"].append(h[0])
        hits["policy (log π)"].append(sibling_hit(g["logprob"], g["lookahead"])[0])
        hits["random"].append(h[1])
    rows = []
    for name, xs in hits.items():
        mean, lo, hi = bootstrap_mean_ci(xs, seed=seed)
        rows.append({"predictor": name, "states_with_choice": len(groups), "decisive_states": len(xs),
                     "top1_accuracy": mean, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def analyze(episodes: list[dict], out_dir: str | Path, rankers=RANKERS, seed: int = 0) -> dict:
    """Write ``lookahead_results.csv``, ``lookahead_comparisons.csv`` and ``lookahead_ranking.csv``."""
    from qlass_lib.method import selection
    from qlass_lib.core import stats
    out_dir = Path(out_dir)
    seeds = sorted({e["seed"] for e in episodes if e["method"] != "greedy"})
    greedy = [e for e in episodes if e["method"] == "greedy"]
    eps = [{**g, "seed": s} for g in greedy for s in seeds] + [e for e in episodes if e["method"] != "greedy"]
    scores = selection.task_scores(eps)
    table = selection.results_table(scores)[["method", "tasks", "seeds", "reward_x100_first", "success_pct_first",
                                            "gen_tokens_per_task", "env_steps_per_task", "wall_s_per_task"]]
    table = table.rename(columns={"reward_x100_first": "reward_x100", "success_pct_first": "success_pct"})
    pairs = [("first", r, "greedy") for r in rankers] + [("first", r, "sample") for r in rankers if r != "sample"]
    if {"lookahead", "qnet"} <= set(rankers):
        pairs.append(("first", "lookahead", "qnet"))
    comparisons = stats.comparison_table(scores, pairs, seed=seed)
    ranking = ranking_table(decision_groups(episodes), seed)
    table.to_csv(out_dir / "lookahead_results.csv", index=False)
    comparisons.to_csv(out_dir / "lookahead_comparisons.csv", index=False)
    ranking.to_csv(out_dir / "lookahead_ranking.csv", index=False)
    summary = {"schema_version": SCHEMA_VERSION, "seeds": seeds, "tasks": int(scores.task.nunique()),
               "lookahead_rollouts": int(sum(e.get("lookahead_rollouts", 0) for e in episodes)),
               "lookahead_env_steps": int(sum(e.get("lookahead_env_steps", 0) for e in episodes)),
               "results": table.to_dict("records"), "comparisons": comparisons.to_dict("records"),
               "ranking": ranking.to_dict("records")}
    write_json(out_dir / "lookahead_summary.json", summary)
    return {"table": table, "comparisons": comparisons, "ranking": ranking, "summary": summary}


def drop_stale(out: Path, identity: dict) -> bool:
    """Remove the episodes an earlier diagnostic left in ``out`` when what made them (the run's stage 01 and 04
    results, the sampling) differs from ``identity``; True if they were removed.  Episodes of other rankers,
    seeds or tasks made by the same policy and QNet are kept and reused."""
    eps = out / "lookahead_episodes.jsonl"
    if not eps.is_file():
        return False
    old = read_json(out / "lookahead_config.json") if (out / "lookahead_config.json").is_file() else {}
    if all(old.get(k) == v for k, v in identity.items()):
        return False
    eps.unlink()
    return True


def _identity(run_dir: Path, sampling) -> dict:
    """What the episodes depend on: each upstream stage's fingerprint and start time (a rerun retrains it)."""
    from qlass_lib.core.series import STAGES
    ups = {}
    for s in ("01", "04"):
        man = read_json(run_dir / STAGES[s] / "manifest.json")
        ups[s] = {"fingerprint": man["fingerprint"]["all"], "started": man["started"]}
    return {"upstream": ups, "sampling": dataclasses.asdict(sampling)}


def diagnose(run_dir: str | Path, split: str = "dev", per_type: int | None = 15, m: int | None = None,
             seeds: list[int] | None = None, rankers=RANKERS) -> dict:
    """The diagnostic on a finished run (stages 01 and 04): ``per_type`` tasks of every type of ``split``,
    M = ``m`` (default: the run's smallest ``search.m_candidates``), the run's search sampling; writes under
    ``runs/<id>/lookahead/<split>-M<m>/``."""
    from qlass_lib.core.series import STAGES
    from qlass_lib.run.context import RunContext
    from qlass_lib.envs import make_env
    from qlass_lib.envs import per_type as first_per_type
    from qlass_lib.method.qnet import load_qnet
    run_dir = Path(run_dir)
    ctx = RunContext.open(str(run_dir / "params.json"), run_dir=str(run_dir))
    cfg = ctx.cfg
    qdir = run_dir / STAGES["04"] / "qnet_q"
    if not (qdir / "value_head.safetensors").is_file():
        raise FileNotFoundError(f"no QNet in {qdir} (run stages 01-04 first)")
    m = m or min(cfg.search.m_candidates)
    seeds = seeds if seeds is not None else [cfg.search.seeds[0]]
    out = run_dir / "lookahead" / f"{split}-M{m}"
    out.mkdir(parents=True, exist_ok=True)
    env, env2 = make_env(cfg.env), make_env(cfg.env)
    try:
        policy, qnet = ctx.policy(env.name), load_qnet(qdir, cfg.model)
        tasks = first_per_type(env.tasks(split), per_type)
        identity = _identity(run_dir, cfg.search.sampling)
        if drop_stale(out, identity):
            print(f"{out}: the run's policy, QNet or sampling changed since the last diagnostic; starting afresh")
        write_json(out / "lookahead_config.json", {"schema_version": SCHEMA_VERSION, "split": split, "m": m,
                                                    "seeds": seeds, "rankers": list(rankers),
                                                    "tasks": [t.id for t in tasks], **identity})
        eps = run(policy, qnet, env, env2, tasks, m, cfg.search.sampling, seeds, out / "lookahead_episodes.jsonl",
                  rankers, ctx.example())
    finally:
        env.close()
        env2.close()
    res = analyze(eps, out, rankers, cfg.seed)
    res["out"], res["split"], res["m"] = out, split, m
    return res


def markdown(res: dict) -> str:
    """The three tables as markdown, for the CLI."""
    t, c, r = res["table"], res["comparisons"], res["ranking"]
    lines = [f"Lookahead diagnostic ({res['split']} split, M={res['m']}, {int(t.tasks.max())} tasks, seeds "
             f"{res['summary']['seeds']}; `lookahead` reads rewards of unexecuted candidates: an oracle)", "",
             "| ranker | reward ×100 | success % | generated tokens/task |", "|---|---|---|---|"]
    lines += [f"| {x.method} | {x.reward_x100:.1f} | {x.success_pct:.1f} | {x.gen_tokens_per_task:.0f} |"
              for x in t.itertuples()]
    lines += ["", "| A − B (first trajectory) | mean [95% CI] | A wins / B wins |", "|---|---|---|"]
    lines += [f"| {x.A} − {x.B} | {x.mean_diff:+.1f} [{x.ci_low:+.1f}, {x.ci_high:+.1f}] | {x.a_wins} / {x.b_wins} |"
              for x in c.itertuples()]
    lines += ["", "| predictor | decisive states (of states with a choice) | top-1 accuracy [95% CI] |", "|---|---|---|"]
    lines += [f"| {x.predictor} | {x.decisive_states} ({x.states_with_choice}) | {x.top1_accuracy:.2f} "
              f"[{x.ci_low:.2f}, {x.ci_high:.2f}] |" for x in r.itertuples()]
    return "\n".join(lines)
