import pytest
import torch

from qlass_lib.method import bc
from qlass_lib.text import examples
from qlass_lib.text import prompts
from qlass_lib.text.expert import to_conversations


def _conv(n_turns, obs_words=3):
    s = prompts.initial_state("scienceworld", "Find the animal.", "You are in the hallway.")
    for i in range(n_turns):
        s = prompts.extend(s, f"Action: go to room {i}", " ".join(["kitchen"] * obs_words))
    return s[:-1]  # ends with the agent's turn


def test_labels_cover_exactly_the_agent_turns(tiny_tok):
    tok, _ = tiny_tok
    msgs = _conv(3)
    ids, labels = examples.mask_labels(tok, msgs)
    assert len(ids) == len(labels)
    kept = [t for t, l in zip(ids, labels) if l != examples.IGNORE]
    text = tok.decode(kept)
    expected = "".join(m["content"] + tok.eos_token for m in msgs if m["role"] == "assistant")
    assert text == expected
    # nothing from user turns is supervised
    assert "Observation" not in text and "Task" not in text


def test_last_only_supervision(tiny_tok):
    tok, _ = tiny_tok
    msgs = _conv(3)
    ids, labels = examples.mask_labels(tok, msgs, supervise="last")
    assert tok.decode([t for t, l in zip(ids, labels) if l != examples.IGNORE]) == "Action: go to room 2" + tok.eos_token


def test_short_conversation_is_one_example(tiny_tok):
    tok, _ = tiny_tok
    rec = {"id": "t_1", "conversations": to_conversations(_conv(2))}
    ex = examples.build_examples(tok, [rec], max_length=4096)
    assert len(ex) == 1


def test_long_conversation_truncates_from_left_keeping_current_turn(tiny_tok):
    tok, _ = tiny_tok
    msgs = _conv(12, obs_words=30)
    rec = {"id": "t_2", "conversations": to_conversations(msgs)}
    full = len(examples.mask_labels(tok, msgs)[0])
    max_len = full // 3
    ex = examples.build_examples(tok, [rec], max_length=max_len)
    assert len(ex) == 12  # one example per agent turn
    for i, e in enumerate(ex):
        assert len(e.input_ids) <= max_len
        sup = tok.decode([t for t, l in zip(e.input_ids, e.labels) if l != examples.IGNORE])
        assert sup == f"Action: go to room {i}" + tok.eos_token  # the current turn, complete
        assert tok.decode(e.input_ids).endswith(sup)
    # late turns lost their oldest history but kept the task message
    assert "Find the animal." in tok.decode(ex[-1].input_ids)
    assert "room 0" not in tok.decode(ex[-1].input_ids)


def test_window_stats_count_what_long_conversations_cost(tiny_tok):
    tok, _ = tiny_tok
    short = {"id": "s", "conversations": to_conversations(_conv(2))}
    long_ = {"id": "l", "conversations": to_conversations(_conv(12, obs_words=30))}
    max_len = len(examples.mask_labels(tok, _conv(2))[0])  # the short one fits, the long one does not
    assert len(examples.mask_labels(tok, _conv(12, obs_words=30))[0]) > max_len
    ex = examples.build_examples(tok, [short, long_], max_length=max_len)
    stats = examples.window_stats(ex)
    windows = sum(len(e.input_ids) for e in ex if e.task_id == "l")
    assert stats["windowed_conversations"] == 1 and stats["window_examples"] == 12
    assert stats["window_token_share"] == round(windows / sum(len(e.input_ids) for e in ex), 4)
    assert stats["window_token_share"] > 0.8  # 12 windows against one short conversation
    assert examples.window_stats(examples.build_examples(tok, [short, long_], max_length=10**6)) == \
        {"windowed_conversations": 0, "window_examples": 0, "window_token_share": 0.0}
    # copies keep their record's id (recovery and object-swap copies do): whole conversations, not windows
    copies = examples.build_examples(tok, [short, dict(short), long_, dict(long_)], max_length=max_len)
    assert examples.window_stats(copies)["windowed_conversations"] == 2
    assert examples.window_stats(copies)["window_examples"] == 24
    assert [e.window for e in copies if e.task_id == "s"] == [0, 0]


def test_loss_ignores_user_tokens(tiny_tok):
    import torch
    from qlass_lib.core.config import ModelConfig
    from qlass_lib.models.loading import load_model
    tok, path = tiny_tok
    cfg = ModelConfig(bf16=False, device="cpu")
    model = load_model(str(path), cfg)
    ex = examples.build_examples(tok, [{"id": "a_1", "conversations": to_conversations(_conv(2))}], 4096)
    batch = bc.batch_of(ex, tok.pad_token_id, torch.device("cpu"))
    loss, n = bc.action_loss(model, batch, cfg)
    assert n == sum(1 for l in ex[0].labels[1:] if l != examples.IGNORE)
    # changing a user token's label target does not matter: mask a copy fully and loss has no tokens
    batch2 = dict(batch, labels=torch.full_like(batch["labels"], examples.IGNORE))
    _, n2 = bc.action_loss(model, batch2, cfg)
    assert n2 == 0 and torch.isfinite(loss)


def test_tiny_pretraining_supervises_every_token_and_resumes(tiny_tok, tmp_path):
    import json
    from dataclasses import replace
    from safetensors.torch import load_file
    from qlass_lib.core.config import RunConfig
    from qlass_lib.method import pretrain
    tok, path = tiny_tok
    cfg = RunConfig()
    cfg.model = replace(cfg.model, bf16=False, device="cpu")
    recs = [{"id": f"t_{i}", "conversations": to_conversations(_conv(3))} for i in range(4)]
    assert pretrain.pretrain_tiny(cfg, str(path), recs, tmp_path) == str(path)  # off by default
    cfg.model.tiny = replace(cfg.model.tiny, pretrain_steps=20)
    cfg.bc = replace(cfg.bc, max_length=64, batch_tokens=256)
    out = pretrain.pretrain_tiny(cfg, str(path), recs, tmp_path)
    assert out != str(path)
    res = json.loads((tmp_path / "pretrained_base" / "pretrain_result.json").read_text())
    assert res["steps"] == 20 and res["stopped"] == "steps" and res["tokens_per_epoch"] > 64
    curve = [v for _, v in res["loss_curve"]]
    assert curve[-1] < curve[0]  # observations are learned too: the text is repetitive
    before, after = load_file(str(path / "model.safetensors")), load_file(f"{out}/model.safetensors")
    assert any(not (before[k] == after[k]).all() for k in before)
    stamp = (tmp_path / "pretrained_base" / "model.safetensors").stat().st_mtime_ns
    assert pretrain.pretrain_tiny(cfg, str(path), recs, tmp_path) == out  # finished: reused, not retrained
    assert (tmp_path / "pretrained_base" / "model.safetensors").stat().st_mtime_ns == stamp


def test_copy_drills_supervise_only_the_copies(tiny_tok):
    """A copy drill is span, separator, the same span, separator (repeated); only the second copies and their
    closing separator carry labels; the same seed cuts the same drills; shuffled drills permute each span, random ones draw from the token set."""
    from qlass_lib.text.examples import IGNORE
    from qlass_lib.method.pretrain import copy_accuracy, copy_drills
    from qlass_lib.core.config import ModelConfig
    from qlass_lib.models.loading import load_model
    ids = list(range(10, 400))
    a, b = copy_drills(ids, 3, 1, seed=5), copy_drills(ids, 3, 1, seed=5)
    assert [(x.input_ids, x.labels) for x in a] == [(x.input_ids, x.labels) for x in b]
    for ex in a:
        assert len(ex.input_ids) == len(ex.labels) <= 512
        i = 0
        while i < len(ex.input_ids):
            k = ex.input_ids.index(1, i) - i
            span = ex.input_ids[i:i + k]
            assert ex.input_ids[i + k + 1:i + 2 * k + 1] == span and ex.input_ids[i + 2 * k + 1] == 1
            assert ex.labels[i:i + k + 1] == [IGNORE] * (k + 1) and ex.labels[i + k + 1:i + 2 * k + 2] == span + [1]
            assert span == ids[span[0] - 10:span[0] - 10 + k]  # a contiguous piece of the stream
            i += 2 * k + 2
    shuffled = copy_drills(ids, 2, 1, seed=5, mode="shuffled")[0]
    k = shuffled.input_ids.index(1)
    span = shuffled.input_ids[:k]
    assert sorted(span) == list(range(min(span), min(span) + k)) and shuffled.input_ids[k + 1:2 * k + 1] == span
    rand = copy_drills([7, 7, 8, 9] * 20, 1, 1, seed=5, mode="random")[0]  # tokens drawn from {7, 8, 9}
    k = rand.input_ids.index(1)
    assert set(rand.input_ids) == {7, 8, 9, 1} and rand.input_ids[k + 1:2 * k + 1] == rand.input_ids[:k]
    assert copy_drills([7, 7, 8, 9] * 20, 1, 1, seed=5, mode="random")[0].input_ids == rand.input_ids
    _, path = tiny_tok
    acc = copy_accuracy(load_model(str(path), ModelConfig()), copy_drills(list(range(10, 60)), 2, 1, seed=0, length=64),
                        ModelConfig())
    assert 0.0 <= acc <= 1.0


def test_copy_first_phase_runs_alone_at_a_constant_rate_and_resumes(tiny_tok, tmp_path):
    """The copy-first phase trains on drills only, checks held-out copy accuracy every 50 steps, keeps the
    learning rate constant after the warm-up, and continues an interrupted phase from its checkpoint to the
    same weights as an uninterrupted one."""
    import json
    from dataclasses import replace
    from safetensors.torch import load_file
    from qlass_lib.method import pretrain
    from qlass_lib.core.config import RunConfig
    from qlass_lib.models.training import lr_factor
    assert [lr_factor(s, 5, 60, decay_start=60) for s in (0, 4, 5, 30, 59)] == [0.2, 1.0, 1.0, 1.0, 1.0]
    tok, path = tiny_tok
    recs = [{"id": f"t_{i}", "conversations": to_conversations(_conv(3))} for i in range(4)]

    def run(out, steps):
        cfg = RunConfig()
        cfg.model = replace(cfg.model, bf16=False, device="cpu")
        cfg.model.tiny = replace(cfg.model.tiny, copy_first_steps=steps, copy_batch=1, copy_first_target=1.0)
        cfg.bc = replace(cfg.bc, warmup_steps=5, save_every=10)
        return pretrain.pretrain_tiny(cfg, str(path), recs, out)

    full = run(tmp_path / "a", 60)
    res = json.loads((tmp_path / "a" / "pretrained_base" / "pretrain_result.json").read_text())
    phase = res["copy_phase"]
    assert phase["steps"] == 60 and phase["stopped"] == "steps" and "steps" not in res  # no text phase
    assert [s for s, _ in phase["accuracy_curve"]] == [50, 60] and phase["copy_accuracy"] == res["copy_accuracy"]
    # a crash right after the step-30 checkpoint: the checkpoint is there, unfinished, and no results
    import shutil
    import torch
    run(tmp_path / "b", 30)
    state_file = tmp_path / "b" / "pretrain_copy" / "trainer_state.json"
    state_file.write_text(json.dumps(dict(json.loads(state_file.read_text()), stopped=None)))
    (tmp_path / "b" / "pretrain_copy" / "copy_phase.json").unlink()
    shutil.rmtree(tmp_path / "b" / "pretrained_base")
    resumed = run(tmp_path / "b", 60)
    a, b = load_file(f"{full}/model.safetensors"), load_file(f"{resumed}/model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert any(not (a[k] == v).all() for k, v in load_file(str(path / "model.safetensors")).items())


def test_a_copy_phase_stopped_by_the_clock_is_named_as_a_guard_hit(tmp_path):
    """A pretraining whose copy-first phase stopped on the wall-clock guard depends on the machine's speed:
    the stage manifest's guard list names its result file, as it does for a top-level stop."""
    import json
    from qlass_lib.core.artifacts import guard_hits
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "pretrain_result.json").write_text(json.dumps({"stopped": "steps", "copy_phase": {"stopped": "time"}}))
    (tmp_path / "bc_result.json").write_text(json.dumps({"stopped": "steps", "copy_phase": {"stopped": "target_accuracy"}}))
    assert guard_hits(tmp_path) == ["a/pretrain_result.json"]


def test_loss_on_supervised_positions_equals_full_logits_cross_entropy(tiny_tok):
    """The output layer runs only where a supervised token is predicted; loss and gradients are those of the
    cross-entropy over every position's logits with the others ignored (two padded examples, LoRA on)."""
    import torch
    from qlass_lib.core.config import ModelConfig
    from qlass_lib.models.loading import load_model
    tok, path = tiny_tok
    cfg = ModelConfig(bf16=False, device="cpu", lora_r=4, lora_alpha=8)
    torch.manual_seed(0)
    model = load_model(str(path), cfg, train=True)
    model.eval()  # no dropout: both passes see the same function
    recs = [{"id": f"a_{k}", "conversations": to_conversations(_conv(k))} for k in (1, 3)]
    batch = bc.batch_of(examples.build_examples(tok, recs, 4096), tok.pad_token_id, torch.device("cpu"))
    loss, n = bc.action_loss(model, batch, cfg)
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad] if loss.backward() is None else None
    model.zero_grad()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    full = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1),
                                             ignore_index=examples.IGNORE, reduction="sum") / n
    full.backward()
    assert float(loss.detach()) == pytest.approx(float(full.detach()), rel=1e-5)
    for g, p in zip(grads, [p for p in model.parameters() if p.requires_grad]):
        assert torch.allclose(g, p.grad, atol=1e-6)


def test_the_one_collator_pads_each_field_with_its_own_value():
    from qlass_lib.text.batching import collate
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "target": [0.5, 0.25, 1.0]},
            {"input_ids": [8], "labels": [8], "target": [0.75]}]
    b = collate(rows, {"input_ids": 0, "labels": examples.IGNORE, "target": 0.0})
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert b["target"].dtype == torch.float32 and b["target"].tolist() == [[0.5, 0.25, 1.0], [0.75, 0.0, 0.0]]
    assert b["input_ids"].dtype == torch.long


def test_the_one_task_split():
    """BC's records and the QNet's trees are split by one rule; the trees keep at least one validation task."""
    from qlass_lib.core.splits import split_ids, split_records
    ids = [f"t_{i}" for i in range(10)]
    train, val = split_ids(ids, 0.25, seed=3)
    assert len(val) == 2 and train | val == set(ids) and not train & val  # round(2.5) = 2
    assert split_ids(ids * 2, 0.25, seed=3) == (train, val)  # repeated ids count once; same seed, same split
    assert split_ids(ids[:3], 0.1, seed=0)[1] == set() and len(split_ids(ids[:3], 0.1, seed=0, min_val=1)[1]) == 1
    assert split_ids(["a"], 0.5, seed=0, min_val=1) == ({"a"}, set()) and split_ids(ids, 0.0, 0, min_val=1)[1] == set()
    recs = [{"id": i, "k": j} for i in ids for j in range(2)]
    tr, va = split_records(recs, 0.25, seed=3)
    assert {r["id"] for r in va} == val and len(va) == 4 and len(tr) == 16 and tr + va != [] and tr[0]["id"] in train
