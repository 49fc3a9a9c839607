"""Task-description paraphrasers for the perturbation-augmented (-aug) variants.

The local paraphraser is rule-based and deterministic (variant 0 is the original text); an
OpenAI-compatible endpoint can be used instead, never required.  Any callable ``(text, i) -> str`` works.
"""
from __future__ import annotations

import json
import re
import urllib.request
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


def safe_for_key(url: str) -> bool:
    """An API key may travel over https, or over plain http to this machine only."""
    from urllib.parse import urlparse
    u = urlparse(url)
    return u.scheme == "https" or (u.scheme == "http" and (u.hostname or "") in ("localhost", "127.0.0.1", "::1"))


class OpenAIParaphraser:
    """Paraphrase through an OpenAI-compatible chat-completions endpoint (cached per (text, i))."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 30.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        if api_key and not safe_for_key(self.url):
            raise ValueError(f"refusing to send OPENAI_API_KEY over plain HTTP to {base_url}: use https:// (plain "
                             f"http is allowed only for localhost)")
        self.model, self.api_key, self.timeout = model, api_key, timeout
        self.cache: dict[tuple[str, int], str] = {}

    def __call__(self, text: str, i: int) -> str:
        if i <= 0:
            return text
        if (text, i) not in self.cache:
            body = {"model": self.model, "temperature": 0.7, "seed": i, "messages": [
                {"role": "system", "content": "Rewrite the task description with different wording. Keep every "
                                              "object, place and requirement. Reply with the rewritten text only."},
                {"role": "user", "content": text}]}
            req = urllib.request.Request(self.url, json.dumps(body).encode(), {"Content-Type": "application/json"})
            if self.api_key:
                req.add_header("Authorization", f"Bearer {self.api_key}")
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                self.cache[(text, i)] = json.loads(r.read())["choices"][0]["message"]["content"].strip()
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
