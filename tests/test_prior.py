"""The BC policy's own sibling ranking (qlass_lib.prior): exact log-probabilities, and the accuracy it scores."""
import json
import math

import pytest
import torch

from qlass_lib import prompts
from qlass_lib.config import ModelConfig
from qlass_lib.prior import action_logprobs, prior_sibling_metrics
from qlass_lib.qnet import encode_pair


@pytest.fixture()
def policy(tiny_tok):
    from qlass_lib.models import load_model
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
