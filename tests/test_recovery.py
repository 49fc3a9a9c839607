"""Recovery copies (``bc.recovery_copies``): which invalid commands are inserted, that they carry no loss, and that
copies are seeded. ``tests/test_alfworld.py`` replays them in real games."""
import pytest

from qlass_lib.text import examples
from qlass_lib.text import prompts
from qlass_lib.text.expert import to_conversations, to_messages
from qlass_lib.text.recovery import (
    NOTHING,
    add_recovery_copies,
    invalid_commands,
    receptacle_types,
    room_receptacles,
)


def _record(tid="pick_and_place_simple@train_0"):
    s = prompts.initial_state("alfworld", "Your task is to: put some apple on diningtable.",
                              "You are in the middle of a room. Looking quickly around you, you see a cabinet 1, "
                              "a countertop 1, a diningtable 1, and a fridge 1.")
    for act, obs in [("go to countertop 1", "You arrive at loc 3. On the countertop 1, you see a apple 2, and a mug 1."),
                     ("take apple 2 from countertop 1", "You pick up the apple 2 from the countertop 1."),
                     ("go to diningtable 1", "You arrive at loc 5. On the diningtable 1, you see nothing."),
                     ("put apple 2 in/on diningtable 1", "You put the apple 2 in/on the diningtable 1.")]:
        s = prompts.extend(s, prompts.agent_turn(act), obs)
    return {"id": tid, "task_type": "pick_and_place_simple@train", "conversations": to_conversations(s[:-1])}


def _other_room():
    rec = _record("look_at_obj_in_light@train_1")
    rec["conversations"][0]["value"] = rec["conversations"][0]["value"].replace("a fridge 1", "a desk 1, a sofa 1")
    return rec


def test_invalid_commands_by_kind():
    msgs = to_messages(_record()["conversations"])
    assert room_receptacles(msgs[0]["content"]) == ["cabinet 1", "countertop 1", "diningtable 1", "fridge 1"]
    example = [{"role": "user", "content": "Observation: Looking quickly around you, you see a sofa 1."}]
    with_example = prompts.first_message("alfworld", "Your task is to: put some apple on diningtable.",
                                         "Looking quickly around you, you see a cabinet 1.", example)
    assert room_receptacles(with_example) == ["cabinet 1"]  # the task's room, not the example's
    types = receptacle_types([_record(), _other_room()])
    assert types == ["cabinet", "countertop", "desk", "diningtable", "fridge", "sofa"]
    assert invalid_commands(msgs, 1, types) == [[], ["go to desk 1", "go to sofa 1"], []]  # nowhere yet
    repeat, absent, take = invalid_commands(msgs, 3, types)  # at the countertop, before 'take apple 2'
    assert repeat == ["go to countertop 1"] and absent == ["go to desk 1", "go to sofa 1"]
    assert take == [f"take apple {k} from countertop 1" for k in (1, 3, 4, 5)]  # up to 3 above; apple 2 is seen
    assert invalid_commands(msgs, 7, types)[0] == ["go to diningtable 1"]


def test_copies_are_seeded_and_insert_unsupervised_turns(tiny_tok):
    tok, _ = tiny_tok
    recs = [_record(), _other_room()]
    a = add_recovery_copies(recs, "alfworld", 2, 1.0, seed=3)
    assert a == add_recovery_copies(recs, "alfworld", 2, 1.0, seed=3)
    assert a != add_recovery_copies(recs, "alfworld", 2, 1.0, seed=4)
    assert len(a) == 4 and all(r["recovery_turns"] == 4 for r in a)  # rate 1: one before each of the 4 turns
    for rec, copy in zip(recs * 2, a):
        msgs = to_messages(copy["conversations"])
        inserted = [i for i, m in enumerate(msgs) if m.get("loss") is False]
        assert len(inserted) == 4
        assert all(msgs[i + 1]["content"] == prompts.observation_turn(NOTHING) for i in inserted)
        kept = [m for i, m in enumerate(msgs) if i not in inserted and i - 1 not in inserted]
        assert kept == to_messages(rec["conversations"])  # the expert turns, in order, unchanged
        # short example: only the expert turns are supervised
        ids, labels = examples.mask_labels(tok, msgs)
        sup = tok.decode([t for t, l in zip(ids, labels) if l != examples.IGNORE])
        assert sup == "".join(m["content"] + tok.eos_token for m in kept if m["role"] == "assistant")
        # long conversation (one window per turn): no window supervises an inserted turn
        wins = examples.build_examples(tok, [copy], max_length=len(ids) // 2)
        assert len(wins) == 4
        for w in wins:
            text = tok.decode([t for t, l in zip(w.input_ids, w.labels) if l != examples.IGNORE])
            assert text in {m["content"] + tok.eos_token for m in kept if m["role"] == "assistant"}
    assert add_recovery_copies(recs, "alfworld", 0, 1.0, seed=3) == []
    assert add_recovery_copies(recs, "alfworld", 1, 0.0, seed=3) == []  # nothing inserted: no copy


def test_recovery_copies_are_alfworld_only():
    from qlass_lib.core.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="bc.recovery_copies"):
        load_config(None, {"bc": {"recovery_copies": 1}})
    assert load_config(None, {"bc": {"recovery_copies": 1}, "env": {"name": "alfworld"}}).bc.recovery_copies == 1
