"""ALFWorld adapter on the ``alfworld`` and ``textworld`` packages (TextWorld PDDL games, no simulator).

The data directory follows the ``ALFWORLD_DATA`` layout: ``json_2.1.1/{train,valid_seen,valid_unseen}/
<task>/<trial>/game.tw-pddl``.  Splits: train; dev = seen = valid_seen; test = unseen = valid_unseen.  When
only ``json_2.1.1_train.tar.xz`` is present, the train split is unpacked once into a cache folder outside
the repository (``env.cache_dir``, default ``~/.cache/qlass/alfworld``).  A game is addressed by its task type
and its index in the sorted list of its split's games, which groups a type's games by goal object
(``env.alfworld_order: by_object`` lists them round-robin over objects instead).  The reward is the game's ``won`` flag.  The expert is
ALFWorld's PDDL planner (``AlfredExpertType.PLANNER``: fast-downward on the game's full state, deterministic) or
the searcher (:mod:`.alfworld_searcher`: visits likely receptacles until it sees the goal object, then the
planner; deterministic); either is replay-checked like every expert trajectory.  The planner knows where every
object is, so its trajectories go straight to the goal object: a policy cloned from them has to guess locations;
the searcher's trajectories show the search a policy has to do.  ALFWorld's handcoded expert is not offered: its
choices vary between runs of the same game (3, 3 and 4 wins on the same 6 games) and it won 45 of 90 training
games, where both experts here are deterministic and win nearly every game.
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

from qlass_lib.envs.base import EnvError, Reset, TaskRef, TextEnv

SPLITS = {"train": "train", "dev": "valid_seen", "test": "valid_unseen"}
EXPERT_MAX_STEPS = 80  # the expert's own cap (recording lifts the agent's turn cap to fit it)
EXPERTS = ("planner", "searcher")
TASK_TYPES = ["pick_and_place_simple", "look_at_obj_in_light", "pick_clean_then_place_in_recep",
              "pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep", "pick_two_obj_and_place"]


def game_dirs(root: Path, split: str, cache_dir: Path | None = None) -> list[Path]:
    """Sorted trial folders holding a solvable game.tw-pddl, excluding movable/sliced trials."""
    base = root / "json_2.1.1" / SPLITS[split]
    if not base.is_dir() and split == "train":
        tar = root / "json_2.1.1_train.tar.xz"
        cache = (cache_dir or Path.home() / ".cache" / "qlass" / "alfworld")
        base = cache / "json_2.1.1" / "train"
        if not base.is_dir():
            if not tar.is_file():
                raise EnvError(f"ALFWorld train games not found under {root} (no json_2.1.1/train, no json_2.1.1_train.tar.xz)")
            cache.mkdir(parents=True, exist_ok=True)
            with tarfile.open(tar) as t:
                t.extractall(cache, filter="data")
    if not base.is_dir():
        raise EnvError(f"ALFWorld games not found: {base} (env.data_dir must follow the ALFWORLD_DATA layout)")
    out = []
    for game in sorted(base.glob("*/*/game.tw-pddl")):
        trial = game.parent
        if "movable" in str(trial) or "Sliced" in str(trial):
            continue
        try:
            if not json.loads(game.read_text()).get("solvable", False):
                continue
        except (OSError, json.JSONDecodeError):
            continue
        out.append(trial)
    return out


def task_type_of(trial: Path) -> str:
    name = trial.parent.name
    return next((t for t in TASK_TYPES if name.startswith(t)), name.split("-")[0])


def goal_object_of(trial: Path) -> str:
    """The goal object named in a game folder's name (``pick_and_place_simple-Mug-None-Desk-308`` -> ``Mug``)."""
    parts = trial.parent.name.split("-")
    return parts[1] if len(parts) > 1 else ""


def spread_by_object(games: list[tuple[int, Path]]) -> list[int]:
    """Indices of ``games`` (sorted (index, trial) pairs of one task type) taken round-robin over their goal
    objects, objects in sorted order. The sorted list groups a type's games by object (all its alarm clocks, then
    its books, ...), so its first 350 ``pick_and_place_simple`` training games held 18 of the type's goal objects
    and none of the 7 in valid_unseen; round-robin, any first N spreads over all objects."""
    groups: dict[str, list[int]] = {}
    for i, trial in games:
        groups.setdefault(goal_object_of(trial), []).append(i)
    queues = [groups[k] for k in sorted(groups)]
    out: list[int] = []
    for r in range(max((len(q) for q in queues), default=0)):
        out += [q[r] for q in queues if r < len(q)]
    return out


class ALFWorldEnv(TextEnv):
    name = "alfworld"

    def __init__(self, data_dir: str | None, task_types: list[str] | None = None, max_turns: int = 40,
                 cache_dir: str | None = None, expert: str = "planner", order: str = "sorted",
                 expert_max_seconds: float = 300.0):
        super().__init__(max_turns)
        self.expert_max_seconds = expert_max_seconds  # per game; 0 = no limit (see gold_actions)
        if order not in ("sorted", "by_object"):
            raise EnvError(f"unknown ALFWorld game order {order!r} (expected 'sorted' or 'by_object')")
        self.order = order
        if expert not in EXPERTS:
            raise EnvError(f"unknown ALFWorld expert {expert!r} (expected one of {list(EXPERTS)})")
        self.expert = expert
        if not data_dir or not Path(data_dir).is_dir():
            raise EnvError(f"ALFWorld data directory not found: {data_dir} (set env.data_dir to a folder in the "
                           f"ALFWORLD_DATA layout, e.g. ../shared/data/alfworld)")
        try:
            import textworld  # noqa: F401
            from alfworld.agents.environment.alfred_tw_env import AlfredDemangler  # noqa: F401
        except ImportError as exc:
            raise EnvError(f"ALFWorld needs the optional packages: pip install -e '.[alfworld]' ({exc})") from exc
        self.root = Path(data_dir)
        self.cache = Path(cache_dir) if cache_dir else None
        self.types = set(task_types or TASK_TYPES)
        self._games: dict[str, list[Path]] = {}
        self._env = None
        self._loaded: tuple[Path, bool] | None = None  # (game file, expert wrapper) of the live TextWorld env
        self._won = False
        self._counts: dict | None = None  # searcher: object type -> receptacle type -> count, from train games

    def games(self, split: str) -> list[Path]:
        if split not in self._games:
            self._games[split] = game_dirs(self.root, split, self.cache)
        return self._games[split]

    def tasks(self, split: str) -> list[TaskRef]:
        """The split's games of the chosen types, type by type: in sorted order, or (``order="by_object"``) each
        type's games round-robin over their goal objects (:func:`spread_by_object`), so that the first N of a type
        (``env.train_per_type``, ``eval_per_type``, trees) cover many objects. A game's variation is its index in
        the sorted list either way."""
        by_type: dict[str, list[tuple[int, Path]]] = {}
        for i, trial in enumerate(self.games(split)):
            tt = task_type_of(trial)
            if tt in self.types:
                by_type.setdefault(tt, []).append((i, trial))
        order = spread_by_object if self.order == "by_object" else (lambda games: [i for i, _ in games])
        return [TaskRef(f"{tt}@{split}", i) for tt, games in by_type.items() for i in order(games)]

    def _trial(self, task: TaskRef) -> Path:
        tt, _, split = task.task_type.partition("@")
        games = self.games(split or "test")
        if not 0 <= task.variation < len(games):
            raise EnvError(f"no ALFWorld game {task.id}")
        return games[task.variation]

    def _start(self, game_file: Path, expert: bool = False):
        import textworld
        from alfworld.agents.environment.alfred_tw_env import (AlfredDemangler, AlfredExpert, AlfredExpertType,
                                                                AlfredInfos)
        if self._env is not None and self._loaded == (game_file, expert):
            return self._env  # same game: reset() restores its initial state (~0.35 s instead of ~0.8 s)
        infos = textworld.EnvInfos(won=True, admissible_commands=True, extras=["gamefile", "expert_plan"])
        if self._env is not None:
            self._env.close()
        wrappers = [AlfredDemangler(shuffle=False), AlfredInfos]
        if expert:
            wrappers.append(AlfredExpert(expert_type=AlfredExpertType.PLANNER))
        self._env = textworld.start(str(game_file), request_infos=infos, wrappers=wrappers)
        self._loaded = (game_file, expert)
        return self._env

    def _reset(self, task: TaskRef) -> Reset:
        env = self._start(self._trial(task) / "game.tw-pddl")
        state = env.reset()
        self._won = False
        text = state.feedback.split("-= Welcome to TextWorld, ALFRED! =-")[-1].strip()
        obs, _, goal = text.partition("Your task is to: ")
        return Reset(f"Your task is to: {goal.strip()}", obs.strip())

    def _step(self, action: str):
        state, _, done = self._env.step(action)
        self._won = bool(state.get("won", False))
        obs = state.feedback.strip() or "Nothing happens."
        return obs, float(self._won), bool(done or self._won), {"won": self._won}

    def location_counts(self) -> dict:
        """How often each object type lies in each receptacle type in the train split's initial states."""
        if self._counts is None:
            from qlass_lib.envs.alfworld_searcher import location_counts
            self._counts = location_counts(self.games("train"))
        return self._counts

    def gold_actions(self, task: TaskRef) -> list[str]:
        """The expert followed from reset: the planner's first step of each new plan, or the searcher
        (:mod:`.alfworld_searcher`: search for the goal object, take it, then the planner).  With
        ``expert_max_seconds`` > 0 it runs in a forked child stopped after that many seconds (fast-downward
        cannot be interrupted otherwise; :mod:`.timelimit`), and a game past the limit is an :class:`EnvError`."""
        if self.expert_max_seconds <= 0:
            return self._expert_actions(task)
        from qlass_lib.envs.timelimit import TimeLimitExceeded, call_with_time_limit
        if self.expert == "searcher":
            self.location_counts()  # computed once here: a child's copy would be lost with the child
        try:
            return call_with_time_limit(lambda: self._expert_actions(task), self.expert_max_seconds)
        except TimeLimitExceeded as exc:
            raise EnvError(f"ALFWorld {self.expert} expert on {task.id}: {exc} (env.alfworld_expert_max_seconds)") from None

    def _expert_actions(self, task: TaskRef) -> list[str]:
        trial = self._trial(task)
        env = self._start(trial / "game.tw-pddl", expert=True)
        state = env.reset()
        if self.expert == "searcher":
            from qlass_lib.envs.alfworld_searcher import search_then_plan, target_of
            return search_then_plan(env, state.feedback, target_of(trial), self.location_counts(),
                                    max(self.max_turns, EXPERT_MAX_STEPS))
        acts = []
        for _ in range(max(self.max_turns, EXPERT_MAX_STEPS)):
            plan = state.get("extra.expert_plan") or state.get("expert_plan") or []
            if not plan:
                break
            acts.append(plan[0])
            state, _, done = env.step(plan[0])
            if done or state.get("won"):
                break
        return acts

    def plan_notes(self, task: TaskRef, first_observation: str, actions: list[str]) -> list[str | None]:
        """The searcher's plan note per action (``expert.thoughts: plan``; see
        :func:`.alfworld_searcher.plan_notes`)."""
        if self.expert != "searcher":
            return super().plan_notes(task, first_observation, actions)
        from qlass_lib.envs.alfworld_searcher import plan_notes, target_of
        return plan_notes(first_observation, actions, target_of(self._trial(task)), self.location_counts())

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
            self._loaded = None
