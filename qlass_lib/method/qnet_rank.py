"""An optional sibling-ranking term for QNet training (``qnet.rank_weight``; off by default).

The paper trains the QNet with MSE alone.  On a small tree set the differences *between siblings* (what search
asks the QNet to rank) carry a small share of the targets' variance, so MSE is mostly spent on where in an episode
a state is.  This term adds, for every pair of siblings in a batch whose targets differ, the logistic loss of
ranking them in the wrong order: ``softplus(-(v_hi - v_lo) / temperature)``.  Batches are then built tree by tree
(paths in depth-first order) so that siblings meet in one batch.
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F


def tree_batches(exs: list[dict], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Batches that keep each tree's examples together: trees in a shuffled order, a tree's examples in
    depth-first order of their nodes (siblings' subtrees are adjacent), a tree larger than ``batch_size``
    cut into consecutive batches; several small trees share a batch."""
    by_task: dict[str, list[int]] = {}
    for i, e in enumerate(exs):
        by_task.setdefault(e["task"], []).append(i)
    tasks = sorted(by_task)
    rng.shuffle(tasks)
    batches, cur = [], []
    for t in tasks:
        idx = sorted(by_task[t], key=lambda i: _order(exs[i]))
        if cur and len(cur) + len(idx) > batch_size:
            batches.append(cur)
            cur = []
        for i in idx:
            cur.append(i)
            if len(cur) == batch_size:
                batches.append(cur)
                cur = []
    if cur:
        batches.append(cur)
    rng.shuffle(batches)
    return batches


def _order(e: dict) -> tuple:
    """Depth-first position of an example in its tree: its full path, or (parent, node) for a per-node one."""
    return tuple(e["path_nodes"]) if "path_nodes" in e else (e["parent"], e["node"])


def segment_keys(exs: list[dict]) -> list[tuple]:
    """(task, parent) of every labeled segment of ``exs``, in the order of their last-token positions."""
    keys = []
    for e in exs:
        parents = e.get("seg_parents")
        if parents is None:
            parents = [e["parent"]]
        keys += [(e["task"], p) for p in parents]
    return keys


def sibling_rank_loss(values: torch.Tensor, targets: torch.Tensor, keys: list[tuple],
                      temperature: float = 0.1) -> tuple[torch.Tensor, int]:
    """Mean logistic loss over the pairs of segments with the same (task, parent) and different targets, and
    the number of pairs (0 pairs: a zero loss that still carries the graph)."""
    n = len(keys)
    if n != values.shape[0]:
        raise ValueError(f"{values.shape[0]} values for {n} segment keys")
    ids = {k: j for j, k in enumerate(dict.fromkeys(keys))}
    g = torch.tensor([ids[k] for k in keys], device=values.device)
    same = g[:, None] == g[None, :]
    higher = (targets[:, None] - targets[None, :]) > 1e-9  # [i, j]: i's target above j's
    pairs = same & higher
    count = int(pairs.sum())
    if count == 0:
        return values.sum() * 0.0, 0
    margin = (values[:, None] - values[None, :])[pairs] / temperature
    return F.softplus(-margin).mean(), count
