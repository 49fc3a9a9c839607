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
# # 06 · Q-guided self-training (QLASS-ST), RFT, and the process-reward comparison
#
# The QNet's second use in the paper: choosing self-training data. On training tasks the BC policy generates
# trajectories with Q-guided generation (M candidates per step, N trajectories per task); those that reach
# `self_training.min_reward` join the expert data and the policy is fine-tuned again from the same base with
# the BC recipe. Once per QNet target (`q`, `avg_reward`, `outcome`): the paper's Fig. 4 compares these three
# process rewards this way. The RFT baseline samples from the BC policy on the same tasks with the same
# generated tokens per task and keeps trajectories by the same rule. Every policy is evaluated greedily on
# stage 01's held-out tasks; SFT (stage 01's policy) is the paired reference.
# The stage is optional (`self_training.enabled`); the work is `qlass_lib.stages.self_training.run`.

# %% tags=["parameters"]
# Parameters (papermill injects its own values below this cell)
params_path = "../params/default.yaml"  # the params file of the run
run_dir = ""  # empty means runs/RUN_ID under the project root
overrides = {}  # nested params overrides, for example {"self_training": {"enabled": True}}

# %%
import pandas as pd
from IPython.display import Image, display
from qlass_lib.run.context import RunContext
from qlass_lib.stages import self_training as stage

ctx = RunContext.open(params_path, run_dir, overrides)
res = stage.run(ctx)
print(res.description)

# %% [markdown]
# ## Data generated on training tasks
# Rewards are read here (these are training tasks: that is how self-training data is chosen).

# %%
display(res.generation.round(2))

# %% [markdown]
# ## Held-out results (greedy; bootstrap 95% intervals over tasks)

# %%
display(res.results.round(2))
display(res.comparisons.round(2))
Image(res.figures["bars"])
