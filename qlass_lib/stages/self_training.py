"""Stage 06 · self-training (optional: ``self_training.enabled``): QLASS-ST with the QNet of every target in
``self_training.targets`` (the paper's process-reward comparison), the RFT baseline at the same generated tokens
per task, one fine-tune each from stage 01's base with the BC recipe, and a greedy evaluation on stage 01's
held-out tasks, compared with SFT (stage 01's policy) as paired per-task differences.

Artifacts (``runs/<id>/06_self_training/``): ``generation.jsonl`` (every generated training episode),
``data/<method>.jsonl`` (the kept trajectories), ``finetune/<method>/`` (policy, ``bc_result.json``),
``eval_<method>.jsonl``, ``generation.csv``, ``results.csv``, ``comparisons.csv``, ``self_training.png``,
``self_training.json``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from qlass_lib.stages import close_figure


@dataclass
class SelfTrainingResult:
    out: Path
    description: str             # tasks, M, N, the keep rule
    generation: pd.DataFrame     # generation.csv: per method, what was generated on training tasks and kept
    results: pd.DataFrame        # results.csv: held-out greedy reward with bootstrap intervals, per policy
    comparisons: pd.DataFrame    # comparisons.csv: paired per-task differences
    summary: dict                # self_training.json
    figures: dict = field(default_factory=dict)


def run(ctx) -> SelfTrainingResult:
    import gc

    from qlass_lib.method import self_training as st_lib
    from qlass_lib.viz import plots
    from qlass_lib.models.policy import Policy
    from qlass_lib.core.artifacts import read_json, read_jsonl, write_json, write_jsonl
    from qlass_lib.method.fit import fit_policy
    from qlass_lib.core.series import STAGES
    from qlass_lib.envs import eval_tasks, make_env
    from qlass_lib.method.qnet import load_qnet
    from qlass_lib.method.tree import tree_tasks
    cfg, st, out = ctx.cfg, ctx.cfg.self_training, ctx.stage_dir("06")
    example = ctx.example()
    env = make_env(cfg.env)
    try:
        policy = ctx.policy(env.name)
        tasks = tree_tasks(env, cfg, st.tasks_per_type)
        desc = (f"{len(tasks)} training tasks; Q-guided generation M={st.m_candidates}, N={st.trajectories_per_task}, "
                f"T={st.sampling.temperature}; kept when reward >= {st.min_reward}; RFT at the same tokens per task: "
                f"{st.rft}")
        generated: dict[str, list[dict]] = {}
        for target in st.targets:
            qnet = load_qnet(ctx.run_dir / STAGES["04"] / f"qnet_{target}", cfg.model)
            method = st_lib.TARGET_METHODS[target]
            generated[method] = st_lib.guided_generation(env, tasks, policy, qnet, st, out / "generation.jsonl",
                                                         method, cfg.seed, example)
            del qnet
            gc.collect()
        if st.rft:
            reference = generated[st_lib.TARGET_METHODS[st.targets[0]]] if st.targets else []
            budget = st_lib.tokens_per_task(reference)
            generated["RFT"] = st_lib.rft_generation(env, tasks, policy, st.sampling, budget, st.rft_max_per_task,
                                                     out / "generation.jsonl", cfg.seed, example)
        experts, base = ctx.expert_records(), ctx.bc_base()
        ft_cfg = finetune_config(cfg)
        held_out = eval_tasks(env, cfg.env)
        evals = {"SFT": [e for e in read_jsonl(ctx.run_dir / STAGES["01"] / "eval_episodes.jsonl")
                         if e["task"] in {t.id for t in held_out}]}
        kept_counts = {}
        train = {"SFT": read_json(ctx.run_dir / STAGES["01"] / "bc_result.json")}
        for seed in st.control_seeds:  # the noise floor: SFT's own data, another batch order
            method = f"SFT (seed {seed})"
            model, tok, train[method] = fit_policy(ft_cfg, experts, base, out / "finetune" / f"sft_seed{seed}",
                                                   pretrain=False, train_seed=seed)
            evals[method] = _evaluate(env, held_out, Policy(model, tok, cfg.model, cfg.bc.max_length, env.name, cfg.env.max_action_tokens),
                                      out / f"eval_sft_seed{seed}.jsonl", method, example)
        for method, eps in generated.items():
            kept, kept_counts[method] = st_lib.select(eps, st.min_reward)
            records = [st_lib.episode_record(e, env.name, example) for e in kept]
            name = st_lib.slug(method)
            write_jsonl(out / "data" / f"{name}.jsonl", records)  # a pure function of the generation log
            model, tok, train[method] = fit_policy(ft_cfg, experts, base, out / "finetune" / name, extra_train=records,
                                                   pretrain=False)
            evals[method] = _evaluate(env, held_out, Policy(model, tok, cfg.model, cfg.bc.max_length, env.name, cfg.env.max_action_tokens),
                                      out / f"eval_{name}.jsonl", method, example)
            del model
            gc.collect()
    finally:
        env.close()
    gen = st_lib.generation_table(generated, kept_counts)
    results = st_lib.results_table(evals, train)
    comp = st_lib.comparisons(evals, st_lib.standard_pairs(list(evals)))
    gen.to_csv(out / "generation.csv", index=False)
    results.to_csv(out / "results.csv", index=False)
    comp.to_csv(out / "comparisons.csv", index=False)
    summary = {"schema_version": 1, "split": cfg.env.eval_split, "training_tasks": len(tasks),
               "eval_tasks": len(held_out), "description": desc, "kept": kept_counts,
               "train": {m: {k: v for k, v in r.items() if k != "history"} for m, r in train.items()}}
    write_json(out / "self_training.json", summary)
    figures = {"bars": out / "self_training.png"}
    close_figure(plots.self_training_bars(results, figures["bars"]))
    return SelfTrainingResult(out, desc, gen, results, comp, summary, figures)


def finetune_config(cfg):
    """The run config with which stage 06 fine-tunes: the BC recipe, its step cap replaced by
    ``self_training.max_steps`` when that is set."""
    import dataclasses
    if cfg.self_training.max_steps is None:
        return cfg
    return dataclasses.replace(cfg, bc=dataclasses.replace(cfg.bc, max_steps=cfg.self_training.max_steps))


def _evaluate(env, tasks, policy, path: Path, method: str, example) -> list[dict]:
    """Greedy episodes of a fine-tuned policy on the held-out tasks (resumable)."""
    from qlass_lib.method.rollout import greedy_chooser
    from qlass_lib.method.evaluation import evaluate
    from qlass_lib.method.executor import local
    return evaluate(local(env, policy, example=example), tasks, lambda ws, budget: greedy_chooser(ws.policy, budget),
                    path, desc=f"greedy eval {method}")


def load(stage_dir: Path) -> dict:
    """What a finished stage 06 wrote, for ``report`` (nothing when the stage is off)."""
    d, out = Path(stage_dir), {}
    for key, name in (("results", "results.csv"), ("comparisons", "comparisons.csv"), ("generation", "generation.csv")):
        if (d / name).is_file():
            out[key] = pd.read_csv(d / name)
    return out
