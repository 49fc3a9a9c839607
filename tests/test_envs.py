import pytest

from qlass_lib.envs import TaskRef, check_env, read_task_file
from qlass_lib.envs.base import EnvError
from qlass_lib.envs.scripted import ScriptedEnv

ETO = "../shared/data/eto_eval/data/sciworld"


def test_checker_on_scripted_env():
    env = ScriptedEnv()
    task = env.tasks("train")[3]
    report = check_env(env, task, env.gold_actions(task))
    assert report["deterministic"] and report["final_score"] == 1.0


def test_checker_catches_nondeterminism():
    class Flaky(ScriptedEnv):
        calls = 0

        def _reset(self, task):
            Flaky.calls += 1
            r = super()._reset(task)
            r.observation += f" ({Flaky.calls})"
            return r

    env = Flaky()
    with pytest.raises(AssertionError, match="first observation differs"):
        check_env(env, env.tasks("train")[0], ["go red"])


def test_checker_on_scienceworld_gold_paths(sciworld):
    for task in sciworld.tasks("test")[:2] + [t for t in sciworld.tasks("test") if "find" in t.task_type][:1]:
        gold = sciworld.gold_actions(task)
        report = check_env(sciworld, task, gold)
        assert report["final_score"] == 1.0, (task, gold)


def test_invalid_and_failed_actions_are_observations(sciworld):
    task = sciworld.tasks("dev")[0]
    sciworld.reset(task)
    s = sciworld.step("dance with the moon")
    assert not s.done and s.observation and s.info["score"] == 0.0
    # a wrong 'focus on' scores -100 in ScienceWorld: normalized to 0, episode over
    sciworld.reset(task)
    s = sciworld.step("focus on air")
    assert s.done and s.info["score"] == 0.0 and s.info["raw_score"] < 0


def test_turn_cap_counts_every_action(sciworld):
    task = sciworld.tasks("dev")[0]
    sciworld.reset(task)
    steps = [sciworld.step("look around") for _ in range(sciworld.max_turns)]
    assert not any(s.done for s in steps[:-1]) and steps[-1].done and steps[-1].info["truncated"]


def test_package_splits_are_disjoint(sciworld):
    tr, dv, te = (set(sciworld.tasks(s)) for s in ("train", "dev", "test"))
    assert tr and dv and te and not (tr & dv) and not (tr & te) and not (dv & te)


def test_eto_split_files(tmp_path):
    from pathlib import Path
    from qlass_lib.envs.scienceworld import ScienceWorldEnv
    here = Path(__file__).resolve().parent.parent / ETO
    if not here.is_dir():
        pytest.skip("shared ETO data not present")
    env = ScienceWorldEnv(["lifespan-longest-lived"], split_dir=str(here))
    try:
        seen, unseen = env.tasks("dev"), env.tasks("test")
        assert len(seen) == 10 and len(unseen) == 10
        assert all(t.task_type == "lifespan-longest-lived" for t in seen)
    finally:
        env.close()
    with pytest.raises(EnvError, match="split directory not found"):
        ScienceWorldEnv(["lifespan-longest-lived"], split_dir=str(tmp_path / "nope"))


def test_missing_java_is_one_clear_error(monkeypatch):
    import shutil
    from qlass_lib.envs.scienceworld import ScienceWorldEnv
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(EnvError, match="Java was not found"):
        ScienceWorldEnv(["lifespan-longest-lived"])


def test_task_file_formats(tmp_path):
    a = tmp_path / "tasks.txt"
    a.write_text("# comment\nlifespan-longest-lived 3\nfind-non-living-thing, 7\n")
    b = tmp_path / "tasks.json"
    b.write_text('[["lifespan-longest-lived", 3], {"task_type": "find-non-living-thing", "variation": 7}]')
    want = [TaskRef("lifespan-longest-lived", 3), TaskRef("find-non-living-thing", 7)]
    assert read_task_file(str(a)) == want == read_task_file(str(b))


def test_canonical_observation_sorts_listing_blocks_only():
    from qlass_lib.envs.scienceworld import canonical_observation
    a = "Room:\n\tb thing\n\ta thing\nYou also see:\n\tz door\n\ty door"
    assert canonical_observation(a) == "Room:\n\ta thing\n\tb thing\nYou also see:\n\ty door\n\tz door"


def test_replay_is_deterministic_where_raw_listing_order_is_not(sciworld):
    # find-non-living-thing_225 lists its art studio in a different order between raw loads (seen here)
    task = TaskRef("find-non-living-thing", 225)
    gold = sciworld.gold_actions(task)
    for other in sciworld.tasks("test")[:3]:  # interleave other loads, as exploration does
        sciworld.reset(other)
        check_env(sciworld, task, gold, repeats=2)


def test_ambiguous_action_is_an_observation(sciworld):
    sciworld.reset(TaskRef("find-non-living-thing", 225))  # three wood cups in the art studio
    s = sciworld.step("pick up wood cup")
    assert s.observation.startswith("Ambiguous request") and not s.done
    s = sciworld.step("0")  # the simulator then expects the number of the intended action
    assert "inventory" in s.observation


def test_canonical_ambiguity_sorts_and_maps_back_to_the_jvm_numbers():
    from qlass_lib.envs.scienceworld import canonical_ambiguity
    head = "Ambiguous request: Please enter the number for the action you intended (or blank to cancel):"
    a = f"{head}\n0:\tteleport kitchen (in universe)\n1:\tteleport bathroom (in universe)\n2:\tteleport hallway (in universe)\n"
    b = f"{head}\n0:\tteleport hallway (in universe)\n1:\tteleport kitchen (in universe)\n2:\tteleport bathroom (in universe)\n"
    (ta, ma), (tb, mb) = canonical_ambiguity(a), canonical_ambiguity(b)
    assert ta == tb == (f"{head}\n0:\tteleport bathroom (in universe)\n1:\tteleport hallway (in universe)\n"
                        f"2:\tteleport kitchen (in universe)\n")
    assert ma == [1, 2, 0] and mb == [2, 0, 1]  # canonical 0 (bathroom) is the JVM's 1 in a, its 2 in b
    assert canonical_ambiguity("You teleport to the kitchen.") == ("You teleport to the kitchen.", [])


def test_ambiguous_option_lists_replay_identically():
    # the JVM numbers "teleport to room"'s nine rooms in a new order on each load (six loads, six orders seen);
    # the adapter shows them sorted, and the answer "3" reaches the same room every time
    from qlass_lib.envs.scienceworld import ScienceWorldEnv
    with ScienceWorldEnv(["find-non-living-thing"], simplifications="easy") as env:
        task = TaskRef("find-non-living-thing", 225)
        seen = set()
        for other in env.tasks("test")[:4]:
            env.reset(other)
            env.reset(task)
            listing = env.step("teleport to room").observation
            seen.add((listing, env.step("3").observation))
        assert len(seen) == 1
        listing, after = seen.pop()
        assert listing.splitlines()[4] == "3:\tteleport foundry (in universe)" and after == "You teleport to the foundry."
        assert check_env(env, task, ["teleport to room", "3", "look around"], repeats=3)["deterministic"]


def test_search_may_run_on_more_held_out_tasks_than_stage01_evaluates(tmp_path):
    """search.tasks_per_type counts from the same evaluation list as env.eval_per_type, so stage 01's BC
    evaluation set is a prefix of the search set (params/default-large.yaml extends the default's 24 tasks)."""
    from qlass_lib.core.config import EnvConfig
    from qlass_lib.envs import eval_tasks, per_type
    env = ScriptedEnv()
    cfg = EnvConfig(name="scripted", eval_split="test", eval_per_type=1)
    bc_eval, search = eval_tasks(env, cfg), eval_tasks(env, cfg, 2)
    assert bc_eval == per_type(env.tasks("test"), 1) and search == per_type(env.tasks("test"), 2)
    assert len(search) == 2 * len(bc_eval) and all(t in search for t in bc_eval)
    assert eval_tasks(env, cfg, None) == bc_eval
    f = tmp_path / "tasks.txt"
    f.write_text("a 1\na 2\na 3\nb 1\n")
    cfg_file = EnvConfig(name="scripted", eval_task_file=str(f))
    assert eval_tasks(env, cfg_file, 2) == [TaskRef("a", 1), TaskRef("a", 2), TaskRef("b", 1)]
    assert len(eval_tasks(env, cfg_file)) == 4
