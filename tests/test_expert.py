import json

from qlass_lib.text import expert, prompts


def test_with_looks_inserts_after_moves_once():
    acts = ["open door to kitchen", "go to kitchen", "look around", "go to outside", "focus on bee"]
    assert expert.with_looks(acts) == ["open door to kitchen", "go to kitchen", "look around", "go to outside",
                                       "look around", "focus on bee"]


def test_template_thoughts_are_short_and_parse_back():
    for a in ["go to kitchen", "focus on bee", "move cup to red box", "look around", "mix cup"]:
        t = expert.template_thought(a)
        turn = prompts.agent_turn(a, t)
        assert prompts.parse_action(turn) == a and 0 < len(t) < 80


def test_plan_notes_carry_the_search_state():
    """Each search move's note lists the receptacles left to check, next first (at most 5); the next note is
    the same list without its head; opens, the take and the planner's actions get no note."""
    from qlass_lib.envs.alfworld_searcher import plan_notes
    obs = "You are in the middle of a room. Looking quickly around you, you see a " + \
        ", a ".join(f"drawer {i}" for i in range(7, 0, -1)) + ", and a desk 1."
    acts = ["go to desk 1", "go to drawer 7", "open drawer 7", "go to drawer 6", "take pen 1 from drawer 6",
            "go to desk 1", "put pen 1 in/on desk 1"]
    notes = plan_notes(obs, acts, "pen", {"pen": {"desk": 3, "drawer": 1}})
    assert notes == ["Looking for a pen. To check: desk 1, drawer 7, drawer 6, drawer 5, drawer 4.",
                     "Looking for a pen. To check: drawer 7, drawer 6, drawer 5, drawer 4, drawer 3.", None,
                     "Looking for a pen. To check: drawer 6, drawer 5, drawer 4, drawer 3, drawer 2.",
                     None, None, None]


def test_generated_expert_replays_to_full_score(sciworld, tmp_path):
    tasks = sciworld.tasks("train")[:2] + [t for t in sciworld.tasks("train") if "find" in t.task_type][:2]
    out = tmp_path / "expert.jsonl"
    stats = expert.generate_expert(sciworld, tasks, out, thoughts="template")
    assert stats["kept"] == 4 and stats["failed"] == 0
    recs = expert.read_jsonl(out)
    for r in recs:
        assert r["reward"] == 1.0 and r["schema_version"] == expert.SCHEMA_VERSION
        conv = r["conversations"]
        assert conv[0]["from"] == "human" and conv[-1]["from"] == "gpt"
        assert all(c["value"].startswith("Thought: ") for c in conv if c["from"] == "gpt")
        # replay the parsed actions: the same final score
        acts = [prompts.parse_action(c["value"]) for c in conv if c["from"] == "gpt"]
        sciworld.reset(next(t for t in tasks if t.id == r["id"]))
        steps = [sciworld.step(a) for a in acts]
        assert steps[-1].info["score"] == 1.0
    lifespan = [r for r in recs if r["task_type"].startswith("lifespan")]
    assert all("look around" in r["actions"][r["actions"].index("go to outside") + 1] for r in lifespan)
    # resumable: a second call adds nothing
    assert expert.generate_expert(sciworld, tasks, out)["kept"] == 4
    assert len(expert.read_jsonl(out)) == 4


def test_eto_loader(tmp_path):
    data = [{"id": "9_412", "conversations": [{"from": "human", "value": "inst"}, {"from": "gpt", "value": "OK"},
                                               {"from": "human", "value": "task"},
                                               {"from": "gpt", "value": "Thought: t\nAction: look around"}]},
            {"id": "bad", "conversations": []}]
    p = tmp_path / "sciworld_sft.json"
    p.write_text(json.dumps(data))
    recs = expert.load_eto_sft(p)
    assert len(recs) == 1 and recs[0]["variation"] == 412 and recs[0]["task_type"] == "9"
    msgs = expert.to_messages(recs[0]["conversations"])
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]


def test_one_shot_example_matches_the_agent_prompt():
    recs = [{"id": f"t_{i}", "task_text": f"Task number {i}.", "first_observation": f"room {i}",
             "conversations": [{"from": "human", "value": "old"}] +
                              [{"from": "gpt", "value": "Action: look around"}] * (i + 1)} for i in range(3)]
    ex = expert.one_shot_example(recs)
    assert ex[0]["content"] == "Task: Task number 1." and len(ex) == 3  # the median record
    out = expert.with_example(recs, "scienceworld", ex)
    want = prompts.initial_state("scienceworld", "Task number 2.", "room 2", ex)[0]["content"]
    assert out[2]["conversations"][0]["value"] == want
    assert expert.with_example(recs, "scienceworld", None) is recs
