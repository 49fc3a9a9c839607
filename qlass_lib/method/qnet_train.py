"""Training of the QNet on the exported (state, candidate, target) dataset (its metrics: :mod:`qlass_lib.method.qnet_metrics`)."""
from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch

from qlass_lib.models.loading import model_device
from qlass_lib.method.qnet import QNet
from qlass_lib.method.qnet_data import batch_of, load_examples, load_path_examples, node_records, predict, predict_paths
from qlass_lib.method.qnet_metrics import evaluate_qnet, informative_examples
from qlass_lib.method.qnet_rank import segment_keys, sibling_rank_loss, tree_batches


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
        b = batch_of([exs[j] for j in chunk], qnet.tokenizer.pad_token_id, device)
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
    (:func:`qlass_lib.models.training.train_loop`); per-token or last-token MSE, plus ``rank_weight`` times the
    sibling-ranking term of :mod:`qlass_lib.method.qnet_rank` when that weight is > 0.  Stops at ``max_steps`` or after
    ``epochs`` (``max_minutes`` is only a guard).  Every ``eval_every`` steps the validation trees are scored
    and, with ``select`` other than ``last``, the best checkpoint (sibling accuracy, then MSE) is kept and
    restored at the end."""
    from qlass_lib.models.training import LoopState, Schedule, train_loop
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
            batch = batch_of([train[j] for j in b], qnet.tokenizer.pad_token_id, device)
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
    from qlass_lib.core.artifacts import read_json, write_json
    from qlass_lib.method.qnet import from_policy, load_qnet
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
