"""Recovery copies of expert trajectories for behavior cloning (ALFWorld).

An expert never issues an invalid command, so a policy cloned from it has never seen the state that follows
one of its own mistakes. On ALFWorld that state is common: an invalid command gets "Nothing happens." and leaves
the game unchanged, and a cloned policy then tends to repeat the command until the turn cap. A recovery copy of
an expert trajectory inserts, before some expert turns, one invalid command and ALFWorld's answer to it. The
inserted turn gets no loss (the policy must not learn to issue it); the expert turn after it is supervised, so
the policy learns to go on with the task after a command that did nothing.

Because an invalid command does not change the game, the expert's later turns stay valid after it. The inserted
commands are of three kinds, the policy's own most frequent errors in held-out ALFWorld episodes: going to the
receptacle the agent already stands at, going to a receptacle the room does not have, and taking an object
instance that has not been seen. ``tests/test_alfworld.py`` executes every such command at every state of expert
paths in real games and checks each observation.
"""
from __future__ import annotations

import random
import re

from qlass_lib.text import prompts
from qlass_lib.envs.alfworld_searcher import NOTHING, kind, receptacles_in  # noqa: F401 (NOTHING re-exported)
from qlass_lib.text.expert import template_thought, to_conversations, to_messages

_ARRIVE = re.compile(r"^Observation: You arrive at [^.]*\.", re.IGNORECASE)
_GOTO = re.compile(r"^go to (.+)$")
_TAKE = re.compile(r"^take ([a-z]+) (\d+) from (.+)$")
_ENTITY = re.compile(r"\b([a-z]+) (\d+)\b")


def room_receptacles(first_message: str) -> list[str]:
    """Receptacles ("drawer 3") listed in the task's own observation: the last "Observation:" of an ALFWorld
    first message (a one-shot example before the task has observations of its own)."""
    return receptacles_in(first_message.rsplit("Observation:", 1)[-1])


def receptacle_types(records: list[dict]) -> list[str]:
    """Every receptacle type named in the first observations of ``records``, sorted."""
    types = set()
    for r in records:
        for rec in room_receptacles(r["conversations"][0]["value"]):
            types.add(kind(rec))
    return sorted(types)


def _action_of(text: str) -> str:
    return prompts.parse_action(text) or ""


def invalid_commands(messages: list[dict], i: int, types: list[str]) -> list[list[str]]:
    """Commands that get "Nothing happens." in the state before the agent turn ``messages[i]``, by kind: going
    where the agent stands, going to a receptacle type the room lacks, taking an unseen instance (each list
    may be empty)."""
    room = room_receptacles(messages[0]["content"])
    present = {kind(r) for r in room}
    here = None  # the receptacle the last successful 'go to' reached
    for j in range(1, i):
        m = _GOTO.match(_action_of(messages[j]["content"])) if messages[j]["role"] == "assistant" else None
        if m and j + 1 < len(messages) and _ARRIVE.match(messages[j + 1]["content"]):
            here = m.group(1)
    repeat = [f"go to {here}"] if here else []
    absent = [f"go to {t} 1" for t in types if t not in present]
    take, wrong = _TAKE.match(_action_of(messages[i]["content"])), []
    if take:
        obj, n, recep = take.group(1), int(take.group(2)), take.group(3)
        seen = {f"{a} {b}" for m in messages[:i] for a, b in _ENTITY.findall(m["content"])}
        wrong = [f"take {obj} {k} from {recep}" for k in range(1, n + 4) if f"{obj} {k}" not in seen]
    return [repeat, absent, wrong]


def recovery_copy(record: dict, rate: float, types: list[str], rng: random.Random, thoughts: bool) -> dict | None:
    """One copy of ``record`` with an unsupervised invalid command inserted before each agent turn with
    probability ``rate``; None when nothing was inserted."""
    msgs = to_messages(record["conversations"])
    out, inserted = [msgs[0]], 0
    for i in range(1, len(msgs)):
        if msgs[i]["role"] == "assistant" and rng.random() < rate:
            kinds = [k for k in invalid_commands(msgs, i, types) if k]
            if kinds:
                bad = rng.choice(rng.choice(kinds))
                out.append({"role": "assistant", "loss": False,
                            "content": prompts.agent_turn(bad, template_thought(bad) if thoughts else None)})
                out.append({"role": "user", "content": prompts.observation_turn(NOTHING)})
                inserted += 1
        out.append(msgs[i])
    if not inserted:
        return None
    return {**record, "conversations": to_conversations(out), "recovery_turns": inserted}


def add_recovery_copies(records: list[dict], env_name: str, copies: int, rate: float, seed: int) -> list[dict]:
    """``copies`` recovery copies of every record (ALFWorld only), seeded; the originals are not included."""
    if copies <= 0:
        return []
    if env_name != "alfworld":
        raise ValueError(f"bc.recovery_copies is implemented for alfworld only (env.name is {env_name!r})")
    types = receptacle_types(records)
    rng = random.Random(seed)
    out = []
    for _ in range(copies):
        for r in records:
            first_gpt = next((c["value"] for c in r["conversations"] if c["from"] == "gpt"), "")
            copy = recovery_copy(r, rate, types, rng, first_gpt.lstrip().lower().startswith("thought:"))
            if copy is not None:
                out.append(copy)
    return out
