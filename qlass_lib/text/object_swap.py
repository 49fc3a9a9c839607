"""Object-swap copies of expert trajectories for behavior cloning (ALFWorld).

A small policy cloned from a few hundred ALFWorld games learns which objects it usually picks up in which rooms
more easily than it learns to read the object the task names: in held-out games it walks past the goal object
listed in an observation, or takes a frequent training object instead. An object-swap copy of an expert
trajectory renames the goal object type everywhere in the episode (the task sentence, every observation, every
action) to another goal type of the training data (of any task type), one that the episode never mentions. The episode is the
same search with a different object, so the only cue for which object to take is the word in the task.

The goal type is the object of the expert's first ``take`` (the searcher and the planner take the goal object
first in ``pick_and_place_simple`` and ``look_at_obj_in_light``); a trajectory without a ``take`` gets no copy.
Words are replaced whole ("knife" does not touch "butterknife"); the instruction and any one-shot example before
the task's own ``Task:`` line are left as they are. The copies are counterfactual text, not replays of real
games: they are training data only, and the validation split keeps the original trajectories.
"""
from __future__ import annotations

import random
import re

from qlass_lib.text.expert import to_conversations, to_messages

_TAKE = re.compile(r"^take ([a-z]+) \d+ from ", re.IGNORECASE)


def goal_type(record: dict) -> str | None:
    """The object type of the record's first ``take`` action, or None when it takes nothing."""
    for a in record.get("actions") or []:
        m = _TAKE.match(a.strip())
        if m:
            return m.group(1).lower()
    return None


def _word(w: str) -> re.Pattern:
    return re.compile(rf"\b{re.escape(w)}\b", re.IGNORECASE)


def _task_part(first: str) -> tuple[str, str]:
    """(the instruction and example, the task with its first observation) of a first message."""
    i = first.rfind("Task: ")
    return (first[:i], first[i:]) if i >= 0 else ("", first)


def words(record: dict) -> set[str]:
    """The lower-cased words of the record's task, observations, thoughts and actions."""
    msgs = to_messages(record["conversations"])
    texts = [_task_part(msgs[0]["content"])[1]] + [m["content"] for m in msgs[1:]] + list(record.get("actions") or [])
    return {w.lower() for t in texts for w in re.findall(r"\w+", t)}


def swap_copy(record: dict, old: str, new: str) -> dict:
    """``record`` with the whole word ``old`` renamed ``new`` in its task, observations, thoughts and actions."""
    pat = _word(old)

    def sub(text: str) -> str:
        return pat.sub(new, text)
    msgs = to_messages(record["conversations"])
    head, task = _task_part(msgs[0]["content"])
    out = [{**msgs[0], "content": head + sub(task)}] + [{**m, "content": sub(m["content"])} for m in msgs[1:]]
    return {**record, "conversations": to_conversations(out), "task_text": sub(record.get("task_text", "")),
            "first_observation": sub(record.get("first_observation", "")),
            "actions": [sub(a) for a in record.get("actions") or []], "swapped_goal": [old, new]}


def add_object_swaps(records: list[dict], env_name: str, copies: int, seed: int) -> list[dict]:
    """``copies`` object-swap copies of every record that takes an object (ALFWorld only), seeded; the new goal
    type is drawn from the goal types of ``records`` (all task types) that the record never mentions. The
    originals are not included."""
    if copies <= 0:
        return []
    if env_name != "alfworld":
        raise ValueError(f"bc.object_swap_copies is implemented for alfworld only (env.name is {env_name!r})")
    olds = [goal_type(r) for r in records]
    goals = sorted({g for g in olds if g})
    # per record once: its goal type and the goal types it never mentions (the copies only draw from them)
    pools = [(r, old, [g for g in goals if g != old and g not in words(r)]) for r, old in zip(records, olds) if old]
    rng = random.Random(seed)
    return [swap_copy(r, old, rng.choice(pool)) for _ in range(copies) for r, old, pool in pools if pool]
