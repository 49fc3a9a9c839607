"""The expert survey: seeded sample, replay-checked wins, errors as rows, resume, per-type table, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from qlass_lib import cli
from qlass_lib.envs.base import TaskRef
from qlass_lib.envs.scripted import ScriptedEnv, secret_for
from qlass_lib.diagnostics.expert_survey import run_survey, sample_tasks, summary, survey_task

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "alfworld"


def test_sample_is_seeded_per_type_and_keeps_split_order():
    tasks = [TaskRef("a", i) for i in range(10)] + [TaskRef("b", i) for i in range(10, 13)]
    s0 = sample_tasks(tasks, 4, seed=0)
    assert s0 == sample_tasks(tasks, 4, seed=0)
    assert [t.task_type for t in s0] == ["a"] * 4 + ["b"] * 3  # a type with fewer tasks gives all of them
    a = [t.variation for t in s0 if t.task_type == "a"]
    assert a == sorted(a) and len(set(a)) == 4
    assert any(sample_tasks(tasks, 4, seed=s) != s0 for s in range(1, 6))


class _Env(ScriptedEnv):
    """Scripted doors with an expert that is right, wrong or broken depending on the variation."""

    def gold_actions(self, task):
        if task.variation == 2:
            raise RuntimeError("planner crashed")
        secret = secret_for(task.variation, self.length)
        if task.variation == 1:
            secret = secret[:-1] + ["blue" if secret[-1] != "blue" else "red"]  # a wrong last door
        return [f"go {d}" for d in secret]


def test_wins_come_from_the_replay_and_errors_are_rows(tmp_path):
    env = _Env(max_turns=2)  # below the expert's 3 steps: the survey lifts the agent's cap for the replay
    rows = {v: survey_task(env, TaskRef("doors", v), repeats=2) for v in (0, 1, 2)}
    assert rows[0]["won"] and rows[0]["steps"] == 3 and rows[0]["deterministic"] is True
    assert rows[0]["error"] is None and rows[0]["expert_seconds"] >= 0
    assert not rows[1]["won"] and rows[1]["reward"] == 0.0 and rows[1]["steps"] == 3
    assert not rows[2]["won"] and rows[2]["error"] == "RuntimeError: planner crashed"
    assert env.max_turns == 2
    for r in rows.values():
        json.dumps(r, allow_nan=False)


def test_survey_resumes_and_summarizes(tmp_path):
    env, out = _Env(), tmp_path / "s.jsonl"
    tasks = [TaskRef("doors", v) for v in (0, 1, 2, 3)]
    first = run_survey(env, tasks[:2], out)
    assert len(first) == 2
    lines = out.read_text().splitlines()
    rows = run_survey(env, tasks, out)  # the first two are read back, not run again
    assert out.read_text().splitlines()[:2] == lines and len(rows) == 4
    table = summary(rows).set_index("task_type")
    assert table.loc["doors", "games"] == 4 and table.loc["doors", "won"] == 2
    assert table.loc["doors", "win_rate"] == 50.0 and table.loc["doors", "errors"] == 1
    assert table.loc["doors", "steps_mean"] == 3.0 and table.loc["doors", "deterministic"] == "not rerun"
    assert table.loc["all", "games"] == 4


def test_summary_of_hand_made_rows():
    rows = pd.DataFrame([
        {"task_type": "x", "won": True, "steps": 4, "expert_seconds": 1.0, "deterministic": True, "error": None},
        {"task_type": "x", "won": True, "steps": 8, "expert_seconds": 3.0, "deterministic": True, "error": None},
        {"task_type": "y", "won": False, "steps": 80, "expert_seconds": 5.0, "deterministic": False, "error": None},
    ])
    t = summary(rows).set_index("task_type")
    assert t.loc["x", "steps_median"] == 6.0 and t.loc["x", "seconds_mean"] == 2.0
    assert t.loc["x", "deterministic"] == "2/2" and t.loc["y", "deterministic"] == "0/1"
    assert pd.isna(t.loc["y", "steps_mean"])  # steps are of won games only
    assert t.loc["all", "won"] == 2 and t.loc["all", "seconds_max"] == 5.0


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["expert-survey", str(ROOT / "params" / "smoke.yaml"), "--per-type", "0", "--out", str(tmp_path)]) == 2
    assert cli.main(["expert-survey", str(ROOT / "params" / "smoke.yaml"), "--set", "env.no_such_key=1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--per-type" in err and "no_such_key" in err
    assert cli.main(["expert-survey", str(ROOT / "params" / "alfworld-smoke.yaml"), "--set", "env.data_dir=/no/such/dir",
                     "--out", str(tmp_path)]) == 2
    assert "/no/such/dir" in capsys.readouterr().err


# The planner on the dev sample of seed 0, one game per type, two types (measured; fast-downward is deterministic)
PLANNER_DEV_STEPS = {"pick_and_place_simple": 4, "look_at_obj_in_light": 4}


def test_planner_survey_through_the_cli(tmp_path, capsys):
    """ALFWorld's planner through ``python -m qlass_lib expert-survey`` on a seeded dev sample: it wins both
    games in a known number of steps, twice the same way, and the files are strict JSON."""
    pytest.importorskip("textworld")
    pytest.importorskip("alfworld")
    if not DATA.is_dir():
        pytest.skip("shared ALFWorld data not present")
    out = tmp_path / "survey"
    assert cli.main(["expert-survey", str(ROOT / "params" / "alfworld-smoke.yaml"), "--split", "dev", "--per-type", "1",
                     "--repeats", "2", "--set", "env.alfworld_expert=planner", "--set",
                     f"env.data_dir={DATA}", "--out", str(out)]) == 0
    rows = [json.loads(x) for x in (out / "expert_survey.jsonl").read_text().splitlines()]
    assert {r["task_type"]: r["steps"] for r in rows} == PLANNER_DEV_STEPS
    assert all(r["won"] and r["deterministic"] and r["expert"] == "planner" and r["error"] is None for r in rows)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["split"] == "dev" and manifest["tasks"] == 2 and manifest["expert"] == "planner"
    table = pd.read_csv(out / "expert_survey_summary.csv")
    assert list(table["task_type"])[-1] == "all" and table["won"].iloc[-1] == 2
    assert "| all | 2 | 2 | 100.0 |" in capsys.readouterr().out
