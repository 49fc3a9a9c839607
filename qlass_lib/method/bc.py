"""Behavior cloning: supervised fine-tuning on expert conversations with loss on the agent's turns only.

A conversation that fits ``max_length`` is one example with every agent turn supervised.  A longer one
becomes one example per agent turn: the task message, as many recent turns as fit, and the current turn,
which is the only supervised one (left truncation that always keeps the current turn).
Training checkpoints (trainable weights + optimizer state as safetensors, JSON trainer state) make the
loop resumable after a crash.
"""
from __future__ import annotations

import random
from pathlib import Path

import torch

from qlass_lib.text.batching import collate
from qlass_lib.text.examples import IGNORE, Example
from qlass_lib.models.loading import autocast, model_device

def make_batches(examples: list[Example], batch_tokens: int, rng: random.Random) -> list[list[Example]]:
    """Shuffle, bucket by length, and pack so that (longest x count) stays within ``batch_tokens``."""
    idx = list(range(len(examples)))
    rng.shuffle(idx)
    chunks = [sorted(idx[i:i + 64], key=lambda j: len(examples[j].input_ids)) for i in range(0, len(idx), 64)]
    batches = []
    for chunk in chunks:
        cur: list[int] = []
        for j in chunk:
            longest = max([len(examples[k].input_ids) for k in cur + [j]])
            if cur and longest * (len(cur) + 1) > batch_tokens:
                batches.append([examples[k] for k in cur])
                cur = []
            cur.append(j)
        if cur:
            batches.append([examples[k] for k in cur])
    rng.shuffle(batches)
    return batches


def action_loss(model, batch: dict, model_cfg) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over supervised (agent) tokens, and their count.

    The output layer runs only at the positions that predict a supervised token: with a 49k-token vocabulary
    (SmolLM2) the logits of every position were a fifth of a training step's compute and most of its memory."""
    target = batch["labels"][:, 1:]
    keep = target != IGNORE
    n = int(keep.sum())
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    with autocast(model_cfg, batch["input_ids"].device):
        h = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        logits = model.get_output_embeddings()(h[:, :-1][keep])
    loss = torch.nn.functional.cross_entropy(logits.float(), target[keep], reduction="sum")
    return loss / max(n, 1), n


@torch.no_grad()
def batch_of(examples: list[Example], pad_id: int, device) -> dict:
    """A training batch of BC examples (:func:`qlass_lib.text.batching.collate`): ids, labels, attention mask."""
    return collate([{"input_ids": e.input_ids, "labels": e.labels} for e in examples],
                   {"input_ids": pad_id, "labels": IGNORE}, device)


def validation_loss(model, examples: list[Example], tokenizer, model_cfg, batch_tokens: int) -> float:
    if not examples:
        return float("nan")
    model.eval()
    total, count = 0.0, 0
    for batch in make_batches(examples, batch_tokens, random.Random(0)):
        loss, n = action_loss(model, batch_of(batch, tokenizer.pad_token_id, model_device(model)), model_cfg)
        total += float(loss) * n
        count += n
    model.train()
    return total / max(count, 1)


def train_bc(model, tokenizer, train_ex: list[Example], val_ex: list[Example], bc_cfg, model_cfg, out_dir,
             seed: int = 0, guard: str = "bc.max_minutes") -> dict:
    """Train with AdamW + warm-up/cosine (:func:`qlass_lib.models.training.train_loop`); stop at ``stop_at_loss``,
    ``max_steps`` or ``max_epochs`` (budgets that reproduce on any machine); past the ``max_minutes``
    wall-clock guard (named ``guard`` in errors) it saves its checkpoint and raises ``WallClockGuardHit``.

    Resumes from ``out_dir/checkpoint`` when present.  Returns the history (train/val loss per step).
    """
    from qlass_lib.models.training import LoopState, Schedule, load_checkpoint, save_checkpoint, train_loop
    out_dir = Path(out_dir)
    device = model_device(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=bc_cfg.learning_rate, weight_decay=bc_cfg.weight_decay, betas=(0.9, 0.98))
    steps_per_epoch = len(make_batches(train_ex, bc_cfg.batch_tokens, random.Random(seed)))
    total = max(1, steps_per_epoch * bc_cfg.max_epochs)
    if bc_cfg.max_steps:
        total = min(total, bc_cfg.max_steps)
    saved = load_checkpoint(model, opt, out_dir / "checkpoint")
    for g in opt.param_groups:
        g["base_lr"] = bc_cfg.learning_rate
    state = LoopState.from_dict(saved) if saved else LoopState()
    model.train()

    def loss_fn(batch):
        loss, n = action_loss(model, batch_of(batch, tokenizer.pad_token_id, device), model_cfg)
        return loss, {"tokens": n, "input_tokens": sum(len(e.input_ids) for e in batch)}

    def after_step(st: LoopState, rec: dict):
        rec["train_ema"] = st.ema
        if st.step % bc_cfg.eval_every == 0:
            rec["val_loss"] = validation_loss(model, val_ex, tokenizer, model_cfg, bc_cfg.batch_tokens)
        if st.step >= bc_cfg.warmup_steps and st.ema < bc_cfg.stop_at_loss:
            return "target_loss"
        return None

    state = train_loop(opt, lambda epoch: make_batches(train_ex, bc_cfg.batch_tokens, random.Random(seed * 1000 + epoch)),
                       loss_fn, Schedule(total, bc_cfg.max_epochs, bc_cfg.max_steps, bc_cfg.max_minutes,
                                       bc_cfg.warmup_steps, 0, guard),
                       state, after_step, lambda st: save_checkpoint(model, opt, st.to_dict(), out_dir / "checkpoint"),
                       bc_cfg.save_every, desc="behavior cloning")
    final_val = validation_loss(model, val_ex, tokenizer, model_cfg, bc_cfg.batch_tokens)
    state.history.append({"step": state.step, "epoch": state.epoch, "val_loss": final_val,
                          "elapsed_s": state.elapsed_s})
    save_checkpoint(model, opt, state.to_dict(), out_dir / "checkpoint")
    model.eval()
    return {"history": state.history, "stopped": state.stopped, "steps": state.step,
            "epochs": state.epoch, "train_seconds": state.elapsed_s, "final_val_loss": final_val,
            "final_train_ema": state.ema}
