"""The one rollout loop: act in an environment with any chooser until the episode ends.

BC evaluation, search and self-training act through :func:`run_episode`, so they see the same prompts and the same
action parser; a chooser only ever sees the observations of actions that were executed.
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
    while True:
        cand, extra = choose(state, len(turns))
        if cand.action is None:
            step = env.skip_turn(prompts.NO_ACTION_OBSERVATION)
        else:
            with budget.timing("env"):
                step = env.step(cand.action)
            budget.add_env_steps()
        score = step.info["score"]
        turns.append({"text": cand.text, "action": cand.action, "observation": step.observation,
                      "reward": step.reward, "score": score, "tokens": cand.tokens, **extra})
        state = prompts.extend(state, cand.text, step.observation)
        if step.done:
            break
    if env.exceptions > errors0:  # did the environment die? then this raises here, and the stage stops before
        with budget.timing("env"):  # the episode is logged (a resumed run plays it again)
            env.reset(task)
    return Episode(task.id, score, score >= 1.0 - 1e-9, len(turns), turns, shown, first.observation, first.task_text,
                   env.exceptions - errors0)


def greedy_chooser(policy: Policy, budget: Budget | None = None) -> Chooser:
    def choose(state, turn):
        return policy.propose(state, 1, None, budget)[0], {}
    return choose
