import numpy as np
import pandas as pd
import pytest

from qlass_lib.core.stats import bootstrap_mean_ci, comparison_table, paired_difference


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    x = np.arange(20, dtype=float)
    a, b = bootstrap_mean_ci(x, seed=3), bootstrap_mean_ci(x, seed=3)
    assert a == b
    mean, lo, hi = a
    assert mean == pytest.approx(9.5) and lo < mean < hi
    assert bootstrap_mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)


def test_paired_difference_uses_common_tasks_only():
    a = pd.Series({"t1": 1.0, "t2": 1.0, "t3": 0.0, "t4": 1.0})
    b = pd.Series({"t1": 0.0, "t2": 0.0, "t3": 0.0})
    r = paired_difference(a, b)
    assert r["tasks"] == 3 and r["mean_diff"] == pytest.approx(2 / 3)
    assert r["a_wins"] == 2 and r["b_wins"] == 0
    same = paired_difference(a, a)
    assert same["mean_diff"] == 0.0 and not same["excludes_zero"]


def test_comparison_table_averages_seeds_per_task():
    rows = []
    for seed, bonus in [(0, 1.0), (1, 0.0)]:
        for t in range(10):
            rows.append({"method": "A", "task": f"t{t}", "seed": seed, "first": bonus})
            rows.append({"method": "B", "task": f"t{t}", "seed": seed, "first": 0.0})
    tab = comparison_table(pd.DataFrame(rows), [("first", "A", "B")])
    r = tab.iloc[0]
    assert r["mean_diff"] == pytest.approx(50.0)  # per task: mean over the two seeds, x100
    assert r["ci_low"] == pytest.approx(50.0) and r["excludes_zero"]


def test_cluster_bootstrap_widens_the_interval_of_duplicated_tasks():
    """Two task types on one ScienceWorld variation share a world: when each difference comes twice, resampling
    tasks counts 2n independent tasks, resampling variations counts n; the group interval is the wider one and
    equals the plain interval of the n distinct values."""
    import pandas as pd
    from qlass_lib.core.stats import bootstrap_mean_ci, cluster_bootstrap_ci, paired_difference, shared_world_clusters
    from qlass_lib.envs import TaskRef
    d = [1.0, -1.0, 0.0, 2.0, 1.0, 0.0, -0.5, 1.5]
    tasks = [TaskRef(t, v) for t in ("find-animal", "find-living-thing") for v in range(len(d))]
    clusters = shared_world_clusters("scienceworld", tasks)
    assert clusters["find-animal_3"] == clusters["find-living-thing_3"] == "v3" and len(set(clusters.values())) == 8
    assert shared_world_clusters("webshop", tasks) is None
    assert shared_world_clusters("scienceworld", tasks[:8]) is None  # one type: no two tasks share a world
    a = pd.Series(d + d, index=[t.id for t in tasks])
    b = pd.Series(0.0, index=a.index)
    r = paired_difference(a, b, n_boot=4000, seed=0, clusters=clusters)
    assert r["clusters"] == 8 and r["tasks"] == 16 and r["mean_diff"] == sum(d) / 8
    assert r["cluster_ci_high"] - r["cluster_ci_low"] > r["ci_high"] - r["ci_low"]
    # whole clusters of equal size: the same resampling as the n distinct values, draw for draw
    _, lo, hi = bootstrap_mean_ci(d, 4000, seed=0)
    assert cluster_bootstrap_ci(d + d, [f"v{i}" for i in range(8)] * 2, 4000, seed=0) == (lo, hi)
