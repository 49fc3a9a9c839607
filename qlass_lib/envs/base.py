"""The one protocol every text environment follows, and a checker that proves an adapter honours it.

Protocol (see :class:`TextEnv`):
- ``tasks(split)`` lists :class:`TaskRef` (task type + variation);
- ``reset(task)`` returns :class:`Reset` (task text, first observation) and always starts from the same state;
- ``step(action)`` returns :class:`Step` (observation, reward, done, info); ``info["score"]`` is the
  normalized score so far in [0, 1], and the final reward of an episode is ``info["score"]`` when done;
- bad actions never raise: they come back as observations;
- the turn cap is enforced here, in :meth:`TextEnv.step`, for every adapter.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Sequence


@dataclass(frozen=True, order=True)
class TaskRef:
    task_type: str
    variation: int

    @property
    def id(self) -> str:
        return f"{self.task_type}_{self.variation}"

    @classmethod
    def parse(cls, text: str) -> "TaskRef":
        head, _, var = text.strip().rpartition("_")
        return cls(head, int(var))


@dataclass
class Reset:
    task_text: str
    observation: str


@dataclass
class Step:
    observation: str
    reward: float
    done: bool
    info: dict[str, Any] = field(default_factory=dict)


class EnvError(RuntimeError):
    """Set-up problems (missing Java, data, ...): raised once with a clear message."""


class TextEnv(abc.ABC):
    """Base class of all adapters: subclasses implement ``_reset`` and ``_step``."""

    name = "base"
    #: command that shows the room after a move, inserted by the expert's look-on-arrival (None: moves
    #: already describe the destination, as in ALFWorld, or there are no moves)
    arrival_look: str | None = None

    def __init__(self, max_turns: int = 20):
        self.max_turns = max_turns
        self.turns = 0
        self.task: TaskRef | None = None
        self.score = 0.0
        self.exceptions = 0  # environment exceptions turned into observations (counted per stage, reported)

    @abc.abstractmethod
    def tasks(self, split: str) -> list[TaskRef]:
        ...

    @abc.abstractmethod
    def _reset(self, task: TaskRef) -> Reset:
        ...

    @abc.abstractmethod
    def _step(self, action: str) -> tuple[str, float, bool, dict]:
        """Return (observation, normalized score so far in [0,1], env-done, extra info)."""

    def reset(self, task: TaskRef) -> Reset:
        self.task, self.turns, self.score = task, 0, 0.0
        return self._reset(task)

    def step(self, action: str) -> Step:
        if self.task is None:
            raise EnvError("step() called before reset()")
        self.turns += 1
        try:
            obs, score, done, info = self._step(action)
        except EnvError:
            raise
        except Exception as exc:  # an env exception becomes an observation, never a crash; it is counted
            self.exceptions += 1
            obs, score, done, info = f"Error from the environment: {exc}", self.score, False, {"env_exception": repr(exc)}
        reward = score - self.score
        self.score = score
        truncated = not done and self.turns >= self.max_turns
        info = {**info, "score": score, "turns": self.turns, "truncated": truncated}
        return Step(obs, reward, bool(done or truncated), info)

    def skip_turn(self, observation: str) -> Step:
        """A turn with no executable action (e.g. model output without one): it counts toward the cap."""
        self.turns += 1
        truncated = self.turns >= self.max_turns
        return Step(observation, 0.0, truncated, {"score": self.score, "turns": self.turns,
                                                   "truncated": truncated, "no_action": True})

    def plan_notes(self, task: TaskRef, first_observation: str, actions: list[str]) -> list[str | None]:
        """The expert's own note (a thought) for each of its gold ``actions`` (``expert.thoughts: plan``);
        only experts that keep a plan have one (ALFWorld's searcher)."""
        raise EnvError(f"expert.thoughts 'plan': the {self.name} expert keeps no plan to write down "
                       f"(only ALFWorld's searcher does); use 'none' or 'template'")

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def replay(env: TextEnv, task: TaskRef, actions: Sequence[str]) -> tuple[Reset, list[Step]]:
    """Reset to ``task`` and execute ``actions`` (stops early if the episode ends)."""
    first = env.reset(task)
    steps = []
    for a in actions:
        steps.append(env.step(a))
        if steps[-1].done:
            break
    return first, steps


def check_env(env: TextEnv, task: TaskRef, actions: Sequence[str], repeats: int = 2) -> dict:
    """Prove an adapter follows the protocol on one task (in the spirit of Gymnasium's env_checker).

    Checks types, that bad input comes back as an observation, that ``score`` stays in [0, 1], that rewards
    add up to the final score, and that replaying the same actions from reset reproduces identical
    observations, rewards and done flags.  Raises AssertionError naming the first difference.
    """
    runs = []
    for _ in range(repeats):
        first, steps = replay(env, task, list(actions))
        assert isinstance(first.task_text, str) and first.task_text, "reset must return a non-empty task text"
        assert isinstance(first.observation, str), "reset must return a str observation"
        for s in steps:
            assert isinstance(s.observation, str), "observations must be str"
            assert 0.0 <= s.info["score"] <= 1.0, f"score out of [0,1]: {s.info['score']}"
        total = sum(s.reward for s in steps)
        final = steps[-1].info["score"] if steps else 0.0
        assert abs(total - final) < 1e-6, f"rewards sum {total} != final score {final}"
        runs.append((first.task_text, first.observation, [(s.observation, round(s.reward, 9), s.done) for s in steps]))
    for i, r in enumerate(runs[1:], 1):
        assert r[0] == runs[0][0], "task text differs between resets"
        assert r[1] == runs[0][1], f"first observation differs between resets:\n{runs[0][1]!r}\n{r[1]!r}"
        for t, (a, b) in enumerate(zip(runs[0][2], r[2])):
            assert a == b, f"replay {i} differs at step {t} ({actions[t]!r}): {a!r} vs {b!r}"
        assert len(r[2]) == len(runs[0][2]), "replays ended at different lengths"
    env.reset(task)
    bad = env.step("xyzzy plugh 123")
    assert isinstance(bad.observation, str) and bad.observation, "invalid action must give an observation"
    env.reset(task)
    cap_steps = [env.step("xyzzy") for _ in range(env.max_turns)]
    assert cap_steps[-1].done and cap_steps[-1].info["truncated"], "turn cap must end the episode"
    final = steps[-1].info["score"] if steps else 0.0
    return {"task": task.id, "steps": len(runs[0][2]), "final_score": final, "repeats": repeats, "deterministic": True}
