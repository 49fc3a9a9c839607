"""Where held-out episodes left the expert's way, per environment (WebShop: :mod:`.webshop_failures`, ALFWorld:
:mod:`.alfworld_failures`; others have none)."""
from __future__ import annotations

import pandas as pd


def failure_analysis(env, episodes: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(per-episode rows, count table) for an environment that has a failure analysis, else None."""
    if env.name == "webshop" and hasattr(env, "cat"):  # the local catalog (not the HTTP client)
        from qlass_lib.analysis.webshop_failures import failure_table
        return failure_table(env, episodes)
    if env.name == "alfworld":
        from qlass_lib.analysis.alfworld_failures import failure_table
        from qlass_lib.envs.alfworld_searcher import target_of
        return failure_table(episodes, lambda task: target_of(env._trial(task)))
    return None
