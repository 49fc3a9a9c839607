"""Padding and the one collator: token lists -> padded tensors (and the attention mask)."""
from __future__ import annotations

import torch


def pad(seqs: list[list[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, max_len]`` ids padded with ``pad_id`` on ``side`` ("right" for training, "left" for generation),
    and the 0/1 attention mask."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        if side == "right":
            ids[i, :len(s)], att[i, :len(s)] = torch.tensor(s, dtype=torch.long), 1
        else:
            ids[i, n - len(s):], att[i, n - len(s):] = torch.tensor(s, dtype=torch.long), 1
    return ids, att


def collate(rows: list[dict], pads: dict[str, int | float], device=None) -> dict[str, torch.Tensor]:
    """The one collator (BC, QNet training and scoring, the policy prior): every field named in ``pads`` of the
    ``rows`` right-padded with its pad value (a float pad gives a float tensor), plus ``attention_mask`` of
    ``input_ids``; on ``device``."""
    out = {}
    for key, value in pads.items():
        if isinstance(value, float):
            n = max(len(r[key]) for r in rows)
            out[key] = torch.tensor([list(r[key]) + [value] * (n - len(r[key])) for r in rows])
        else:
            out[key], att = pad([r[key] for r in rows], value, "right")
            if key == "input_ids":
                out["attention_mask"] = att
    return {k: v.to(device) if device is not None else v for k, v in out.items()}
