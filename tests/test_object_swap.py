"""Object-swap copies (``bc.object_swap_copies``): the goal type is renamed as whole words in the task, observations
and actions only, to a goal type the episode never mentions, and copies are seeded."""
import pytest

from qlass_lib.text import prompts
from qlass_lib.text.expert import to_conversations, to_messages
from qlass_lib.text.object_swap import add_object_swaps, goal_type, swap_copy, words

TASK = "Your task is to: put some knife on diningtable."


def _record(tid, task=TASK, goal="knife", near="butterknife 1", task_type="pick_and_place_simple@train"):
    example = [{"role": "user", "content": f"Observation: On the shelf 1, you see a {goal} 4."},
               {"role": "assistant", "content": f"Action: take {goal} 4 from shelf 1"}]
    s = prompts.initial_state("alfworld", task, "You are in the middle of a room. Looking quickly around you, you "
                              "see a countertop 1, and a diningtable 1.", example)
    acts = ["go to countertop 1", f"take {goal} 2 from countertop 1", "go to diningtable 1",
            f"put {goal} 2 in/on diningtable 1"]
    obs = [f"You arrive at loc 3. On the countertop 1, you see a {near}, and a {goal} 2.",
           f"You pick up the {goal} 2 from the countertop 1.", "You arrive at loc 5. On the diningtable 1, you see nothing.",
           f"You put the {goal} 2 in/on the diningtable 1."]
    for a, o in zip(acts, obs):
        s = prompts.extend(s, prompts.agent_turn(a), o)
    return {"id": tid, "task_type": task_type, "task_text": task, "actions": acts,
            "conversations": to_conversations(s[:-1])}


def test_swap_renames_whole_words_after_the_task_line_only():
    rec = _record("pick_and_place_simple@train_0")
    assert goal_type(rec) == "knife"
    out = swap_copy(rec, "knife", "mug")
    msgs = to_messages(out["conversations"])
    head, task = msgs[0]["content"].split("Task: ")
    assert "take knife 4 from shelf 1" in head  # the one-shot example is left as it is
    assert task.startswith("Your task is to: put some mug on diningtable.")
    assert out["actions"][1] == "take mug 2 from countertop 1" and out["task_text"] == TASK.replace("knife", "mug")
    assert "a butterknife 1, and a mug 2" in msgs[2]["content"]  # 'knife' inside 'butterknife' is untouched
    assert "knife" not in words(out) and out["swapped_goal"] == ["knife", "mug"]
    assert [m["role"] for m in msgs] == [m["role"] for m in to_messages(rec["conversations"])]
    assert goal_type({"actions": ["go to desk 1", "open drawer 1"]}) is None


def test_copies_draw_unmentioned_goal_types_and_are_seeded():
    recs = [_record("pick_and_place_simple@train_0"),
            _record("pick_and_place_simple@train_1", TASK.replace("knife", "mug"), "mug", near="knife 1"),
            _record("look_at_obj_in_light@train_0", "Your task is to: look at book under the desklamp.", "book",
                    task_type="look_at_obj_in_light@train"),
            {**_record("pick_and_place_simple@train_2"), "actions": ["go to countertop 1"]}]  # takes nothing
    a = add_object_swaps(recs, "alfworld", 2, seed=1)
    assert a == add_object_swaps(recs, "alfworld", 2, seed=1)
    assert len(a) == 6  # 2 copies of the 3 records that take an object
    for copy in a:
        old, new = copy["swapped_goal"]
        src = next(r for r in recs if r["id"] == copy["id"])
        assert new in {"knife", "mug", "book"} and new != old and new not in words(src)
        assert goal_type(copy) == new
    # the mug episode lists a knife, so its only unmentioned goal type is the look_at task's book
    assert {c["swapped_goal"][1] for c in a if c["id"] == "pick_and_place_simple@train_1"} == {"book"}
    assert {c["swapped_goal"][1] for c in a if c["id"] == "pick_and_place_simple@train_0"} <= {"mug", "book"}
    seeds = {tuple(c["swapped_goal"][1] for c in add_object_swaps(recs, "alfworld", 2, seed=s)) for s in range(8)}
    assert len(seeds) > 1  # the draw follows the seed
    assert add_object_swaps(recs, "alfworld", 0, seed=1) == []
    with pytest.raises(ValueError, match="alfworld only"):
        add_object_swaps(recs, "webshop", 1, seed=1)


def test_object_swap_copies_are_alfworld_only():
    from qlass_lib.core.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="bc.object_swap_copies"):
        load_config(None, {"bc": {"object_swap_copies": 1}})
    assert load_config(None, {"bc": {"object_swap_copies": 1}, "env": {"name": "alfworld"}}).bc.object_swap_copies == 1
