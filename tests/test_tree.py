import itertools
import json

import pytest

from qlass_lib.text import prompts
from qlass_lib.models.policy import Candidate
from qlass_lib.core.config import SamplingConfig, TreeConfig
from qlass_lib.envs import TaskRef
from qlass_lib.envs.scripted import ScriptedEnv
from qlass_lib.method.tree import Tree, TreeBuilder, build_trees


class Cycle:
    """A scripted proposer: returns the next items of a fixed cycle of turns, one per candidate."""

    def __init__(self, turns):
        self.it = itertools.cycle(turns)
        self.calls = []

    def propose(self, state, n, sampling, budget=None):
        out = []
        for _ in range(n):
            a = next(self.it)
            out.append(Candidate(f"Action: {a}" if a else "no idea", a or None, 3))
            if budget is not None:
                budget.add_generation(3)
        self.calls.append(n)
        return out


def cfg(**kw):
    base = dict(depth=1, width=2, max_resample=2, max_rollouts=20, sampling=SamplingConfig())
    base.update(kw)
    return TreeConfig(**base)


SECRET_RGB = TaskRef("doors", 0 + 1 * 3 + 2 * 9)  # red, green, blue


def test_hand_computed_tree_with_dedup_and_pruning():
    env = ScriptedEnv()
    b = TreeBuilder(env, Cycle(["go red", "go red", "go green", "go blue"]), cfg(depth=1, width=2))
    t = b.build(SECRET_RGB)
    # root: red (dup red rejected), green; red's rollout: blue (wrong) -> 0; green wrong -> 0; all pruned
    assert [(n.id, n.parent, n.action, n.score, n.terminal) for n in t.nodes] == [
        (0, None, None, 0.0, False), (1, 0, "go red", 0.0, False), (2, 1, "go blue", 0.0, True),
        (3, 0, "go green", 0.0, True)]
    s = t.stats
    assert s["duplicates_rejected"] == 1 and s["rollouts"] == 2 and s["pruned"] == 1 and s["expanded"] == 1
    assert s["replay_mismatches"] == 0 and s["gen_tokens"] == 3 * 4  # red, red (rejected), green, blue


def test_successful_branches_are_expanded_breadth_first():
    env = ScriptedEnv()
    # the expert branch succeeds, so its nodes up to depth D are expanded to W children
    b = TreeBuilder(env, Cycle(["go blue", "go red", "go green"]), cfg(depth=2, width=2))
    t = b.build(SECRET_RGB, expert_actions=["go red", "go green", "go blue"])
    expert = [n for n in t.nodes if n.source == "expert"]
    assert [n.action for n in expert] == ["go red", "go green", "go blue"] and expert[-1].score == 1.0
    for n in t.nodes:
        assert len(n.children) <= 2
        keys = [prompts.normalize_action(t.nodes[c].action) for c in n.children]
        assert len(keys) == len(set(keys)), "siblings must differ"
        if n.depth <= 2 and not n.terminal and n.rollout_reward > 0:
            assert len(n.children) == 2, f"successful node {n.id} at depth {n.depth} not expanded to W"
        if n.rollout_reward == 0 and n.source == "policy":
            assert len(n.children) <= 1, "pruned nodes keep only their rollout continuation"
        if n.depth > 2:
            assert len(n.children) <= 1
    assert t.stats["nonzero_leaves"] >= 1


def test_width_depth_and_rollout_caps():
    env = ScriptedEnv(partial_credit=True)
    b = TreeBuilder(env, Cycle(["go red", "go green", "go blue"]), cfg(depth=3, width=3, max_rollouts=5))
    t = b.build(SECRET_RGB, expert_actions=["go red", "go green", "go blue"])
    assert t.stats["rollouts"] == 5  # the cap stops expansion of the still-successful expert branch
    assert all(len(n.children) <= 3 for n in t.nodes)


def test_outputs_without_action_become_nodes_with_an_observation():
    env = ScriptedEnv(max_turns=3)
    b = TreeBuilder(env, Cycle([None, "go red"]), cfg(depth=0, width=2))
    t = b.build(SECRET_RGB)
    none_nodes = [n for n in t.nodes if n.parent is not None and n.action is None]
    assert none_nodes and all(n.observation == prompts.NO_ACTION_OBSERVATION for n in none_nodes)


def _strip(rec):
    rec = json.loads(json.dumps(rec))
    for k in ("wall_s", "gen_s", "env_s"):
        rec["stats"].pop(k)
    return rec


def test_interrupt_and_resume_gives_the_same_trees(tiny_tok, tmp_path):
    from qlass_lib.models.policy import Policy
    from qlass_lib.core.config import ModelConfig
    from qlass_lib.models.loading import load_model
    tok, path = tiny_tok
    mcfg = ModelConfig(device="cpu", bf16=False)
    policy = Policy(load_model(str(path), mcfg), tok, mcfg, 256, "scripted")
    env = ScriptedEnv(max_turns=3)
    tcfg = cfg(depth=1, width=2, max_rollouts=3, sampling=SamplingConfig(max_new_tokens=6))
    tasks = env.tasks("train")[:3]
    expert = {tasks[0].id: env.gold_actions(tasks[0])}
    from qlass_lib.method.executor import local
    full = build_trees(local(env, policy), tasks, tmp_path / "a.jsonl", tcfg, expert, seed=7)

    class Crash(Exception):
        pass

    seen = []

    def crash_on_second(tree):
        seen.append(tree.task.id)
        if len(seen) == 2:
            raise Crash()

    with pytest.raises(Crash):
        build_trees(local(env, policy), tasks, tmp_path / "b.jsonl", tcfg, expert, 7, crash_on_second)
    with (tmp_path / "b.jsonl").open("a") as f:
        f.write('{"torn": ')  # a half-written record from the crash
    assert len((tmp_path / "b.jsonl").read_text().splitlines()) == 2
    resumed = build_trees(local(env, policy), tasks, tmp_path / "b.jsonl", tcfg, expert, 7)
    assert [r["task"] for r in resumed] == [t.id for t in tasks]
    assert [_strip(r) for r in resumed] == [_strip(r) for r in full]
    assert Tree.from_dict(full[0]).nodes[1].source == "expert"
