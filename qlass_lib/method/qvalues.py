"""Q values on exploration trees (paper Algorithm 4 / Eq. 4), normalization, ablation targets, QNet dataset.

- Leaf Q = its final reward (the env score when the branch ended); Q(n) = r(n) + gamma * max_c Q(c), with
  r(n) = 0 for inner nodes (rewards arrive at the end of a branch, as in the paper).
- Normalization: min-max within each tree (the official code's choice) or over the whole dataset.  A tree
  whose values are all equal cannot be min-max normalized: it is marked degenerate, counted, and keeps its
  raw Q (already in [0, 1]) unless the caller drops it.
- Ablation targets: ``avg_reward`` (mean final reward of the leaves below a node) and ``outcome`` (the final
  reward of the trajectory that created the node, on every step of it).
"""
from __future__ import annotations

from pathlib import Path

from qlass_lib.core.artifacts import dumps, write_json
from qlass_lib.core.splits import split_ids
from qlass_lib.method.tree import Tree

SCHEMA_VERSION = 1


def propagate(tree: Tree, gamma: float) -> None:
    """Fill ``node.q`` bottom-up."""
    for n in sorted(tree.nodes, key=lambda n: -n.depth):
        if n.children:
            n.q = 0.0 + gamma * max(tree.nodes[c].q for c in n.children)
        else:
            n.q = float(n.score)


def avg_reward(tree: Tree) -> dict[int, float]:
    """Mean final reward of the leaves in each node's subtree."""
    sums: dict[int, tuple[float, int]] = {}
    for n in sorted(tree.nodes, key=lambda n: -n.depth):
        if not n.children:
            sums[n.id] = (float(n.score), 1)
        else:
            s = sum(sums[c][0] for c in n.children)
            k = sum(sums[c][1] for c in n.children)
            sums[n.id] = (s, k)
    return {i: s / k for i, (s, k) in sums.items()}


def outcome(tree: Tree) -> dict[int, float]:
    return {n.id: float(n.rollout_reward) for n in tree.nodes}


def normalize_tree(tree: Tree) -> bool:
    """Min-max normalize the non-root Q values of one tree; returns True when the tree is degenerate."""
    vals = [n.q for n in tree.nodes if n.parent is not None]
    if not vals:
        return True
    lo, hi = min(vals), max(vals)
    degenerate = hi - lo < 1e-12
    for n in tree.nodes:
        n.q_norm = float(n.q) if degenerate else (n.q - lo) / (hi - lo)
    tree.stats["degenerate"] = degenerate
    return degenerate


def normalize_dataset(trees: list[Tree]) -> bool:
    vals = [n.q for t in trees for n in t.nodes if n.parent is not None]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 0.0)
    degenerate = hi - lo < 1e-12
    for t in trees:
        for n in t.nodes:
            n.q_norm = float(n.q) if degenerate else (n.q - lo) / (hi - lo)
        tv = [n.q for n in t.nodes if n.parent is not None]
        t.stats["degenerate"] = not tv or max(tv) - min(tv) < 1e-12
    return degenerate


def compute(trees: list[Tree], gamma: float, normalize: str = "tree") -> dict:
    """Propagate and normalize Q on every tree in place; returns counts."""
    for t in trees:
        propagate(t, gamma)
    if normalize == "tree":
        degenerate = sum(normalize_tree(t) for t in trees)
    elif normalize == "dataset":
        normalize_dataset(trees)
        degenerate = sum(t.stats["degenerate"] for t in trees)
    elif normalize == "none":
        for t in trees:
            for n in t.nodes:
                n.q_norm = n.q
        degenerate = 0
    else:
        raise ValueError(f"unknown normalization {normalize!r}")
    return {"trees": len(trees), "degenerate_trees": int(degenerate), "normalize": normalize, "gamma": gamma}


def path_records(t: Tree, env_name: str, example, avg: dict, outc: dict) -> list[dict]:
    """The same targets packed by root-to-leaf path, for training: one conversation per leaf whose agent
    turns carry their node's targets.  Every node is labeled in exactly one path (the first that reaches it),
    so packing changes the compute, not the weight of any example; a causal model sees at each turn exactly
    the context of the per-node example."""
    seen: set[int] = set()
    out = []
    for leaf in t.leaves():
        path = t.path(leaf.id)[1:]
        turns = []
        for n in path:
            turns.append({"node": n.id, "depth": n.depth, "labeled": n.id not in seen,
                          "targets": {"q": n.q_norm, "q_raw": n.q, "avg_reward": avg[n.id], "outcome": outc[n.id]}})
            seen.add(n.id)
        if not any(x["labeled"] for x in turns):
            continue
        msgs = t.state(leaf.parent, env_name, example) + [{"role": "assistant", "content": (leaf.text or "").strip()}]
        out.append({"schema_version": SCHEMA_VERSION, "task": t.task.id, "leaf": leaf.id, "messages": msgs,
                    "turns": turns})
    return out


def export_dataset(trees: list[Tree], env_name: str, out_dir: str | Path, val_fraction: float, seed: int,
                   example=None, degenerate: str = "keep_raw") -> dict:
    """Write ``qnet_train.jsonl`` / ``qnet_val.jsonl``: one (state, candidate action, targets) per non-root node.

    ``state`` is the prompt at the parent (shared formatter); ``action_text`` is the agent turn; ``targets``
    holds every target kind (q normalized, raw q, avg_reward, outcome) so that ablations reuse one file.
    """
    out_dir = Path(out_dir)
    # at least one validation tree: stage 04 selects its checkpoint on them
    train_ids, val_ids = split_ids((t.task.id for t in trees), val_fraction, seed, min_val=1)
    counts = {"train": 0, "val": 0}
    informative = {"train": 0, "val": 0}  # sibling groups whose q targets differ: what ranking can learn from
    dropped = 0
    files = {k: (out_dir / f"qnet_{k}.jsonl").open("w") for k in counts}
    paths = {k: (out_dir / f"qnet_paths_{k}.jsonl").open("w") for k in counts}
    try:
        for t in trees:
            split = "val" if t.task.id in val_ids else "train"
            if degenerate == "drop" and t.stats.get("degenerate"):
                dropped += 1
                continue
            avg, outc = avg_reward(t), outcome(t)
            for p in t.nodes:
                qs = [t.nodes[c].q_norm for c in p.children]
                if len(qs) > 1 and max(qs) - min(qs) > 1e-9:
                    informative[split] += 1
            for n in t.nodes:
                if n.parent is None:
                    continue
                rec = {"schema_version": SCHEMA_VERSION, "task": t.task.id, "node": n.id, "parent": n.parent,
                       "depth": n.depth, "state": t.state(n.parent, env_name, example),
                       "action_text": n.text or "", "targets": {"q": n.q_norm, "q_raw": n.q, "avg_reward": avg[n.id],
                                                               "outcome": outc[n.id]},
                       "degenerate_tree": bool(t.stats.get("degenerate"))}
                files[split].write(dumps(rec) + "\n")
                counts[split] += 1
            for rec in path_records(t, env_name, example, avg, outc):
                paths[split].write(dumps(rec) + "\n")
    finally:
        for f in list(files.values()) + list(paths.values()):
            f.close()
    summary = {"schema_version": SCHEMA_VERSION, "train_examples": counts["train"], "val_examples": counts["val"],
               "train_informative_sibling_groups": informative["train"],
               "val_informative_sibling_groups": informative["val"], "degenerate_trees_dropped": dropped, "train_tasks": sorted(train_ids), "val_tasks": sorted(val_ids)}
    write_json(out_dir / "qnet_dataset.json", summary)
    return summary
