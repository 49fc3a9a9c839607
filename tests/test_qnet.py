import pytest
import torch

from qlass_lib.text import prompts
from qlass_lib.core.budget import Budget
from qlass_lib.core.config import ModelConfig, QNetConfig
from qlass_lib.method.qnet import QNet, last_index, load_qnet
from qlass_lib.text.batching import pad
from qlass_lib.text.examples import encode_pair
from qlass_lib.method.qnet_metrics import evaluate_qnet
from qlass_lib.method.qnet_train import train_qnet


@pytest.fixture(params=["last", "mean"])
def qnet(tiny_tok, request):
    from qlass_lib.models.loading import load_model
    tok, path = tiny_tok
    torch.manual_seed(0)
    cfg = ModelConfig(device="cpu", bf16=False)
    q = QNet(load_model(str(path), cfg), tok, cfg, max_length=512, pool=request.param)
    q.eval()
    return q


def _state():
    s = prompts.initial_state("scienceworld", "Find the animal.", "You are in the kitchen.")
    return prompts.extend(s, "Action: look around", "This room is called the kitchen.")


CANDS = ["Action: go to outside", "Action: look around", "Thought: I should open it.\nAction: open door to outside",
         "no action here"]


def test_last_index_left_and_right():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    assert last_index(right).tolist() == [2, 3] and last_index(left).tolist() == [3, 3]


def test_span_mean_by_hand():
    from qlass_lib.method.qnet import span_mean
    h = torch.tensor([[1.0, 2.0, 4.0, 8.0, 16.0, 32.0]])[..., None]
    m = torch.tensor([[0, 1, 1, 0, 1, 1]])
    want = [1.0, 2.0, 3.0, 8.0, 16.0, 24.0]  # two runs averaged apart; tokens outside keep their value
    assert span_mean(h, m)[0, :, 0].tolist() == want


def test_values_equal_on_left_and_right_padding(qnet):
    pairs = [encode_pair(qnet.tokenizer, _state(), c, 512) for c in CANDS]
    enc, masks = [p[0] for p in pairs], [p[1] for p in pairs]
    r_ids, r_att = pad(enc, qnet.tokenizer.pad_token_id, "right")
    l_ids, l_att = pad(enc, qnet.tokenizer.pad_token_id, "left")
    r_am, l_am = pad(masks, 0, "right")[0], pad(masks, 0, "left")[0]
    with torch.no_grad():
        vr, vl = qnet.values(r_ids, r_att, r_am), qnet.values(l_ids, l_att, l_am)
        solo = torch.stack([qnet.values(torch.tensor([e]), torch.ones(1, len(e), dtype=torch.long),
                                        torch.tensor([m]))[0] for e, m in zip(enc, masks)])
    torch.testing.assert_close(vr, vl, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(vr, solo, atol=1e-5, rtol=1e-4)


def test_batched_shared_prefix_scoring_equals_one_by_one(qnet):
    b = Budget()
    batched = qnet.score(_state(), CANDS, b)
    one = [qnet.score(_state(), [c], share_prefix=False)[0] for c in CANDS]
    assert batched == pytest.approx(one, abs=1e-4)
    padded = qnet.score(_state(), CANDS, share_prefix=False)
    assert padded == pytest.approx(one, abs=1e-4)
    # the shared prefix is counted once
    enc = [encode_pair(qnet.tokenizer, _state(), c, 512)[0] for c in CANDS]
    assert b.qnet_calls == 1 and b.qnet_tokens < sum(len(e) for e in enc)


def test_action_mask_covers_the_candidate_only(qnet):
    ids, mask = encode_pair(qnet.tokenizer, _state(), "Action: go to outside", 512)
    text = qnet.tokenizer.decode([t for t, m in zip(ids, mask) if m])
    assert text == "Action: go to outside" + qnet.tokenizer.eos_token
    assert mask[-1] == 1  # the sequence ends with the candidate


def test_losses_and_batch_training_reduce_error(qnet):
    state = _state()
    from qlass_lib.method.qnet_data import _example, _segments, batch_of, predict
    exs = []
    for i, c in enumerate(CANDS * 3):
        ids, am = encode_pair(qnet.tokenizer, state, c, 512)
        y = [0.9, 0.1, 0.6, 0.0][i % 4]
        exs.append(_example(ids, [(s, e, y) for s, e in _segments(am)], target=y, task="t", parent=0, node=i, depth=1))
    b = batch_of(exs[:4], qnet.tokenizer.pad_token_id, torch.device("cpu"))
    assert qnet.loss(b, "per_token").item() > 0 and qnet.loss(b, "last_token").item() > 0
    before = evaluate_qnet(predict(qnet, exs[:4]), exs[:4])["mse"]
    train_qnet(qnet, exs, [], QNetConfig(epochs=40, batch_size=4, learning_rate=3e-3, backbone_lr_scale=1.0,
                                        max_minutes=60.0))
    after = evaluate_qnet(predict(qnet, exs[:4]), exs[:4])
    assert after["mse"] < before / 4
    assert after["sibling_accuracy"] == 1.0 and after["sibling_random_baseline"] == 0.25


def test_save_load_round_trip(qnet, tiny_tok, tmp_path):
    with torch.no_grad():
        for p in qnet.head.parameters():
            p.add_(0.01)
    want = qnet.score(_state(), CANDS)
    out = qnet.save(tmp_path / "q", str(tiny_tok[1]), {"target": "q"})
    assert (out / "value_head.safetensors").is_file() and (out / "model.safetensors").is_file()
    back = load_qnet(out, qnet.model_cfg)
    assert back.pool == qnet.pool
    assert back.score(_state(), CANDS) == pytest.approx(want, abs=1e-5)


def test_evaluate_qnet_by_hand():
    import numpy as np
    exs = [{"task": "a", "parent": 0, "target": t} for t in (1.0, 0.0, 0.5)] + \
          [{"task": "b", "parent": 0, "target": t} for t in (0.2, 0.8)]
    pred = np.array([0.9, 0.1, 0.3, 0.7, 0.1])
    m = evaluate_qnet(pred, exs)
    assert m["sibling_groups"] == 2 and m["sibling_accuracy"] == 0.5
    assert m["sibling_random_baseline"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert m["mse"] == pytest.approx(np.mean((pred - [1, 0, 0.5, 0.2, 0.8]) ** 2))
    # two groups, hits 1 and 0: the bootstrap means are 0, 0.5 or 1, so the 95% interval spans [0, 1]
    assert (m["sibling_accuracy_low"], m["sibling_accuracy_high"]) == (0.0, 1.0)
    assert m["sibling_gain"] == pytest.approx(0.5 - m["sibling_random_baseline"])
    flat = evaluate_qnet(np.full(5, 0.4), exs)  # a constant QNet: ties share the credit = the random baseline
    assert flat["sibling_accuracy"] == pytest.approx(flat["sibling_random_baseline"])
    assert flat["sibling_gain"] == pytest.approx(0.0) and flat["sibling_gain_low"] == pytest.approx(0.0)
    assert flat["sibling_gain_high"] == pytest.approx(0.0)
    none = evaluate_qnet(np.zeros(2), exs[3:4] + [{"task": "c", "parent": 0, "target": 0.2}])
    assert none["sibling_groups"] == 0 and all(np.isnan(none[k]) for k in ("sibling_accuracy", "sibling_gain_low"))


def export_two_trees(out_dir) -> None:
    """Stage 03's files (per node and packed by path) for two copies of the hand-built test tree, all training."""
    from qlass_lib.method import qvalues
    from test_qvalues import _tree
    trees = []
    for v in range(2):
        t = _tree()
        t.task = t.task.__class__("t", v)
        trees.append(t)
    qvalues.compute(trees, 0.9, "tree")
    qvalues.export_dataset(trees, "scienceworld", out_dir, val_fraction=0.0, seed=0)


def test_path_packing_sees_the_same_context_as_per_node_examples(qnet, tmp_path):
    """Every node is labeled once across paths, with the target of its node, and the value read at the end
    of its turn inside a packed path equals the value of its own (state, candidate) example."""
    from qlass_lib.method.qnet_data import load_examples, load_path_examples
    export_two_trees(tmp_path)
    per_node = {(e["task"], e["node"]): e for e in load_examples(qnet, tmp_path / "qnet_train.jsonl")}
    packed = load_path_examples(qnet, tmp_path / "qnet_paths_train.jsonl")
    labeled = [(e["task"], n) for e in packed for n in e["nodes"]]
    assert sorted(labeled) == sorted(per_node)  # each node exactly once
    with torch.no_grad():
        for e in packed:
            v = qnet.forward(torch.tensor([e["ids"]]), torch.ones(1, len(e["ids"]), dtype=torch.long),
                             torch.tensor([e["action_mask"]]))[0]
            ends = [i for i, m in enumerate(e["last_mask"]) if m]
            for node, i in zip(e["nodes"], ends):
                ref = per_node[(e["task"], node)]
                assert e["target_tok"][i] == pytest.approx(ref["target"])
                solo = qnet.values(torch.tensor([ref["ids"]]), torch.ones(1, len(ref["ids"]), dtype=torch.long),
                                   torch.tensor([ref["action_mask"]]))[0]
                assert float(v[i]) == pytest.approx(float(solo), abs=1e-4)
    from qlass_lib.method.qnet_data import node_records, predict, predict_paths
    batched = predict_paths(qnet, packed, batch_size=3)  # padded batches of paths: the same values
    nodes = node_records(tmp_path / "qnet_train.jsonl")
    assert {(n["task"], n["node"]) for n in nodes} == set(batched)
    examples = [per_node[(n["task"], n["node"])] for n in nodes]
    assert [batched[(n["task"], n["node"])] for n in nodes] == pytest.approx(list(predict(qnet, examples)), abs=1e-4)


# A small fixed set of sibling groups: states (rooms) differ, each group offers 3 of 6 actions whose values are
# fixed. Training rooms and held-out rooms are disjoint, and so are most candidate combinations.
VALUES = {"take the key": 1.0, "open the door": 0.7, "look around": 0.3, "go back": 0.3, "sit down": 0.0,
          "eat the key": 0.0}
ROOMS = ["kitchen", "hallway", "garden", "cellar", "attic", "library", "bathroom", "workshop"]


def _groups(tok, rooms, seed):
    import random
    from qlass_lib.method.qnet_data import _example, _segments
    exs, rng = [], random.Random(seed)
    for room in rooms:
        for rep in range(3):
            state = prompts.initial_state("scripted", "Leave the house.", f"You are in the {room}. A key lies here.")
            for k, a in enumerate(rng.sample(sorted(VALUES), 3)):
                ids, am = encode_pair(tok, state, f"Action: {a}", 256)
                y = VALUES[a]
                exs.append(_example(ids, [(s, e, y) for s, e in _segments(am)][-1:], target=y, task=f"{room}{rep}",
                                    parent=0, node=k, depth=1))
    return exs


def _ranking_setup(tmp_path_factory, name, pool="last"):
    """A fresh seeded tiny QNet, and the training and held-out sibling groups."""
    from qlass_lib.core.config import TinyModelConfig
    from qlass_lib.models.loading import build_tiny, load_model, load_tokenizer
    corpus = [f"You are in the {r}. Action: {a}" for r in ROOMS for a in VALUES] * 3
    d = build_tiny(tmp_path_factory.mktemp(name), corpus,
                   TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=300))
    cfg = ModelConfig(device="cpu", bf16=False)
    tok = load_tokenizer(str(d), cfg)
    torch.manual_seed(0)
    q = QNet(load_model(str(d), cfg, train=True), tok, cfg, 256, pool)
    return q, _groups(tok, ROOMS[:5], 0), _groups(tok, ROOMS[5:], 1)


@pytest.mark.parametrize("loss,pool", [("last_token", "last"), ("per_token", "last"), ("last_token", "mean")])
def test_qnet_trained_on_fixed_groups_beats_random_siblings_on_held_out_ones(tmp_path_factory, loss, pool):
    """Fails when QNet training (head init, warm-up, loss masks, value read-out, checkpoint selection) does
    not learn to rank: on held-out rooms the QNet must pick the best sibling far more often than chance and
    explain most of the target variance on its own training groups."""
    q, train, held = _ranking_setup(tmp_path_factory, "qrank", pool)
    res = train_qnet(q, train, held, QNetConfig(epochs=30, batch_size=9, learning_rate=1e-3, backbone_lr_scale=1.0,
                                                warmup_steps=5, eval_every=10, loss=loss, select="last"))
    assert res["steps"] == 150 and res["stopped"] == "epochs" and res["selected_step"] == 150
    from qlass_lib.method.qnet_data import predict
    m_held, m_train = evaluate_qnet(predict(q, held), held), evaluate_qnet(predict(q, train), train)
    assert m_held["sibling_groups"] == 9 and m_held["sibling_random_baseline"] < 0.4
    assert m_held["sibling_accuracy"] >= m_held["sibling_random_baseline"] + 0.4
    assert m_train["r2"] > 0.6


def test_checkpoint_selection_restores_the_best_validation_step(tmp_path_factory):
    q, train, held = _ranking_setup(tmp_path_factory, "qsel")
    res = train_qnet(q, train, held, QNetConfig(epochs=8, batch_size=9, learning_rate=1e-3, backbone_lr_scale=1.0,
                                                warmup_steps=5, eval_every=5, loss="last_token", select="val_mse"))
    from qlass_lib.method.qnet_data import predict
    checks = [h for h in res["history"] if "val_mse" in h]
    best = min(checks, key=lambda h: h["val_mse"])
    assert res["selected_step"] == best["step"] and len(checks) >= 8
    assert evaluate_qnet(predict(q, held), held)["mse"] == pytest.approx(best["val_mse"], abs=1e-6)


@pytest.mark.parametrize("pool", ["last", "mean"])
def test_frozen_backbone_trains_the_head_on_cached_features(tmp_path_factory, pool):
    """backbone_lr_scale=0 + last-token loss: features computed once; the head trained on them gives the same
    values as the full model's read-out, and the backbone is untouched."""
    from qlass_lib.method.qnet_train import last_token_features, predict
    q, train, held = _ranking_setup(tmp_path_factory, "qfrozen", pool)
    before = {k: v.clone() for k, v in q.lm.state_dict().items()}
    res = train_qnet(q, train, held, QNetConfig(epochs=10, batch_size=9, learning_rate=1e-3, backbone_lr_scale=0.0,
                                                warmup_steps=5, eval_every=10, loss="last_token", select="last"))
    assert res["steps"] == 50 and all(torch.equal(before[k], v) for k, v in q.lm.state_dict().items())
    feats, ys, rows = last_token_features(q, held)
    with torch.no_grad():
        from_features = q.head(feats).squeeze(-1).numpy()
    assert [len(r) for r in rows] == [1] * len(held)
    assert predict(q, held) == pytest.approx(from_features[[r[0] for r in rows]], abs=1e-5)
    checks = [h for h in res["history"] if "val_mse" in h]
    # the validation checks score the cached features in the examples' own order: the same as predict
    assert checks[-1]["val_mse"] == pytest.approx(evaluate_qnet(predict(q, held), held)["mse"], abs=1e-6)
    assert checks[-1]["val_mse"] < checks[0]["val_mse"]  # the head learned something on its cached features


def test_a_qnet_from_a_lora_policy_reloads_with_the_same_scores(tiny_tok, tmp_path):
    """The QNet fine-tunes the policy's LoRA adapter further; its saved adapter sits on the policy's base model
    (reloading it on top of the policy would apply the policy's adapter twice)."""
    import json

    from qlass_lib.models.loading import load_model, save_policy
    from qlass_lib.method.qnet import from_policy
    tok, path = tiny_tok
    cfg = ModelConfig(device="cpu", bf16=False, lora_r=4, lora_alpha=8)
    torch.manual_seed(0)
    policy = load_model(str(path), cfg, train=True)
    with torch.no_grad():  # a trained adapter: LoRA's B starts at zero, which would hide a doubled adapter
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    save_policy(policy, tok, tmp_path / "policy", str(path))
    q = from_policy(tmp_path / "policy", cfg, max_length=512)
    want = q.score(_state(), CANDS)
    out = q.save(tmp_path / "q", str(tmp_path / "policy"))
    assert json.loads((out / "qlass_base.json").read_text()) == {"base_model": str(path), "adapter": True}
    assert load_qnet(out, cfg).score(_state(), CANDS) == pytest.approx(want, abs=1e-5)


def test_scored_tokens_count_what_runs_through_the_model(tiny_tok):
    """The budget charges the QNet the prefix tokens its KV cache did not hold plus each candidate's suffix."""
    from qlass_lib.models.loading import load_model
    tok, path = tiny_tok
    cfg = ModelConfig(device="cpu", bf16=False, kv_cache=True)
    q = QNet(load_model(str(path), cfg), tok, cfg, max_length=512)
    s1 = _state()
    s2 = prompts.extend(s1, "Action: go to outside", "You move to the outside.")
    cands = ["Action: look around", "Action: open door"]
    b = Budget()
    counts = []
    for s in (s1, s2):
        before_tokens, before_computed = b.qnet_tokens, q.prefix.computed_tokens
        q.score(s, cands, b)
        P = len(q.prefix.ids)
        enc = [encode_pair(tok, s, c, 512)[0] for c in cands]
        new_prefix = q.prefix.computed_tokens - before_computed
        assert b.qnet_tokens - before_tokens == new_prefix + sum(len(e) - P for e in enc)
        counts.append((new_prefix, P))
    assert counts[0][0] == counts[0][1]  # first step: the whole prefix
    assert counts[1][0] == counts[1][1] - counts[0][1] > 0  # second step: only what the state added
