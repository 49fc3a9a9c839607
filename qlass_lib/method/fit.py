"""Fitting the BC policy from expert records: (tiny model only) pretraining, the task split, BC data copies,
behavior cloning, and the saved policy; a finished fit is reloaded instead of retrained."""
from __future__ import annotations

from pathlib import Path

from qlass_lib.core.artifacts import read_json, write_json
from qlass_lib.core.splits import split_records
from qlass_lib.method.bc import train_bc
from qlass_lib.text.examples import IGNORE, build_examples, window_stats
from qlass_lib.method.pretrain import pretrain_tiny
from qlass_lib.models.loading import load_model, load_policy, load_tokenizer, save_policy
from qlass_lib.text.object_swap import add_object_swaps
from qlass_lib.text.recovery import add_recovery_copies


def fit_policy(cfg, records: list[dict], base: str, out_dir, extra_train: list[dict] | None = None,
               pretrain: bool = True, train_seed: int | None = None) -> tuple[object, object, dict]:
    """Train (or, when already finished, reload) the BC policy; returns (model, tokenizer, result).

    ``extra_train`` (e.g. self-generated trajectories) joins the training split only, so the validation tasks
    are the expert ones of the same seed whatever is added; ``pretrain=False`` starts from ``base`` as it is
    (a fine-tune from an already pretrained base); ``train_seed`` (default ``cfg.seed``) orders the batches,
    while the validation split always follows ``cfg.seed``."""
    out_dir = Path(out_dir)
    done = out_dir / "bc_result.json"
    if done.is_file() and (out_dir / "policy").is_dir():
        model, tok = load_policy(out_dir / "policy", cfg.model)
        return model, tok, read_json(done)
    if pretrain:
        base = pretrain_tiny(cfg, base, records, out_dir)
    tok = load_tokenizer(base, cfg.model)
    model = load_model(base, cfg.model, train=True)
    train_recs, val_recs = split_records(records, cfg.bc.val_fraction, cfg.seed)
    recovery = add_recovery_copies(train_recs, cfg.env.name, cfg.bc.recovery_copies, cfg.bc.recovery_rate, cfg.seed)
    swaps = add_object_swaps(train_recs, cfg.env.name, cfg.bc.object_swap_copies, cfg.seed)
    train_recs = train_recs + recovery + swaps + list(extra_train or [])
    train_ex = build_examples(tok, train_recs, cfg.bc.max_length)
    val_ex = build_examples(tok, val_recs, cfg.bc.max_length)
    windows = window_stats(train_ex)
    if windows["window_token_share"] > 0.5:
        import warnings
        warnings.warn(f"{windows['windowed_conversations']} expert conversations longer than bc.max_length "
                      f"({cfg.bc.max_length}) became {windows['window_examples']} one-turn windows, "
                      f"{windows['window_token_share']:.0%} of an epoch's tokens; a larger bc.max_length trains "
                      f"on every turn at a fraction of the cost")
    seed = cfg.seed if train_seed is None else train_seed
    result = train_bc(model, tok, train_ex, val_ex, cfg.bc, cfg.model, out_dir, seed)
    result.update(recovery_copies=len(recovery), object_swap_copies=len(swaps),
                  recovery_turns=sum(r["recovery_turns"] for r in recovery),
                  train_seed=seed, train_examples=len(train_ex), **windows, val_examples=len(val_ex), train_tasks=len(train_recs),
                  val_tasks=len(val_recs), base_model=base,
                  supervised_tokens_per_epoch=sum(sum(1 for x in e.labels if x != IGNORE) for e in train_ex))
    save_policy(model, tok, out_dir / "policy", base)
    write_json(done, result)
    return model, tok, result
