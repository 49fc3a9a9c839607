"""Stage 01 · behavior cloning: expert trajectories, the base model, BC with the loss on agent turns only, and a
greedy evaluation of the cloned policy on held-out tasks.

Artifacts (``runs/<id>/01_behavior_cloning/``): ``expert.jsonl``, ``expert_stats.json``, ``prompt_example.json``,
``policy/``, ``bc_result.json``, ``bc_loss.png``, ``eval_episodes.jsonl``, ``bc_eval.csv``, ``bc_eval.png``,
``bc_metrics.json``, and where the environment has a failure analysis (WebShop, ALFWorld) ``bc_failures.csv`` (episodes
per expert-script step missed) with ``bc_failure_episodes.csv``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from qlass_lib.stages import close_figure


@dataclass
class BCResult:
    out: Path
    expert_stats: dict
    experts_per_type: pd.DataFrame       # trajectories and mean agent turns per task type
    example_conversation: str            # the start of the first expert record, as the model sees it
    example: list | None                 # the one-shot demonstration (None unless expert.one_shot)
    base: str                            # the base model directory or id
    parameters: int
    train: dict                          # bc_result.json: steps, epochs, losses, why training stopped
    episodes: list[dict]                 # greedy held-out episodes
    table: pd.DataFrame                  # bc_eval.csv: reward, success, steps, tokens per task type
    metrics: dict                        # bc_metrics.json
    figures: dict = field(default_factory=dict)  # name -> PNG path
    failures: pd.DataFrame | None = None  # bc_failures.csv: held-out episodes per expert-script step missed
    pretraining: pd.DataFrame | None = None  # the tiny model's pretraining phases (copy drills, expert text), if any

    @property
    def train_summary(self) -> pd.DataFrame:
        return pd.DataFrame([{k: v for k, v in self.train.items() if k != "history"}]).T.rename(columns={0: "value"})

    def best_episode(self) -> pd.DataFrame:
        ep = max(self.episodes, key=lambda e: e["reward"])
        return pd.DataFrame(ep["turns"])[["action", "observation", "score"]].head(20).assign(task=ep["task"])


def run(ctx) -> BCResult:
    from qlass_lib.text import expert
    from qlass_lib.models import loading as models
    from qlass_lib.viz import plots
    from qlass_lib.models.policy import Policy
    from qlass_lib.method.rollout import greedy_chooser
    from qlass_lib.core.artifacts import write_json
    from qlass_lib.envs import eval_tasks, make_env
    from qlass_lib.method.evaluation import check_env_errors, evaluate, summarize
    from qlass_lib.method.executor import make_executor
    from qlass_lib.method.fit import fit_policy
    from qlass_lib.analysis.failures import failure_analysis
    cfg, out = ctx.cfg, ctx.stage_dir("01")
    env = make_env(cfg.env)
    try:
        records, stats = expert.prepare(cfg, env, out, ctx.resolve)
        example = expert.one_shot_example(records) if cfg.expert.one_shot else None
        records = expert.with_example(records, env.name, example)
        records = expert.expert_subset(records, cfg.bc.expert_fraction)  # fewer annotations: the first share per type
        write_json(out / "prompt_example.json", example)
        per_type = pd.DataFrame([{"task_type": r["task_type"],
                                  "agent_turns": sum(c["from"] == "gpt" for c in r["conversations"])} for r in records])
        per_type = per_type.groupby("task_type").agg(trajectories=("agent_turns", "size"),
                                                     mean_turns=("agent_turns", "mean"))
        conv = records[0]["conversations"]
        shown = conv[0]["value"][:600] + " ...\n" + "\n".join(c["value"] for c in conv[1:7])

        base = models.prepare_base(cfg.model, out, lambda: ["\n".join(c["value"] for c in r["conversations"])
                                                            for r in records], cfg.seed)
        model, tokenizer, result = fit_policy(cfg, records, base, out)
        figures = {"loss": out / "bc_loss.png"}
        close_figure(plots.loss_curves(result["history"], figures["loss"]))

        action_tokens = _action_token_stats(cfg, tokenizer, records)
        policy = Policy(model, tokenizer, cfg.model, cfg.bc.max_length, env.name, cfg.env.max_action_tokens)
        runner = make_executor(ctx, env, policy, backend="hf")  # the policy just trained, in-process or per worker
        try:
            episodes = evaluate(runner, eval_tasks(env, cfg.env), lambda ws, budget: greedy_chooser(ws.policy, budget),
                                out / "eval_episodes.jsonl", desc="greedy eval")
        finally:
            runner.close()
        env_errors = check_env_errors(episodes, cfg.env.max_error_share, "evaluation episodes")
        failures = failure_analysis(env, episodes)
    finally:
        env.close()
    table = summarize(episodes)
    table.to_csv(out / "bc_eval.csv", index=False)
    if failures is not None:
        failures[0].to_csv(out / "bc_failure_episodes.csv", index=False)
        failures[1].to_csv(out / "bc_failures.csv", index=False)
    n_params = models.count_parameters(model)
    metrics = {"schema_version": 1, "split": cfg.env.eval_split, "per_type": table.to_dict("records"),
               "bc_trajectories": len(records), "expert_fraction": cfg.bc.expert_fraction,
               "parameters": n_params, "train_seconds": result["train_seconds"], "env_errors": env_errors,
               "expert_action_tokens": action_tokens}
    write_json(out / "bc_metrics.json", metrics)
    figures["eval"] = out / "bc_eval.png"
    close_figure(plots.bar_by_group(table, "task_type", "mean_reward_x100", figures["eval"],
                                    "greedy BC policy, held out"))
    pre = _pretraining(out)
    return BCResult(out, stats, per_type, shown, example, str(base), n_params, result, episodes, table, metrics,
                    figures, failures[1] if failures is not None else None,
                    pd.DataFrame([pre]) if pre else None)


def _action_token_stats(cfg, tokenizer, records: list[dict]) -> dict:
    """Token lengths of the expert's agent turns, and every generation cap of the run that is shorter than the
    longest turn (+1 for the end-of-turn token), with a warning: a capped turn is cut mid-action (a WebShop
    query loses its end and becomes an invalid action)."""
    import warnings
    lengths = sorted(len(tokenizer(c["value"], add_special_tokens=False)["input_ids"])
                     for r in records for c in r["conversations"] if c["from"] == "gpt")
    if not lengths:
        return {}
    caps = {"env.max_action_tokens": cfg.env.max_action_tokens, "tree.sampling.max_new_tokens":
            cfg.tree.sampling.max_new_tokens, "search.sampling.max_new_tokens": cfg.search.sampling.max_new_tokens}
    short = {k: v for k, v in caps.items() if v < lengths[-1] + 1}
    if short:
        warnings.warn(f"generation caps shorter than the longest expert turn ({lengths[-1]} tokens + end of turn): "
                      f"{short}; turns that long are cut mid-action")
    return {"median": lengths[len(lengths) // 2], "p99": lengths[int(0.99 * (len(lengths) - 1))], "max": lengths[-1],
            "caps_below_max": short}


def _pretraining(stage_dir: Path) -> dict | None:
    from qlass_lib.core.artifacts import read_json
    from qlass_lib.method.pretrain import summary
    f = Path(stage_dir) / "pretrained_base" / "pretrain_result.json"
    return summary(read_json(f)) if f.is_file() else None


def load(stage_dir: Path) -> dict:
    """What a finished stage 01 wrote, for ``report`` (missing files are left out)."""
    from qlass_lib.core.artifacts import read_json
    d, out = Path(stage_dir), {}
    for key, name in (("expert_stats", "expert_stats.json"), ("train", "bc_result.json"), ("metrics", "bc_metrics.json")):
        if (d / name).is_file():
            out[key] = read_json(d / name)
    if (d / "bc_eval.csv").is_file():
        out["table"] = pd.read_csv(d / "bc_eval.csv")
    if (d / "bc_failures.csv").is_file():
        out["failures"] = pd.read_csv(d / "bc_failures.csv")
    pre = _pretraining(d)
    if pre:
        out["pretraining"] = pre
    return out
