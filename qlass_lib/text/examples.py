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
        for i, m in enumerate(msgs):
            if m["role"] != "assistant" or m.get("loss") is False:
                continue
            window = prompts.fit(tokenizer, msgs[: i + 1], max_length, add_generation_prompt=False)
            ids, labels = mask_labels(tokenizer, window, supervise="last")
            out.append(Example(ids[-max_length:], labels[-max_length:], rec["id"]))
    return out


def window_stats(examples: list[Example]) -> dict:
    """How much of a BC epoch went to conversations longer than ``max_length`` (one window per agent turn, each
    supervising one turn): their count, their windows, and the windows' share of the epoch's input tokens."""
    per_task: dict[str, list[int]] = {}
    for e in examples:
        per_task.setdefault(e.task_id, []).append(len(e.input_ids))
    windowed = {t: n for t, n in per_task.items() if len(n) > 1}
    total = sum(sum(n) for n in per_task.values())
    return {"windowed_conversations": len(windowed), "window_examples": sum(len(n) for n in windowed.values()),
            "window_token_share": round(sum(sum(n) for n in windowed.values()) / total, 4) if total else 0.0}


def encode_pair(tokenizer, state: list[dict], action_text: str, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids of state + candidate turn, and a 0/1 mask of the candidate's tokens (left-truncated to fit)."""
    msgs = prompts.fit(tokenizer, state + [{"role": "assistant", "content": action_text.strip()}], max_length,
                       add_generation_prompt=False)
    ids, labels = mask_labels(tokenizer, msgs, supervise="last")
    ids, labels = ids[-max_length:], labels[-max_length:]
    return ids, [int(x != IGNORE) for x in labels]
