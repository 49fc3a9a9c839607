"""The paired comparisons of a finished stage 05 with the interval that resamples ScienceWorld variations, for runs
made before stage 05 wrote it (same functions): python docs/cluster_intervals.py runs/<id>
"""
import sys
import pandas as pd
from qlass_lib.core import stats
from qlass_lib.envs import TaskRef
from qlass_lib.method import selection
d = sys.argv[1] + "/05_guided_search"
scores = pd.read_csv(d + "/task_scores.csv")
methods = list(pd.read_csv(d + "/results.csv").method)
tasks = [TaskRef(t.rsplit("_", 1)[0], int(t.rsplit("_", 1)[1])) for t in scores.task.unique()]
cl = stats.shared_world_clusters("scienceworld", tasks)
cmp = stats.comparison_table(scores, selection.standard_pairs(methods), seed=0, clusters=cl)
pd.set_option("display.width", 250)
print(cmp[["score", "A", "B", "tasks", "clusters", "mean_diff", "ci_low", "ci_high", "cluster_ci_low", "cluster_ci_high", "a_wins", "b_wins"]].round(1).to_string(index=False))
