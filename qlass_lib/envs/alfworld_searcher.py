"""An ALFWorld expert that looks for the goal object like an agent must, then lets the PDDL planner finish.

ALFWorld's planner sees the whole state, so its first action is ``go to`` the receptacle that holds the goal
object: a policy cloned from it has to guess that location on a new game.  This expert ("searcher") does what
a policy can learn instead:

1. it visits the receptacles listed in the first observation, most likely first for the goal object's type, and
   opens the closed ones, until the observation shows an object of that type;
2. it takes that object;
3. from there it follows the planner (which goes to the lamp, sink, fridge, microwave or target receptacle,
   all named in the goal or fixed in a room).

"Most likely" is a table of how often each object type lies in each receptacle type, counted once from the
initial states (the PDDL ``inReceptacle`` facts) of the train split's games; ties keep the listed order.  Every
step is deterministic (the planner too), so a game gives the same trajectory on every run.
"""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

NOTHING = "Nothing happens."  # what ALFWorld answers to a command that changes nothing
_FACT = re.compile(r"\(inReceptacle (\w+?)_bar_\S+ (\w+?)_bar_\S+\)")
_SEEN = re.compile(r"you see (.*?)\.(?:\s|$)", re.IGNORECASE | re.DOTALL)


def kind(name: str) -> str:
    """Receptacle or object type of a text name: 'countertop 1' -> 'countertop'."""
    return name.rsplit(" ", 1)[0] if name.rsplit(" ", 1)[-1].isdigit() else name


def receptacles_in(observation: str) -> list[str]:
    """The names in 'Looking quickly around you, you see a cabinet 2, a cabinet 1, and a toilet 1.'"""
    m = _SEEN.search(observation)
    if not m:
        return []
    parts = re.split(r",\s*(?:and\s+)?|\s+and\s+", m.group(1))
    return [re.sub(r"^(?:an?|the)\s+", "", p.strip()) for p in parts if re.search(r"\d$", p.strip())]


def location_counts(trials: list[Path]) -> dict[str, dict[str, int]]:
    """object type -> receptacle type -> number of objects of that type lying in one, over ``trials``."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for trial in trials:
        problem = json.loads((trial / "game.tw-pddl").read_text())["pddl_problem"]
        for obj, recep in _FACT.findall(problem):
            counts[obj.lower()][recep.lower()] += 1
    return {o: dict(c) for o, c in sorted(counts.items())}


def search_order(receptacles: list[str], target: str, counts: dict[str, dict[str, int]]) -> list[str]:
    """Receptacles to visit for ``target``: most frequent holders of that type first, then the listed order."""
    prior = counts.get(target, {})
    return [r for _, r in sorted(enumerate(receptacles), key=lambda ir: (-prior.get(kind(ir[1]), 0), ir[0]))]


#: receptacles a plan note shows (next first); the rest of the order is the policy's to recall from the table
PLAN_SHOWN = 5


def plan_notes(first_observation: str, actions: list[str], target: str, counts: dict,
               shown: int = PLAN_SHOWN) -> list[str | None]:
    """A note for each of the searcher's ``actions``: before each search move, the goal object and the
    receptacles left to check in the search order (the next one first, at most ``shown``); ``None`` on the
    other actions.

    Written as the agent's thought, the note carries the search's state from turn to turn: the next note is
    this one without its head (plus one more receptacle), so a policy copies it instead of working out from
    the history which receptacles it has already visited."""
    order = search_order(receptacles_in(first_observation), target, counts)
    notes: list[str | None] = []
    k, searching = 0, True
    for a in actions:
        if searching and k < len(order) and a == f"go to {order[k]}":
            notes.append(f"Looking for a {target}. To check: {', '.join(order[k:k + shown])}.")
            k += 1
            continue
        if not a.startswith(("go to ", "open ")):
            searching = False  # the take (or anything else) ends the search
        notes.append(None)
    return notes


def target_of(trial: Path) -> str:
    """The goal object's type, lower case as the game writes it (e.g. 'alarmclock')."""
    return json.loads((trial / "traj_data.json").read_text())["pddl_params"]["object_target"].lower()


def search_then_plan(env, first_observation: str, target: str, counts: dict, max_steps: int) -> list[str]:
    """Play the searcher on a TextWorld env wrapped with the planner expert, right after ``reset``.

    The search steps go to the wrapped env with planning switched off (fast-downward on every step of a long
    search costs seconds each in a big kitchen); planning resumes with the ``take``."""
    acts: list[str] = []
    inner = getattr(env, "_wrapped_env", env)
    infos = env.request_infos
    state = None

    def act(a: str, plan: bool):
        nonlocal state
        infos.policy_commands = plan
        state, _, done = (env if plan else inner).step(a)
        acts.append(a)
        return state.feedback, bool(done or state.get("won"))

    try:
        found = None
        for recep in search_order(receptacles_in(first_observation), target, counts):
            feedback, done = act(f"go to {recep}", plan=False)
            if f"{recep} is closed" in feedback:
                feedback, done = act(f"open {recep}", plan=False)
            m = re.search(rf"\b({re.escape(target)} \d+)", feedback)
            if m:
                found = (m.group(1), recep)
                break
            if done or len(acts) >= max_steps:
                return acts
        take = f"take {found[0]} from {found[1]}" if found else None
        if take is None or take not in (state.get("admissible_commands") or []):
            return acts  # not found or not takable: the replay check rejects this trajectory
        _, done = act(take, plan=True)
        while not done and len(acts) < max_steps:
            plan = state.get("extra.expert_plan") or []
            if not plan:
                break
            _, done = act(plan[0], plan=True)
        return acts
    finally:
        infos.policy_commands = True  # the loaded env is reused by the next reset
