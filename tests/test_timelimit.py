"""The forked-child time limit that guards ALFWorld's planner (fast-downward cannot be interrupted in-process)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from qlass_lib.envs.timelimit import TimeLimitExceeded, call_with_time_limit

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alfworld"


def test_result_errors_and_limit():
    assert call_with_time_limit(lambda: {"actions": ["go to desk 1"], "n": 2}, 30) == {"actions": ["go to desk 1"], "n": 2}
    with pytest.raises(RuntimeError, match="ValueError: bad game"):
        call_with_time_limit(lambda: (_ for _ in ()).throw(ValueError("bad game")), 30)
    with pytest.raises(RuntimeError, match="died without an answer"):
        call_with_time_limit(lambda: os._exit(3), 30)
    t0 = time.perf_counter()
    with pytest.raises(TimeLimitExceeded, match="still running after 0.5 s"):
        call_with_time_limit(lambda: time.sleep(60), 0.5)
    assert time.perf_counter() - t0 < 30  # the child was stopped, not waited for


def test_the_child_leaves_the_parent_untouched():
    state = {"loaded": "game A"}

    def work():
        state["loaded"] = "game B"
        return state["loaded"]
    assert call_with_time_limit(work, 30) == "game B"
    assert state == {"loaded": "game A"}


def test_planner_past_its_limit_is_a_failed_expert_game(tmp_path):
    """With a limit no plan can meet, the ALFWorld expert raises one EnvError naming the game and the key, and
    the expert stage records the game as failed instead of stopping; without a limit (0) and with the default
    one the planner gives the same actions."""
    pytest.importorskip("textworld")
    pytest.importorskip("alfworld")
    if not DATA.is_dir():
        pytest.skip("shared ALFWorld data not present")
    from qlass_lib.envs.alfworld import ALFWorldEnv
    from qlass_lib.envs.base import EnvError
    from qlass_lib.text.expert import generate_expert, read_jsonl
    env = ALFWorldEnv(str(DATA), ["look_at_obj_in_light"], expert_max_seconds=0.001)
    try:
        task = env.tasks("dev")[0]
        with pytest.raises(EnvError, match=f"{task.id}.*alfworld_expert_max_seconds"):
            env.gold_actions(task)
        out = tmp_path / "expert.jsonl"
        assert generate_expert(env, [task], out) == {"kept": 0, "failed": 1, "fallback": 0}
        failed = read_jsonl(tmp_path / "expert_failed.jsonl")
        assert failed[0]["id"] == task.id and "still running" in failed[0]["error"]
        env.expert_max_seconds = 0
        plain = env.gold_actions(task)
        env.expert_max_seconds = 300
        assert env.gold_actions(task) == plain and len(plain) == 3
    finally:
        env.close()
