"""The QNet's examples: each exported (state, candidate, target) as one token sequence with its action and
last-token masks (or one sequence per tree path, each node's action a segment of it), batching, and prediction."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from qlass_lib.core.artifacts import read_jsonl
from qlass_lib.method.qnet import QNet
from qlass_lib.text.batching import collate
from qlass_lib.text.examples import encode_pair
from qlass_lib.models.loading import model_device


def _segments(mask: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each run of 1s."""
    out, start = [], None
    for i, m in enumerate(mask + [0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((start, i))
            start = None
    return out


def _example(ids: list[int], segments: list[tuple[int, int, float]], **meta) -> dict:
    """An encoded sequence whose labeled segments carry their targets (per token) and last-token marks."""
    am, lm, tt = [0] * len(ids), [0] * len(ids), [0.0] * len(ids)
    for s, e, y in segments:
        for i in range(s, e):
            am[i], tt[i] = 1, y
        lm[e - 1] = 1
    return {"ids": ids, "action_mask": am, "last_mask": lm, "target_tok": tt, **meta}


def load_examples(qnet: QNet, path: str | Path, target: str = "q") -> list[dict]:
    """One example per (state, candidate) record; ``target`` picks q (normalized), avg_reward or outcome."""
    out = []
    for r in read_jsonl(path):
        ids, amask = encode_pair(qnet.tokenizer, r["state"], r["action_text"], qnet.max_length)
        y = float(r["targets"][target])
        segs = [(s, e, y) for s, e in _segments(amask)][-1:]
        out.append(_example(ids, segs, target=y, task=r["task"], parent=r["parent"], node=r["node"],
                            depth=r["depth"], seg_parents=[r["parent"]]))
    return out


def load_path_examples(qnet: QNet, path: str | Path, target: str = "q") -> list[dict]:
    """Training examples packed by root-to-leaf path (see :func:`qlass_lib.method.qvalues.path_records`).

    A path longer than ``max_length`` keeps the labeled turns that fit; each turn beyond is encoded on its
    own (with the usual left truncation), so every labeled node is trained on exactly once.
    """
    from qlass_lib.text import prompts
    tok, out = qnet.tokenizer, []
    for r in read_jsonl(path):
        msgs = r["messages"]
        text, spans = prompts.assistant_spans(tok, msgs)
        enc = tok(text.rstrip(), return_offsets_mapping=True, add_special_tokens=False)
        ids, offs = enc["input_ids"], enc["offset_mapping"]
        segs, overflow, seg_nodes, seg_parents = [], [], [], []
        path_nodes = [t["node"] for t in r["turns"]]  # a turn's parent is the turn before it (the root, 0, first)
        for k, ((a, b), turn) in enumerate(zip(spans, r["turns"])):
            if not turn["labeled"]:
                continue
            idx = [i for i, (s, e) in enumerate(offs) if a <= s < b and e > s]
            y = float(turn["targets"][target])
            if idx and idx[-1] < qnet.max_length:
                segs.append((idx[0], idx[-1] + 1, y))
                seg_nodes.append(turn["node"])
                seg_parents.append(path_nodes[k - 1] if k else 0)
            else:
                overflow.append((k, y))
        if segs:
            end = max(e for _, e, _ in segs)
            out.append(_example(ids[:end], segs, task=r["task"], path_leaf=r["leaf"], nodes=seg_nodes,
                                seg_parents=seg_parents, path_nodes=path_nodes))
        for k, y in overflow:
            upto = 2 * k + 1  # messages[: upto] is the state of assistant turn k
            ids_k, am = encode_pair(tok, msgs[:upto], msgs[upto]["content"], qnet.max_length)
            s_e = _segments(am)[-1:]
            out.append(_example(ids_k, [(s, e, y) for s, e in s_e], task=r["task"], path_leaf=r["leaf"],
                                nodes=[r["turns"][k]["node"]], seg_parents=[path_nodes[k - 1] if k else 0],
                                path_nodes=path_nodes))
    return out


def node_records(path: str | Path, target: str = "q") -> list[dict]:
    """(task, node, parent, target) of every (state, candidate) record, without tokenizing anything."""
    return [{"task": r["task"], "node": r["node"], "parent": r["parent"], "target": float(r["targets"][target])}
            for r in read_jsonl(path)]


@torch.no_grad()
def predict_paths(qnet: QNet, path_exs: list[dict], batch_size: int = 16) -> dict[tuple, float]:
    """The value of every labeled node of path-packed examples, one forward pass per path: (task, node) -> value.
    The same context as the node's own example (see :func:`load_path_examples`), at a fraction of the cost."""
    qnet.eval()
    device = model_device(qnet.lm)
    out: dict[tuple, float] = {}
    order = sorted(range(len(path_exs)), key=lambda i: len(path_exs[i]["ids"]))
    for i in range(0, len(order), batch_size):
        chunk = order[i:i + batch_size]
        b = batch_of([path_exs[j] for j in chunk], qnet.tokenizer.pad_token_id, device)
        v = qnet.forward(b["input_ids"], b["attention_mask"], b["action_mask"])
        for r, j in enumerate(chunk):
            pos = b["last_mask"][r].nonzero().flatten().tolist()
            for node, p in zip(path_exs[j]["nodes"], pos):
                out[(path_exs[j]["task"], node)] = float(v[r, p])
    return out


def batch_of(exs: list[dict], pad_id: int, device) -> dict:
    """A batch of QNet examples (:func:`qlass_lib.text.batching.collate`): ids, attention, the candidate-token
    mask, the last-token mask and the per-token targets."""
    return collate([{"input_ids": e["ids"], "action_mask": e["action_mask"], "last_mask": e["last_mask"],
                     "target_tok": e["target_tok"]} for e in exs],
                   {"input_ids": pad_id, "action_mask": 0, "last_mask": 0, "target_tok": 0.0}, device)


@torch.no_grad()
def predict(qnet: QNet, exs: list[dict], batch_size: int = 16) -> np.ndarray:
    qnet.eval()
    device = model_device(qnet.lm)
    out = []
    order = sorted(range(len(exs)), key=lambda i: len(exs[i]["ids"]))
    for i in range(0, len(order), batch_size):
        b = batch_of([exs[j] for j in order[i:i + batch_size]], qnet.tokenizer.pad_token_id, device)
        out += qnet.values(b["input_ids"], b["attention_mask"], b["action_mask"]).tolist()
    pred = np.empty(len(exs))
    pred[order] = out
    return pred
