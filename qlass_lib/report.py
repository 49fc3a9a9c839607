"""A markdown summary of a finished run, read from its artifacts (``python -m qlass_lib report runs/<id>``)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from qlass_lib.core.series import STAGES


def _md(df: pd.DataFrame, digits: int = 2) -> str:
    df = df.copy()
    for c in df.columns:
        if pd.api.types.is_float_dtype(df[c]):
            df[c] = df[c].round(digits)
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _num(x, spec: str = ".3f") -> str:
    """``x`` formatted, or "n/a" where the artifact holds no number (JSON null: e.g. no validation split)."""
    return "n/a" if x is None or x != x else format(x, spec)


def summarize_run(run_dir: str | Path) -> str:
    """The report of a run; a finished stage whose manifest or files are damaged is an ``ArtifactError``."""
    rd = Path(run_dir)
    out = [f"# Run `{rd.name}`"]
    walls, guards = [], []
    from qlass_lib.core.artifacts import verify_stage
    for key, name in STAGES.items():
        man = verify_stage(rd / name)  # a damaged stage is an error naming it, not a quiet table
        if man is not None:
            walls.append({"stage": name, "wall_s": man["wall_time_s"],
                          "precision": man.get("execution", {}).get("precision", "(not recorded)")})
            guards += [f"{name}/{g}" for g in man.get("wall_clock_guard_hit", [])]
    if walls:
        w = pd.DataFrame(walls)
        out += ["## Stage wall times", _md(w), f"total: {w.wall_s.sum():.0f} s"]
    if guards:
        out += ["**Warning: stopped on a wall-clock guard (numbers depend on this machine's speed):** " + ", ".join(guards)]
    from qlass_lib.stages import stage_module
    r1 = stage_module("01").load(rd / STAGES["01"])
    if "expert_stats" in r1:
        st = r1["expert_stats"]
        out += ["## Expert trajectories", f"{st['kept']} of {st['tasks']} training tasks kept "
                f"({100 * st['success_rate']:.1f}%: replay reached the full score), {st['failed']} failed"]
    if "pretraining" in r1:
        out += ["## Pretraining of the tiny model (copy accuracy: held-out drills with shuffled spans)",
                _md(pd.DataFrame([r1["pretraining"]]), 3)]
    if {"table", "train", "metrics"} <= set(r1):
        res, met = r1["train"], r1["metrics"]
        out += ["## Behavior cloning", f"parameters {met['parameters']:,}; trained {res['train_seconds']:.0f} s, "
                f"{res['steps']} steps, {res['epochs']} epochs, stopped by {res['stopped']}; final train EMA loss "
                f"{_num(res['final_train_ema'])}, validation loss {_num(res['final_val_loss'])}; "
                f"{res['train_tasks']} expert trajectories; evaluated on the {met.get('split', '?')} split",
                _md(r1["table"])]
    if "failures" in r1:
        out += ["Held-out episodes by the expert-script step they missed:", _md(r1["failures"])]
    r2 = stage_module("02").load(rd / STAGES["02"])
    if "summary" in r2:
        out += ["## Trees", _md(pd.DataFrame([r2["summary"]]), 3)]
    r3 = stage_module("03").load(rd / STAGES["03"])
    if "summary" in r3:
        out += ["## Q values", _md(pd.DataFrame([r3["summary"]]), 3)]
    r4 = stage_module("04").load(rd / STAGES["04"])
    if "table" in r4:
        out += ["## QNet (held-out trees)", _md(r4["table"], 3)]
        if "calibration" in r4:
            out += ["calibration (q):", _md(r4["calibration"], 3)]
        if "prior_sweep" in r4:
            out += ["validation sibling accuracy of Q + w·log π (search.prior_weight is w):",
                    _md(r4["prior_sweep"], 3)]
    r5 = stage_module("05").load(rd / STAGES["05"])
    if "table" in r5:
        t = r5["table"]
        keep = [c for c in ["method", "tasks", "seeds", "N", "reward_x100_first", "success_pct_first",
                            "reward_x100_qnet_selected", "success_pct_qnet_selected", "reward_x100_oracle_bestofN",
                            "success_pct_oracle_bestofN", "gen_tokens_per_task", "qnet_tokens_per_task"] if c in t]
        split = r5.get("summary", {}).get("split", "?")
        out += [f"## Search ({split} split; first trajectory = no selection; QNet-selected = no reward read; "
                "oracle = best of N by env outcome)", _md(t[keep])]
        ee = r5.get("summary", {}).get("env_errors")
        if ee:
            out += [f"search episodes with an environment exception: {ee['with_env_errors']} of {ee['records']}"]
        if "comparisons" in r5:
            out += ["paired differences A - B (reward x100 per task, seeds averaged; bootstrap 95% interval):",
                    _md(r5["comparisons"], 2)]
        if "ratios" in r5:
            out += ["budget ratio (tokens QLASS needs to reach Best-of-N's best oracle reward / Best-of-N's tokens):",
                    _md(pd.DataFrame([{"method": k, **v} for k, v in r5["ratios"].items()]), 3)]
        if "cost" in r5:
            from qlass_lib.analysis.cost import markdown as cost_markdown
            out += ["## The whole cost (forward-token equivalents: generated, prompt and scored tokens once, training "
                    "tokens three times)", cost_markdown(r5["cost"])]
        if "ablation" in r5:
            out += ["## Process-reward ablation", _md(r5["ablation"])]
            if "ablation_comparisons" in r5:
                out += [_md(r5["ablation_comparisons"], 2)]
    for d in sorted((rd / "lookahead").glob("*/lookahead_results.csv")):
        d = d.parent
        out += [f"## Lookahead diagnostic ({d.name}; the `lookahead` ranker reads rewards of unexecuted candidates: "
                "an oracle, not a method)", _md(pd.read_csv(d / "lookahead_results.csv")),
                _md(pd.read_csv(d / "lookahead_comparisons.csv"), 2),
                "top-1 ranking accuracy against lookahead values at the decisive states search visited:",
                _md(pd.read_csv(d / "lookahead_ranking.csv"), 3)]
    r6 = stage_module("06").load(rd / STAGES["06"])
    if "results" in r6:
        out += ["## Self-training (held-out greedy reward of each fine-tuned policy; bootstrap 95% intervals)",
                _md(r6["results"])]
        if "generation" in r6:
            out += ["data generated on training tasks (rewards read there: that is how training data is chosen):",
                    _md(r6["generation"])]
        if "comparisons" in r6:
            out += ["paired differences A - B (held-out reward x100 per task):", _md(r6["comparisons"], 2)]
    return "\n\n".join(out) + "\n"
