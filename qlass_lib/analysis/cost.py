"""The whole cost of a run, not only the completion tokens of search (paper Fig. 3 counts only those).

From the run's own counters:

- behavior cloning (shared by every method, Best-of-N included): tokens run forward and backward in training;
- exploration trees (QLASS only): tokens generated and prompt tokens run through the policy to generate them;
- QNet training (QLASS only): tokens run forward (and backward, when the backbone trains);
- search, per method and task: completion tokens, prompt tokens, QNet-scored tokens.

Costs are added up as *forward-token equivalents*: a generated, prompt or scored token is one forward pass of one
token; a training token is three (its forward pass and a backward pass of about twice the work).  Wall seconds
are given beside them; prompt tokens are cheap in wall time per token (one batched pass) but cost the same
arithmetic.

**Break-even.** Best-of-N reaches its best oracle reward at ``B`` completion tokens per task; QLASS reaches the
same reward at ``Q`` (``budget_ratio.json``).  Scaled to forward-token equivalents by each method's own ratio of
all its per-task tokens (completion + prompt + QNet) to its completion tokens, QLASS saves ``B' - Q'`` per task and
repays its up-front cost ``U`` (trees + QNet training) after ``U / (B' - Q')`` tasks; it never does when it saves
nothing.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

SCHEMA_VERSION = 1
TRAIN_FACTOR = 3  # forward + backward ≈ 3 forward passes of the same tokens


def _read_json(path: Path):
    from qlass_lib.core.artifacts import read_json
    return read_json(path) if path.is_file() else None


def upfront(run_dir: Path) -> pd.DataFrame:
    """One row per training-time component: generated, prompt, training forward/backward tokens, wall seconds."""
    from qlass_lib.core.series import STAGES
    rows = []
    bc = _read_json(run_dir / STAGES["01"] / "bc_result.json")
    if bc:
        n = sum(h.get("input_tokens", 0) for h in bc["history"] if "train_loss" in h)
        rows.append({"component": "behavior cloning", "qlass_only": False, "generated": 0, "prompt": 0,
                     "train_forward": n, "train_backward": n, "wall_s": bc.get("train_seconds")})
    trees = _read_json(run_dir / STAGES["02"] / "tree_summary.json")
    if trees:
        rows.append({"component": "exploration trees", "qlass_only": True, "generated": trees["gen_tokens"],
                     "prompt": trees.get("prompt_tokens", 0), "train_forward": 0, "train_backward": 0,
                     "wall_s": trees.get("wall_s")})
    q = _read_json(run_dir / STAGES["04"] / "qnet_q" / "result.json")
    if q:
        rows.append({"component": "QNet training", "qlass_only": True, "generated": 0, "prompt": 0,
                     "train_forward": q.get("forward_tokens", 0), "train_backward": q.get("backward_tokens", 0),
                     "wall_s": q.get("train_seconds")})
    df = pd.DataFrame(rows, columns=["component", "qlass_only", "generated", "prompt", "train_forward",
                                     "train_backward", "wall_s"])
    # a backward pass is about twice a forward pass: forward + backward of one token ≈ TRAIN_FACTOR forwards
    df["forward_equivalent"] = (df.generated + df.prompt + df.train_forward
                                + (TRAIN_FACTOR - 1) * df.train_backward)
    return df


def per_task(results: pd.DataFrame) -> pd.DataFrame:
    """Search cost per task and method (from ``results.csv``), in tokens and forward-token equivalents."""
    cols = ["method", "gen_tokens_per_task", "prompt_tokens_per_task", "qnet_tokens_per_task", "wall_s_per_task"]
    df = results[[c for c in cols if c in results]].copy()
    if "prompt_tokens_per_task" not in df:
        df["prompt_tokens_per_task"] = 0.0
    df["forward_equivalent_per_task"] = df.gen_tokens_per_task + df.prompt_tokens_per_task + df.qnet_tokens_per_task
    return df


def break_even(up: pd.DataFrame, search: pd.DataFrame, ratios: dict) -> list[dict]:
    """Per QLASS variant: per-task saving at Best-of-N's best oracle reward and the tasks that repay QLASS's
    up-front cost (None: it never saves, or the reward was not reached)."""
    cost_up = float(up.loc[up.qlass_only, "forward_equivalent"].sum())
    scale = {r.method: (r.forward_equivalent_per_task / r.gen_tokens_per_task if r.gen_tokens_per_task else None)
             for r in search.itertuples()}
    out = []
    for method, r in ratios.items():
        if " vs " in method or method not in scale:
            continue
        b, q = r.get("bon_tokens"), r.get("qlass_tokens_to_reach")
        row = {"method": method, "bon_best_reward_x100": r.get("bon_best_reward_x100"), "bon_completion_tokens": b,
               "qlass_completion_tokens": q, "upfront_forward_equivalent": cost_up, "saving_per_task": None,
               "break_even_tasks": None}
        if b is not None and q is not None and scale.get("BoN") and scale.get(method):
            saving = b * scale["BoN"] - q * scale[method]
            row["saving_per_task"] = saving
            row["break_even_tasks"] = cost_up / saving if saving > 0 else None
        out.append(row)
    return out


def total_cost(run_dir: str | Path, results: pd.DataFrame, ratios: dict) -> dict:
    """Everything above as one JSON-able record (stage 05 writes it as ``total_cost.json``)."""
    up = upfront(Path(run_dir))
    search = per_task(results)
    return {"schema_version": SCHEMA_VERSION, "train_factor": TRAIN_FACTOR, "upfront": up.to_dict("records"),
            "search_per_task": search.to_dict("records"), "break_even": break_even(up, search, ratios)}


def markdown(cost: dict) -> str:
    """The cost record as two small tables and the break-even lines."""
    lines = ["| component | generated | prompt | train fwd | train bwd | fwd-equivalent | wall s |",
             "|---|---|---|---|---|---|---|"]
    for r in cost["upfront"]:
        lines.append(f"| {r['component']}{'' if r['qlass_only'] else ' (all methods)'} | {r['generated']:,} | "
                     f"{r['prompt']:,} | {r['train_forward']:,} | {r['train_backward']:,} | "
                     f"{r['forward_equivalent']:,} | {r['wall_s'] or 0:.0f} |")
    lines += ["", "| method | completion/task | prompt/task | QNet/task | fwd-equivalent/task |", "|---|---|---|---|---|"]
    for r in cost["search_per_task"]:
        lines.append(f"| {r['method']} | {r['gen_tokens_per_task']:.0f} | {r['prompt_tokens_per_task']:.0f} | "
                     f"{r['qnet_tokens_per_task']:.0f} | {r['forward_equivalent_per_task']:.0f} |")
    for b in cost["break_even"]:
        be = b["break_even_tasks"]
        lines.append(f"\n{b['method']}: up-front {b['upfront_forward_equivalent']:,.0f} forward-token equivalents; "
                     + (f"saves {b['saving_per_task']:,.0f} per task at Best-of-N's best oracle reward, repaid after "
                        f"{be:,.0f} tasks" if be is not None else "never repaid (no saving at Best-of-N's best oracle "
                                                                   "reward, or that reward not reached)"))
    return "\n".join(lines)
