import pytest

from qlass_lib.method import qvalues
from qlass_lib.envs import TaskRef
from qlass_lib.method.tree import Node, Tree


def _tree(leaf_scores=(0.8, 0.0, 0.5), rollout=(0.8, 0.5, 0.0, 0.5)):
    """root -> a (leaf), root -> b -> {c (leaf), d (leaf)}"""
    a, c, d = leaf_scores
    n = [Node(0, None, 0, None, None, "start", 0, 0, False, "root", 1.0, children=[1, 2]),
         Node(1, 0, 1, "Action: a", "a", "o", a, a, True, "policy", rollout[0]),
         Node(2, 0, 1, "Action: b", "b", "o", 0, 0, False, "policy", rollout[1], children=[3, 4]),
         Node(3, 2, 2, "Action: c", "c", "o", c, c, True, "policy", rollout[2]),
         Node(4, 2, 2, "Action: d", "d", "o", d, d, True, "policy", rollout[3])]
    return Tree(TaskRef("t", 1), "task", n)


def test_bellman_propagation_by_hand():
    t = _tree()
    qvalues.propagate(t, 0.9)
    q = [n.q for n in t.nodes]
    assert q == pytest.approx([0.72, 0.8, 0.45, 0.0, 0.5])


def test_gamma_is_a_parameter():
    t = _tree()
    qvalues.propagate(t, 0.5)
    assert t.nodes[2].q == pytest.approx(0.25) and t.nodes[0].q == pytest.approx(0.4)


def test_tree_minmax_normalization_by_hand():
    t = _tree()
    info = qvalues.compute([t], 0.9, "tree")
    # non-root values {0.8, 0.45, 0, 0.5}: min 0, max 0.8
    assert [n.q_norm for n in t.nodes[1:]] == pytest.approx([1.0, 0.5625, 0.0, 0.625])
    assert info["degenerate_trees"] == 0 and t.stats["degenerate"] is False


def test_degenerate_tree_is_flagged_and_counted():
    t = _tree(leaf_scores=(0.0, 0.0, 0.0))
    ok = _tree()
    info = qvalues.compute([t, ok], 0.9, "tree")
    assert info["degenerate_trees"] == 1 and t.stats["degenerate"] is True
    assert all(n.q_norm == 0.0 for n in t.nodes)  # raw Q kept (all zero), not a silent 0/0


def test_dataset_normalization_spans_trees():
    t1, t2 = _tree(), _tree(leaf_scores=(0.4, 0.0, 0.2))
    qvalues.compute([t1, t2], 0.9, "dataset")
    # global non-root min 0, max 0.8
    assert t1.nodes[1].q_norm == pytest.approx(1.0)
    assert t2.nodes[1].q_norm == pytest.approx(0.5)
    assert t2.nodes[2].q_norm == pytest.approx(0.9 * 0.2 / 0.8)


def test_ablation_targets_by_hand():
    t = _tree()
    avg = qvalues.avg_reward(t)
    assert avg[1] == pytest.approx(0.8) and avg[2] == pytest.approx(0.25) and avg[0] == pytest.approx(1.3 / 3)
    out = qvalues.outcome(t)
    assert out == {0: 1.0, 1: 0.8, 2: 0.5, 3: 0.0, 4: 0.5}


def test_export_dataset_splits_by_task(tmp_path):
    import json
    trees = []
    for v in range(5):
        t = _tree()
        t.task = TaskRef("t", v)
        trees.append(t)
    qvalues.compute(trees, 0.9, "tree")
    s = qvalues.export_dataset(trees, "scripted", tmp_path, val_fraction=0.4, seed=0)
    assert s["train_examples"] + s["val_examples"] == 5 * 4 and len(s["val_tasks"]) == 2
    tr = [json.loads(l) for l in (tmp_path / "qnet_train.jsonl").read_text().splitlines()]
    va = [json.loads(l) for l in (tmp_path / "qnet_val.jsonl").read_text().splitlines()]
    assert not {r["task"] for r in tr} & {r["task"] for r in va}
    r = next(r for r in tr if r["node"] == 3)
    assert r["action_text"] == "Action: c" and r["targets"]["q"] == pytest.approx(0.0)
    assert r["targets"]["avg_reward"] == 0.0 and r["targets"]["outcome"] == 0.0
    # the state is the prompt at the parent (b): first message + b's turn + its observation
    assert [m["role"] for m in r["state"]] == ["user", "assistant", "user"]
    assert r["state"][1]["content"] == "Action: b"


def test_export_can_drop_degenerate(tmp_path):
    t, ok = _tree(leaf_scores=(0, 0, 0)), _tree()
    ok.task = TaskRef("t", 2)
    qvalues.compute([t, ok], 0.9, "tree")
    s = qvalues.export_dataset([t, ok], "scripted", tmp_path, 0.0, 0, degenerate="drop")
    assert s["degenerate_trees_dropped"] == 1 and s["train_examples"] == 4
