"""The whole-cost accounting (qlass_lib.analysis.cost) by hand on a made-up run."""
import json

import pandas as pd
import pytest

from qlass_lib.analysis import cost


def _run(tmp_path):
    (tmp_path / "01_behavior_cloning").mkdir()
    (tmp_path / "02_tree_construction").mkdir()
    (tmp_path / "04_qnet_training" / "qnet_q").mkdir(parents=True)
    (tmp_path / "01_behavior_cloning" / "bc_result.json").write_text(json.dumps(
        {"history": [{"step": 1, "train_loss": 1.0, "input_tokens": 1000}, {"step": 1, "val_loss": 0.5},
                     {"step": 2, "train_loss": 0.8, "input_tokens": 500}], "train_seconds": 30.0}))
    (tmp_path / "02_tree_construction" / "tree_summary.json").write_text(json.dumps(
        {"gen_tokens": 400, "prompt_tokens": 2000, "wall_s": 60.0}))
    (tmp_path / "04_qnet_training" / "qnet_q" / "result.json").write_text(json.dumps(
        {"forward_tokens": 3000, "backward_tokens": 1000, "train_seconds": 20.0}))
    return tmp_path


def test_upfront_costs_by_hand(tmp_path):
    up = cost.upfront(_run(tmp_path)).set_index("component")
    assert up.loc["behavior cloning", "forward_equivalent"] == 1500 * 3 and not up.loc["behavior cloning", "qlass_only"]
    assert up.loc["exploration trees", "forward_equivalent"] == 2400
    assert up.loc["QNet training", "forward_equivalent"] == 3000 + 2 * 1000


def test_break_even_by_hand(tmp_path):
    results = pd.DataFrame([
        {"method": "BoN", "gen_tokens_per_task": 100.0, "prompt_tokens_per_task": 300.0, "qnet_tokens_per_task": 0.0},
        {"method": "QLASS-M2", "gen_tokens_per_task": 200.0, "prompt_tokens_per_task": 200.0,
         "qnet_tokens_per_task": 200.0},
        {"method": "QLASS-M4", "gen_tokens_per_task": 400.0, "prompt_tokens_per_task": 200.0,
         "qnet_tokens_per_task": 600.0}])
    ratios = {"QLASS-M2": {"bon_best_reward_x100": 50.0, "bon_tokens": 100.0, "qlass_tokens_to_reach": 20.0},
              "QLASS-M4": {"bon_best_reward_x100": 50.0, "bon_tokens": 100.0, "qlass_tokens_to_reach": 150.0}}
    c = cost.total_cost(_run(tmp_path), results, ratios)
    be = {b["method"]: b for b in c["break_even"]}
    # BoN: 4 forward-equivalents per completion token -> 400 per task; QLASS-M2: 3 per token -> 60; up-front 7400
    assert be["QLASS-M2"]["saving_per_task"] == pytest.approx(340.0)
    assert be["QLASS-M2"]["break_even_tasks"] == pytest.approx(7400 / 340)
    # QLASS-M4: 3 per token x 150 = 450 > 400: no saving, never repaid
    assert be["QLASS-M4"]["saving_per_task"] == pytest.approx(-50.0) and be["QLASS-M4"]["break_even_tasks"] is None
    text = cost.markdown(c)
    assert "repaid after 22 tasks" in text and "never repaid" in text
    json.dumps(c)  # JSON-able as written
