"""The BC policy's own preference among tree siblings: the reference a QNet has to beat.

Search draws its candidates from the policy, and greedy decoding follows the policy's preference, so a QNet
can only help where it ranks sibling actions better than the policy's log-probability of them does.  Stage 04
reports, next to each QNet's sibling accuracy, the sibling accuracy of that log-probability (the sum over the
action turn's tokens, the state as the QNet sees it) on the same sibling groups.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .artifacts import read_jsonl
from .batching import pad
from .models import model_device
from .qnet import encode_pair


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
        ids, att = pad([enc[i][0] for i in idx], pad_id, "right")
        mask, _ = pad([enc[i][1] for i in idx], 0, "right")
        logits = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(2, ids[:, 1:, None].to(device))[..., 0]
        out[idx] = (logp * mask[:, 1:].to(device)).sum(1).cpu().numpy()
    return out


def prior_sibling_metrics(model, tokenizer, data_dir: str | Path, targets: list[str], max_length: int,
                          batch_size: int = 16) -> dict[str, dict]:
    """Per target: the policy log-probability's sibling accuracy on the validation trees and, as ``train_*``, on
    the training trees (the same groups as the QNet's ``sibling_accuracy``, so its ``sibling_random_baseline``
    applies); NaN where no sibling group's targets differ."""
    from .qnet_train import evaluate_qnet, sibling_groups
    out: dict[str, dict] = {t: {} for t in targets}
    for split, prefix in (("val", ""), ("train", "train_")):
        path = Path(data_dir) / f"qnet_{split}.jsonl"
        rows = list(read_jsonl(path)) if path.is_file() else []
        rows = [rows[i] for i in sorted(i for ids in sibling_groups(rows).values() for i in ids)]  # parents with 2+ children
        lp = action_logprobs(model, tokenizer, rows, max_length, batch_size) if rows else np.empty(0)
        for t in targets:
            exs = [{"task": r["task"], "parent": r["parent"], "target": float(r["targets"][t])} for r in rows]
            m = evaluate_qnet(lp, exs) if rows else {"sibling_accuracy": float("nan")}
            out[t][f"{prefix}policy_sibling_accuracy"] = m["sibling_accuracy"]
    return out
