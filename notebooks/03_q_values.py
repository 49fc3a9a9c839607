# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Q values
#
# Q values are propagated bottom-up on every tree (paper Eq. 4): a leaf keeps its final reward and
# Q(n) = r(n) + γ·max Q(children), then min-max normalized (within each tree by default). Alongside, the
# paper's ablation targets: `avg_reward` (mean leaf reward below a node) and `outcome` (the final reward of the
# node's trajectory). The QNet dataset — (state, candidate action, targets) — is exported, split by task.
# The work is `qlass_lib.stages.q_values.run`.

# %% tags=["parameters"]
# Parameters (papermill injects its own values below this cell)
params_path = "../params/default.yaml"  # the params file of the run
run_dir = ""  # empty means runs/RUN_ID under the project root
overrides = {}  # nested params overrides, for example {"bc": {"max_minutes": 1.0}}

# %%
import pandas as pd
from IPython.display import Image, display
from qlass_lib.run.context import RunContext
from qlass_lib.stages import q_values as stage

ctx = RunContext.open(params_path, run_dir, overrides)
res = stage.run(ctx)
display(pd.DataFrame([res.info]))

# %% [markdown]
# ## Normalization choices and process-reward variants

# %%
display(res.scopes.round(3))
display(res.target_correlation)
Image(res.figures["q_values"])

# %% [markdown]
# ## QNet dataset

# %%
pd.DataFrame([res.dataset])
