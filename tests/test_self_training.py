"""Self-training data (QLASS-ST / RFT): episodes become expert-format records, the keep rule, RFT's token
matching and resumption, the expert share for the fewer-annotations runs, and the annotations table."""
import json

import pandas as pd
import pytest
import torch

from qlass_lib.diagnostics import annotations
from qlass_lib.text import prompts
from qlass_lib.method import self_training as st
from qlass_lib.models.policy import Candidate
from qlass_lib.method.rollout import run_episode
from qlass_lib.text.expert import expert_subset
from qlass_lib.core.budget import Budget
from qlass_lib.core.config import ConfigError, SamplingConfig, load_config
from qlass_lib.envs.scripted import DOORS, ScriptedEnv
from qlass_lib.text.expert import record_trajectory


def _episode_dict(env, task, chooser, method="m"):
    b = Budget()
    ep = run_episode(env, task, chooser, b)
    return {"method": method, "traj": 0, "seed": 0, **ep.to_dict(), "task_type": task.task_type,
            "variation": task.variation, "budget": b.snapshot()}


def _gold_chooser(actions):
    def choose(state, turn):
        a = actions[turn]
        return Candidate(prompts.agent_turn(a), a, 3), {}
    return choose


def test_a_generated_episode_becomes_the_record_the_expert_recorder_writes():
    env = ScriptedEnv(max_turns=5)
    task = env.tasks("train")[4]
    gold = env.gold_actions(task)
    rec = st.episode_record(_episode_dict(env, task, _gold_chooser(gold)), env.name)
    expert = record_trajectory(env, task, gold)
    assert rec["conversations"] == expert["conversations"] and rec["actions"] == gold and rec["reward"] == 1.0
    assert rec["id"] == task.id and rec["source"] == "m"


def _ep(task, reward, actions):
    return {"task": task, "reward": reward, "turns": [{"action": a} for a in actions]}


def test_select_keeps_successful_parsed_distinct_trajectories():
    eps = [_ep("t1", 1.0, ["go red", "go blue"]), _ep("t1", 1.0, ["Go Red", "go blue"]),  # same actions
           _ep("t1", 0.5, ["go red"]), _ep("t2", 1.0, ["go red", None]), _ep("t2", 1.0, ["go green"])]
    kept, why = st.select(eps, 1.0)
    assert [e["turns"][0]["action"] for e in kept] == ["go red", "go green"]
    assert why == {"generated": 5, "below_min_reward": 1, "unparsed_turn": 1, "duplicate": 1, "kept": 2}
    assert len(st.select(eps, 0.5)[0]) == 3


class RandomDoorPolicy:
    """Samples a door with torch's RNG (seeded per episode by the caller); 5 tokens per turn."""

    def propose(self, state, n, sampling, budget=None):
        out = []
        for _ in range(n):
            a = f"go {DOORS[int(torch.randint(0, 3, (1,)))]}"
            out.append(Candidate(prompts.agent_turn(a), a, 5))
            budget.add_generation(5)
        return out


def test_rft_spends_each_tasks_token_budget_deterministically_and_resumes(tmp_path):
    env = ScriptedEnv(max_turns=4)
    tasks = env.tasks("train")[:3]
    budget = {tasks[0].id: 1, tasks[1].id: 12, tasks[2].id: 1000}
    args = (env, tasks, RandomDoorPolicy(), SamplingConfig(), budget, 5)
    a = st.rft_generation(*args, tmp_path / "a.jsonl", seed=0)
    per = st.tokens_per_task(a)
    counts = {t.id: sum(e["task"] == t.id for e in a) for t in tasks}
    assert counts[tasks[0].id] == 1  # at least one trajectory
    assert counts[tasks[2].id] == 5  # capped by max_per_task
    spent_before_last = per[tasks[1].id] - [e for e in a if e["task"] == tasks[1].id][-1]["budget"]["gen_tokens"]
    assert per[tasks[1].id] >= 12 > spent_before_last  # stops as soon as the budget is reached
    b = st.rft_generation(*args, tmp_path / "b.jsonl", seed=0)
    assert [e["turns"] for e in a] == [e["turns"] for e in b]  # seeded per episode
    lines = (tmp_path / "b.jsonl").read_text().splitlines()
    (tmp_path / "b.jsonl").write_text("\n".join(lines[:-3]) + "\n")  # a crash lost the last three episodes
    c = st.rft_generation(*args, tmp_path / "b.jsonl", seed=0)
    key = lambda e: (e["task"], e["traj"])  # noqa: E731
    assert sorted(map(key, c)) == sorted(map(key, a))
    assert {key(e): e["turns"] for e in c} == {key(e): e["turns"] for e in a}


def test_expert_subset_takes_the_first_share_of_every_type():
    recs = [{"id": f"{t}_{i}", "task_type": t} for t in ("a", "b") for i in range(10)] + [{"id": "c_0", "task_type": "c"}]
    half = expert_subset(recs, 0.5)
    assert [r["id"] for r in half] == [f"a_{i}" for i in range(5)] + [f"b_{i}" for i in range(5)] + ["c_0"]
    assert expert_subset(recs, 1.0) == recs and len(expert_subset(recs, 0.25)) == 3 + 3 + 1


def test_self_training_targets_need_their_qnets():
    with pytest.raises(ConfigError, match="qnet.ablation_targets"):
        load_config(None, {"self_training": {"enabled": True}, "qnet": {"ablation_targets": ["outcome"]}})
    with pytest.raises(ConfigError, match="self_training.targets"):
        load_config(None, {"self_training": {"targets": ["reward"]}})
    assert load_config(None, {"self_training": {"enabled": True}}).self_training.m_candidates == 3


def test_standard_pairs_follow_the_paper_order():
    methods = ["SFT", "QLASS-ST", "QLASS-ST (avg_reward)", "QLASS-ST (outcome)", "RFT"]
    pairs = st.standard_pairs(methods)
    assert ("QLASS-ST", "SFT") in pairs and ("RFT", "SFT") in pairs and ("QLASS-ST", "RFT") in pairs
    assert ("QLASS-ST", "QLASS-ST (avg_reward)") in pairs and ("QLASS-ST (avg_reward)", "QLASS-ST (outcome)") in pairs
    assert st.slug("QLASS-ST (avg_reward)") == "qlass-st_avg_reward"


def test_annotations_table_reads_each_runs_sft_and_search_rows(tmp_path):
    for name, frac, sft in (("r", 1.0, 60.0), ("r-expert50", 0.5, 40.0)):
        d = tmp_path / name
        (d / "01_behavior_cloning").mkdir(parents=True)
        (d / "05_guided_search").mkdir()
        (d / "01_behavior_cloning" / "bc_metrics.json").write_text(json.dumps(
            {"expert_fraction": frac, "bc_trajectories": int(200 * frac),
             "per_type": [{"task_type": "x", "mean_reward_x100": 1.0, "success_rate_pct": 0.0},
                          {"task_type": "all", "mean_reward_x100": sft, "success_rate_pct": 10.0}]}))
        pd.DataFrame([{"method": "greedy", "reward_x100_first": sft},
                      {"method": "Best-of-N", "reward_x100_first": sft - 1, "reward_x100_oracle_bestofN": sft + 9},
                      {"method": "QLASS-M2", "reward_x100_first": sft + 1, "reward_x100_oracle_bestofN": sft + 8}]
                     ).to_csv(d / "05_guided_search" / "results.csv", index=False)
        pd.DataFrame([{"score": "first", "A": "QLASS-M2", "B": "greedy", "tasks": 4, "mean_diff": 1.0}]).to_csv(
            d / "05_guided_search" / "comparisons.csv", index=False)
    tab = annotations.write([tmp_path / "r", tmp_path / "r-expert50"], tmp_path / "out")
    comp = pd.read_csv(tmp_path / "out" / "annotations_comparisons.csv")
    assert comp.expert_fraction.tolist() == [1.0, 0.5] and comp.run.tolist() == ["r", "r-expert50"]
    assert list(tab.method) == ["SFT (greedy)", "Best-of-N", "QLASS-M2"] * 2
    assert tab[tab.method == "SFT (greedy)"].reward_x100_first.tolist() == [60.0, 40.0]
    assert tab.bc_trajectories.tolist() == [200] * 3 + [100] * 3
    assert (tmp_path / "out" / "annotations.png").stat().st_size > 1000
    assert annotations.run_id_for("r", 0.25) == "r-expert25" and annotations.run_id_for("r", 1.0) == "r"
