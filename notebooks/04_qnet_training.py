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
# # 04 · QNet training
#
# The QNet is the BC policy's backbone plus an MLP value head (hidden → 1024 → 1024 → 1), trained with MSE on
# the Q targets of notebook 03 (over every token of the candidate action, the paper's objective, or at its last
# token: `qnet.loss`). Evaluation on the held-out trees: MSE, Spearman correlation, and sibling accuracy (does the
# best child get the highest value?) next to its random baseline, and R² (1 − MSE / target variance) on the
# validation *and* the training trees (a QNet must first fit its own trees). The value head starts at the mean
# target; the learning rate warms up, then decays; the checkpoint kept is the best on the validation trees'
# sibling accuracy (`qnet.select`), so that number is optimistic — the search results of notebook 05 on held-out
# tasks are the unbiased test. Beside each QNet's sibling accuracy stands the BC policy's own
# (`policy_sibling_accuracy`: its log-probability of each sibling action): search samples its candidates from that
# policy, so a QNet that does not beat it cannot help. QNets on the ablation targets (`avg_reward`, `outcome`) are
# trained the same way.
# The work is `qlass_lib.stages.qnet_training.run`.

# %% tags=["parameters"]
# Parameters (papermill injects its own values below this cell)
params_path = "../params/default.yaml"  # the params file of the run
run_dir = ""  # empty means runs/RUN_ID under the project root
overrides = {}  # nested params overrides, for example {"bc": {"max_minutes": 1.0}}

# %%
import pandas as pd
from IPython.display import Image, display
from qlass_lib.run.context import RunContext
from qlass_lib.stages import qnet_training as stage

ctx = RunContext.open(params_path, run_dir, overrides)
res = stage.run(ctx)
display(pd.DataFrame([res.metrics]).round(4))
Image(res.figures["training"])

# %% [markdown]
# ## Calibration (predictions binned by quantile)

# %%
res.calibration.round(3)

# %% [markdown]
# ## The QNet and the policy together: Q + w·log π on the validation sibling groups
# Search can execute the argmax of Q + w·log π (`search.prior_weight`): the QNet re-ranks candidates the policy
# itself likes. Each row is the validation sibling accuracy at one weight w (0: the QNet alone; inf: the
# policy's log-probability alone). These are held-out *training* trees, so w is chosen here, not on test tasks.

# %%
print(f"best finite w on the validation trees: {res.best_prior_weight}")
res.prior_sweep.round(4)

# %% [markdown]
# ## Process-reward ablation targets

# %%
res.table.round(4)
