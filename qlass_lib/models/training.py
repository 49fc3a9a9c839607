"""The one optimizer loop behind behavior cloning (and the tiny model's pretraining) and QNet training.

A caller supplies the batches of each epoch, a loss function and a hook run after every step (validation,
early stopping, checkpoint selection); the loop owns the learning-rate schedule (linear warm-up, cosine decay
to 10%), gradient clipping, the step/epoch budgets, the wall-clock guard (an error, never a silent early stop), the progress bar and a resumable
state (step, epoch, position in the epoch, elapsed time, history).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from qlass_lib.core.artifacts import dumps
from qlass_lib.models.loading import model_device


@dataclass
class LoopState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    elapsed_s: float = 0.0
    ema: float | None = None       # exponential moving average of the training loss (0.9)
    history: list = field(default_factory=list)
    stopped: str | None = None     # why training ended: steps, epochs, time, or the hook's reason

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LoopState":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def lr_factor(step: int, warmup: int, total: int, decay_start: int = 0) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from 1 to 0.1, measured from ``decay_start``
    (constant until then: ``decay_start == total`` keeps the rate constant after the warm-up)."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total - decay_start)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, (step - decay_start) / span))))


@dataclass
class Schedule:
    total: int                 # the schedule's length in steps
    max_epochs: int
    max_steps: int | None      # None or 0: no step cap beyond the epochs
    max_minutes: float         # wall-clock guard
    warmup: int = 0
    decay_start: int = 0
    guard: str = "max_minutes"  # the params key of the guard, for its error


class WallClockGuardHit(RuntimeError):
    """Training ran past its wall-clock guard: the stage fails rather than keep a model that depends on how fast
    this machine is."""


def train_loop(opt: torch.optim.Optimizer, epoch_batches: Callable[[int], list], loss_fn: Callable,
               schedule: Schedule, state: LoopState | None = None, after_step: Callable | None = None,
               checkpoint: Callable | None = None, save_every: int = 0, desc: str = "training",
               leave: bool = True) -> LoopState:
    """Run until a budget or the hook stops it.

    ``epoch_batches(epoch)`` gives that epoch's batches; ``loss_fn(batch) -> (loss, record)`` returns the loss
    to minimize and fields for the history; ``after_step(state, record) -> reason | None`` may add to the record
    and stop training; ``checkpoint(state)`` is called every ``save_every`` steps and when training stops.
    Each param group's ``base_lr`` is scaled by the schedule."""
    state = state or LoopState()
    if state.stopped == "time":  # resumed after the guard stopped it: the (raised) guard decides again
        state.stopped = None
    params = [p for g in opt.param_groups for p in g["params"]]
    t_start = time.perf_counter() - state.elapsed_s
    bar = tqdm(total=schedule.total, initial=state.step, desc=desc, leave=leave)
    while state.stopped is None:
        batches = epoch_batches(state.epoch)
        for bi in range(state.batch_in_epoch, len(batches)):
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * lr_factor(state.step, schedule.warmup, schedule.total, schedule.decay_start)
            loss, rec = loss_fn(batches[bi])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            state.step += 1
            state.batch_in_epoch = bi + 1
            lv = loss.item()
            state.ema = lv if state.ema is None else 0.9 * state.ema + 0.1 * lv
            state.elapsed_s = time.perf_counter() - t_start
            rec = {"step": state.step, "epoch": state.epoch, "train_loss": lv, **rec, "elapsed_s": state.elapsed_s}
            state.history.append(rec)
            bar.update(1)
            bar.set_postfix(loss=f"{state.ema:.3f}")
            reason = after_step(state, rec) if after_step else None
            if reason:
                state.stopped = reason
            elif schedule.max_steps and state.step >= schedule.max_steps:
                state.stopped = "steps"
            elif state.elapsed_s > schedule.max_minutes * 60:
                state.stopped = "time"
            if checkpoint and (state.stopped or (save_every and state.step % save_every == 0)):
                checkpoint(state)
            if state.stopped:
                break
        else:
            state.epoch += 1
            state.batch_in_epoch = 0
            if state.epoch >= schedule.max_epochs:
                state.stopped = "epochs"
    bar.close()
    if state.stopped == "time":
        again = ("it resumes from its checkpoint" if checkpoint else "training starts over")
        raise WallClockGuardHit(
            f"{desc} ran past its wall-clock guard {schedule.guard} = {schedule.max_minutes:g} min at step "
            f"{state.step} of {schedule.total}; a model cut there would depend on this machine's speed, so the stage "
            f"stops here. Raise the guard (e.g. --set {schedule.guard}={max(2 * schedule.max_minutes, 60):g}; it is "
            f"not part of the results' fingerprint) and run again: {again}.")
    return state


def save_checkpoint(model, opt, state: dict, ckpt: Path) -> None:
    """The trainable weights, the optimizer state and the loop state (``trainer_state.json``) in ``ckpt``,
    written so that a crash leaves the previous checkpoint readable."""
    ckpt.mkdir(parents=True, exist_ok=True)
    save_file({k: p.detach().cpu().contiguous() for k, p in model.named_parameters() if p.requires_grad},
              str(ckpt / "trainable.safetensors"))
    osd = opt.state_dict()
    tensors, meta = {}, {}
    for pid, st in osd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                meta[f"{pid}.{k}"] = v
    save_file(tensors, str(ckpt / "optimizer.safetensors"))
    tmp = ckpt / "trainer_state.json.tmp"
    tmp.write_text(dumps({**state, "optimizer_meta": meta, "param_groups": osd["param_groups"]}))
    tmp.replace(ckpt / "trainer_state.json")


def load_checkpoint(model, opt, ckpt: Path) -> dict | None:
    """Restore what :func:`save_checkpoint` wrote into ``model`` and ``opt``; the loop state (None: no checkpoint)."""
    if not (ckpt / "trainer_state.json").is_file():
        return None
    state = json.loads((ckpt / "trainer_state.json").read_text())
    weights = load_file(str(ckpt / "trainable.safetensors"))
    model.load_state_dict({k: v.to(model_device(model)) for k, v in weights.items()}, strict=False)
    tensors = load_file(str(ckpt / "optimizer.safetensors"))
    opt_state: dict = {}
    for key, v in tensors.items():
        pid, k = key.split(".", 1)
        opt_state.setdefault(int(pid), {})[k] = v.to(model_device(model))
    for key, v in state.pop("optimizer_meta").items():
        pid, k = key.split(".", 1)
        opt_state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": opt_state, "param_groups": state.pop("param_groups")})
    return state
