"""Pretraining of the embedded tiny model before BC, standing in for what an LLM's pretraining brings.

Two phases, both optional and resumable:

1. **copy first** (``model.tiny.copy_first_steps``): copy drills alone at a constant learning rate after the
   warm-up, until the held-out copy accuracy reaches ``copy_first_target`` (checked every
   :data:`CHECK_EVERY` steps) (what it measured: docs/guide.md, "The embedded tiny model").
2. **expert text** (``model.tiny.pretrain_steps``): next-token prediction on the rendered expert conversations
   (every token supervised, observations included), with ``copy_share`` of the examples copy drills (of the
   copy-first phase's source) so the copy skill is kept.

``pretrain_result.json`` records the steps, losses and the held-out copy accuracy after each phase.
"""
from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import torch

from qlass_lib.text import prompts
from qlass_lib.method.bc import action_loss, batch_of, train_bc
from qlass_lib.text.examples import IGNORE, Example
from qlass_lib.text.expert import to_messages
from qlass_lib.models.loading import autocast, model_device

CHECK_EVERY = 50      # steps between held-out copy-accuracy checks in the copy-first phase
HELD_OUT_DRILLS = 16


def pretrain_tiny(cfg, base: str, records: list[dict], out_dir) -> str:
    """Pretrain the embedded tiny model at ``base`` on ``records`` (the two phases above); returns the
    directory of the pretrained base, or ``base`` itself when there is nothing to do (another model, or both
    phases off).  A finished pretraining is reused, an interrupted one resumes."""
    from qlass_lib.core.artifacts import write_json
    from qlass_lib.models.loading import EMBEDDED, load_model, load_tokenizer
    tiny = cfg.model.tiny
    if cfg.model.model_name_or_path != EMBEDDED or (tiny.pretrain_steps <= 0 and tiny.copy_first_steps <= 0):
        return base
    out = Path(out_dir) / "pretrained_base"
    if (out / "pretrain_result.json").is_file():
        return str(out)
    tok = load_tokenizer(base, cfg.model)
    model = load_model(base, cfg.model, train=True)
    ids: list[int] = []
    for rec in records:
        ids += tok(prompts.render(tok, to_messages(rec["conversations"]), False), add_special_tokens=False)["input_ids"]
    # held out: shuffled spans (only copying predicts them), or random ones when the copy-first phase trains on those
    held_mode = "random" if tiny.copy_first_steps > 0 and tiny.copy_first_source == "random" else "shuffled"
    held_out = copy_drills(ids, HELD_OUT_DRILLS, tok.eos_token_id, cfg.seed + 7919, mode=held_mode)
    result: dict = {"tokens_per_epoch": len(ids)}
    if tiny.copy_first_steps > 0:
        result["copy_phase"] = copy_phase(cfg, model, tok.eos_token_id, ids, held_out, Path(out_dir) / "pretrain_copy")
    if tiny.pretrain_steps > 0:
        n = cfg.bc.max_length
        examples = [Example(ids[i:i + n], ids[i:i + n], "pretrain") for i in range(0, len(ids) - 1, n)]
        share = tiny.copy_share
        mode = tiny.copy_first_source if tiny.copy_first_steps > 0 else "text"  # keep the skill on the same drills
        drills = copy_drills(ids, round(len(examples) * share / (1 - share)), tok.eos_token_id, cfg.seed, mode=mode) \
            if share else []
        pcfg = replace(cfg.bc, max_minutes=tiny.pretrain_minutes, max_epochs=10_000, max_steps=tiny.pretrain_steps,
                       stop_at_loss=0.0, eval_every=10**9)
        res = train_bc(model, tok, examples + drills, [], pcfg, cfg.model, Path(out_dir) / "pretrain", cfg.seed,
                       guard="model.tiny.pretrain_minutes")
        result.update({"steps": res["steps"], "epochs": res["epochs"], "stopped": res["stopped"],
                       "train_seconds": res["train_seconds"], "final_train_ema": res["final_train_ema"],
                       "copy_drills": len(drills),
                       "loss_curve": [[h["step"], h["train_ema"]] for h in res["history"] if "train_ema" in h][::10]})
    result["copy_accuracy"] = copy_accuracy(model, held_out, cfg.model)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    write_json(out / "pretrain_result.json", result)
    return str(out)


def summary(result: dict) -> dict:
    """One flat row of a ``pretrain_result.json``: each phase's steps, why it stopped, seconds, and the held-out
    copy accuracy after it."""
    row = {}
    if "copy_phase" in result:
        ph = result["copy_phase"]
        row.update(copy_steps=ph["steps"], copy_stopped=ph["stopped"], copy_seconds=round(ph["train_seconds"]),
                   copy_accuracy_after_drills=ph["copy_accuracy"])
    if "steps" in result:
        row.update(text_steps=result["steps"], text_stopped=result["stopped"], text_seconds=round(result["train_seconds"]),
                   text_final_loss=result["final_train_ema"])
    row["copy_accuracy_final"] = result.get("copy_accuracy")
    return row


def copy_phase(cfg, model, sep: int, ids: list[int], held_out: list[Example], ckpt_dir: Path) -> dict:
    """Train ``model`` on copy drills cut from ``ids`` alone (``copy_batch`` drills of 512 tokens per step, spans
    as ``copy_first_source`` says; AdamW at ``bc.learning_rate``, linear warm-up then constant), until the
    held-out copy accuracy reaches
    ``copy_first_target`` or after ``copy_first_steps``; ``pretrain_minutes`` is a wall-clock guard.
    Resumable from ``ckpt_dir``; a finished phase only reloads its weights.  Returns steps, why it stopped and
    the accuracy curve."""
    from qlass_lib.core.artifacts import read_json, write_json
    from qlass_lib.models.training import LoopState, Schedule, load_checkpoint, save_checkpoint, train_loop
    tiny, bc_cfg = cfg.model.tiny, cfg.bc
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=bc_cfg.learning_rate, weight_decay=bc_cfg.weight_decay, betas=(0.9, 0.98))
    saved = load_checkpoint(model, opt, ckpt_dir)
    if (ckpt_dir / "copy_phase.json").is_file():
        return read_json(ckpt_dir / "copy_phase.json")
    for g in opt.param_groups:
        g["base_lr"] = bc_cfg.learning_rate
    state = LoopState.from_dict(saved) if saved else LoopState()
    device = model_device(model)
    model.train()

    def epoch_batches(epoch: int) -> list[list[Example]]:
        # one "epoch" = the fresh drills between two accuracy checks, the same after a resume
        drills = copy_drills(ids, CHECK_EVERY * tiny.copy_batch, sep, cfg.seed * 1000 + epoch, mode=tiny.copy_first_source)
        return [drills[i:i + tiny.copy_batch] for i in range(0, len(drills), tiny.copy_batch)]

    def loss_fn(batch):
        loss, n = action_loss(model, batch_of(batch, sep, device), cfg.model)
        return loss, {"tokens": n}

    def after_step(st: LoopState, rec: dict):
        if st.step % CHECK_EVERY:
            return None
        rec["copy_accuracy"] = copy_accuracy(model, held_out, cfg.model)
        return "target_accuracy" if rec["copy_accuracy"] >= tiny.copy_first_target else None

    steps = tiny.copy_first_steps
    state = train_loop(opt, epoch_batches, loss_fn,
                       Schedule(steps, 10**9, steps, tiny.pretrain_minutes, bc_cfg.warmup_steps, decay_start=steps,
                                guard="model.tiny.pretrain_minutes"),
                       state, after_step, lambda st: save_checkpoint(model, opt, st.to_dict(), ckpt_dir),
                       bc_cfg.save_every, desc="copy drills")
    curve = [[h["step"], h["copy_accuracy"]] for h in state.history if "copy_accuracy" in h]
    if not curve or curve[-1][0] != state.step:
        curve.append([state.step, copy_accuracy(model, held_out, cfg.model)])
    result = {"steps": state.step, "stopped": state.stopped, "train_seconds": state.elapsed_s,
              "copy_accuracy": curve[-1][1], "accuracy_curve": curve,
              "final_train_ema": state.ema}
    write_json(ckpt_dir / "copy_phase.json", result)
    return result


def copy_drills(ids: list[int], count: int, sep: int, seed: int, length: int = 512,
                mode: str = "text") -> list[Example]:
    """``count`` copy drills cut from the token stream ``ids``: each is span, ``sep``, the same span, ``sep``,
    repeated up to ``length`` tokens (spans of 8-64 tokens), with the loss on the second copies only.

    Copying a span seen earlier in the context (an induction pattern: find the earlier occurrence of the current
    token, predict what followed it) is what a pretrained LLM brings to an agent task and what a tiny model
    trained from scratch lacks: WebShop's policy must copy the instruction into its query and product ids from
    the results page into ``click[...]``; ALFWorld's must name the object instance the observation lists.
    ``mode="shuffled"`` permutes each span's tokens (then nothing but copying predicts them, not a memorized
    continuation of the expert text); ``mode="random"`` draws each span's tokens uniformly from the set of
    tokens in ``ids`` other than ``sep`` (repeats inside a span are rare, so which token follows is rarely
    ambiguous, unlike in shuffled spans of a repetitive text)."""
    if mode not in ("text", "shuffled", "random"):
        raise ValueError(f"copy drill mode {mode!r}: expected text, shuffled or random")
    rng = random.Random(seed)
    vocab = sorted(set(ids) - {sep}) if mode == "random" else []
    out = []
    for _ in range(count):
        inp: list[int] = []
        lab: list[int] = []
        while True:
            longest = min(64, (length - len(inp) - 2) // 2, len(ids) - 1)
            if longest < 8:
                break
            k = rng.randint(8, longest)
            start = rng.randrange(len(ids) - k)
            span = ids[start:start + k] if mode != "random" else [rng.choice(vocab) for _ in range(k)]
            if mode == "shuffled":
                rng.shuffle(span)
            inp += span + [sep] + span + [sep]
            lab += [IGNORE] * (k + 1) + span + [sep]
        if inp:
            out.append(Example(inp, lab, "copy"))
    return out


@torch.no_grad()
def copy_accuracy(model, drills: list[Example], model_cfg) -> float:
    """Share of the copied tokens of ``drills`` that the model predicts right (greedy, teacher-forced)."""
    if not drills:
        return float("nan")
    was_training = model.training
    model.eval()
    dev = model_device(model)
    right = total = 0
    for ex in drills:
        x = torch.tensor([ex.input_ids], device=dev)
        with autocast(model_cfg, dev):
            pred = model(input_ids=x).logits[0, :-1].argmax(-1).tolist()
        for p, y in zip(pred, ex.labels[1:]):
            if y != IGNORE:
                right += p == y
                total += 1
    model.train(was_training)
    return right / max(total, 1)
