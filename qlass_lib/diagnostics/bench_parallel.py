"""``python -m qlass_lib bench-parallel runs/<id>``: generation backends and task executors, side by side.

On a finished run's BC policy it starts a vLLM server (``.venv-vllm``) on that policy and measures, one
configuration after another in one process:

- generation tokens/s of the ``hf`` backend (in-process ``generate``) and the ``openai`` backend (the server),
  on the same states (those of stage 01's evaluation episodes) with the same sampling, M candidates per state,
  alternating A/B/A/B so drift hits both;
- the tree stage's wall time for ``tasks`` training tasks with the ``openai`` backend on the ``local`` executor,
  on ``ray`` with 1 worker and on ``ray`` with 2 workers (every configuration builds the same tasks from scratch).

Writes ``bench/parallel.json`` in the run folder and prints a markdown table.  Absolute numbers are this
machine's; the ratios are the point.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from qlass_lib.core.artifacts import write_json


def _gen_rate(policy, states, m: int, sampling, seed: int) -> tuple[float, int]:
    """(seconds, completion tokens) for M candidates at each state."""
    from qlass_lib.core.budget import Budget
    b = Budget()
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    for s in states:
        policy.propose(s, m, sampling, b)
    return time.perf_counter() - t0, b.gen_tokens


def bench_parallel(run_dir: str | Path, n_states: int = 40, m: int = 4, tasks: int = 8, rounds: int = 2,
                   workers: tuple[int, ...] = (1, 2), seed: int = 0) -> dict:
    from qlass_lib.diagnostics.bench import _states
    from qlass_lib.core.config import load_config
    from qlass_lib.core.series import STAGES
    from qlass_lib.envs import make_env
    from qlass_lib.method.executor import RayExecutor, WorkerSpec, local
    from qlass_lib.models.generation import make_policy
    from qlass_lib.models.server import servable, start_vllm
    from qlass_lib.method.tree import build_trees, tree_tasks
    run_dir = Path(run_dir)
    policy_dir = run_dir / STAGES["01"] / "policy"
    cfg0 = load_config(run_dir / "params.json")
    states = _states(run_dir, cfg0.env.name, n_states)
    out: dict = {"schema_version": 1, "run": str(run_dir), "states": len(states), "m": m}
    server = start_vllm(servable(policy_dir), run_dir / "bench" / "vllm.log", max_model_len=cfg0.bc.max_length,
                        name="policy", seed=seed)
    try:
        cfg = load_config(run_dir / "params.json", {"generation": {"backend": "openai", "base_url": server.base_url,
                                                                   "model": server.model}})
        pols = {"hf": make_policy(cfg, policy_dir, backend="hf"), "openai": make_policy(cfg, policy_dir)}
        _gen_rate(pols["openai"], states[:2], m, cfg.search.sampling, seed)  # first requests warm the server
        secs = {k: 0.0 for k in pols}
        toks = {k: 0 for k in pols}
        for r in range(rounds):
            for k in (("hf", "openai") if r % 2 == 0 else ("openai", "hf")):
                s, t = _gen_rate(pols[k], states, m, cfg.search.sampling, seed + r)
                secs[k] += s
                toks[k] += t
        for k in pols:
            out[f"{k}_tokens_per_s"] = toks[k] / secs[k]
            out[f"{k}_tokens"] = toks[k]
        out["openai_over_hf_tokens_per_s"] = out["openai_tokens_per_s"] / out["hf_tokens_per_s"]
        out["openai_token_mismatches"] = pols["openai"].stats["token_mismatches"]
        del pols

        env = make_env(cfg.env)
        todo = tree_tasks(env, cfg)
        todo = [t for i in range(len(todo)) for t in todo[i::len(todo)]][:tasks]  # not only one type
        out["tree_tasks"] = len(todo)
        configs = [("local", None), *[("ray", w) for w in workers]]
        for kind, w in configs:
            name = "local" if kind == "local" else f"ray{w}"
            if kind == "local":
                runner = local(env, make_policy(cfg, policy_dir))
            else:
                runner = RayExecutor(WorkerSpec(cfg, str(policy_dir)), workers=w)
            try:
                with tempfile.TemporaryDirectory() as d:
                    t0 = time.perf_counter()
                    recs = build_trees(runner, todo, Path(d) / "trees.jsonl", cfg.tree, {}, cfg.seed)
                    out[f"trees_{name}_s"] = time.perf_counter() - t0
                    out[f"trees_{name}_env_share"] = (sum(r["stats"]["env_s"] for r in recs)
                                                      / max(1e-9, sum(r["stats"]["wall_s"] for r in recs)))
                    out[f"trees_{name}_gen_tokens"] = sum(r["stats"]["gen_tokens"] for r in recs)
            finally:
                runner.close()
        env.close()
        if "trees_ray1_s" in out and "trees_ray2_s" in out:
            out["trees_ray1_over_ray2"] = out["trees_ray1_s"] / out["trees_ray2_s"]
    finally:
        server.stop()
    d = run_dir / "bench"
    d.mkdir(exist_ok=True)
    write_json(d / "parallel.json", out)
    return out


def markdown(res: dict) -> str:
    rows = [("states × M candidates", f"{res['states']} × {res['m']}"),
            ("hf tokens/s", f"{res['hf_tokens_per_s']:.0f}"), ("openai (vLLM) tokens/s", f"{res['openai_tokens_per_s']:.0f}"),
            ("openai ÷ hf", f"{res['openai_over_hf_tokens_per_s']:.2f}"), ("tree tasks", str(res["tree_tasks"]))]
    for k in ("local", "ray1", "ray2"):
        if f"trees_{k}_s" in res:
            rows.append((f"trees, {k} (s)", f"{res[f'trees_{k}_s']:.1f} (env share {res[f'trees_{k}_env_share']:.2f})"))
    if "trees_ray1_over_ray2" in res:
        rows.append(("ray 1 worker ÷ 2 workers", f"{res['trees_ray1_over_ray2']:.2f}"))
    return "\n".join(["| measure | value |", "|---|---|", *[f"| {a} | {b} |" for a, b in rows]])
