import pytest

from qlass_lib.method import search, selection
from qlass_lib.models.policy import Candidate
from qlass_lib.core.budget import Budget
from qlass_lib.core.config import SamplingConfig
from qlass_lib.envs.scripted import ScriptedEnv
from qlass_lib.method.executor import local
from qlass_lib.text.paraphrase import local_paraphrase, with_task_text
from qlass_lib.text import prompts


class SpyEnv(ScriptedEnv):
    """Records every action that reaches the environment."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.executed = []

    def _step(self, action):
        self.executed.append(action)
        return super()._step(action)


class FixedPolicy:
    """Proposes the same candidate list every step; counts tokens like the real policy."""

    def __init__(self, turns):
        self.turns = turns

    def propose(self, state, n, sampling, budget=None):
        out = [Candidate(f"Action: {a}", a, 4) for a in (self.turns * n)[:n]]
        for c in out:
            budget.add_generation(c.tokens)
        return out

    def propose_many(self, states, sampling, budget=None):
        return self.propose(states[0], len(states), sampling, budget)


class PrefersQNet:
    """A fake QNet that scores candidates by a fixed preference, and records what it saw."""

    def __init__(self, prefer):
        self.prefer, self.seen = prefer, []

    def score(self, state, texts, budget=None):
        self.seen.append(texts)
        if budget is not None:
            budget.add_qnet(10 * len(texts))
        return [1.0 if self.prefer in t else 0.0 for t in texts]


def test_qlass_executes_only_the_argmax_and_counts_every_candidate():
    env = SpyEnv(max_turns=3)
    task = env.tasks("train")[0]  # secret red, red, red
    b = Budget()
    policy = FixedPolicy(["go blue", "go red", "go green"])
    ch = search.qlass_chooser(policy, PrefersQNet("go red"), 3, SamplingConfig(), b)
    from qlass_lib.method.rollout import run_episode
    ep = run_episode(env, task, ch, b)
    assert ep.reward == 1.0 and env.executed == ["go red"] * 3  # unchosen candidates never reach the env
    assert b.gen_tokens == 3 * 3 * 4 and b.gen_calls == 9  # every candidate counts
    assert b.qnet_tokens == 3 * 30 and b.env_steps == 3
    assert len(ep.turns[0]["candidates"]) == 3


def test_run_method_resumes_and_tables(tmp_path):
    env = ScriptedEnv(max_turns=3)
    tasks = env.tasks("train")[:2]
    pol = FixedPolicy(["go red"])
    out = tmp_path / "eps.jsonl"
    runner = local(env, pol)
    eps = search.run_method(runner, tasks, "BoN", lambda ws, b, i: search.sampling_chooser(ws.policy, SamplingConfig(), b),
                            3, out)
    assert len(eps) == 6
    again = search.run_method(runner, tasks, "BoN", lambda ws, b, i: pytest.fail("should resume"), 3, out)
    assert len(again) == 6
    t = selection.results_table(selection.task_scores(eps))
    row = t.iloc[0]
    assert row.N == 3 and row.tasks == 2 and row.gen_tokens_per_task == pytest.approx(3 * 4 * 3 / 1, rel=0.5)
    curve = selection.budget_curve(eps, "BoN")
    assert list(curve.k) == [1, 2, 3] and curve.tokens.is_monotonic_increasing
    assert (curve.ci_low <= curve.reward_x100).all() and (curve.reward_x100 <= curve.ci_high).all()
    other = search.run_method(runner, tasks, "BoN", lambda ws, b, i: search.sampling_chooser(pol, SamplingConfig(), b), 3, out,
                              seed=1)
    assert len(other) == 6 and {e["seed"] for e in other} == {1}  # a second seed is a second set of episodes


def test_budget_ratio_by_hand():
    import pandas as pd
    bon = pd.DataFrame({"k": [1, 2, 3, 4], "tokens": [100, 200, 300, 400], "reward_x100": [40, 50, 55, 60]})
    ql = pd.DataFrame({"k": [1, 2, 3, 4], "tokens": [150, 300, 450, 600], "reward_x100": [50, 70, 75, 80]})
    r = selection.budget_ratio(bon, ql)
    # QLASS reaches 60 between 150 (50) and 300 (70): 150 + 0.5 * 150 = 225; BoN needs 400
    assert r["qlass_tokens_to_reach"] == pytest.approx(225) and r["ratio"] == pytest.approx(225 / 400)
    never = pd.DataFrame({"k": [1], "tokens": [10], "reward_x100": [10]})
    assert selection.budget_ratio(bon, never)["ratio"] is None
    zero = pd.DataFrame({"k": [1, 2], "tokens": [100, 200], "reward_x100": [0.0, 0.0]})
    assert selection.budget_ratio(zero, ql)["ratio"] is None  # nothing to reach: not a 1.5x "win" at 150 tokens


def test_local_paraphrase_is_deterministic_and_keeps_content():
    t = "Your task is to find a(n) animal. First, focus on the thing. Then, move it to the red box in the kitchen."
    assert local_paraphrase(t, 0) == t
    p1, p2 = local_paraphrase(t, 1), local_paraphrase(t, 2)
    assert p1 != t and p2 != t and p1 != p2 and local_paraphrase(t, 1) == p1
    for w in ["animal", "red box", "kitchen", "focus on"]:
        assert w in p1.lower() and w in p2.lower()
    s = prompts.initial_state("scienceworld", t, "obs")
    s2 = with_task_text(s, t, p1)
    assert prompts.task_text_of(s2) == p1 and prompts.task_text_of(s) == t


def test_duplicate_candidates_are_scored_once_but_all_charged():
    env = SpyEnv(max_turns=3)
    task = env.tasks("train")[0]
    b = Budget()
    q = PrefersQNet("go red")
    ch = search.qlass_chooser(FixedPolicy(["go blue", "go red", "go blue", "go red"]), q, 4, SamplingConfig(), b)
    from qlass_lib.method.rollout import run_episode
    ep = run_episode(env, task, ch, b)
    assert ep.reward == 1.0 and all(len(seen) == 2 for seen in q.seen)  # two distinct actions scored per step
    assert b.gen_tokens == 3 * 4 * 4  # every generated candidate is charged
    assert ep.turns[0]["distinct"] == 2 and len(ep.turns[0]["candidates"]) == 4
    # one distinct action: nothing to choose, the QNet is not called
    q1, b1 = PrefersQNet("go red"), Budget()
    ch1 = search.qlass_chooser(FixedPolicy(["go red"]), q1, 3, SamplingConfig(), b1)
    ep1 = run_episode(SpyEnv(max_turns=3), task, ch1, b1)
    assert q1.seen == [] and b1.qnet_tokens == 0 and ep1.turns[0]["q"] is None and ep1.reward == 1.0


def _ep(method, task, traj, reward, tokens=10, seed=0):
    return {"method": method, "task": task, "traj": traj, "seed": seed, "reward": reward, "success": reward == 1.0,
            "task_type": "t", "budget": {"gen_tokens": tokens, "qnet_tokens": 0, "env_steps": 1, "wall_s": 0.1}}


def test_three_selections_by_hand():
    eps = [_ep("BoN", "a", 0, 0.0), _ep("BoN", "a", 1, 1.0), _ep("BoN", "a", 2, 0.5),
           _ep("BoN", "b", 0, 0.5), _ep("BoN", "b", 1, 0.0), _ep("BoN", "b", 2, 1.0)]
    values = {("BoN", "a", 0, 0): 0.1, ("BoN", "a", 1, 0): 0.2, ("BoN", "a", 2, 0): 0.9,  # QNet prefers traj 2
              ("BoN", "b", 0, 0): 0.8, ("BoN", "b", 1, 0): 0.3, ("BoN", "b", 2, 0): 0.3}  # QNet prefers traj 0
    sc = selection.task_scores(eps, values).set_index("task")
    assert sc.loc["a", ["first", "qnet", "oracle"]].tolist() == [0.0, 0.5, 1.0]
    assert sc.loc["b", ["first", "qnet", "oracle"]].tolist() == [0.5, 0.5, 1.0]
    row = selection.results_table(sc.reset_index()).iloc[0]
    assert row.reward_x100_first == 25.0 and row.reward_x100_qnet_selected == 50.0
    assert row.reward_x100_oracle_bestofN == 100.0 and row.gen_tokens_per_task == 30
    q = selection.budget_curve(eps, "BoN", "qnet", values)
    assert q.reward_x100.tolist() == pytest.approx([25.0, 75.0, 50.0])  # k=2: a picks traj 1 (1.0), b traj 0 (0.5)
    o = selection.budget_curve(eps, "BoN", "oracle")
    assert o.reward_x100.tolist() == pytest.approx([25.0, 75.0, 100.0])


def test_final_state_rebuilds_the_state_before_the_last_turn():
    env = ScriptedEnv(max_turns=3)
    task = env.tasks("train")[0]
    from qlass_lib.method.rollout import run_episode
    ep = run_episode(env, task, search.sampling_chooser(FixedPolicy(["go blue", "go red"]), SamplingConfig(), Budget()),
                     Budget()).to_dict()
    ep.update(method="BoN", traj=0)
    state, text = selection.final_state(ep, env.name)
    first = env.reset(task)
    want = prompts.initial_state(env.name, first.task_text, first.observation)
    for t in ep["turns"][:-1]:
        want = prompts.extend(want, t["text"], t["observation"])
    assert state == want and text == ep["turns"][-1]["text"]


def test_episode_seeds_are_stable_and_distinct():
    a = search.episode_seed(0, "BoN", "t_1", 0)
    assert a == search.episode_seed(0, "BoN", "t_1", 0)
    assert len({a, search.episode_seed(1, "BoN", "t_1", 0), search.episode_seed(0, "BoN", "t_1", 1),
                search.episode_seed(0, "QLASS-M2", "t_1", 0)}) == 4


def test_ablation_runs_on_its_own_seeds(tmp_path):
    from qlass_lib.core.config import SearchConfig
    env = ScriptedEnv(max_turns=3)
    tasks = env.tasks("train")[:2]
    pol = FixedPolicy(["go red", "go blue"])
    qnets = {"q": PrefersQNet("go red"), "outcome": PrefersQNet("go blue")}
    cfg = SearchConfig(seeds=[0, 1, 2], m_candidates=[2], ablation_seeds=[1])
    runner = local(env, pol, qnets)
    eps = search.run_ablation(runner, tasks, ["q", "outcome"], cfg, tmp_path / "abl.jsonl")
    assert {(e["method"], e["seed"]) for e in eps} == {("ablation-q", 1), ("ablation-outcome", 1)}
    assert len(eps) == 2 * len(tasks)
    cfg.ablation_seeds = None  # default: every search seed
    eps = search.run_ablation(runner, tasks, ["q", "outcome"], cfg, tmp_path / "abl2.jsonl")
    assert sorted({e["seed"] for e in eps}) == [0, 1, 2] and len(eps) == 2 * 3 * len(tasks)


def test_greedy_runs_once_and_its_episodes_are_reused_for_the_other_seeds(tmp_path):
    from qlass_lib.core.config import SearchConfig
    env = SpyEnv(max_turns=3)
    tasks = env.tasks("train")[:2]
    pol = FixedPolicy(["go red", "go blue"])
    cfg = SearchConfig(seeds=[3, 5], m_candidates=[2], n_trajectories=2, augmented=False)
    runner = local(env, pol, {"q": PrefersQNet("go red")})
    out = tmp_path / "eps.jsonl"
    eps = search.run_suite(runner, tasks, cfg, out, local_paraphrase)
    greedy = [e for e in eps if e["method"] == "greedy"]
    assert sorted((e["seed"], e["task"]) for e in greedy) == sorted((s, t.id) for s in (3, 5) for t in tasks)
    first = {e["task"]: e for e in greedy if e["seed"] == 3}
    for e in greedy:
        if e["seed"] == 5:  # the same episode, marked as reused
            assert e["reused_from_seed"] == 3
            drop = ("seed", "reused_from_seed")
            assert {k: v for k, v in e.items() if k not in drop} == {k: v for k, v in first[e["task"]].items()
                                                                      if k not in drop}
    n_env = len(env.executed)
    env.executed.clear()
    again = search.run_suite(runner, tasks, cfg, out, local_paraphrase)  # a rerun resumes: nothing executed
    assert env.executed == [] and len(again) == len(eps)
    # every executed action belongs to an episode that was run; the reused greedy episodes executed nothing
    assert n_env == sum(len(e["turns"]) for e in eps if "reused_from_seed" not in e)
    assert sum(len(e["turns"]) for e in greedy if "reused_from_seed" in e) > 0


class LogprobPolicy(FixedPolicy):
    """FixedPolicy whose candidates carry log-probabilities (the first action is the policy's favourite)."""

    def propose(self, state, n, sampling, budget=None):
        out = super().propose(state, n, sampling, budget)
        for k, c in enumerate(out):
            c.logprob = -1.0 - 2.0 * (k % len(self.turns))
        return out


def test_prior_weight_lets_the_policy_overrule_a_close_q():
    """Q prefers "go blue" by 1.0; each candidate's log-probability gap to the favourite "go red" is 2 nats:
    w = 0 follows Q, w = 0.4 still does (0.4 * 2 < 1.0), w = 1 follows the policy; the logs keep both numbers."""
    from qlass_lib.method.rollout import run_episode
    picked = {}
    for w in (0.0, 0.4, 1.0):
        env = SpyEnv(max_turns=1)
        ch = search.qlass_chooser(LogprobPolicy(["go red", "go blue"]), PrefersQNet("go blue"), 2, SamplingConfig(),
                                  Budget(), prior_weight=w)
        ep = run_episode(env, env.tasks("train")[0], ch)
        picked[w] = env.executed
        assert [c["logprob"] for c in ep.turns[0]["candidates"]] == [-1.0, -3.0]
    assert picked == {0.0: ["go blue"], 0.4: ["go blue"], 1.0: ["go red"]}
    assert list(search.guided_scores([0.0, 1.0], LogprobPolicy(["a", "b"]).propose(None, 2, None, Budget()), 1.0)) \
        == [-1.0, -2.0]
    with pytest.raises(RuntimeError, match="log-probability"):
        search.guided_scores([0.0, 1.0], FixedPolicy(["a", "b"]).propose(None, 2, None, Budget()), 0.5)
    pairs = selection.standard_pairs(["greedy", "BoN", "QLASS-M2", "QLASS-prior-M2"])
    assert ("first", "QLASS-prior-M2", "QLASS-M2") in pairs and ("qnet", "QLASS-prior-M2", "BoN") in pairs
