"""The ``openai`` generation backend against a real vLLM server (CPU, ``.venv-vllm``) serving the smoke run's
BC policy, and the ``ray`` executor with 2 workers building trees through it.

Runs after tests/test_smoke.py (it needs that run's policy; run alone, it builds the smoke run first).  Under
``make test`` (QLASS_REQUIRE_VLLM=1) a missing vLLM virtualenv is a failure, not a skip.
"""
import json
import os

import pytest
import torch

from qlass_lib.core.config import load_config

from test_smoke import RUN, _runner

pytestmark = pytest.mark.smoke
POLICY = RUN / "01_behavior_cloning" / "policy"


def _cfg(server=None, **over):
    gen = {"backend": "openai", "base_url": server.base_url, "model": server.model} if server else {}
    return load_config("params/smoke.yaml", {"generation": {**gen, **over.pop("generation", {})}, **over})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from qlass_lib.models.server import start_vllm, vllm_python
    if not vllm_python().is_file():
        if os.environ.get("QLASS_REQUIRE_VLLM"):
            pytest.fail(f"no vLLM interpreter at {vllm_python()}: `make vllm-venv` builds it")
        pytest.skip("no .venv-vllm (make vllm-venv)")
    if not (RUN / "05_guided_search" / "manifest.json").is_file():  # run alone: the smoke run first (resumes)
        proc = _runner()
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    srv = start_vllm(POLICY, tmp_path_factory.mktemp("vllm") / "server.log", max_model_len=768, name="smoke-policy")
    yield srv
    srv.stop()


def _greedy_episodes(cfg, policy, tasks, logprobs: list):
    from qlass_lib.method.rollout import run_episode
    from qlass_lib.envs import make_env
    env = make_env(cfg.env)
    try:
        out = []
        for t in tasks:
            turns = []

            def choose(state, turn):
                c = policy.propose(state, 1, None)[0]  # greedy, as greedy_chooser asks for it
                turns.append(c)
                return c, {}
            ep = run_episode(env, t, choose)
            out.append((ep.reward, [(c.text, c.tokens, c.ids) for c in turns]))
            logprobs.extend(c.logprob for c in turns)
        return out
    finally:
        env.close()


def test_greedy_through_vllm_equals_hf_token_for_token(server):
    from qlass_lib.envs import eval_tasks, make_env, per_type
    from qlass_lib.models.generation import make_policy
    cfg = _cfg(server)
    env = make_env(cfg.env)
    tasks = per_type(eval_tasks(env, cfg.env), 1)
    env.close()
    hf = make_policy(cfg, POLICY, backend="hf")
    served = make_policy(cfg, POLICY)
    lp_hf, lp_served = [], []
    a = _greedy_episodes(cfg, hf, tasks, lp_hf)
    b = _greedy_episodes(cfg, served, tasks, lp_served)
    assert len(a) == len(tasks) == 2 and sum(len(t) for _, t in a) >= 4
    assert a == b  # same rewards, same turns, same generated token ids (the end-of-sequence token included)
    # the candidates' own log-probabilities (QLASS-prior's log pi): vLLM's raw logprobs against hf's raw logits
    # (measured here: at most 0.022 apart over 16 turns whose sums reach -10.6)
    assert None not in lp_served and lp_served == pytest.approx(lp_hf, abs=0.05)
    st = served.stats
    assert st["prompt_mismatches"] == 0 and st["token_mismatches"] == 0  # the server saw the formatter's exact ids
    assert st["completion_tokens"] == sum(n for _, t in b for _, n, _ in t)


def test_n_candidates_in_one_request_with_seeds_honoured(server):
    from qlass_lib.core.budget import Budget
    from qlass_lib.core.config import SamplingConfig
    from qlass_lib.models.generation import make_policy
    from qlass_lib.text.prompts import initial_state
    cfg = _cfg(server)
    pol = make_policy(cfg, POLICY)
    state = initial_state(cfg.env.name, "Your task is to find a(n) non-living thing. First, focus on the thing.",
                          "This room is called the hallway.")
    samp = SamplingConfig(temperature=1.0, max_new_tokens=24)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        b = Budget()
        runs.append(([c.ids for c in pol.propose(state, 4, samp, b)], b.gen_tokens, b.gen_calls))
    assert runs[0] == runs[1]  # the request seed comes from torch's (seeded) generator
    ids, tokens, calls = runs[0]
    assert len(ids) == 4 and calls == 4 and tokens == sum(len(x) for x in ids)
    assert pol.stats["requests"] == 2 and pol.stats["token_mismatches"] == 0
    torch.manual_seed(1)
    assert [c.ids for c in pol.propose(state, 4, samp)] != ids  # another seed, other samples


@pytest.fixture(scope="module")
def ray_runner(server):
    """Two Ray workers (ScienceWorld + a client of the server each) and one QNet scorer actor."""
    from qlass_lib.method.executor import RayExecutor, WorkerSpec
    cfg = _cfg(server, executor={"kind": "ray", "workers": 2})
    runner = RayExecutor(WorkerSpec(cfg, str(POLICY)), workers=2,
                         qnet_dirs={"q": str(RUN / "04_qnet_training" / "qnet_q")})
    yield cfg, runner
    runner.close()


def test_trees_on_two_ray_workers_through_the_server(ray_runner, tmp_path):
    from qlass_lib.envs import make_env
    from qlass_lib.method.tree import build_trees, tree_tasks
    cfg, runner = ray_runner
    env = make_env(cfg.env)
    tasks = tree_tasks(env, cfg)
    env.close()
    assert len(runner.workers) == 2 and len(tasks) == 4
    out = tmp_path / "trees.jsonl"
    records = build_trees(runner, tasks, out, cfg.tree, {}, cfg.seed)
    lines = out.read_text()
    assert [r["task"] for r in records] == [t.id for t in tasks]  # merged in task order
    for r in records:
        s = r["stats"]
        assert s["rollouts"] >= 1 and s["nodes"] > 1 and s["gen_tokens"] > 0 and s["replay_mismatches"] == 0
        assert sum(n["tokens"] for n in r["nodes"]) <= s["gen_tokens"]  # rejected duplicates are charged too
    again = build_trees(runner, tasks, out, cfg.tree, {}, cfg.seed)  # finished: nothing is rebuilt
    assert out.read_text() == lines and again == records


def test_qlass_on_ray_workers_scores_through_one_qnet_actor(ray_runner, tmp_path):
    from qlass_lib.method import search
    from qlass_lib.envs import eval_tasks, make_env, per_type
    cfg, runner = ray_runner
    env = make_env(cfg.env)
    tasks = per_type(eval_tasks(env, cfg.env), 1)
    env.close()
    s = cfg.search.sampling
    eps = search.run_method(runner, tasks, "QLASS-M2",
                            lambda ws, b, i: search.qlass_chooser(ws.policy, ws.qnets["q"], 2, s, b), 2,
                            tmp_path / "eps.jsonl", m=2)
    assert [(e["task"], e["traj"]) for e in eps] == [(t.id, i) for t in tasks for i in range(2)]  # merged in order
    for e in eps:
        assert all(len(t["candidates"]) == 2 for t in e["turns"])
        scored = sum(t["distinct"] > 1 for t in e["turns"])
        assert e["budget"]["qnet_calls"] == scored and (e["budget"]["qnet_tokens"] > 0) == (scored > 0)
        for t in e["turns"]:  # the executed turn is the argmax of the QNet's values among distinct candidates
            qs = [c["q"] for c in t["candidates"] if c["q"] is not None]
            if t["distinct"] > 1:
                assert t["q"] == max(qs)


def test_server_killed_mid_stage_keeps_finished_trees(server, tmp_path):
    """Runs last: it stops the module's server."""
    from qlass_lib.envs import make_env
    from qlass_lib.method.executor import local
    from qlass_lib.models.generation import GenerationServerError, make_policy
    from qlass_lib.method.tree import build_trees, tree_tasks
    cfg = _cfg(server, generation={"max_retries": 1, "timeout_s": 10.0})
    env = make_env(cfg.env)
    try:
        tasks = tree_tasks(env, cfg)
        out, written = tmp_path / "trees.jsonl", []

        def kill_after_second(tree):
            written.append(tree.task.id)
            if len(written) == 2:
                server.stop()  # the server goes away with trees still to build
        with pytest.raises(GenerationServerError, match=server.base_url.split("/v1")[0]):
            build_trees(local(env, make_policy(cfg, POLICY)), tasks, out, cfg.tree, {}, cfg.seed, kill_after_second)
        kept = [json.loads(l) for l in out.read_text().splitlines()]
        assert [r["task"] for r in kept] == [t.id for t in tasks[:2]]  # both finished trees, intact
        resumed = build_trees(local(env, make_policy(cfg, POLICY, backend="hf")), tasks, out, cfg.tree, {}, cfg.seed)
        assert [r["task"] for r in resumed] == [t.id for t in tasks] and resumed[:2] == kept
    finally:
        env.close()
