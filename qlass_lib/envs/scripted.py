"""A tiny deterministic environment whose whole game tree is written down, for tests and teaching.

Each variation is a secret sequence of door choices.  ``go <door>`` with the right door moves one room
deeper (score rises by 1/len(secret)); a wrong door ends the episode with score 0; anything else is an
invalid action and comes back as an observation.  Because the full tree is known, tests can check tree
construction, pruning and Q values against hand-computed answers.
"""
from __future__ import annotations

from qlass_lib.envs.base import Reset, TaskRef, TextEnv

DOORS = ("red", "green", "blue")


def secret_for(variation: int, length: int = 3) -> list[str]:
    out, v = [], variation
    for _ in range(length):
        out.append(DOORS[v % len(DOORS)])
        v //= len(DOORS)
    return out


class ScriptedEnv(TextEnv):
    name = "scripted"

    def __init__(self, max_turns: int = 8, length: int = 3, n_variations: int = 27, partial_credit: bool = False):
        super().__init__(max_turns)
        self.length, self.n, self.partial_credit = length, n_variations, partial_credit
        self._pos = 0
        self._secret: list[str] = []

    def tasks(self, split: str) -> list[TaskRef]:
        ids = list(range(self.n))
        pick = {"train": ids[0::2], "dev": ids[1::4], "test": ids[3::4]}[split]
        return [TaskRef("doors", v) for v in pick]

    def _reset(self, task: TaskRef) -> Reset:
        self._secret, self._pos = secret_for(task.variation, self.length), 0
        return Reset(f"Find the way through {self.length} rooms. Clue: {' '.join(self._secret)}.",
                     self._room_text())

    def _room_text(self) -> str:
        return f"You are in room {self._pos}. There are doors: {', '.join(DOORS)}."

    def _score(self) -> float:
        if self._pos == self.length:
            return 1.0
        return self._pos / self.length / 2 if self.partial_credit else 0.0

    def _step(self, action: str):
        words = action.strip().lower().split()
        if len(words) != 2 or words[0] != "go" or words[1] not in DOORS:
            return "Nothing happens. Valid actions look like 'go red'.", self._score(), False, {"valid": False}
        if self._pos >= self.length:
            return "You already left the last room.", 1.0, True, {"valid": True}
        if words[1] != self._secret[self._pos]:
            self._pos = -1
            return "The door was a trap. The game is over.", 0.0, True, {"valid": True}
        self._pos += 1
        if self._pos == self.length:
            return "You walk out into the sunlight. You won.", 1.0, True, {"valid": True}
        return self._room_text(), self._score(), False, {"valid": True}

    def gold_actions(self, task: TaskRef) -> list[str]:
        return [f"go {d}" for d in secret_for(task.variation, self.length)]
