"""The BC policy's own preference among tree siblings: the reference a QNet has to beat.

Search draws its candidates from the policy, and greedy decoding follows the policy's preference, so a QNet
can only help where it ranks sibling actions better than the policy's log-probability of them does.  Stage 04
reports, next to each QNet's sibling accuracy, the sibling accuracy of that log-probability (the sum over the
action turn's tokens, the state as the QNet sees it) on the same sibling groups, and how the two combine:
the validation sibling accuracy of Q + w·log π for a grid of weights w (``search.prior_weight`` is chosen there,
on held-out training trees, never on the test split).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from qlass_lib.core.artifacts import read_jsonl
from qlass_lib.text.batching import collate
from qlass_lib.models.loading import model_device
from qlass_lib.text.examples import encode_pair


@torch.no_grad()
def action_logprobs(model, tokenizer, rows: list[dict], max_length: int, batch_size: int = 16) -> np.ndarray:
    """Sum of the policy's log-probabilities of each record's action turn given its state (one per record of
    ``qnet_*.jsonl``: ``state``, ``action_text``)."""
    model.eval()
    device = model_device(model)
    enc = [encode_pair(tokenizer, r["state"], r["action_text"], max_length) for r in rows]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i][0]))
    out = np.empty(len(enc))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for k in range(0, len(order), batch_size):
        idx = order[k:k + batch_size]
        b = collate([{"input_ids": enc[i][0], "mask": enc[i][1]} for i in idx], {"input_ids": pad_id, "mask": 0}, device)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(2, b["input_ids"][:, 1:, None])[..., 0]
        out[idx] = (logp * b["mask"][:, 1:]).sum(1).cpu().numpy()
    return out


def sibling_logprobs(model, tokenizer, data_dir: str | Path, split: str, max_length: int,
                     batch_size: int = 16) -> tuple[list[dict], list[int], np.ndarray]:
    """The records of ``qnet_<split>.jsonl`` (none when it is missing), the indices of those in sibling groups
    (parents with 2+ children), and the policy's log-probability of each of those, in that order."""
    from qlass_lib.method.qnet_metrics import sibling_groups
    path = Path(data_dir) / f"qnet_{split}.jsonl"
    rows = list(read_jsonl(path)) if path.is_file() else []
    idx = sorted(i for ids in sibling_groups(rows).values() for i in ids)
    lp = action_logprobs(model, tokenizer, [rows[i] for i in idx], max_length, batch_size) if idx else np.empty(0)
    return rows, idx, lp


def prior_sibling_metrics(model, tokenizer, data_dir: str | Path, targets: list[str], max_length: int,
                          batch_size: int = 16, scored: dict | None = None) -> dict[str, dict]:
    """Per target: the policy log-probability's sibling accuracy on the validation trees and, as ``train_*``, on
    the training trees (the same groups as the QNet's ``sibling_accuracy``, so its ``sibling_random_baseline``
    applies); NaN where no sibling group's targets differ.  ``scored``: :func:`sibling_logprobs` per split, when
    already computed."""
    from qlass_lib.method.qnet_metrics import evaluate_qnet
    out: dict[str, dict] = {t: {} for t in targets}
    for split, prefix in (("val", ""), ("train", "train_")):
        rows, idx, lp = (scored or {}).get(split) or sibling_logprobs(model, tokenizer, data_dir, split, max_length,
                                                                       batch_size)
        for t in targets:
            exs = [{"task": rows[i]["task"], "parent": rows[i]["parent"], "target": float(rows[i]["targets"][t])}
                   for i in idx]
            m = evaluate_qnet(lp, exs) if idx else {"sibling_accuracy": float("nan")}
            out[t][f"{prefix}policy_sibling_accuracy"] = m["sibling_accuracy"]
    return out


PRIOR_WEIGHTS = (0.0, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


def prior_weight_sweep(model, tokenizer, data_dir: str | Path, q_pred, max_length: int,
                       weights=PRIOR_WEIGHTS, batch_size: int = 16, scored: tuple | None = None) -> pd.DataFrame:
    """Sibling accuracy on the validation trees of Q + w·log π for each w in ``weights``, and of log π alone
    (``scorer`` "log_pi", ``prior_weight`` inf; null in JSON): ``q_pred`` holds the q QNet's predictions, one
    per ``qnet_val.jsonl`` record; ``scored``: :func:`sibling_logprobs` of the validation split, when already
    computed."""
    from qlass_lib.method.qnet_metrics import evaluate_qnet
    rows, idx, lp = scored or sibling_logprobs(model, tokenizer, data_dir, "val", max_length, batch_size)
    if len(q_pred) != len(rows):
        raise ValueError(f"{len(q_pred)} QNet predictions for the {len(rows)} records of "
                         f"{Path(data_dir) / 'qnet_val.jsonl'}")
    q = np.asarray(q_pred, dtype=float)[idx]
    exs = [{"task": rows[i]["task"], "parent": rows[i]["parent"], "target": float(rows[i]["targets"]["q"])}
           for i in idx]
    out = []
    for w, score in [*((w, q + w * lp) for w in weights), (float("inf"), lp)]:
        m = evaluate_qnet(score, exs) if idx else {"sibling_accuracy": float("nan"), "sibling_groups": 0,
                                                   "sibling_random_baseline": float("nan")}
        out.append({"scorer": "log_pi" if np.isinf(w) else "q + w*log_pi", "prior_weight": w,
                    "val_sibling_accuracy": m["sibling_accuracy"],
                    "sibling_random_baseline": m["sibling_random_baseline"], "sibling_groups": m["sibling_groups"]})
    return pd.DataFrame(out)


def best_prior_weight(sweep: pd.DataFrame) -> float:
    """The finite weight with the highest validation sibling accuracy (ties: the smallest; none: 0)."""
    finite = sweep[np.isfinite(sweep.prior_weight)].dropna(subset=["val_sibling_accuracy"])
    if finite.empty:
        return 0.0
    top = finite.val_sibling_accuracy.max()
    return float(finite[finite.val_sibling_accuracy >= top - 1e-12].prior_weight.min())
