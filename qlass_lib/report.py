"""A markdown summary of a finished run, read from its artifacts (``python -m qlass_lib report runs/<id>``)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .context import STAGES


def _md(df: pd.DataFrame, digits: int = 2) -> str:
    df = df.copy()
    for c in df.columns:
        if pd.api.types.is_float_dtype(df[c]):
            df[c] = df[c].round(digits)
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def summarize_run(run_dir: str | Path) -> str:
    rd = Path(run_dir)
    out = [f"# Run `{rd.name}`"]
    walls, guards = [], []
    for key, name in STAGES.items():
        m = rd / name / "manifest.json"
        if m.is_file():
            man = json.loads(m.read_text())
            walls.append({"stage": name, "wall_s": man["wall_time_s"]})
            guards += [f"{name}/{g}" for g in man.get("wall_clock_guard_hit", [])]
    if walls:
        w = pd.DataFrame(walls)
        out += ["## Stage wall times", _md(w), f"total: {w.wall_s.sum():.0f} s"]
    if guards:
        out += ["**Warning: stopped on a wall-clock guard (numbers depend on this machine's speed):** " + ", ".join(guards)]
    s1 = rd / STAGES["01"]
    if (s1 / "expert_stats.json").is_file():
        st = json.loads((s1 / "expert_stats.json").read_text())
        out += ["## Expert trajectories", f"{st['kept']} of {st['tasks']} training tasks kept "
                f"({100 * st['success_rate']:.1f}%: replay reached the full score), {st['failed']} failed"]
    if (s1 / "bc_eval.csv").is_file():
        res = json.loads((s1 / "bc_result.json").read_text())
        met = json.loads((s1 / "bc_metrics.json").read_text())
        out += ["## Behavior cloning", f"parameters {met['parameters']:,}; trained {res['train_seconds']:.0f} s, "
                f"{res['steps']} steps, {res['epochs']} epochs, stopped by {res['stopped']}; final train EMA loss "
                f"{res['final_train_ema']:.3f}, validation loss {res['final_val_loss']:.3f}; "
                f"{res['train_tasks']} expert trajectories", _md(pd.read_csv(s1 / "bc_eval.csv"))]
    s2 = rd / STAGES["02"]
    if (s2 / "tree_summary.json").is_file():
        out += ["## Trees", _md(pd.DataFrame([json.loads((s2 / "tree_summary.json").read_text())]), 3)]
    s3 = rd / STAGES["03"]
    if (s3 / "q_summary.json").is_file():
        out += ["## Q values", _md(pd.DataFrame([json.loads((s3 / "q_summary.json").read_text())]), 3)]
    s4 = rd / STAGES["04"]
    if (s4 / "qnet_metrics.csv").is_file():
        out += ["## QNet (held-out trees)", _md(pd.read_csv(s4 / "qnet_metrics.csv"), 3),
                "calibration (q):", _md(pd.read_csv(s4 / "calibration.csv"), 3)]
    s5 = rd / STAGES["05"]
    if (s5 / "results.csv").is_file():
        t = pd.read_csv(s5 / "results.csv")
        keep = [c for c in ["method", "tasks", "seeds", "N", "reward_x100_first", "success_pct_first",
                            "reward_x100_qnet_selected", "success_pct_qnet_selected", "reward_x100_oracle_bestofN",
                            "success_pct_oracle_bestofN", "gen_tokens_per_task", "qnet_tokens_per_task"] if c in t]
        out += ["## Search (first trajectory = no selection; QNet-selected = no reward read; oracle = best of N by "
                "env outcome)", _md(t[keep])]
        summ = s5 / "search_summary.json"
        if summ.is_file() and "env_errors" in json.loads(summ.read_text()):
            ee = json.loads(summ.read_text())["env_errors"]
            out += [f"search episodes with an environment exception: {ee['with_env_errors']} of {ee['records']}"]
        if (s5 / "comparisons.csv").is_file():
            out += ["paired differences A - B (reward x100 per task, seeds averaged; bootstrap 95% interval):",
                    _md(pd.read_csv(s5 / "comparisons.csv"), 2)]
        ratio = json.loads((s5 / "budget_ratio.json").read_text())
        out += ["budget ratio (tokens QLASS needs to reach Best-of-N's best oracle reward / Best-of-N's tokens):",
                _md(pd.DataFrame([{"method": k, **v} for k, v in ratio.items()]), 3)]
        if (s5 / "ablation.csv").is_file():
            out += ["## Process-reward ablation", _md(pd.read_csv(s5 / "ablation.csv"))]
            if (s5 / "ablation_comparisons.csv").is_file():
                out += [_md(pd.read_csv(s5 / "ablation_comparisons.csv"), 2)]
    return "\n\n".join(out) + "\n"
