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
# # 02 · Exploration trees
#
# For each training task the behavior-cloned policy explores a tree (paper Algorithm 3): the root is the task
# prompt, the expert trajectory is attached as a branch, and nodes up to depth D get W distinct children, each
# rolled out to the end. Branches whose rollout ends with zero reward are not expanded further (pre-pruning).
# Trees are appended to `trees.jsonl` as each task finishes, so an interrupted run resumes where it stopped.
# The work is `qlass_lib.stages.trees.run`.

# %% tags=["parameters"]
# Parameters (papermill injects its own values below this cell)
params_path = "../params/default.yaml"  # the params file of the run
run_dir = ""  # empty means runs/RUN_ID under the project root
overrides = {}  # nested params overrides, for example {"bc": {"max_minutes": 1.0}}

# %%
import pandas as pd
from IPython.display import Image, display
from qlass_lib.run.context import RunContext
from qlass_lib.stages import trees as stage

ctx = RunContext.open(params_path, run_dir, overrides)
res = stage.run(ctx)
print(res.description)

# %% [markdown]
# ## Tree statistics

# %%
display(pd.DataFrame([res.summary]).T.rename(columns={0: "value"}))
display(res.per_type)
Image(res.figures["stats"])

# %% [markdown]
# ## Inspect a tree
# The inspector is interactive in JupyterLab (pick any tree of the run); the static rendering below it
# survives in executed notebooks. For a browser page with every tree, Q targets and (after stage 04) the
# QNet's predictions: `python -m qlass_lib inspect runs/<run_id>`.

# %%
from qlass_lib.viz.widgets import TreeInspector
TreeInspector.for_run(ctx.run_dir, qnet=False)  # stage 02 does not read later stages

# %%
Image(res.figures["example_tree"])
