"""The count table the environments' failure analyses share (:mod:`.webshop_failures`, :mod:`.alfworld_failures`)."""
from __future__ import annotations

import pandas as pd


def step_counts(per: pd.DataFrame, steps: tuple[str, ...], mean_of: str, mean_name: str) -> pd.DataFrame:
    """Episodes per step missed (``per.failed_at``), per task type and in an ``all`` row, with the mean of the
    per-episode column ``mean_of`` as ``mean_name``; an empty ``per`` gives an empty table with those columns."""
    if per.empty:
        return pd.DataFrame(columns=["task_type", *steps])
    counts = pd.crosstab(per.task_type, per.failed_at).reindex(columns=list(steps), fill_value=0)
    counts.loc["all"] = counts.sum()
    counts[mean_name] = list(per.groupby("task_type")[mean_of].mean()) + [per[mean_of].mean()]
    return counts.reset_index()
