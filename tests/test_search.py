import pytest

from qlass_lib import search
from qlass_lib.agent import Candidate
from qlass_lib.budget import Budget
from qlass_lib.config import SamplingConfig
from qlass_lib.envs.scripted import ScriptedEnv
from qlass_lib.paraphrase import local_paraphrase, with_task_text
from qlass_lib import prompts


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
    from qlass_lib.agent import run_episode
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
    eps = search.run_method(env, tasks, "BoN", lambda b, i: search.sampling_chooser(pol, SamplingConfig(), b), 3, out)
    assert len(eps) == 6
    again = search.run_method(env, tasks, "BoN", lambda b, i: pytest.fail("should resume"), 3, out)
    assert len(again) == 6
    t = search.results_table(eps)
    row = t.iloc[0]
    assert row.N == 3 and row.tasks == 2 and row.gen_tokens_per_task == pytest.approx(3 * 4 * 3 / 1, rel=0.5)
    curve = search.budget_curve(eps, "BoN")
    assert list(curve.k) == [1, 2, 3] and curve.tokens.is_monotonic_increasing


def test_budget_ratio_by_hand():
    import pandas as pd
    bon = pd.DataFrame({"k": [1, 2, 3, 4], "tokens": [100, 200, 300, 400], "reward_x100": [40, 50, 55, 60]})
    ql = pd.DataFrame({"k": [1, 2, 3, 4], "tokens": [150, 300, 450, 600], "reward_x100": [50, 70, 75, 80]})
    r = search.budget_ratio(bon, ql)
    # QLASS reaches 60 between 150 (50) and 300 (70): 150 + 0.5 * 150 = 225; BoN needs 400
    assert r["qlass_tokens_to_reach"] == pytest.approx(225) and r["ratio"] == pytest.approx(225 / 400)
    never = pd.DataFrame({"k": [1], "tokens": [10], "reward_x100": [10]})
    assert search.budget_ratio(bon, never)["ratio"] is None
    zero = pd.DataFrame({"k": [1, 2], "tokens": [100, 200], "reward_x100": [0.0, 0.0]})
    assert search.budget_ratio(zero, ql)["ratio"] is None  # nothing to reach: not a 1.5x "win" at 150 tokens


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
