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
episodes = evaluate(env, tasks, lambda budget: greedy_chooser(policy, budget), out / "eval_episodes.jsonl", desc="greedy eval")
table = summarize(episodes)
table.to_csv(out / "bc_eval.csv", index=False)
write_json(out / "bc_metrics.json", {"schema_version": 1, "split": cfg.env.eval_split, "per_type": table.to_dict("records"),
                                     "parameters": models.count_parameters(model),
                                     "train_seconds": result["train_seconds"]})
display(table.round(2))
plots.bar_by_group(table, "task_type", "mean_reward_x100", out / "bc_eval.png", "greedy BC policy, held out");'''),
    ("code", '''
ep = max(episodes, key=lambda e: e["reward"])
print(ep["task"], "reward", ep["reward"])
display(pd.DataFrame(ep["turns"])[["action", "observation", "score"]].head(20))'''),
    ("code", "env.close()"),
]

NOTEBOOKS = {"01_behavior_cloning": NB01}
