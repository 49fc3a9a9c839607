"""The one rollout loop: act in an environment with any chooser until the episode ends.

Everything that acts goes through :func:`play`: episodes (:func:`run_episode`: BC evaluation, search,
self-training), the exploration trees' rollouts and the lookahead diagnostic, so they see the same prompts and the
same action parser; a chooser only ever sees the observations of actions that were executed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from qlass_lib.core.budget import Budget
from qlass_lib.envs import TaskRef, TextEnv
from qlass_lib.models.policy import Candidate, Policy
from qlass_lib.text import prompts


@dataclass
class Episode:
    task: str
    reward: float
    success: bool
    steps: int
    turns: list[dict] = field(default_factory=list)
    task_text: str = ""  # as shown to the policy (a paraphrase in the -aug variants)
    first_observation: str = ""
    original_task_text: str = ""
    env_errors: int = 0  # steps where the environment raised (the exception became the observation)

    def to_dict(self) -> dict:
        return {"task": self.task, "reward": self.reward, "success": self.success, "steps": self.steps,
                "task_text": self.task_text, "original_task_text": self.original_task_text,
                "first_observation": self.first_observation, "env_errors": self.env_errors, "turns": self.turns}


Chooser = Callable[[list[dict], int], tuple[Candidate, dict]]


def act(env: TextEnv, action: str | None, budget: Budget | None = None):
    """Execute one agent turn: ``action`` in ``env`` (timed and counted), or, when the output had no action, the
    no-action observation, which still counts toward the turn cap."""
    if action is None:
        return env.skip_turn(prompts.NO_ACTION_OBSERVATION)
    budget = budget or Budget()
    with budget.timing("env"):
        step = env.step(action)
    budget.add_env_steps()
    return step


def play(env: TextEnv, state: list[dict], choose: Chooser, budget: Budget | None = None, turn: int = 0):
    """The acting loop, from ``state`` (the env stands there) until the episode ends: per turn ``choose(state,
    turn)`` picks a candidate, :func:`act` executes it; yields ``(candidate, extra, step, state after the turn)``.
    Episodes (:func:`run_episode`), tree rollouts and the lookahead diagnostic all act through it."""
    while True:
        cand, extra = choose(state, turn)
        step = act(env, cand.action, budget)
        state = prompts.extend(state, cand.text, step.observation)
        yield cand, extra, step, state
        turn += 1
        if step.done:
            return


def run_episode(env: TextEnv, task: TaskRef, choose: Chooser, budget: Budget | None = None,
                example=None, task_text_fn: Callable[[str], str] | None = None) -> Episode:
    """Act in ``env`` on ``task`` until done; ``choose(state, turn)`` returns the turn to execute.

    The chooser only ever sees the observations of actions that were executed.  A turn without a parsable
    action is answered with an observation and counts toward the turn cap.
    """
    budget = budget or Budget()
    errors0 = env.exceptions
    with budget.timing("env"):
        first = env.reset(task)
    shown = task_text_fn(first.task_text) if task_text_fn else first.task_text
    state = prompts.initial_state(env.name, shown, first.observation, example)
    turns, score = [], 0.0
    for cand, extra, step, state in play(env, state, choose, budget):
        score = step.info["score"]
        turns.append({"text": cand.text, "action": cand.action, "observation": step.observation,
                      "reward": step.reward, "score": score, "tokens": cand.tokens, **extra})
    if env.exceptions > errors0:  # did the environment die? then this raises here, and the stage stops before
        with budget.timing("env"):  # the episode is logged (a resumed run plays it again)
            env.reset(task)
    return Episode(task.id, score, score >= 1.0 - 1e-9, len(turns), turns, shown, first.observation, first.task_text,
                   env.exceptions - errors0)


def episode_record(ep: Episode, task: TaskRef, budget: Budget, **tag) -> dict:
    """The one record of a finished episode, as every episode log stores it (BC evaluation, search,
    self-training, the lookahead diagnostic): ``tag`` (method, trajectory, seed, ...), the episode, its task's
    type and variation, and the budget's counters."""
    return {**tag, **ep.to_dict(), "task_type": task.task_type, "variation": task.variation,
            "budget": budget.snapshot()}


def greedy_chooser(policy: Policy, budget: Budget | None = None) -> Chooser:
    def choose(state, turn):
        return policy.propose(state, 1, None, budget)[0], {}
    return choose


def continuing(first: Candidate, then: Chooser) -> Chooser:
    """Execute ``first`` at the first turn, then follow ``then`` (a tree branch's rollout, a lookahead value)."""
    def choose(state, turn):
        return (first, {}) if turn == 0 else then(state, turn)
    return choose


def sampling_chooser(policy: Policy, sampling, budget: Budget | None = None) -> Chooser:
    """One sample per turn at ``sampling`` (Best-of-N's trajectories, tree rollouts)."""
    def choose(state, turn):
        return policy.propose(state, 1, sampling, budget)[0], {}
    return choose
