"""Cell sources of the notebook series (see make_notebooks.py)."""

SETUP = '''%matplotlib inline
import pandas as pd
from IPython.display import display, Markdown
from qlass_lib.context import RunContext
ctx = RunContext.open(params_path, run_dir, overrides)
cfg = ctx.cfg
print("run folder:", ctx.run_dir)'''

NB01 = [
    ("md", """
# 01 · Behavior cloning

QLASS starts from an agent that imitates expert ReAct trajectories. This notebook

1. generates expert trajectories from ScienceWorld's gold action paths (replay-checked to reach the full score),
2. builds the embedded tiny Llama (or loads any Hugging Face causal LM named in the params),
3. fine-tunes it with the loss on the agent's turns only,
4. evaluates the cloned policy greedily on held-out variations.

All logic lives in `qlass_lib`; this notebook wires it and shows tables and plots.
"""),
    ("params", ""),
    ("code", SETUP + '''
out = ctx.stage_dir("01")'''),
    ("md", "## Expert trajectories"),
    ("code", '''
from qlass_lib.envs import make_env
from qlass_lib import expert
env = make_env(cfg.env)
records, stats = expert.prepare(cfg, env, out, ctx.resolve)
example = expert.one_shot_example(records) if cfg.expert.one_shot else None  # optional one-shot demonstration
records = expert.with_example(records, env.name, example)
from qlass_lib.artifacts import write_json
write_json(out / "prompt_example.json", example)
display(pd.DataFrame([stats]))
per_type = pd.DataFrame([{"task_type": r["task_type"], "agent_turns": sum(c["from"] == "gpt" for c in r["conversations"])}
                         for r in records]).groupby("task_type").agg(trajectories=("agent_turns", "size"),
                                                                      mean_turns=("agent_turns", "mean"))
display(per_type)
print(records[0]["conversations"][0]["value"][:600], "...")
print("\\n".join(c["value"] for c in records[0]["conversations"][1:7]))'''),
    ("md", "## Model"),
    ("code", '''
from qlass_lib import models, bc
from qlass_lib.expert import to_messages
base = models.prepare_base(cfg.model, out, lambda: ["\\n".join(c["value"] for c in r["conversations"]) for r in records], cfg.seed)
print("base model:", base)'''),
    ("md", "## Training (loss on agent turns only)"),
    ("code", '''
model, tokenizer, result = bc.fit_policy(cfg, records, base, out)
print(f"parameters: {models.count_parameters(model):,}")
display(pd.DataFrame([{k: v for k, v in result.items() if k != "history"}]).T.rename(columns={0: "value"}))'''),
    ("code", '''
from qlass_lib import plots
plots.loss_curves(result["history"], out / "bc_loss.png");'''),
    ("md", "## Held-out evaluation (greedy)"),
    ("code", '''
from qlass_lib.agent import Policy, greedy_chooser
from qlass_lib.envs import eval_tasks
from qlass_lib.evaluation import evaluate, summarize
from qlass_lib.artifacts import write_json
policy = Policy(model, tokenizer, cfg.model, cfg.bc.max_length, env.name)
tasks = eval_tasks(env, cfg.env)
episodes = evaluate(env, tasks, lambda budget: greedy_chooser(policy, budget), out / "eval_episodes.jsonl",
                    desc="greedy eval", example=example)
from qlass_lib.evaluation import check_env_errors
env_errors = check_env_errors(episodes, cfg.env.max_error_share, "evaluation episodes")
table = summarize(episodes)
table.to_csv(out / "bc_eval.csv", index=False)
write_json(out / "bc_metrics.json", {"schema_version": 1, "split": cfg.env.eval_split, "per_type": table.to_dict("records"),
                                     "parameters": models.count_parameters(model),
                                     "train_seconds": result["train_seconds"], "env_errors": env_errors})
display(table.round(2))
plots.bar_by_group(table, "task_type", "mean_reward_x100", out / "bc_eval.png", "greedy BC policy, held out");'''),
    ("code", '''
ep = max(episodes, key=lambda e: e["reward"])
print(ep["task"], "reward", ep["reward"])
display(pd.DataFrame(ep["turns"])[["action", "observation", "score"]].head(20))'''),
    ("code", "env.close()"),
]

NOTEBOOKS = {"01_behavior_cloning": NB01}

NB02 = [
    ("md", """
# 02 · Exploration trees

For each training task the behavior-cloned policy explores a tree (paper Algorithm 3): the root is the task
prompt, the expert trajectory is attached as a branch, and nodes up to depth D get W distinct children, each
rolled out to the end. Branches whose rollout ends with zero reward are not expanded further (pre-pruning).
Trees are appended to `trees.jsonl` as each task finishes, so an interrupted run resumes where it stopped.
"""),
    ("params", ""),
    ("code", SETUP + '''
out = ctx.stage_dir("02")'''),
    ("code", '''
from qlass_lib.envs import make_env, per_type
from qlass_lib.tree import TreeBuilder, build_trees, stats_frame, Tree, tree_tasks
env = make_env(cfg.env)
policy = ctx.policy(env.name)
tasks = tree_tasks(env, cfg)  # disjoint from BC's tasks when tree.disjoint_from_bc
expert = ctx.expert_actions() if cfg.tree.attach_expert else {}
print(f"{len(tasks)} training tasks; D={cfg.tree.depth} W={cfg.tree.width} max rollouts={cfg.tree.max_rollouts} "
      f"T={cfg.tree.sampling.temperature}; expert branches available for {sum(t.id in expert for t in tasks)}")
builder = TreeBuilder(env, policy, cfg.tree, example=ctx.example())
records = build_trees(builder, tasks, out / "trees.jsonl", expert, cfg.seed)
from qlass_lib.evaluation import check_env_errors
env_errors = check_env_errors(records, cfg.env.max_error_share, "trees")'''),
    ("md", "## Tree statistics"),
    ("code", '''
stats = stats_frame(records)
stats.to_csv(out / "tree_stats.csv", index=False)
summary = {
    "trees": len(stats), "mean_nodes": stats.nodes.mean(), "mean_branching": stats.mean_branching.mean(),
    "share_pruned": stats.pruned.sum() / max(1, (stats.pruned + stats.expanded).sum()),
    "duplicates_rejected": int(stats.duplicates_rejected.sum()),
    "share_trees_with_nonzero_leaf": (stats.nonzero_leaves > 0).mean(),
    "share_trees_with_nonzero_policy_leaf": (stats.nonzero_policy_leaves > 0).mean(),
    "env_steps": int(stats.env_steps.sum()), "replay_mismatches": int(stats.replay_mismatches.sum()),
    "trees_with_env_errors": env_errors["with_env_errors"],
    "gen_tokens": int(stats.gen_tokens.sum()), "gen_s": stats.gen_s.sum(), "env_s": stats.env_s.sum(),
    "wall_s": stats.wall_s.sum()}
from qlass_lib.artifacts import write_json
write_json(out / "tree_summary.json", summary)
display(pd.DataFrame([summary]).T.rename(columns={0: "value"}))
display(stats.groupby("task_type")[["nodes", "max_depth", "mean_branching", "share_pruned", "duplicates_rejected",
                                    "nonzero_leaves", "env_steps", "gen_tokens", "wall_s"]].mean().round(2))'''),
    ("code", '''
import matplotlib.pyplot as plt
from qlass_lib import plots
fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
stats.nodes.plot.hist(ax=axes[0], bins=15, title="nodes per tree")
depths = pd.Series([n["depth"] for r in records for n in r["nodes"]])
depths.value_counts().sort_index().plot.bar(ax=axes[1], title="nodes by depth")
stats[["gen_s", "env_s"]].sum().plot.bar(ax=axes[2], title="time (s): generation vs env")
plots.save(fig, out / "tree_stats.png");'''),
    ("md", "## Inspect one tree\\nThe widget is interactive in JupyterLab; the static rendering below it survives in executed notebooks."),
    ("code", '''
from qlass_lib import qvalues
from qlass_lib.widgets import TreeInspector, render_html, plot_tree
from IPython.display import HTML
tree = Tree.from_dict(max(records, key=lambda r: (r["stats"]["nonzero_leaves"] > 0, r["stats"]["nodes"])))
qvalues.compute([tree], cfg.qvalues.gamma, "tree")  # for display; stage 03 computes the stored values
TreeInspector(tree)'''),
    ("code", '''
plot_tree(tree, out / "example_tree.png")
HTML(render_html(tree, max_depth=cfg.tree.depth + 2))'''),
    ("code", "env.close()"),
]

NB03 = [
    ("md", """
# 03 · Q values

Q values are propagated bottom-up on every tree (paper Eq. 4): a leaf keeps its final reward and
Q(n) = r(n) + γ·max Q(children), then min-max normalized (within each tree by default). Alongside, the
paper's ablation targets: `avg_reward` (mean leaf reward below a node) and `outcome` (the final reward of the
node's trajectory). The QNet dataset — (state, candidate action, targets) — is exported, split by task.
"""),
    ("params", ""),
    ("code", SETUP + '''
out = ctx.stage_dir("03")'''),
    ("code", '''
from qlass_lib import qvalues
from qlass_lib.tree import load_trees
from qlass_lib.artifacts import write_json, append_jsonl
trees = load_trees(ctx.run_dir / "02_tree_construction" / "trees.jsonl")
info = qvalues.compute(trees, cfg.qvalues.gamma, cfg.qvalues.normalize)
display(pd.DataFrame([info]))
(out / "trees_q.jsonl").unlink(missing_ok=True)
for t in trees:
    append_jsonl(out / "trees_q.jsonl", t.to_dict())'''),
    ("md", "## Normalization choices and process-reward variants"),
    ("code", '''
import copy
rows = []
for scope in ["tree", "dataset", "none"]:
    ts = copy.deepcopy(trees)
    r = qvalues.compute(ts, cfg.qvalues.gamma, scope)
    vals = pd.Series([n.q_norm for t in ts for n in t.nodes if n.parent is not None])
    rows.append({"normalize": scope, "degenerate_trees": r["degenerate_trees"], "mean": vals.mean(), "std": vals.std(),
                 "share_zero": (vals == 0).mean(), "share_one": (vals == 1).mean()})
display(pd.DataFrame(rows).round(3))
nodes = pd.DataFrame([{"task": t.task.id, "depth": n.depth, "q": n.q, "q_norm": n.q_norm, "avg_reward": a[n.id],
                       "outcome": o[n.id], "final_reward": n.rollout_reward, "source": n.source}
                      for t in trees for a, o in [(qvalues.avg_reward(t), qvalues.outcome(t))]
                      for n in t.nodes if n.parent is not None])
display(nodes[["q_norm", "avg_reward", "outcome"]].corr(method="spearman").round(3))'''),
    ("code", '''
import matplotlib.pyplot as plt
from qlass_lib import plots
fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
nodes.groupby("depth")[["q_norm", "avg_reward", "outcome"]].mean().plot(ax=axes[0], marker="o", title="mean target by depth")
axes[1].scatter(nodes.final_reward + 0.02 * (pd.Series(range(len(nodes))) % 5 - 2), nodes.q_norm, s=6, alpha=0.5)
axes[1].set_xlabel("final reward of the node's trajectory"); axes[1].set_ylabel("normalized Q"); axes[1].set_title("Q vs final reward")
nodes.q_norm.plot.hist(ax=axes[2], bins=20, title="normalized Q")
plots.save(fig, out / "q_values.png");'''),
    ("md", "## QNet dataset"),
    ("code", '''
summary = qvalues.export_dataset(trees, cfg.env.name, out, cfg.qvalues.val_fraction, cfg.seed,
                                 example=ctx.example(), degenerate=cfg.qvalues.degenerate)
summary["degenerate_trees"] = info["degenerate_trees"]
write_json(out / "q_summary.json", {**info, **{k: v for k, v in summary.items() if not k.endswith("_tasks")}})
display(pd.DataFrame([{k: v for k, v in summary.items() if not k.endswith("_tasks")}]))'''),
]

NOTEBOOKS.update({"02_tree_construction": NB02, "03_q_values": NB03})

NB04 = [
    ("md", """
# 04 · QNet training

The QNet is the BC policy's backbone plus an MLP value head (hidden → 1024 → 1024 → 1), trained with MSE on
the Q targets of notebook 03 (per-token over the candidate action, the paper's objective). Evaluation on the
held-out trees: MSE, Spearman correlation, and sibling accuracy (does the best child get the highest value?)
next to its random baseline, and R² (1 − MSE / target variance) on the validation *and* the training trees (a QNet
must first fit its own trees). The value head starts at the mean target; the learning rate warms up, then decays;
the checkpoint kept is the best on the validation trees' sibling accuracy (`qnet.select`), so that number is
optimistic — the search results of notebook 05 on held-out tasks are the unbiased test. QNets on the ablation
targets (`avg_reward`, `outcome`) are trained the same way.
"""),
    ("params", ""),
    ("code", SETUP + '''
out = ctx.stage_dir("04")
data_dir = ctx.run_dir / "03_q_values"
policy_dir = ctx.run_dir / "01_behavior_cloning" / "policy"'''),
    ("code", '''
from qlass_lib.qnet_train import fit_qnet, calibration_table
qnet, result, metrics, pred, val = fit_qnet(cfg, policy_dir, data_dir, out / "qnet_q", "q")
display(pd.DataFrame([metrics]).round(4))'''),
    ("code", '''
import matplotlib.pyplot as plt
from qlass_lib import plots
hist = pd.DataFrame(result["history"])
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
tr = hist.dropna(subset=["train_loss"]) if "train_loss" in hist else hist
axes[0].plot(tr["step"], tr["train_loss"].rolling(10, min_periods=1).mean(), label="train (rolling mean)")
if "val_mse" in hist:
    va = hist.dropna(subset=["val_mse"]); axes[0].plot(va["step"], va["val_mse"], "o-", label="validation MSE")
axes[0].set_xlabel("step"); axes[0].set_title("QNet training"); axes[0].legend()
tgt = [e["target"] for e in val]
axes[1].scatter(tgt, pred, s=8, alpha=0.5); axes[1].plot([0, 1], [0, 1], "k--", lw=1)
axes[1].set_xlabel("target Q (normalized)"); axes[1].set_ylabel("predicted"); axes[1].set_title("held-out trees")
plots.save(fig, out / "qnet_training.png");'''),
    ("md", "## Calibration (predictions binned by quantile)"),
    ("code", '''
cal = calibration_table(pred, val)
cal.to_csv(out / "calibration.csv", index=False)
display(cal.round(3))'''),
    ("md", "## Process-reward ablation targets"),
    ("code", '''
from qlass_lib.artifacts import write_json
rows = [metrics]
for target in cfg.qnet.ablation_targets:
    _, _, m, _, _ = fit_qnet(cfg, policy_dir, data_dir, out / f"qnet_{target}", target)
    rows.append(m)
ablation = pd.DataFrame(rows)
ablation.to_csv(out / "qnet_metrics.csv", index=False)
write_json(out / "qnet_metrics.json", {"schema_version": 1, "qnets": rows, "train_seconds": result["train_seconds"]})
display(ablation.round(4))'''),
]

NB05 = [
    ("md", """
# 05 · Q-guided search vs Best-of-N

On held-out tasks: greedy decoding, Best-of-N (N sampled trajectories), QLASS (M candidates per step, duplicate
actions dropped, the distinct ones scored by the QNet, argmax executed) and, optionally, the
perturbation-augmented variants, all counted by one budget counter and run once per seed in `search.seeds`.
Three numbers per method: the **first trajectory** (no selection — what one deployed run gets), the
**QNet-selected** trajectory (no reward read) and the **best of N by environment outcome** (the paper's
protocol — an *oracle* selection). Search never reads the reward of an action it did not execute.
"""),
    ("params", ""),
    ("code", SETUP + '''
out = ctx.stage_dir("05")'''),
    ("code", '''
from qlass_lib.envs import make_env, eval_tasks, per_type
from qlass_lib.qnet import load_qnet
from qlass_lib.paraphrase import make_paraphraser
from qlass_lib import search
env = make_env(cfg.env)
policy = ctx.policy(env.name)
qnet = load_qnet(ctx.run_dir / "04_qnet_training" / "qnet_q", cfg.model)
tasks = per_type(eval_tasks(env, cfg.env), cfg.search.tasks_per_type)
paraphraser = make_paraphraser(cfg.search)
print(f"{len(tasks)} held-out tasks ({cfg.env.eval_split}); N={cfg.search.n_trajectories} M={cfg.search.m_candidates} "
      f"seeds={cfg.search.seeds}")
print("paraphrase example:", paraphraser("Your task is to find a(n) animal. First, focus on the thing. Then, move it to the red box in the kitchen.", 1))
episodes = search.run_suite(env, tasks, policy, qnet, cfg.search, out / "search_episodes.jsonl", paraphraser, ctx.example())
from qlass_lib.evaluation import check_env_errors
env_errors = check_env_errors(episodes, cfg.env.max_error_share, "search episodes")
print("episodes with an environment exception:", env_errors["with_env_errors"], "of", env_errors["records"])'''),
    ("md", """## Results
Three selections among the N trajectories: **first** (no selection), **QNet-selected** (the trajectory whose final
action the QNet values most; no reward read — deployable) and **oracle** (best by environment outcome — the paper's
protocol, not deployable). Means over tasks and seeds."""),
    ("code", '''
from qlass_lib import selection, stats
values = selection.final_values(episodes, qnet, env.name, out / "selection_values.jsonl", ctx.example())
scores = selection.task_scores(episodes, values)
scores.to_csv(out / "task_scores.csv", index=False)
table = selection.results_table(scores)
table.to_csv(out / "results.csv", index=False)
display(table.round(2))'''),
    ("md", "## Paired differences (per task, seeds averaged; bootstrap 95% intervals over tasks; reward x100)"),
    ("code", '''
comparisons = stats.comparison_table(scores, selection.standard_pairs(list(table.method)), seed=cfg.seed)
comparisons.to_csv(out / "comparisons.csv", index=False)
display(comparisons.round(2))
display(search.candidate_diversity(episodes).round(3))'''),
    ("md", "## Reward against completion tokens (paper Fig. 3; best of k, k = 1..N, with 95% intervals)"),
    ("code", '''
import matplotlib.pyplot as plt
from qlass_lib import plots
from qlass_lib.artifacts import write_json
methods = [m for m in table.method if m != "greedy"]
curves = pd.concat([selection.budget_curve(episodes, m, sel, values) for sel in ("oracle", "qnet") for m in methods])
curves.to_csv(out / "budget_curves.csv", index=False)
fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
g = table.set_index("method").loc["greedy"]
for ax, sel in zip(axes, ("oracle", "qnet")):
    for m, c in curves[curves["select"] == sel].groupby("method", sort=False):
        line, = ax.plot(c.tokens, c.reward_x100, "o-" if m.startswith("QLASS") else "s--", label=m)
        ax.fill_between(c.tokens, c.ci_low, c.ci_high, color=line.get_color(), alpha=0.12)
    ax.scatter([g.gen_tokens_per_task], [g.reward_x100_first], marker="*", s=150, c="k", label="greedy", zorder=3)
    ax.set_xlabel("completion tokens per task"); ax.set_title(f"best of k by {'outcome (oracle)' if sel == 'oracle' else 'QNet value'}")
axes[0].set_ylabel("mean reward x100"); axes[0].legend(fontsize=8)
plots.save(fig, out / "budget_curves.png")
oc = curves[curves["select"] == "oracle"]
ratios = {m: selection.budget_ratio(oc[oc.method == "BoN"], oc[oc.method == m]) for m in methods if m.startswith("QLASS")}
ratios.update({f"{m} vs BoN-aug": selection.budget_ratio(oc[oc.method == "BoN-aug"], oc[oc.method == m])
               for m in methods if m.startswith("QLASS-aug")})
write_json(out / "budget_ratio.json", ratios)
display(pd.DataFrame(ratios).T)'''),
    ("md", "## Case study: first-step candidates and their Q (paper Fig. 4)"),
    ("code", '''
m_max = max(cfg.search.m_candidates)
cs = search.case_study(episodes, f"QLASS-M{m_max}", cfg.search.case_study_tasks)
cs.to_csv(out / "case_study.csv", index=False)
display(cs)'''),
    ("md", "## Process-reward ablation (paper §5.5): QNets trained on different targets guide the same search"),
    ("code", '''
qnets = {"q": qnet, **{t: load_qnet(ctx.run_dir / "04_qnet_training" / f"qnet_{t}", cfg.model)
                      for t in cfg.qnet.ablation_targets}}
abl_eps = search.run_ablation(env, tasks, policy, qnets, cfg.search, out / "ablation_episodes.jsonl", ctx.example())
abl_scores = selection.task_scores(abl_eps)
ablation = selection.results_table(abl_scores)
ablation.insert(0, "target", ablation.method.str.replace("ablation-", ""))
ablation.to_csv(out / "ablation.csv", index=False)
display(ablation.round(2))
abl_pairs = [("first", "ablation-q", f"ablation-{t}") for t in cfg.qnet.ablation_targets]
abl_cmp = stats.comparison_table(abl_scores, abl_pairs, seed=cfg.seed)
abl_cmp.to_csv(out / "ablation_comparisons.csv", index=False)
display(abl_cmp.round(2))'''),
    ("code", '''
write_json(out / "search_summary.json", {"schema_version": 2, "split": cfg.env.eval_split, "tasks": [t.id for t in tasks],
                                         "seeds": cfg.search.seeds, "results": table.to_dict("records"),
                                         "comparisons": comparisons.to_dict("records"), "budget_ratio": ratios,
                                         "ablation": ablation.to_dict("records"),
                                         "ablation_comparisons": abl_cmp.to_dict("records"), "env_errors": env_errors})
env.close()'''),
]

NOTEBOOKS.update({"04_qnet_training": NB04, "05_guided_search": NB05})
