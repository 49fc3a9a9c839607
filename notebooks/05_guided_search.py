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
# # 05 · Q-guided search vs Best-of-N
#
# On held-out tasks: greedy decoding, Best-of-N (N sampled trajectories), QLASS (M candidates per step, duplicate
# actions dropped, the distinct ones scored by the QNet, argmax executed) and, optionally, the
# perturbation-augmented variants, all counted by one budget counter and run once per seed in `search.seeds`.
# Three numbers per method: the **first trajectory** (no selection — what one deployed run gets), the
# **QNet-selected** trajectory (no reward read) and the **best of N by environment outcome** (the paper's
# protocol — an *oracle* selection). Search never reads the reward of an action it did not execute.
# The work is `qlass_lib.stages.guided_search.run`.

# %% tags=["parameters"]
# Parameters (papermill injects its own values below this cell)
params_path = "../params/default.yaml"  # the params file of the run
run_dir = ""  # empty means runs/RUN_ID under the project root
overrides = {}  # nested params overrides, for example {"bc": {"max_minutes": 1.0}}

# %%
import pandas as pd
from IPython.display import Image, Markdown, display
from qlass_lib.run.context import RunContext
from qlass_lib.analysis.cost import markdown as cost_markdown
from qlass_lib.stages import guided_search as stage

ctx = RunContext.open(params_path, run_dir, overrides)
res = stage.run(ctx)
print(res.description)
print("paraphrase example:", res.paraphrase_example)
print("episodes with an environment exception:", res.env_errors["with_env_errors"], "of", res.env_errors["records"])

# %% [markdown]
# ## Results
# Three selections among the N trajectories: **first** (no selection), **QNet-selected** (the trajectory whose
# final action the QNet values most; no reward read — deployable) and **oracle** (best by environment outcome —
# the paper's protocol, not deployable). Means over tasks and seeds.

# %%
res.table.round(2)

# %% [markdown]
# ## Paired differences (per task, seeds averaged; bootstrap 95% intervals over tasks; reward x100)

# %%
display(res.comparisons.round(2))
display(res.diversity.round(3))

# %% [markdown]
# ## Reward against completion tokens (paper Fig. 3; best of k, k = 1..N, with 95% intervals)

# %%
display(pd.DataFrame(res.ratios).T)
Image(res.figures["budget_curves"])

# %% [markdown]
# ## The whole cost: trees and QNet training up front, search per task, and when QLASS repays its up-front cost

# %%
display(Markdown(cost_markdown(res.cost)))

# %% [markdown]
# ## Case study: first-step candidates and their Q

# %%
res.case_study

# %% [markdown]
# ## Process-reward ablation (paper §5.5): QNets trained on different targets guide the same search

# %%
if len(res.ablation):  # qnet.ablation_targets empty: no ablation in this run
    display(res.ablation.round(2))
    display(res.ablation_comparisons.round(2))
