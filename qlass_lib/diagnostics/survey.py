"""Task-type survey: which task types give the cloned policy skill that still errs (the regime QLASS is for).

From the BC policy of a run's stage 01, per task type, on the **dev** split (never test: the survey chooses
settings): the expert's gold-path length, the policy's greedy reward and success, and its per-step error
rate under teacher forcing (at each state of a dev expert trajectory, is the greedy action the expert's?
An action that is also right but differs from the expert's counts as an error, so this is an upper bound).
``python -m qlass_lib.diagnostics.survey runs/<run_id>`` writes ``survey/task_types.csv`` (resumable).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from qlass_lib.text import prompts
from qlass_lib.core.artifacts import read_jsonl, write_json
from qlass_lib.core.series import STAGES
from qlass_lib.run.context import RunContext
from qlass_lib.text.expert import generate_expert, to_messages


def step_errors(policy, records: list[dict]) -> pd.DataFrame:
    """Per expert record and step: the greedy action at the expert's state and whether it matches."""
    rows = []
    for r in tqdm(records, desc="teacher-forced steps"):
        msgs = to_messages(r["conversations"])
        k = 0
        for i, m in enumerate(msgs):
            if m["role"] != "assistant" or k >= len(r["actions"]):
                continue
            cand = policy.propose(msgs[:i], 1, None)[0]
            want = r["actions"][k]
            rows.append({"task": r["id"], "task_type": r["task_type"], "step": k, "expert": want,
                         "policy": cand.action,
                         "error": prompts.normalize_action(cand.action) != prompts.normalize_action(want)})
            k += 1
    return pd.DataFrame(rows)


def survey(run_dir: str | Path) -> pd.DataFrame:
    rd = Path(run_dir)
    ctx = RunContext.open(str(rd / "params.json"), str(rd))
    cfg = ctx.cfg
    from qlass_lib.method.rollout import greedy_chooser
    from qlass_lib.envs import make_env, per_type
    from qlass_lib.method.evaluation import evaluate
    from qlass_lib.method.executor import local
    out = rd / "survey"
    out.mkdir(exist_ok=True)
    env = make_env(cfg.env)
    tasks = per_type(env.tasks("dev"), cfg.env.eval_per_type)
    teleport = cfg.env.name == "scienceworld" and "easy" in cfg.env.simplifications.split(",")
    generate_expert(env, tasks, out / "dev_expert.jsonl", cfg.expert.thoughts, cfg.expert.look_on_arrival,
                    teleport=teleport)
    dev = read_jsonl(out / "dev_expert.jsonl")
    policy = ctx.policy(env.name)
    episodes = evaluate(local(env, policy), tasks, lambda ws, b: greedy_chooser(ws.policy, b),
                        out / "dev_eval_episodes.jsonl", desc="dev greedy")
    steps = step_errors(policy, dev)
    steps.to_csv(out / "teacher_forced_steps.csv", index=False)
    train = read_jsonl(rd / STAGES["01"] / "expert.jsonl")
    evals = pd.DataFrame(episodes)
    rows = []
    for tt in cfg.env.task_types:
        tr = [len(r["actions"]) for r in train if r["task_type"] == tt]
        dv = [len(r["actions"]) for r in dev if r["task_type"] == tt]
        ev = evals[evals.task_type == tt] if len(evals) else evals
        st = steps[steps.task_type == tt] if len(steps) else steps
        rows.append({"task_type": tt, "train_experts": len(tr), "gold_steps_mean": sum(dv + tr) / max(1, len(dv + tr)),
                     "dev_episodes": len(ev), "bc_reward_x100": 100 * ev.reward.mean() if len(ev) else float("nan"),
                     "bc_success_pct": 100 * ev.success.mean() if len(ev) else float("nan"),
                     "bc_steps_mean": ev.steps.mean() if len(ev) else float("nan"),
                     "step_error_pct": 100 * st.error.mean() if len(st) else float("nan"),
                     "teacher_forced_steps": len(st)})
    table = pd.DataFrame(rows)
    table.to_csv(out / "task_types.csv", index=False)
    write_json(out / "survey.json", {"schema_version": 1, "split": "dev", "rows": table.to_dict("records")})
    env.close()
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m qlass_lib.diagnostics.survey", description=__doc__)
    ap.add_argument("run_dir")
    args = ap.parse_args(argv)
    print(survey(args.run_dir).round(2).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
