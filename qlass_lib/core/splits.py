"""The one train/validation split by task, for BC's expert records and for the QNet's trees."""
from __future__ import annotations

import random


def split_ids(ids, val_fraction: float, seed: int, min_val: int = 0) -> tuple[set, set]:
    """(train ids, validation ids): the distinct ``ids`` sorted, shuffled with ``seed``; the first
    round(n · ``val_fraction``) of them, at least ``min_val`` when the fraction is > 0, are validation.  A single
    id is never held out."""
    ids = sorted(set(ids))
    random.Random(seed).shuffle(ids)
    n_val = max(min_val, int(round(len(ids) * val_fraction))) if len(ids) > 1 and val_fraction > 0 else 0
    return set(ids[n_val:]), set(ids[:n_val])


def split_records(records: list[dict], val_fraction: float, seed: int, key: str = "id") -> tuple[list, list]:
    """``records`` split by :func:`split_ids` of their ``key`` (every record of a task on one side), in order."""
    _, val = split_ids((r[key] for r in records), val_fraction, seed)
    return [r for r in records if r[key] not in val], [r for r in records if r[key] in val]
