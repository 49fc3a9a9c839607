"""Tokenized training examples: the one label mask (the agent's turns only), behavior-cloning examples, and the
QNet's encoding of a state and a candidate turn (the same mask, with only the candidate marked)."""
from __future__ import annotations

from dataclasses import dataclass

from qlass_lib.text import prompts
from qlass_lib.text.expert import to_messages

IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    task_id: str = ""
    window: int = 0  # 0: a whole conversation; k >= 1: the k-th one-turn window of a conversation past max_length


def mask_labels(tokenizer, messages: list[dict], supervise: str = "all") -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation and labels that keep only assistant tokens.

    ``supervise='last'`` keeps only the final assistant turn.
    """
    text, spans = prompts.assistant_spans(tokenizer, messages, last_only=supervise == "last")
    text = text.rstrip()  # nothing to learn after the last end-of-turn marker
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = []
    for tid, (s, e) in zip(ids, offsets):
        inside = any(a <= s < b for a, b in spans) and e > s
        labels.append(tid if inside else IGNORE)
    return ids, labels


def build_examples(tokenizer, records: list[dict], max_length: int) -> list[Example]:
    out = []
    for rec in records:
        msgs = to_messages(rec["conversations"])
        while msgs and msgs[-1]["role"] != "assistant":
            msgs = msgs[:-1]
        if not msgs:
            continue
        ids, labels = mask_labels(tokenizer, msgs)
        if len(ids) <= max_length:
            out.append(Example(ids, labels, rec["id"]))
            continue
        k = 0
        for i, m in enumerate(msgs):
            if m["role"] != "assistant" or m.get("loss") is False:
                continue
            window = prompts.fit(tokenizer, msgs[: i + 1], max_length, add_generation_prompt=False)
            ids, labels = mask_labels(tokenizer, window, supervise="last")
            k += 1
            out.append(Example(ids[-max_length:], labels[-max_length:], rec["id"], window=k))
    return out


def window_stats(examples: list[Example]) -> dict:
    """How much of a BC epoch went to conversations longer than ``max_length`` (one window per agent turn, each
    supervising one turn): their count, their windows, and the windows' share of the epoch's input tokens."""
    windows = [e for e in examples if e.window]
    total = sum(len(e.input_ids) for e in examples)
    return {"windowed_conversations": sum(1 for e in windows if e.window == 1), "window_examples": len(windows),
            "window_token_share": round(sum(len(e.input_ids) for e in windows) / total, 4) if total else 0.0}


def encode_pair(tokenizer, state: list[dict], action_text: str, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids of state + candidate turn, and a 0/1 mask of the candidate's tokens (left-truncated to fit)."""
    msgs = prompts.fit(tokenizer, state + [{"role": "assistant", "content": action_text.strip()}], max_length,
                       add_generation_prompt=False)
    ids, labels = mask_labels(tokenizer, msgs, supervise="last")
    ids, labels = ids[-max_length:], labels[-max_length:]
    return ids, [int(x != IGNORE) for x in labels]
