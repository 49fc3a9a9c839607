"""Training of the QNet on the exported (state, candidate, target) dataset (its metrics: :mod:`qlass_lib.qnet_metrics`)."""
from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch

from .artifacts import read_jsonl
from .models import model_device
from .qnet import QNet, encode_pair, pad
from .qnet_metrics import evaluate_qnet, informative_examples
from .qnet_rank import segment_keys, sibling_rank_loss, tree_batches


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
    """Training examples packed by root-to-leaf path (see :func:`qlass_lib.qvalues.path_records`).

    A path longer than ``max_length`` keeps the labeled turns that fit; each turn beyond is encoded on its
    own (with the usual left truncation), so every labeled node is trained on exactly once.
    """
    from . import prompts
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
        b = _batch([path_exs[j] for j in chunk], qnet.tokenizer.pad_token_id, device)
        v = qnet.forward(b["input_ids"], b["attention_mask"], b["action_mask"])
        for r, j in enumerate(chunk):
            pos = b["last_mask"][r].nonzero().flatten().tolist()
            for node, p in zip(path_exs[j]["nodes"], pos):
                out[(path_exs[j]["task"], node)] = float(v[r, p])
    return out


def _batch(exs: list[dict], pad_id: int, device) -> dict:
    ids, att = pad([e["ids"] for e in exs], pad_id, "right")
    am, _ = pad([e["action_mask"] for e in exs], 0, "right")
    lm, _ = pad([e["last_mask"] for e in exs], 0, "right")
    n = ids.shape[1]
    tt = torch.tensor([e["target_tok"] + [0.0] * (n - len(e["target_tok"])) for e in exs])
    return {"input_ids": ids.to(device), "attention_mask": att.to(device), "action_mask": am.to(device),
            "last_mask": lm.to(device), "target_tok": tt.to(device)}


@torch.no_grad()
def predict(qnet: QNet, exs: list[dict], batch_size: int = 16) -> np.ndarray:
    qnet.eval()
    device = model_device(qnet.lm)
    out = []
    order = sorted(range(len(exs)), key=lambda i: len(exs[i]["ids"]))
    for i in range(0, len(order), batch_size):
        b = _batch([exs[j] for j in order[i:i + batch_size]], qnet.tokenizer.pad_token_id, device)
        out += qnet.values(b["input_ids"], b["attention_mask"], b["action_mask"]).tolist()
    pred = np.empty(len(exs))
    pred[order] = out
    return pred


def _selection_score(metrics: dict, kind: str) -> tuple:
    """Higher is better; ties on sibling accuracy are broken by validation MSE."""
    acc = metrics["sibling_accuracy"]
    acc = -1.0 if acc != acc else acc  # nan: no sibling group with different targets
    return (acc, -metrics["mse"]) if kind == "sibling_accuracy" else (-metrics["mse"],)


@torch.no_grad()
def last_token_features(qnet: QNet, exs: list[dict], batch_size: int = 16):
    """The head's input at the last token of every labeled action (its hidden state, or the action's mean
    hidden state with pool mean), their targets, and each example's rows: with a frozen backbone these never
    change, so they are computed once and only the head trains."""
    qnet.eval()
    device = model_device(qnet.lm)
    feats, ys, rows = [], [], [[] for _ in exs]
    order = sorted(range(len(exs)), key=lambda i: len(exs[i]["ids"]))
    for i in range(0, len(order), batch_size):
        chunk = order[i:i + batch_size]
        b = _batch([exs[j] for j in chunk], qnet.tokenizer.pad_token_id, device)
        h, _ = qnet.hidden(b["input_ids"], b["attention_mask"])
        h = qnet.features(h, b["action_mask"])
        for r, j in enumerate(chunk):
            for pos in b["last_mask"][r].nonzero().flatten().tolist():
                rows[j].append(len(feats))
                feats.append(h[r, pos].float())
                ys.append(b["target_tok"][r, pos])
    return torch.stack(feats), torch.stack(ys).float(), rows


def init_head(qnet: QNet, mean_target: float) -> None:
    """Start the value head at the mean target: zero last-layer weights, bias = mean (no early loss spike)."""
    last = qnet.head[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(float(mean_target))


def train_qnet(qnet: QNet, train: list[dict], val: list[dict], cfg, seed: int = 0) -> dict:
    """AdamW on head (lr) and backbone (lr * backbone_lr_scale) with warm-up and cosine decay
    (:func:`qlass_lib.training.train_loop`); per-token or last-token MSE, plus ``rank_weight`` times the
    sibling-ranking term of :mod:`qlass_lib.qnet_rank` when that weight is > 0.  Stops at ``max_steps`` or after
    ``epochs`` (``max_minutes`` is only a guard).  Every ``eval_every`` steps the validation trees are scored
    and, with ``select`` other than ``last``, the best checkpoint (sibling accuracy, then MSE) is kept and
    restored at the end."""
    from .training import LoopState, Schedule, train_loop
    device = model_device(qnet.lm)
    backbone = [p for p in qnet.lm.parameters() if p.requires_grad]
    groups = [{"params": list(qnet.head.parameters()), "lr": cfg.learning_rate, "base_lr": cfg.learning_rate}]
    if cfg.backbone_lr_scale > 0:
        lr = cfg.learning_rate * cfg.backbone_lr_scale
        groups.append({"params": backbone, "lr": lr, "base_lr": lr})
    else:
        for p in backbone:
            p.requires_grad_(False)
    if train:
        init_head(qnet, float(np.mean([y for e in train for y, m in zip(e["target_tok"], e["action_mask"]) if m])))
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    rng = random.Random(seed)
    rank = cfg.rank_weight > 0
    per_epoch = (len(tree_batches(train, cfg.batch_size, random.Random(seed))) if rank else
                 sum(-(-len(c) // cfg.batch_size) for c in _chunks(list(range(len(train))), cfg.batch_size)))
    total = min(cfg.max_steps or 10**9, max(1, per_epoch * cfg.epochs))
    best, best_score, best_step = None, None, 0
    trainable = {n for n, p in qnet.named_parameters() if p.requires_grad}  # the only weights training changes
    # selecting on sibling accuracy needs only the sibling groups whose targets differ: score just those
    watch = informative_examples(val) if cfg.select == "sibling_accuracy" else val
    watch = watch or val
    t0 = time.perf_counter()
    # a frozen backbone with the last-token loss: features once, then the head trains on them (fast)
    cached = cfg.backbone_lr_scale == 0 and cfg.loss == "last_token" and bool(train)
    # tokens run through the backbone (forward) and back through it (backward), for the run's cost accounting
    tokens = {"forward_tokens": 0, "backward_tokens": 0}
    watch_tokens = sum(len(e["ids"]) for e in watch)
    if cached:
        feats, ys, rows = last_token_features(qnet, train, cfg.batch_size)
        tokens["forward_tokens"] += sum(len(e["ids"]) for e in train)
        if watch:  # features come in length order: put them back in the order of the watched examples
            wf, _, w_rows = last_token_features(qnet, watch, cfg.batch_size)
            watch_feats = wf[[r[-1] for r in w_rows]]
            tokens["forward_tokens"] += watch_tokens

    def check(step: int) -> list[dict]:
        """Score the watched validation examples; keep the best checkpoint; the history entry (none without
        validation data)."""
        nonlocal best, best_score, best_step
        if not watch:
            return []
        if cached:
            with torch.no_grad():
                pred = qnet.head(watch_feats).squeeze(-1).cpu().numpy()
        else:
            pred = predict(qnet, watch, cfg.batch_size)
            tokens["forward_tokens"] += watch_tokens
        m = evaluate_qnet(pred, watch)
        rec = {"step": step, "val_mse": m["mse"], "val_sibling_accuracy": m["sibling_accuracy"],
               "val_spearman": m["spearman"], "val_scored": len(watch), "elapsed_s": time.perf_counter() - t0}
        qnet.train()
        if cfg.select != "last" and (best_score is None or _selection_score(m, cfg.select) > best_score):
            best_score, best_step = _selection_score(m, cfg.select), step
            best = {k: v.detach().clone() for k, v in qnet.state_dict().items() if k in trainable}
        return [rec]

    def epoch_batches(epoch: int) -> list:
        if rank:  # siblings must meet in a batch: tree by tree
            return tree_batches(train, cfg.batch_size, rng)
        idx = list(range(len(train)))
        rng.shuffle(idx)
        # bucket by length inside chunks to limit padding
        chunks = [sorted(c, key=lambda j: len(train[j]["ids"])) for c in _chunks(idx, cfg.batch_size)]
        batches = [c[i:i + cfg.batch_size] for c in chunks for i in range(0, len(c), cfg.batch_size)]
        rng.shuffle(batches)
        return batches

    def loss_fn(b):
        if cached:
            idx = [k for j in b for k in rows[j]]
            v_last, y_last = qnet.head(feats[idx]).squeeze(-1), ys[idx]
            mse = ((v_last - y_last) ** 2).mean()
        else:
            batch = _batch([train[j] for j in b], qnet.tokenizer.pad_token_id, device)
            n = int(batch["attention_mask"].sum())
            tokens["forward_tokens"] += n
            tokens["backward_tokens"] += n if backbone and cfg.backbone_lr_scale > 0 else 0
            v = qnet.forward(batch["input_ids"], batch["attention_mask"], batch["action_mask"])
            mse = qnet.loss(batch, cfg.loss, values=v)
            if rank:  # the labeled actions' last tokens, row by row: the order of segment_keys
                last = batch["last_mask"].bool()
                v_last, y_last = v[last], batch["target_tok"][last]
        if not rank:
            return mse, {}
        rl, pairs = sibling_rank_loss(v_last.float(), y_last.float(), segment_keys([train[j] for j in b]),
                                      cfg.rank_temperature)
        return mse + cfg.rank_weight * rl, {"mse": mse.item(), "rank_loss": rl.item(), "rank_pairs": pairs}

    def after_step(st: LoopState, rec: dict):
        if st.step % cfg.eval_every == 0:
            st.history += check(st.step)
        return None

    history = check(0)  # step 0: the initialized head on the BC backbone
    qnet.train()
    state = train_loop(opt, epoch_batches, loss_fn, Schedule(total, cfg.epochs, cfg.max_steps, cfg.max_minutes,
                                                             cfg.warmup_steps, cfg.warmup_steps, "qnet.max_minutes"),
                       LoopState(history=history), after_step, desc="qnet training", leave=False)
    if state.step % cfg.eval_every:
        state.history += check(state.step)
    if best is not None:
        qnet.load_state_dict(best, strict=False)
    qnet.eval()
    return {"history": state.history, "steps": state.step, "stopped": state.stopped,
            "train_seconds": time.perf_counter() - t0, "train_examples": len(train), "val_examples": len(val),
            "selected_step": best_step if best else state.step, "select": cfg.select, **tokens}


def _chunks(idx: list[int], batch_size: int) -> list[list[int]]:
    return [idx[i:i + batch_size * 8] for i in range(0, len(idx), batch_size * 8)]


def fit_qnet(cfg, policy_dir: str | Path, data_dir: str | Path, out_dir: str | Path, target: str = "q"):
    """Train a QNet on ``target`` (or reload it when already saved); returns (qnet, result, metrics, pred, val)."""
    from .artifacts import read_json, write_json
    from .qnet import from_policy, load_qnet
    out_dir, data_dir = Path(out_dir), Path(data_dir)
    done = out_dir / "result.json"
    if done.is_file() and (out_dir / "value_head.safetensors").is_file():
        qnet = load_qnet(out_dir, cfg.model)
        result = read_json(done)
    else:
        torch.manual_seed(cfg.seed)
        qnet = from_policy(policy_dir, cfg.model, cfg.qnet.max_length, train=True, pool=cfg.qnet.pool)
        paths = data_dir / "qnet_paths_train.jsonl"
        train = (load_path_examples(qnet, paths, target) if paths.is_file()
                 else load_examples(qnet, data_dir / "qnet_train.jsonl", target))
        val = load_examples(qnet, data_dir / "qnet_val.jsonl", target)
        result = train_qnet(qnet, train, val, cfg.qnet, cfg.seed)
        result["target"] = target
        qnet.save(out_dir, str(policy_dir), {"target": target, "loss": cfg.qnet.loss})
        write_json(done, result)
    val = load_examples(qnet, data_dir / "qnet_val.jsonl", target)
    pred = predict(qnet, val, cfg.qnet.batch_size)
    metrics = {"target": target, **evaluate_qnet(pred, val)}
    paths = data_dir / "qnet_paths_train.jsonl"
    if paths.is_file():  # does it fit its own trees? (one forward pass per path)
        train_nodes = node_records(data_dir / "qnet_train.jsonl", target)
        values = predict_paths(qnet, load_path_examples(qnet, paths, target), cfg.qnet.batch_size)
        train_nodes = [n for n in train_nodes if (n["task"], n["node"]) in values]
        train_pred = np.array([values[(n["task"], n["node"])] for n in train_nodes])
    else:
        train_nodes = load_examples(qnet, data_dir / "qnet_train.jsonl", target)
        train_pred = predict(qnet, train_nodes, cfg.qnet.batch_size)
    fit = evaluate_qnet(train_pred, train_nodes)
    metrics.update({f"train_{k}": fit[k] for k in ("mse", "target_variance", "r2", "spearman", "sibling_accuracy",
                                                   "sibling_random_baseline", "sibling_gain_low", "sibling_gain_high")})
    metrics.update(steps=result["steps"], selected_step=result.get("selected_step"), select=result.get("select"),
                   stopped=result["stopped"])
    write_json(out_dir / "metrics.json", metrics)
    return qnet, result, metrics, pred, val
