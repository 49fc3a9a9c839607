"""ALFWorld: the game listing works on the shared data without the optional packages; the env itself needs
``pip install -e '.[alfworld]'`` and is skipped where that is not installed."""
from pathlib import Path

import pytest

from qlass_lib.envs.alfworld import game_dirs, task_type_of
from qlass_lib.envs.base import EnvError

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "alfworld"


@pytest.mark.skipif(not DATA.is_dir(), reason="shared ALFWorld data not present")
def test_game_listing_matches_the_paper_counts():
    seen, unseen = game_dirs(DATA, "dev"), game_dirs(DATA, "test")
    assert len(seen) == 140 and len(unseen) == 134  # ETO/QLASS valid_seen / valid_unseen
    listed = {l.strip() for l in (DATA / "game_lists" / "valid_unseen_134.txt").read_text().splitlines() if l.strip()}
    assert {str(p.relative_to(DATA)) for p in unseen} == listed
    types = {task_type_of(p) for p in unseen}
    assert types == {"pick_and_place_simple", "look_at_obj_in_light", "pick_clean_then_place_in_recep",
                     "pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep", "pick_two_obj_and_place"}


@pytest.mark.skipif(not DATA.is_dir(), reason="shared ALFWorld data not present")
def test_first_games_of_a_type_spread_over_goal_objects():
    """The sorted listing groups a type's games by goal object; ``env.alfworld_order: by_object`` takes them
    round-robin over objects, so the first N of a type (train_per_type, eval_per_type, trees) cover many objects."""
    from qlass_lib.envs.alfworld import goal_object_of, spread_by_object
    games = [(i, g) for i, g in enumerate(game_dirs(DATA, "test")) if task_type_of(g) == "pick_and_place_simple"]
    order = spread_by_object(games)
    assert sorted(order) == [i for i, _ in games]  # a permutation: every game once, variations unchanged
    trial = dict(games)
    objects = [goal_object_of(trial[i]) for i in order]
    assert objects[:7] == ["Mug", "Pencil", "PepperShaker", "SaltShaker", "SoapBottle", "Vase", "Watch"]
    assert len({goal_object_of(g) for _, g in games[:7]}) == 3  # the sorted listing's first 7: three objects
    assert order[0] == games[0][0]  # the first game of the type stays the first
    assert spread_by_object([]) == []
    from qlass_lib.core.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="env.alfworld_order"):
        load_config(None, {"env": {"alfworld_order": "by_object"}})
    try:
        from qlass_lib.envs.alfworld import ALFWorldEnv
        env = ALFWorldEnv(str(DATA), ["pick_and_place_simple"], order="by_object")
    except EnvError:
        pytest.skip("alfworld/textworld not installed")
    assert [t.variation for t in env.tasks("test")] == order
    assert [t.variation for t in ALFWorldEnv(str(DATA), ["pick_and_place_simple"]).tasks("test")] == sorted(order)
    with pytest.raises(EnvError, match="game order"):
        ALFWorldEnv(str(DATA), order="random")


def test_missing_games_are_one_clear_error(tmp_path):
    with pytest.raises(EnvError, match="ALFWorld games not found"):
        game_dirs(tmp_path, "test")
    with pytest.raises(EnvError, match="train games not found"):
        game_dirs(tmp_path, "train", cache_dir=tmp_path / "cache")


def test_env_needs_its_packages_or_runs(tmp_path):
    from qlass_lib.envs.alfworld import ALFWorldEnv
    with pytest.raises(EnvError, match="data directory not found"):
        ALFWorldEnv(str(tmp_path / "nope"))
    try:
        import textworld  # noqa: F401
        import alfworld  # noqa: F401
    except ImportError:
        with pytest.raises(EnvError, match=r"pip install -e '\.\[alfworld\]'"):
            ALFWorldEnv(str(DATA if DATA.is_dir() else tmp_path))
        pytest.skip("alfworld/textworld not installed")
    if not DATA.is_dir():
        pytest.skip("shared ALFWorld data not present")
    from qlass_lib.envs import check_env
    env = ALFWorldEnv(str(DATA), max_turns=40)
    task = env.tasks("test")[0]
    report = check_env(env, task, env.gold_actions(task))
    assert report["final_score"] == 1.0


@pytest.fixture(scope="module")
def alf():
    pytest.importorskip("textworld")
    pytest.importorskip("alfworld")
    if not DATA.is_dir():
        pytest.skip("shared ALFWorld data not present")
    from qlass_lib.envs.alfworld import ALFWorldEnv
    env = ALFWorldEnv(str(DATA), max_turns=40)
    yield env
    env.close()


def test_invalid_actions_are_observations(alf):
    from qlass_lib.models.policy import Candidate
    from qlass_lib.method.rollout import run_episode
    from qlass_lib.text.prompts import NO_ACTION_OBSERVATION, parse_action
    assert parse_action("Thought: the mug is here.\nAction: take mug 1 from countertop 2") == "take mug 1 from countertop 2"
    assert parse_action("I think I should go to the fridge") is None
    task = alf.tasks("dev")[0]
    alf.reset(task)
    for bad in ["fly to the moon", "take nothing from nowhere", "", "go to drawer 999"]:
        s = alf.step(bad)
        assert isinstance(s.observation, str) and s.observation
        assert s.reward == 0.0 and not s.done
    assert alf.turns == 4  # invalid actions count toward the turn cap

    outputs = iter(["go somewhere nice", "Action: examine the universe"] * 3)
    def babble(state, turn):
        text = next(outputs)
        return Candidate(text, parse_action(text), 4), {}
    alf.max_turns = 6
    try:
        ep = run_episode(alf, task, babble)
    finally:
        alf.max_turns = 40
    assert ep.steps == 6 and ep.reward == 0.0
    assert [t["observation"] for t in ep.turns[::2]] == [NO_ACTION_OBSERVATION] * 3


# The PDDL planner's plans for the first valid_seen game of each type (measured; fast-downward is deterministic)
PLANNER_STEPS = {"look_at_obj_in_light": 3, "pick_and_place_simple": 4, "pick_clean_then_place_in_recep": 6,
                 "pick_cool_then_place_in_recep": 7, "pick_heat_then_place_in_recep": 6,
                 "pick_two_obj_and_place": 8}


@pytest.fixture(scope="module")
def planner_run(alf, tmp_path_factory):
    """The first valid_seen game of each task type, and the planner's replay-checked records of them."""
    from qlass_lib.text.expert import generate_expert, read_jsonl
    firsts = {}
    for t in alf.tasks("dev"):
        firsts.setdefault(t.task_type.split("@")[0], t)
    out = tmp_path_factory.mktemp("planner") / "expert0.jsonl"
    stats = generate_expert(alf, list(firsts.values()), out)
    return firsts, stats, {r["id"]: r for r in read_jsonl(out)}


def test_planner_expert_wins_one_game_per_type_the_same_way_twice(alf, planner_run, tmp_path):
    """ALFWorld's PDDL planner through the expert stage (replay-checked) on the first valid_seen game of each
    task type: it wins all six, in a known number of steps, and a second run (on two of them, to save time)
    writes the same actions."""
    from qlass_lib.envs.alfworld import TASK_TYPES
    from qlass_lib.text.expert import generate_expert, read_jsonl
    assert alf.expert == "planner"
    firsts, stats, records = planner_run
    assert set(firsts) == set(TASK_TYPES)
    assert stats == {"kept": 6, "failed": 0, "fallback": 0}
    runs = [{tid: r["actions"] for tid, r in records.items()}]
    games = list(firsts.values())[:2]
    out = tmp_path / "expert1.jsonl"
    assert generate_expert(alf, games, out) == {"kept": 2, "failed": 0, "fallback": 0}
    runs.append({r["id"]: r["actions"] for r in read_jsonl(out)})
    assert runs[1] == {g.id: runs[0][g.id] for g in list(firsts.values())[:2]}
    assert {tid.split("@")[0]: len(a) for tid, a in runs[0].items()} == PLANNER_STEPS
    for acts in runs[0].values():
        assert "look around" not in acts  # ScienceWorld's look-on-arrival is not an ALFWorld command


def test_only_deterministic_experts_are_offered():
    """ALFWorld's handcoded expert (its choices vary between runs) is not an option: the env and the params
    refuse it, each with one error naming the choices."""
    pytest.importorskip("textworld")
    pytest.importorskip("alfworld")
    if not DATA.is_dir():
        pytest.skip("shared ALFWorld data not present")
    from qlass_lib.core.config import ConfigError
    from qlass_lib.envs.alfworld import EXPERTS, ALFWorldEnv
    from qlass_lib.run.pipeline import load_run_config
    assert EXPERTS == ("planner", "searcher")
    for bad in ("handcoded", "oracle"):
        with pytest.raises(EnvError, match=f"unknown ALFWorld expert '{bad}'.*planner.*searcher"):
            ALFWorldEnv(str(DATA), expert=bad)
    with pytest.raises(ConfigError, match="alfworld_expert"):
        load_run_config(Path(__file__).resolve().parents[1] / "params" / "alfworld-smoke.yaml", {"env.alfworld_expert": "handcoded"})


def test_searcher_expert_searches_then_lets_the_planner_finish(tmp_path):
    """The searcher visits receptacles in the location table's order (opening closed ones) until it sees the
    goal object, takes it, then follows the planner: on three valid_seen games it wins in a known number of
    steps, its first moves are the search, and a second run writes the same actions.  The location table is
    counted here from the valid_seen games (the env counts the train split, which needs the 1 GB unpack)."""
    pytest.importorskip("textworld")
    pytest.importorskip("alfworld")
    if not DATA.is_dir():
        pytest.skip("shared ALFWorld data not present")
    from qlass_lib.envs import TaskRef
    from qlass_lib.envs.alfworld import ALFWorldEnv
    from qlass_lib.envs.alfworld_searcher import location_counts, receptacles_in, search_order
    from qlass_lib.text.expert import generate_expert, read_jsonl
    from qlass_lib.text.prompts import parse_action, parse_thought
    assert receptacles_in("you see a cabinet 2, a cabinet 1, and a toilet 1.") == ["cabinet 2", "cabinet 1", "toilet 1"]
    assert search_order(["drawer 1", "bed 1", "desk 1"], "book", {"book": {"bed": 5, "desk": 5}}) == \
        ["bed 1", "desk 1", "drawer 1"]
    env = ALFWorldEnv(str(DATA), max_turns=40, expert="searcher")
    counts = location_counts(env.games("dev"))
    env.location_counts = lambda: counts
    games = [TaskRef("look_at_obj_in_light@dev", 1), TaskRef("pick_and_place_simple@dev", 14),
             TaskRef("pick_two_obj_and_place@dev", 116)]
    try:
        runs, recs = [], []
        for k, thoughts in enumerate(("none", "plan")):  # the second run writes the searcher's plan notes too
            out = tmp_path / f"searcher{k}.jsonl"
            assert generate_expert(env, games, out, thoughts) == {"kept": 3, "failed": 0, "fallback": 0}
            recs.append(read_jsonl(out))
            runs.append({r["id"]: r["actions"] for r in recs[-1]})
        first_obs = recs[1][0]["first_observation"]
        order = search_order(receptacles_in(first_obs), "bowl", counts)
    finally:
        env.close()
    assert runs[0] == runs[1]
    # plan notes: before each search move, the receptacles left to check (next first, at most 5); none after
    turns = [c["value"] for c in recs[1][0]["conversations"] if c["from"] == "gpt"]
    assert [parse_action(t) for t in turns] == runs[1][games[0].id]
    assert turns[0] == f"Thought: Looking for a bowl. To check: {', '.join(order[:5])}.\nAction: go to {order[0]}"
    assert turns[5] == f"Thought: Looking for a bowl. To check: {', '.join(order[5:10])}.\nAction: go to {order[5]}"
    assert all(parse_thought(t) is None for t in turns[7:])  # from the take on, the planner's bare actions
    assert [c["value"] for c in recs[0][0]["conversations"] if c["from"] == "gpt"][0] == f"Action: go to {order[0]}"
    acts = [runs[0][g.id] for g in games]
    assert [len(a) for a in acts] == [10, 12, 8]
    assert acts[0][:6] == [f"go to shelf {i}" for i in (6, 5, 4, 3, 2, 1)] and acts[0][7].startswith("take bowl")
    assert acts[1][:4] == ["go to drawer 4", "open drawer 4", "go to drawer 3", "open drawer 3"]


def test_recovery_commands_do_nothing_in_the_real_game(alf, planner_run):
    """Every invalid command a recovery copy may insert (``bc.recovery_copies``) gets "Nothing happens." in the
    real game and leaves it unchanged: at every state of the planner's path on two valid_seen games all of them
    are executed, and the expert's next command still gets the observation recorded without them, up to the win."""
    from qlass_lib.text.expert import to_messages
    from qlass_lib.text.prompts import observation_turn, parse_action
    from qlass_lib.text.recovery import NOTHING, invalid_commands, receptacle_types
    firsts, _, records = planner_run
    tasks = [firsts["look_at_obj_in_light"], firsts["pick_and_place_simple"]]
    recs = [records[t.id] for t in tasks]
    types = receptacle_types(recs)
    alf.max_turns = 10_000
    tried = [0, 0, 0]
    try:
        for task, rec in zip(tasks, recs):
            msgs = to_messages(rec["conversations"])
            alf.reset(task)
            for i in range(1, len(msgs), 2):
                for k, cmds in enumerate(invalid_commands(msgs, i, types)):
                    for bad in cmds:
                        assert alf.step(bad).observation == NOTHING, bad
                        tried[k] += 1
                step = alf.step(parse_action(msgs[i]["content"]))
                if i + 1 < len(msgs):
                    assert observation_turn(step.observation) == msgs[i + 1]["content"]
            assert step.done and step.info["score"] == 1.0
    finally:
        alf.max_turns = 40
    assert all(tried), tried  # every kind was tried


def test_failure_steps_of_hand_made_episodes():
    """Each episode lands on the first step of the searcher's way it missed; the counts of "Nothing happens.",
    `go to` where the agent stands and `go to` a receptacle the room lacks follow the recorded turns."""
    from qlass_lib.analysis.alfworld_failures import classify
    room = "You are in the middle of a room. Looking quickly around you, you see a desk 1, a shelf 1, and a bed 1."

    def turn(action, obs):
        return {"action": action, "observation": obs}
    to_desk = turn("go to desk 1", "You arrive at loc 3. On the desk 1, you see a pen 1, and a mug 2.")
    take_pen = turn("take pen 1 from desk 1", "You pick up the pen 1 from the desk 1.")
    take_mug = turn("take mug 2 from desk 1", "You pick up the mug 2 from the desk 1.")
    nothing = [turn("go to desk 1", "Nothing happens."), turn("go to sofa 1", "Nothing happens.")]
    assert classify("mug", room, [to_desk, take_mug], True)["failed_at"] == "won"
    row = classify("mug", room, [to_desk, take_pen, take_mug] + nothing, False)
    assert (row["failed_at"], row["first_seen_turn"], row["took_goal_turn"]) == ("took it, did not finish", 0, 2)
    assert (row["other_object_takes"], row["goto_where_it_stands"], row["goto_missing_receptacle"]) == (1, 1, 1)
    assert row["nothing_happens_share"] == 2 / 5
    assert classify("mug", room, [to_desk, take_pen], False)["failed_at"] == "seen, took another object"
    assert classify("mug", room, [to_desk] + nothing, False)["failed_at"] == "seen, took nothing"
    row = classify("cd", room, [to_desk, take_pen], False)
    assert (row["failed_at"], row["first_seen_turn"], row["took_goal_turn"]) == ("goal object never seen", None, None)
    assert classify("mug", room, [], False)["nothing_happens_share"] == 0.0
