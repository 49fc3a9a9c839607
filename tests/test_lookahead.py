"""The lookahead diagnostic on the scripted doors game, where every value is known by hand."""
import json

from qlass_lib.diagnostics import lookahead
from qlass_lib.models.policy import Candidate
from qlass_lib.core.budget import Budget
from qlass_lib.core.config import SamplingConfig
from test_search import SpyEnv  # records every action that reaches the environment


class DoorPolicy:
    """Samples blue, red, green (log-probabilities -1, -2, -3: the policy prefers blue); greedy says red."""

    def propose(self, state, n, sampling=None, budget=None):
        if sampling is None:
            out = [Candidate("Action: go red", "go red", 3, logprob=-0.5)]
        else:
            out = [Candidate(f"Action: go {d}", f"go {d}", 3, logprob=lp)
                   for d, lp in (("blue", -1.0), ("red", -2.0), ("green", -3.0))][:n]
        for c in out:
            if budget is not None:
                budget.add_generation(c.tokens)
        return out


class PrefersGreen:
    def score(self, state, texts, budget=None):
        if budget is not None:
            budget.add_qnet(len(texts))
        return [1.0 if "green" in t else 0.0 for t in texts]


def test_rankers_values_and_ranking_by_hand(tmp_path):
    """Variation 0's secret is red, red, red.  Lookahead values are 0 / 1 / 0 for blue / red / green at every
    step (red, then greedy red to the end, wins), so only the lookahead ranker wins; the QNet (green) and the
    policy (blue) pick a trap.  Rollouts run in the second environment and are cached across rankers."""
    env, env2 = SpyEnv(max_turns=5), SpyEnv(max_turns=5)
    task = env.tasks("train")[0]
    eps = lookahead.run(DoorPolicy(), PrefersGreen(), env, env2, [task], 3, SamplingConfig(), [0],
                        tmp_path / "eps.jsonl")
    by = {e["method"]: e for e in eps}
    assert set(by) == {"greedy", *lookahead.RANKERS}
    assert {m: e["reward"] for m, e in by.items()} == {"greedy": 1.0, "sample": 0.0, "policy": 0.0, "qnet": 0.0,
                                                       "lookahead": 1.0}
    assert [t["action"] for t in by["lookahead"]["turns"]] == ["go red"] * 3
    assert by["sample"]["turns"][0]["action"] == "go blue" and by["qnet"]["turns"][0]["action"] == "go green"
    first = by["lookahead"]["turns"][0]["candidates"]
    assert [(c["action"], c["lookahead"], c["q"], c["logprob"]) for c in first] == [
        ("go blue", 0.0, 0.0, -1.0), ("go red", 1.0, 0.0, -2.0), ("go green", 0.0, 1.0, -3.0)]
    # the episode env saw only executed actions: greedy's 3, four rankers' first steps, lookahead's 2 more
    assert len(env.executed) == 3 + 4 + 2
    # 3 candidates at each of the 3 states of the lookahead episode; the first state is shared by all rankers
    assert sum(e["lookahead_rollouts"] for e in eps) == 9
    assert by["qnet"]["budget"]["qnet_calls"] == 1 and by["policy"]["budget"]["qnet_calls"] == 0
    assert by["sample"]["budget"]["gen_tokens"] == 9  # the M candidates are charged, the lookahead is not

    res = lookahead.analyze(eps, tmp_path)
    rank = res["ranking"].set_index("predictor")
    assert rank.loc["qnet", "decisive_states"] == 3 and rank.loc["qnet", "states_with_choice"] == 3
    assert rank.loc["qnet", "top1_accuracy"] == 0.0 and rank.loc["policy (log π)", "top1_accuracy"] == 0.0
    assert abs(rank.loc["random", "top1_accuracy"] - 1 / 3) < 1e-12
    table = res["table"].set_index("method")
    assert table.loc["lookahead", "reward_x100"] == 100.0 and table.loc["sample", "reward_x100"] == 0.0
    cmp = {(c.A, c.B): c.mean_diff for c in res["comparisons"].itertuples()}
    assert cmp[("lookahead", "sample")] == 100.0 and cmp[("qnet", "greedy")] == -100.0
    assert json.loads((tmp_path / "lookahead_summary.json").read_text())["lookahead_rollouts"] == 9

    # resumable: a second call finds every episode done and runs nothing
    n_exec = len(env.executed)
    again = lookahead.run(DoorPolicy(), PrefersGreen(), env, env2, [task], 3, SamplingConfig(), [0],
                          tmp_path / "eps.jsonl")
    assert len(again) == len(eps) and len(env.executed) == n_exec


def test_one_distinct_candidate_is_not_scored():
    """When every sample is the same action nothing is ranked: no QNet call, no lookahead rollout."""
    class Same(DoorPolicy):
        def propose(self, state, n, sampling=None, budget=None):
            return [Candidate("Action: go red", "go red", 3, logprob=-1.0) for _ in range(n)]

    env, env2 = SpyEnv(max_turns=5), SpyEnv(max_turns=5)
    oracle = lookahead.Lookahead(env2, Same())
    b = Budget()
    ch = lookahead.ranked_chooser("qnet", Same(), PrefersGreen(), oracle, env.tasks("train")[0], 2, SamplingConfig(), b)
    from qlass_lib.method.rollout import run_episode
    ep = run_episode(env, env.tasks("train")[0], ch, b)
    assert ep.reward == 1.0 and oracle.rollouts == 0 and b.qnet_calls == 0 and env2.executed == []
    assert all(t["distinct"] == 1 and t["candidates"][0]["lookahead"] is None for t in ep.turns)


def test_episodes_of_another_policy_or_qnet_are_not_reused(tmp_path):
    """A diagnostic resumes its episodes only while the run's stage 01 and 04 results and the sampling are the
    ones they were made with; a retrained policy or QNet (a new start time or fingerprint) starts it afresh."""
    ident = {"upstream": {"01": {"fingerprint": "a", "started": "t1"}, "04": {"fingerprint": "b", "started": "t2"}},
             "sampling": {"temperature": 0.7}}
    eps = tmp_path / "lookahead_episodes.jsonl"
    eps.write_text('{"method": "qnet"}\n')
    (tmp_path / "lookahead_config.json").write_text(json.dumps({"rankers": ["qnet"], **ident}))
    assert not lookahead.drop_stale(tmp_path, ident) and eps.is_file()
    retrained = json.loads(json.dumps(ident))
    retrained["upstream"]["04"]["started"] = "t3"
    assert lookahead.drop_stale(tmp_path, retrained) and not eps.exists()
    eps.write_text('{"method": "qnet"}\n')
    (tmp_path / "lookahead_config.json").unlink()  # made before configs recorded their upstream: not trusted
    assert lookahead.drop_stale(tmp_path, ident) and not eps.exists()
