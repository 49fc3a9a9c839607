"""The BC policy's own sibling ranking (qlass_lib.method.prior): exact log-probabilities, and the accuracy it scores."""
import json
import math

import pytest
import torch

from qlass_lib.text import prompts
from qlass_lib.core.config import ModelConfig
from qlass_lib.method.prior import action_logprobs, prior_sibling_metrics
from qlass_lib.text.examples import encode_pair


@pytest.fixture()
def policy(tiny_tok):
    from qlass_lib.models.loading import load_model
    tok, path = tiny_tok
    torch.manual_seed(0)
    model = load_model(str(path), ModelConfig(device="cpu", bf16=False))
    model.eval()
    return model, tok


def _rows():
    s = prompts.initial_state("scienceworld", "Find the animal.", "You are in the kitchen.")
    s2 = prompts.extend(s, "Action: look around", "This room is called the kitchen.")
    acts = ["Action: go to outside", "Action: look around", "Action: open door to outside", "Action: focus on cat"]
    rows = []
    for parent, state in ((0, s), (1, s2)):
        for k, a in enumerate(acts):
            rows.append({"task": "t_1", "parent": parent, "node": 10 * parent + k + 1, "state": state, "action_text": a})
    rows.append({"task": "t_1", "parent": 7, "node": 99, "state": s2, "action_text": acts[0]})  # an only child
    return rows


def test_action_logprobs_equal_the_token_sum_one_by_one(policy):
    model, tok = policy
    rows = _rows()
    batched = action_logprobs(model, tok, rows, 512, batch_size=3)
    for r, got in zip(rows, batched):
        ids, mask = encode_pair(tok, r["state"], r["action_text"], 512)
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        want = sum(float(logp[i - 1, ids[i]]) for i in range(1, len(ids)) if mask[i])
        assert got == pytest.approx(want, abs=1e-3) and got < 0
    assert len({round(x, 4) for x in batched[:4]}) == 4  # different actions, different log-probabilities


def test_prior_sibling_accuracy_follows_the_policy_preference(policy, tmp_path):
    model, tok = policy
    rows = _rows()
    lp = action_logprobs(model, tok, rows, 512)
    for r, x in zip(rows, lp):
        group = [y for s, y in zip(rows, lp) if s["parent"] == r["parent"]]
        liked = x == max(group)
        # q: the policy's favourite child is the best; outcome: it is the worst; avg_reward: all children tie
        r["targets"] = {"q": 1.0 if liked else 0.2, "outcome": 0.0 if liked else 1.0, "avg_reward": 0.5}
    for split in ("train", "val"):
        (tmp_path / f"qnet_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = prior_sibling_metrics(model, tok, tmp_path, ["q", "outcome", "avg_reward"], 512, batch_size=2)
    assert m["q"] == {"policy_sibling_accuracy": 1.0, "train_policy_sibling_accuracy": 1.0}
    assert m["outcome"]["policy_sibling_accuracy"] == 0.0 and m["outcome"]["train_policy_sibling_accuracy"] == 0.0
    assert math.isnan(m["avg_reward"]["policy_sibling_accuracy"])  # no group whose targets differ


@pytest.mark.parametrize("kv_cache", [False, True])
def test_candidate_logprob_is_the_teacher_forced_sum_of_its_tokens(policy, kv_cache):
    """The log-probability a candidate carries from generation (raw logits, temperature 1) equals a forward
    pass over prompt + generated tokens, for sampled (T=0.7, with and without the prefix cache) and greedy turns."""
    from qlass_lib.models.policy import Policy
    from qlass_lib.core.config import SamplingConfig
    model, tok = policy
    pol = Policy(model, tok, ModelConfig(device="cpu", bf16=False, kv_cache=kv_cache), 512)
    state = _rows()[0]["state"]
    torch.manual_seed(0)
    cands = pol.propose(state, 3, SamplingConfig(temperature=0.7, max_new_tokens=12)) + pol.propose(state, 1, None)
    prompt = prompts.encode_prompt(tok, state, 512, reserve=12)
    for c in cands:
        ids = prompt + c.ids
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        want = sum(float(logp[len(prompt) + k - 1, t]) for k, t in enumerate(c.ids))
        assert c.logprob == pytest.approx(want, abs=1e-3) and c.logprob < 0


def test_prior_weight_sweep_moves_from_the_qnet_to_the_policy(policy, tmp_path):
    """w = 0 scores the QNet alone, w = inf the policy alone; with a QNet that is constant within each group
    the policy decides at every w > 0, and the best finite weight is the smallest that reaches the top."""
    from qlass_lib.method.prior import best_prior_weight, prior_weight_sweep
    model, tok = policy
    rows = _rows()
    lp = action_logprobs(model, tok, rows, 512)
    for r, x in zip(rows, lp):
        liked = x == max(y for s, y in zip(rows, lp) if s["parent"] == r["parent"])
        r["targets"] = {"q": 1.0 if liked else 0.2}
    (tmp_path / "qnet_val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    q_pred = [0.5 if r["parent"] == 0 else 0.3 for r in rows]  # no preference inside a group
    sweep = prior_weight_sweep(model, tok, tmp_path, q_pred, 512, weights=(0.0, 0.01, 1.0))
    acc = dict(zip(sweep.prior_weight, sweep.val_sibling_accuracy))
    assert acc[0.0] == pytest.approx(0.25) and acc[0.01] == 1.0 and acc[1.0] == 1.0 and acc[math.inf] == 1.0
    assert set(sweep.sibling_groups) == {2} and best_prior_weight(sweep) == 0.01
    with pytest.raises(ValueError, match="predictions"):
        prior_weight_sweep(model, tok, tmp_path, q_pred[:-1], 512)
