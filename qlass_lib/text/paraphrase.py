"""Task-description paraphrasers for the perturbation-augmented (-aug) variants.

The local paraphraser is rule-based and deterministic (variant 0 is the original text); an
OpenAI-compatible endpoint can be used instead, never required.  Any callable ``(text, i) -> str`` works.
"""
from __future__ import annotations

import re
from typing import Callable

Paraphraser = Callable[[str, int], str]

_OPENERS = [("your task is to", ["your goal is to", "you need to", "the job is to", "try to"]),
            ("focus on", ["focus on", "then focus on", "focus on", "focus on"])]


def local_paraphrase(text: str, i: int) -> str:
    """Variant ``i`` of a task text: reworded openers and, for odd i, the later sentences in reverse order."""
    if i <= 0:
        return text
    out = text
    for src, alts in _OPENERS:
        alt = alts[(i - 1) % len(alts)]
        out = re.sub(re.escape(src), lambda m, alt=alt: alt[0].upper() + alt[1:] if m.group(0)[0].isupper() else alt,
                     out, flags=re.IGNORECASE)
    sents = [s for s in re.split(r"(?<=\.)\s+", out.strip()) if s]
    if i % 2 == 1 and len(sents) > 2:
        sents = [sents[0]] + sents[1:][::-1]
    return " ".join(sents)


class OpenAIParaphraser:
    """Paraphrase through an OpenAI-compatible chat-completions endpoint (cached per (text, i))."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 30.0):
        from qlass_lib.core.http import openai_client
        self.client = openai_client(base_url, api_key, "OPENAI_API_KEY", timeout)
        self.model = model
        self.cache: dict[tuple[str, int], str] = {}

    def __call__(self, text: str, i: int) -> str:
        if i <= 0:
            return text
        if (text, i) not in self.cache:
            out = self.client.chat.completions.create(model=self.model, temperature=0.7, seed=i, messages=[
                {"role": "system", "content": "Rewrite the task description with different wording. Keep every "
                                              "object, place and requirement. Reply with the rewritten text only."},
                {"role": "user", "content": text}])
            self.cache[(text, i)] = out.choices[0].message.content.strip()
        return self.cache[(text, i)]


def make_paraphraser(search_cfg) -> Paraphraser:
    if search_cfg.paraphraser == "openai":
        import os
        if not search_cfg.paraphrase_endpoint or not search_cfg.paraphrase_model:
            raise ValueError("search.paraphraser=openai needs search.paraphrase_endpoint and search.paraphrase_model")
        return OpenAIParaphraser(search_cfg.paraphrase_endpoint, search_cfg.paraphrase_model,
                                 os.environ.get("OPENAI_API_KEY"))
    return local_paraphrase


def with_task_text(state: list[dict], original: str, new: str) -> list[dict]:
    """The same state with the task description in its first message replaced."""
    if not state or original == new:
        return state
    first = dict(state[0], content=state[0]["content"].replace(f"Task: {original.strip()}", f"Task: {new.strip()}", 1))
    return [first] + list(state[1:])
