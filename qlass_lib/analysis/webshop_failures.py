"""Where a WebShop episode left the expert's script: search → goal product → goal options → Buy Now.

Each episode's executed actions are replayed from reset in the given :class:`WebShopEnv` (deterministic), and the episode is
put in the first script step it missed:

- ``no search``: no search was executed;
- ``bad search``: the goal product was in the results of none of its searches;
- ``no product opened``: the goal product was listed, but no item page was ever opened (the policy clicked ids
  that were not on the page, or nothing);
- ``wrong product``: item pages were opened, but never the goal product's, or another product was bought;
- ``wrong options``: the goal product was opened (or bought) without all of the goal's options chosen;
- ``no Buy Now``: the goal product with the goal options was on screen and the episode ended without buying;
- ``goal bought``: the goal product with all goal options was bought.

The columns also count, per episode, clicks on id-like strings that were not buttons on the page.
"""
from __future__ import annotations

import re

import pandas as pd

from qlass_lib.method.rollout import act
from qlass_lib.envs.base import TaskRef
from qlass_lib.analysis.counts import step_counts
from qlass_lib.envs.webshop import WebShopEnv

STEPS = ("no search", "bad search", "no product opened", "wrong product", "wrong options", "no Buy Now",
         "goal bought")
_ID_CLICK = re.compile(r"click\[\s*[A-Za-z0-9]{10}\s*\]", re.IGNORECASE)


def classify(env: WebShopEnv, task: TaskRef, actions: list[str | None]) -> dict:
    """Replay ``actions`` on ``task`` and return the first script step missed plus what was seen on the way."""
    env.reset(task)
    goal = env.goal
    want = {str(v).lower() for v in (goal.get("goal_options") or {}).values()}
    searched = found = opened_goal = bought = goal_with_options = False
    others: set[str] = set()  # other products whose item page was opened
    bad_id_clicks, bought_asin, bought_ok = 0, None, False
    for action in actions:
        step = act(env, action)  # a turn without a parsable action still counts toward the turn cap
        if action is None:
            if step.done:
                break
            continue
        page = env.page
        if page.get("kind") == "results" and action.strip().lower().startswith("search"):
            searched = True
            found = found or goal["asin"] in page["results"]
        if step.observation.startswith("Invalid action: there is no button") and _ID_CLICK.fullmatch(action.strip()):
            bad_id_clicks += 1
        if page.get("kind") == "item" and action.strip().lower().startswith("click"):
            if page["asin"] == goal["asin"]:
                opened_goal = True
                chosen = {str(v).lower() for v in page["options"].values()}
                goal_with_options = goal_with_options or want <= chosen
            else:
                others.add(page["asin"])
        purchase = (step.info or {}).get("purchase")
        if purchase:
            bought, bought_asin = True, purchase["asin"]
            bought_ok = bought_asin == goal["asin"] and want <= {str(v).lower() for v in purchase["options"].values()}
        if step.done:
            break
    if bought_ok:
        where = "goal bought"
    elif not searched:
        where = "no search"
    elif not found:
        where = "bad search"
    elif not opened_goal and not others and not bought:
        where = "no product opened"
    elif not opened_goal or (bought and bought_asin != goal["asin"]):
        where = "wrong product"
    elif not goal_with_options or bought:
        where = "wrong options"
    else:
        where = "no Buy Now"
    return {"task": task.id, "task_type": task.task_type, "failed_at": where, "bought": bought,
            "opened_other_products": len(others), "invalid_id_clicks": bad_id_clicks, "actions": len(actions)}


def failure_table(env: WebShopEnv, episodes: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-episode rows and a count table (episodes per script step missed, per task type and in all)."""
    rows = []
    for ep in episodes:
        task = TaskRef(ep["task_type"], ep["variation"])
        rows.append({**classify(env, task, [t["action"] for t in ep["turns"]]), "reward": ep["reward"]})
    per = pd.DataFrame(rows)
    return per, step_counts(per, STEPS, "invalid_id_clicks", "mean_invalid_id_clicks")
