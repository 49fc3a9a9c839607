"""Prefix KV caching: the same tokens and values as computing every prompt from scratch, whatever ran before."""

import pytest
import torch

from qlass_lib.text import prompts
from qlass_lib.models.policy import Policy
from qlass_lib.core.config import ModelConfig, SamplingConfig
from qlass_lib.models.kvcache import PrefixCache
from qlass_lib.method.qnet import QNet

STEPS = [("Action: look around", "This room is called the kitchen. You see a fridge."),
         ("Action: go to outside", "You move to the outside."),
         ("Action: look around", "This outside location is called the outside. You see a tree.")]


def _states(task: str):
    s = prompts.initial_state("scienceworld", task, "You are in the kitchen.")
    out = [s]
    for text, obs in STEPS:
        s = prompts.extend(s, text, obs)
        out.append(s)
    return out


@pytest.fixture()
def model(tiny_tok):
    from qlass_lib.models.loading import load_model
    tok, path = tiny_tok
    torch.manual_seed(0)
    return load_model(str(path), ModelConfig(device="cpu", bf16=False)), tok


def _policy(model, kv: bool) -> Policy:
    m, tok = model
    return Policy(m, tok, ModelConfig(device="cpu", bf16=False, kv_cache=kv), max_length=512)


def test_prefix_cache_extends_only_a_continuation():
    calls = []

    def extend(ids, cache, start):
        calls.append((tuple(ids), start))
        return (cache or ()) + tuple(ids)

    pc = PrefixCache()
    assert pc.get([1, 2, 3], extend) == (1, 2, 3)
    assert pc.get([1, 2, 3, 4, 5], extend) == (1, 2, 3, 4, 5)   # continuation: only 4, 5 computed
    assert pc.get([1, 2, 3, 4, 5], extend) == (1, 2, 3, 4, 5)   # same prefix: nothing computed
    assert pc.get([1, 9], extend) == (1, 9)                     # not a continuation: from scratch
    assert calls == [((1, 2, 3), 0), ((4, 5), 3), ((1, 9), 0)]
    assert pc.stats()["computed_tokens"] == 7 and pc.stats()["reused_tokens"] == 8


def test_policy_with_cache_generates_what_it_generates_without(model):
    states = _states("Find the animal.")
    plain, cached = _policy(model, False), _policy(model, True)
    greedy_plain = [plain.propose(s)[0].text for s in states]
    greedy_cached = [cached.propose(s)[0].text for s in states]
    assert greedy_cached == greedy_plain
    assert cached.prefix.stats()["reused_tokens"] > 0  # later steps reuse the earlier prompt's keys
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=12)
    out = {}
    for kv, pol in ((False, plain), (True, cached)):
        torch.manual_seed(3)
        out[kv] = [[c.text for c in pol.propose(s, 4, sampling)] for s in states]
    assert out[True] == out[False]  # M samples from one shared prefill, the same draws


def test_cached_results_do_not_depend_on_what_ran_before(model):
    """An episode's tokens are the same from a cold cache and after other episodes (as after a resume)."""
    a, b = _states("Find the animal."), _states("Find the plant.")
    cold = _policy(model, True)
    first = [cold.propose(s)[0].text for s in a]
    warm = _policy(model, True)
    for s in b + a[:2]:
        warm.propose(s)
    assert [warm.propose(s)[0].text for s in a] == first


@pytest.mark.parametrize("pool", ["last", "mean"])
def test_qnet_scores_with_cache_equal_scores_without(model, pool):
    m, tok = model
    cands = ["Action: go to outside", "Action: look around", "Action: open door to outside"]
    vals = {}
    for kv in (False, True):
        torch.manual_seed(0)
        q = QNet(m, tok, ModelConfig(device="cpu", bf16=False, kv_cache=kv), max_length=512, pool=pool).eval()
        vals[kv] = [q.score(s, cands) + q.score(s, cands[:1]) for s in _states("Find the animal.")]
        if kv:
            assert q.prefix.stats()["reused_tokens"] > 0
            q.train()
            assert q.prefix.ids == []  # training invalidates the cached prefix
    for x, y in zip(vals[True], vals[False]):
        assert x == pytest.approx(y, abs=1e-5)


def test_a_forward_without_cache_reads_no_deprecated_cache_name(model, caplog):
    """returned_cache on an output that holds no cache is None, and asks for neither name in a way that makes
    transformers log its `past_key_values` deprecation (it did, once per process, on every QNet training)."""
    import logging

    from qlass_lib.models.loading import returned_cache
    m, tok = model
    ids = torch.tensor([tok("Action: look around")["input_ids"]])
    with caplog.at_level(logging.WARNING, logger="transformers"):
        out = m(input_ids=ids, use_cache=False)
        assert returned_cache(out) is None
        out = m(input_ids=ids, use_cache=True)
        assert returned_cache(out) is not None
    assert not [r for r in caplog.records if "deprecated" in r.getMessage()]


def test_branch_reuse_keeps_the_common_prefix_by_hand():
    class Cache:  # a stand-in with transformers 5's crop (a negative int drops that many positions)
        def __init__(self, ids):
            self.ids = list(ids)

        def get_seq_length(self):
            return len(self.ids)

        def crop(self, n):
            if n > 0:
                raise ValueError("positive")
            self.ids = self.ids[:len(self.ids) + n]

    calls = []

    def extend(ids, cache, start):
        calls.append((tuple(ids), start))
        return Cache((cache.ids if cache else []) + list(ids))

    pc = PrefixCache(branch_reuse=True)
    pc.get([1, 2, 3, 4], extend)
    assert pc.get([1, 2, 9, 9, 9], extend).ids == [1, 2, 9, 9, 9]  # keeps 1, 2
    assert pc.get([1, 2, 9], extend).ids == [1, 2, 9]               # a shorter prompt: keeps 1, 2, computes 9
    assert calls == [((1, 2, 3, 4), 0), ((9, 9, 9), 2), ((9,), 2)]
    plain = PrefixCache()
    plain.get([1, 2, 3], extend)
    plain.get([1, 5], extend)
    assert calls[-1] == ((1, 5), 0)  # off: a non-continuation starts from scratch


def test_trees_with_branch_reuse_equal_trees_without_the_cache(model, tmp_path):
    """Trees jump between branches: with the cache (and its branch reuse) every tree is the one built without any
    cache, and the prompt tokens computed drop."""
    from qlass_lib.core.config import TreeConfig
    from qlass_lib.envs.scripted import ScriptedEnv
    from qlass_lib.method.tree import TreeBuilder
    env = ScriptedEnv()
    cfg = TreeConfig(depth=2, width=2, max_rollouts=4, sampling=SamplingConfig(temperature=1.5, max_new_tokens=8))
    out = {}
    for kv in (False, True):
        pol = _policy(model, kv)
        trees = [TreeBuilder(env, pol, cfg).build(t, None, seed=0) for t in env.tasks("train")[:2]]
        out[kv] = ([[(n.text, n.observation) for n in t.nodes] for t in trees], [t.stats["prompt_tokens"] for t in trees])
        assert pol.prefix.branch_reuse is False
    assert out[True][0] == out[False][0]
    assert sum(out[True][1]) < sum(out[False][1])
