# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Behavior cloning
#
# QLASS starts from an agent that imitates expert ReAct trajectories. This stage
#
# 1. generates expert trajectories (ScienceWorld gold paths, the ALFWorld planner, WebShop's scripted expert),
#    replay-checked to reach the full score,
# 2. builds the embedded tiny Llama (or loads any Hugging Face causal LM named in the params),
# 3. fine-tunes it with the loss on the agent's turns only,
# 4. evaluates the cloned policy greedily on held-out tasks.
#
# The work is `qlass_lib.stages.behavior_cloning.run`; this notebook calls it and shows what it returns.

# %% tags=["parameters"]
# Parameters (papermill injects its own values below this cell)
params_path = "../params/default.yaml"  # the params file of the run
run_dir = ""  # empty means runs/RUN_ID under the project root
overrides = {}  # nested params overrides, for example {"bc": {"max_minutes": 1.0}}

# %%
import pandas as pd
from IPython.display import Image, display
from qlass_lib.run.context import RunContext
from qlass_lib.stages import behavior_cloning as stage

ctx = RunContext.open(params_path, run_dir, overrides)
res = stage.run(ctx)
print("run folder:", ctx.run_dir)

# %% [markdown]
# ## Expert trajectories

# %%
display(pd.DataFrame([res.expert_stats]))
display(res.experts_per_type)
print(res.example_conversation)

# %% [markdown]
# ## Training (loss on agent turns only)

# %%
print(f"base model: {res.base}; parameters: {res.parameters:,}")
if res.pretraining is not None:  # the embedded tiny model: copy drills, then the expert text
    display(res.pretraining)
display(res.train_summary)
Image(res.figures["loss"])

# %% [markdown]
# ## Held-out evaluation (greedy)

# %%
display(res.table.round(2))
if res.failures is not None:  # WebShop, ALFWorld: held-out episodes per step of the expert's way they missed
    display(res.failures.round(2))
Image(res.figures["eval"])

# %%
res.best_episode()
