"""The one padding helper: token lists -> a padded id tensor and its attention mask."""
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
