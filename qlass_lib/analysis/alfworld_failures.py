"""Where an ALFWorld episode left the searcher expert's way: find the goal object → take it → finish.

The episode's recorded observations say it all (ALFWorld's text names every object the agent sees and every
object it picks up), so nothing is replayed.  The goal object's type comes from the game's own record
(``traj_data.json``), not from the task sentence.  Each episode goes to the first step it missed:

- ``goal object never seen``: no observation listed an object of the goal type;
- ``seen, took another object``: the goal type was listed, but the agent only picked up other objects;
- ``seen, took nothing``: the goal type was listed and nothing was picked up;
- ``took it, did not finish``: an object of the goal type was picked up, the game was not won (wrong lamp or
  receptacle, or the turns ran out);
- ``won``.

Per episode it also counts what the earlier README measurements counted by hand: turns answered "Nothing
happens.", ``go to`` the receptacle the agent already stands at, ``go to`` a receptacle the room does not have
(not in the first observation), and pick-ups of objects of another type.
"""
from __future__ import annotations

import re
from typing import Callable

import pandas as pd

from qlass_lib.envs.alfworld_searcher import NOTHING, kind, receptacles_in
from qlass_lib.envs.base import TaskRef
from qlass_lib.analysis.counts import step_counts

STEPS = ("goal object never seen", "seen, took another object", "seen, took nothing", "took it, did not finish",
         "won")
_PICK = re.compile(r"^You pick up the (.+?) from the ", re.IGNORECASE)
_GOTO = re.compile(r"^go to (.+)$", re.IGNORECASE)


def classify(target: str, first_observation: str, turns: list[dict], won: bool) -> dict:
    """The first step of the expert's way that an episode (its ``turns``: action + observation) missed."""
    room = set(receptacles_in(first_observation))
    here = None
    seen_at = took_at = None
    other_takes = nothing = goto_here = goto_missing = 0
    for i, t in enumerate(turns):
        action, obs = (t.get("action") or "").strip(), (t.get("observation") or "").strip()
        nothing += obs == NOTHING
        go = _GOTO.match(action)
        if go:
            dest = go.group(1).strip()
            goto_here += dest == here
            goto_missing += dest not in room
            if obs != NOTHING:
                here = dest
        if seen_at is None and any(kind(name) == target for name in receptacles_in(obs)):
            seen_at = i
        pick = _PICK.match(obs)
        if pick:
            if kind(pick.group(1)) == target:
                took_at = i if took_at is None else took_at
            else:
                other_takes += 1
    if won:
        where = "won"
    elif took_at is not None:
        where = "took it, did not finish"
    elif seen_at is None:
        where = "goal object never seen"
    else:
        where = "seen, took another object" if other_takes else "seen, took nothing"
    n = max(len(turns), 1)
    return {"target": target, "failed_at": where, "first_seen_turn": seen_at, "took_goal_turn": took_at,
            "other_object_takes": other_takes, "nothing_happens_share": nothing / n,
            "goto_where_it_stands": goto_here, "goto_missing_receptacle": goto_missing, "turns": len(turns)}


def failure_table(episodes: list[dict], target_of: Callable[[TaskRef], str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-episode rows and a count table (episodes per step missed, per task type and in all, with the mean
    share of "Nothing happens." turns); ``target_of`` gives a task's goal object type."""
    rows = []
    for ep in episodes:
        task = TaskRef(ep["task_type"], ep["variation"])
        rows.append({"task": task.id, "task_type": task.task_type, "reward": ep["reward"],
                     **classify(target_of(task), ep["first_observation"], ep["turns"], bool(ep["success"]))})
    per = pd.DataFrame(rows)
    return per, step_counts(per, STEPS, "nothing_happens_share", "nothing_happens_share")
