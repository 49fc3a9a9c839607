"""The optional sibling-ranking term of QNet training (qlass_lib.method.qnet_rank, qnet.rank_weight)."""
import math
import random

import pytest
import torch

from qlass_lib.core.config import QNetConfig
from qlass_lib.method.qnet_metrics import evaluate_qnet
from qlass_lib.method.qnet_rank import segment_keys, sibling_rank_loss, tree_batches
from qlass_lib.method.qnet_data import predict
from qlass_lib.method.qnet_train import train_qnet
from test_qnet import _ranking_setup, export_two_trees


def test_rank_loss_by_hand():
    """Only pairs under one parent with different targets count: (a over b) here; c is another parent's, d ties b."""
    keys = [("t", 0), ("t", 0), ("t", 1), ("t", 0), ("u", 0)]
    targets = torch.tensor([1.0, 0.0, 0.5, 0.0, 0.2])
    values = torch.tensor([0.2, 0.5, 0.1, 0.4, 0.9], requires_grad=True)
    loss, pairs = sibling_rank_loss(values, targets, keys, temperature=0.1)
    # pairs: (0 over 1), (0 over 3); 'u' is another task, 2 another parent
    assert pairs == 2
    expected = (math.log1p(math.exp(3.0)) + math.log1p(math.exp(2.0))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    g = values.grad.tolist()
    assert g[0] < 0 and g[1] > 0 and g[3] > 0  # descent raises the better sibling, lowers the worse ones
    assert g[2] == 0 and g[4] == 0


def test_rank_loss_without_pairs_is_zero_and_keeps_the_graph():
    values = torch.tensor([0.3, 0.3], requires_grad=True)
    loss, pairs = sibling_rank_loss(values, torch.tensor([0.5, 0.5]), [("t", 0), ("t", 0)])
    assert pairs == 0 and loss.item() == 0.0
    loss.backward()
    assert values.grad.tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="segment keys"):
        sibling_rank_loss(values, torch.tensor([0.5, 0.5]), [("t", 0)])


def test_tree_batches_keep_small_trees_whole_and_cover_every_example_once():
    exs = []
    for t, n in [("a", 3), ("b", 5), ("c", 9), ("d", 2)]:
        for k in range(n):
            exs.append({"task": t, "parent": k // 2, "node": k + 1})
    random.Random(1).shuffle(exs)
    batches = tree_batches(exs, 6, random.Random(0))
    assert sorted(i for b in batches for i in b) == list(range(len(exs)))
    assert all(len(b) <= 6 for b in batches)
    for t in "abd":  # trees no larger than a batch are never split
        assert sum(any(exs[i]["task"] == t for i in b) for b in batches) == 1
    c = [i for b in batches for i in b if exs[i]["task"] == "c"]  # a large tree in depth-first order
    assert [(exs[i]["parent"], exs[i]["node"]) for i in c] == sorted((exs[i]["parent"], exs[i]["node"]) for i in c)
    assert tree_batches(exs, 6, random.Random(0)) == batches  # seeded


def test_path_examples_know_each_segment_s_parent(tiny_tok, tmp_path):
    """The parent of every labeled turn of a packed path is the node record's parent (the root is 0)."""
    from qlass_lib.core.config import ModelConfig
    from qlass_lib.models.loading import load_model
    from qlass_lib.method.qnet import QNet
    from qlass_lib.method.qnet_data import load_path_examples, node_records
    export_two_trees(tmp_path)
    tok, path = tiny_tok
    cfg = ModelConfig(device="cpu", bf16=False)
    q = QNet(load_model(str(path), cfg), tok, cfg, max_length=512)
    packed = load_path_examples(q, tmp_path / "qnet_paths_train.jsonl")
    parent = {(n["task"], n["node"]): n["parent"] for n in node_records(tmp_path / "qnet_train.jsonl")}
    keys = segment_keys(packed)
    assert keys == [(e["task"], parent[(e["task"], n)]) for e in packed for n in e["nodes"]]
    assert len(keys) == len(parent) and any(p == 0 for _, p in keys) and any(p != 0 for _, p in keys)


@pytest.mark.parametrize("backbone_lr_scale", [1.0, 0.0])
def test_qnet_with_the_ranking_term_ranks_held_out_siblings(tmp_path_factory, backbone_lr_scale):
    """MSE + ranking on the fixed sibling groups: the term sees sibling pairs in (nearly) every batch, and the
    QNet picks the best held-out sibling far more often than chance (full model, and head on cached features)."""
    q, train, held = _ranking_setup(tmp_path_factory, f"qrankterm{backbone_lr_scale}")
    res = train_qnet(q, train, held, QNetConfig(epochs=30, batch_size=9, learning_rate=1e-3,
                                                backbone_lr_scale=backbone_lr_scale, warmup_steps=5, eval_every=10,
                                                loss="last_token", select="last", rank_weight=1.0))
    steps = [h for h in res["history"] if "rank_pairs" in h]
    assert len(steps) == res["steps"] == 150
    # 15 groups of 3 siblings: batches of 9 hold whole trees, so every batch has each group's differing pairs
    assert all(h["rank_pairs"] >= 6 for h in steps)
    assert steps[-1]["rank_loss"] < steps[0]["rank_loss"]
    m = evaluate_qnet(predict(q, held), held)
    assert m["sibling_groups"] == 9 and m["sibling_accuracy"] >= m["sibling_random_baseline"] + 0.4
