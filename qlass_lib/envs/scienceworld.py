"""ScienceWorld adapter on the PyPI ``scienceworld`` package (a JVM behind py4j).

Steps go straight to the Java server (1-6 ms) instead of ``ScienceWorldEnv.step``, which also builds the
valid-action list on every call (18-60 ms); ``valid_actions()`` gives that list on demand.  The JVM heap is
capped (``-Xmx``).  Scores are normalized to [0, 1]; a failed episode (score -100) counts 0.

Determinism: ScienceWorld lists a room's contents in an order that can change from one load of the same
variation to the next (seen on 9 of 47 test variations of find-non-living-thing / lifespan-* here), which
would break replay.  Observations are therefore canonicalized: every block of tab-indented listing lines is
sorted.  With that, the env checker passes on all of them.  The numbered option list of an "Ambiguous request"
also comes in a varying order, and the number the agent answers picks by that order: the adapter lists the
options sorted by their text, renumbered, and translates the agent's next answer back to the JVM's number.  So
``teleport to room`` then ``0`` goes to the same room on every load.  (Options with identical text cannot be told
apart; none was seen.  Gold paths with numeric answers, only ``grow-plant`` among the surveyed types, assume the
JVM's order and may not replay.)
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from qlass_lib.envs.base import EnvError, Reset, TaskRef, TextEnv

_SPLIT_FILES = {"train": "train_indices.json", "dev": "dev_indices.json", "test": "test_indices.json"}


def canonical_observation(text: str) -> str:
    """Sort each block of consecutive tab-indented lines (room listings), leaving all else in place."""
    out, block = [], []
    for line in text.split("\n"):
        if line.startswith("\t"):
            block.append(line)
            continue
        out += sorted(block)
        block = []
        out.append(line)
    out += sorted(block)
    return "\n".join(out)


_AMBIGUOUS = "Ambiguous request"
_OPTION = re.compile(r"^(\d+):\t(.*)$")


def canonical_ambiguity(text: str) -> tuple[str, list[int]]:
    """An "Ambiguous request" list with its options sorted by text and renumbered from 0, and for each new
    number the JVM's number; any other text unchanged, with an empty mapping."""
    if not text.startswith(_AMBIGUOUS):
        return text, []
    head, options, tail = [], [], []
    for line in text.split("\n"):
        m = _OPTION.match(line)
        if m and not tail:
            options.append((m.group(2), int(m.group(1))))
        elif options:
            tail.append(line)
        else:
            head.append(line)
    options.sort()
    lines = head + [f"{i}:\t{t}" for i, (t, _) in enumerate(options)] + tail
    return "\n".join(lines), [jvm for _, jvm in options]


def canonical_task(name: str) -> str:
    """'task-6-lifespan-(longest-lived)' and 'lifespan-longest-lived' both -> 'lifespan-longest-lived'."""
    from scienceworld.utils import infer_task
    return infer_task(name)


class ScienceWorldEnv(TextEnv):
    arrival_look = "look around"
    name = "scienceworld"

    def __init__(self, task_types: list[str], max_turns: int = 20, jvm_memory: str = "512m",
                 split_dir: str | None = None, simplifications: str = ""):
        super().__init__(max_turns)
        if shutil.which("java") is None:
            raise EnvError("Java was not found on PATH: ScienceWorld needs a Java 11+ runtime "
                           "(e.g. `apt-get install openjdk-17-jre-headless`, or `openjdk` in environment.yml).")
        if split_dir is not None and not Path(split_dir).is_dir():
            raise EnvError(f"ScienceWorld split directory not found: {split_dir} "
                           f"(expected ETO's eval_agent/data/sciworld/ with train/dev/test_indices.json)")
        self.task_types = [canonical_task(t) for t in task_types]
        self.split_dir = Path(split_dir) if split_dir else None
        self.simplifications = simplifications
        self._gateway, self.server = self._launch(jvm_memory)
        known = set(self.server.getTaskNames())
        unknown = [t for t in self.task_types if t not in known]
        if unknown:
            raise EnvError(f"unknown ScienceWorld task types {unknown}; known: {sorted(known)}")
        self._loaded: TaskRef | None = None
        self._choices: list[int] = []  # canonical option number -> the JVM's, while an ambiguity is open

    @staticmethod
    def _launch(jvm_memory: str):
        from py4j.java_gateway import GatewayParameters, JavaGateway, launch_gateway
        from scienceworld.scienceworld import BASEPATH, JAR_PATH
        port, proc = launch_gateway(classpath=JAR_PATH, die_on_exit=True, cwd=BASEPATH, return_proc=True,
                                    javaopts=[f"-Xmx{jvm_memory}"])
        gateway = JavaGateway(gateway_parameters=GatewayParameters(auto_field=True, port=port), java_process=proc)
        return gateway, gateway.jvm.scienceworld.runtime.pythonapi.PythonInterface()

    # -- task lists --------------------------------------------------------------------------------------
    def tasks(self, split: str) -> list[TaskRef]:
        if split not in _SPLIT_FILES:
            raise ValueError(f"split must be one of {list(_SPLIT_FILES)}, got {split!r}")
        if self.split_dir is not None:
            path = self.split_dir / _SPLIT_FILES[split]
            if not path.is_file():
                raise EnvError(f"split file missing: {path}")
            pairs = json.loads(path.read_text())
            wanted = set(self.task_types)
            return [TaskRef(canonical_task(t), int(v)) for t, v in pairs if canonical_task(t) in wanted]
        out = []
        for t in self.task_types:
            self.server.load(t, 0, self.simplifications, False)
            getter = {"train": self.server.getVariationsTrain, "dev": self.server.getVariationsDev,
                      "test": self.server.getVariationsTest}[split]
            out += [TaskRef(t, int(v)) for v in getter()]
        self._loaded = None
        return out

    # -- protocol ----------------------------------------------------------------------------------------
    def _reset(self, task: TaskRef) -> Reset:
        self.server.load(task.task_type, task.variation, self.simplifications, False)
        self._loaded = task
        self._choices = []
        self.server.reset()
        obs = self.server.step("look around")  # the package's reset does the same first move
        return Reset(self.server.getTaskDescription(), canonical_observation(obs))

    def _step(self, action: str):
        answer = action.strip()
        if self._choices and answer.isdigit() and int(answer) < len(self._choices):
            action = str(self._choices[int(answer)])
        obs, self._choices = canonical_ambiguity(self.server.step(action))
        obs = canonical_observation(obs)
        raw = float(self.server.getScore())  # in [-1, 1]
        done = bool(self.server.getCompleted()) or raw < 0
        return obs, max(raw, 0.0), done, {"raw_score": raw}

    # -- extras ------------------------------------------------------------------------------------------
    def gold_actions(self, task: TaskRef) -> list[str]:
        self.server.load(task.task_type, task.variation, self.simplifications, True)
        self._loaded = None
        return [str(a) for a in self.server.getGoldActionSequence()]

    def valid_actions(self) -> list[str]:
        return [str(a) for a in self.server.getValidActionObjectCombinations()]

    def close(self) -> None:
        gw = getattr(self, "_gateway", None)
        if gw is None:
            return
        self._gateway = None
        try:
            gw.shutdown()
            proc = gw.java_process
            if proc is not None and proc.poll() is None:
                proc.stdin.write(b"\n")
                proc.stdin.flush()
        except Exception:
            pass

    def __del__(self):
        self.close()
