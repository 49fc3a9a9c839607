"""The one prompt format and the one action parser, shared by BC, exploration, QNet and search.

A *state* is a list of chat messages: the first user message holds the instruction, an optional one-shot
demonstration, the task and the first observation; then assistant turns ("Thought: ...\\nAction: ...") and
user turns ("Observation: ...") alternate.  Prompts are rendered with the tokenizer's chat template; a
tokenizer without one gets :data:`DEFAULT_CHAT_TEMPLATE`.
"""
from __future__ import annotations

import re
from typing import Sequence

DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

INSTRUCTIONS = {
    "scienceworld": (
        "You act in a simulated science world made of rooms, objects and devices. Each turn, reply with one "
        "command on a line starting with 'Action:'. Useful commands: look around, teleport to ROOM, go to ROOM, "
        "open OBJ, pick up OBJ, move OBJ to OBJ, focus on OBJ, examine OBJ, wait1. Use 'focus on' only for the "
        "object the task asks for: a wrong focus fails the task."),
    "webshop": (
        "You shop in a web store to buy the product the instruction describes. Each turn, reply with one "
        "command on a line starting with 'Action:': search[keywords] on the search page, or click[button] with "
        "a button shown on the page (a product id, an option value, Next >, < Prev, Back to Search, "
        "Description, Features, Reviews, Buy Now). Choose the options the instruction asks for before "
        "clicking Buy Now."),
    "alfworld": (
        "You are in a household and must complete the task. Each turn, reply with one command on a line "
        "starting with 'Action:'. Commands: go to RECEP, open RECEP, close RECEP, take OBJ from RECEP, "
        "put OBJ in/on RECEP, use OBJ, clean OBJ with RECEP, heat OBJ with RECEP, cool OBJ with RECEP, "
        "examine OBJ, look, inventory."),
    "scripted": "Each turn, reply with one command on a line starting with 'Action:', such as 'Action: go red'.",
}

_ACTION_RE = re.compile(r"^\s*action\s*:\s*(.*)$", re.IGNORECASE | re.MULTILINE)
_THOUGHT_RE = re.compile(r"^\s*thought\s*:\s*(.*)$", re.IGNORECASE | re.MULTILINE)

NO_ACTION_OBSERVATION = "Invalid output: reply with one line of the form 'Action: <command>'."


def parse_action(text: str) -> str | None:
    """The command on the first 'Action:' line of a model output, or None when there is none."""
    m = _ACTION_RE.search(text or "")
    if not m:
        return None
    action = m.group(1).strip().strip("`'\"").strip()
    return action or None


def parse_thought(text: str) -> str | None:
    m = _THOUGHT_RE.search(text or "")
    return m.group(1).strip() if m else None


def agent_turn(action: str, thought: str | None = None) -> str:
    """The text of one agent turn."""
    return f"Thought: {thought}\nAction: {action}" if thought else f"Action: {action}"


def observation_turn(observation: str) -> str:
    return f"Observation: {observation.strip()}"


def normalize_action(action: str | None) -> str:
    """Whitespace/case normalization used to detect duplicate candidates."""
    return " ".join((action or "").lower().split())


def first_message(env_name: str, task_text: str, observation: str, example: Sequence[dict] | None = None,
                  instruction: str | None = None) -> str:
    parts = [instruction or INSTRUCTIONS.get(env_name, INSTRUCTIONS["scripted"])]
    if example:
        shown = "\n".join(("> " if m["role"] == "assistant" else "") + m["content"] for m in example)
        parts.append("Here is an example of a solved task:\n" + shown + "\n(end of example)")
    parts.append(f"Task: {task_text.strip()}")
    parts.append(observation_turn(observation))
    return "\n\n".join(parts)


def task_text_of(state: list[dict]) -> str:
    """The task description inside a state's first message (inverse of :func:`first_message`)."""
    return state[0]["content"].split("Task: ", 1)[1].split("\n\nObservation:", 1)[0]


def initial_state(env_name: str, task_text: str, observation: str, example=None) -> list[dict]:
    return [{"role": "user", "content": first_message(env_name, task_text, observation, example)}]


def extend(state: list[dict], agent_text: str, observation: str) -> list[dict]:
    """A new state: ``state`` + the agent's turn + the observation it produced."""
    return state + [{"role": "assistant", "content": agent_text.strip()},
                    {"role": "user", "content": observation_turn(observation)}]


def ensure_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE


def render(tokenizer, messages: Sequence[dict], add_generation_prompt: bool) -> str:
    ensure_chat_template(tokenizer)
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def fit(tokenizer, messages: list[dict], max_tokens: int, reserve: int = 0, add_generation_prompt: bool = True) -> list[dict]:
    """Drop the oldest (assistant, user) turn pairs after the first message until the rendering fits.

    The first message (task) and the current turn are always kept: the last observation, plus the agent
    turn after it when ``messages`` ends with one (BC windows, QNet inputs), so an action is never shown
    without the observation it answers.  If they alone are too long, the caller's token-level left
    truncation takes over.
    """
    msgs = list(messages)
    keep = 2 if msgs and msgs[-1]["role"] == "assistant" else 1
    while len(msgs) >= 3 + keep:
        n = len(tokenizer(render(tokenizer, msgs, add_generation_prompt), add_special_tokens=False)["input_ids"])
        if n + reserve <= max_tokens:
            break
        del msgs[1:3]
    return msgs


def encode_prompt(tokenizer, state: list[dict], max_tokens: int, reserve: int) -> list[int]:
    """Token ids of the generation prompt for ``state``, at most ``max_tokens - reserve`` long (left-truncated).

    The same turns as :func:`fit` keeps, tokenized once when the state fits (the usual case)."""
    return fitted_prompt(tokenizer, state, max_tokens, reserve)[1]


def fitted_prompt(tokenizer, state: list[dict], max_tokens: int, reserve: int) -> tuple[str, list[int]]:
    """The generation prompt for ``state`` as text and as token ids (what :func:`encode_prompt` returns); a
    server backend sends the text, tokenized without special tokens, and gets exactly these ids."""
    msgs = list(state)
    while True:
        text = render(tokenizer, msgs, True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) + reserve <= max_tokens or len(msgs) < 4:
            break
        del msgs[1:3]
    keep = ids[-(max_tokens - reserve):]
    if len(keep) != len(ids):  # rare: the task message alone is too long
        text = tokenizer.decode(keep)
    return text, keep


def assistant_spans(tokenizer, messages: Sequence[dict], last_only: bool = False) -> tuple[str, list[tuple[int, int]]]:
    """Full rendered text and the character span of every supervised assistant turn (content + end-of-turn
    marker; a turn marked ``loss: False`` has none); with ``last_only`` just the last turn's (two renderings
    instead of two per turn)."""
    spans = []
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and (not last_only or i == turns[-1]) and m.get("loss") is not False:
            start = len(render(tokenizer, messages[:i], True))
            text = render(tokenizer, messages[: i + 1], False)
            end = len(text.rstrip())  # content + end-of-turn marker, without trailing newlines
            spans.append((start, end))
    return render(tokenizer, messages, False), spans
