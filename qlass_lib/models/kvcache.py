"""Prompt-prefix KV caching shared by the policy's sampling and the QNet's scoring.

An episode's prompts grow turn by turn: the prompt at step t+1 is the prompt at step t plus the agent's turn
and the next observation.  :class:`PrefixCache` keeps the KV cache of the last prefix it computed and, when
the next prefix extends it token for token, runs the model only on the new tokens.  Anything else (a new
episode, a prompt that ``prompts.fit`` had to shorten) starts from an empty cache.  The chunks a prefix is
computed in therefore depend only on the episode's own prompts since its first step, so results are the same
whatever ran before (another episode, a resumed stage): :func:`tests.test_kvcache` checks this.

Callers get a private copy of the cache (generation appends to it, and M candidates expand it to a batch of M:
one prefill serves all M).

Exploration trees jump between branches that share the task prompt and the turns above their fork: with
``branch_reuse`` on, a prompt that is not a continuation keeps the cached keys of the longest common prefix (the
cache cropped to it) and computes only the rest.  The chunks then depend on the order of the prompts since the
last :meth:`PrefixCache.reset`, so a caller that turns it on resets at the start of each unit it resumes by (the
tree builder: every tree).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

Extend = Callable[[list[int], object, int], object]  # (new ids, cache or None, start position) -> cache


def crop_cache(cache, length: int):
    """``cache`` cut to its first ``length`` positions, in place (transformers 5 takes the number of positions to
    drop as a negative int, 4.x the length to keep); None when this cache class cannot be cropped."""
    if cache is None or not hasattr(cache, "crop") or not hasattr(cache, "get_seq_length"):
        return None
    current = cache.get_seq_length()
    if length == current:
        return cache
    for arg in (length - current, length):
        try:
            cache.crop(arg)
        except (ValueError, RuntimeError, TypeError):
            continue
        if cache.get_seq_length() == length:
            return cache
        return None  # cut to something else: not usable
    return None


@dataclass
class PrefixCache:
    """The KV cache of one token prefix, extended in place when the next prefix continues it."""
    ids: list[int] = field(default_factory=list)
    cache: object = None
    computed_tokens: int = 0  # tokens run through the model to build prefixes
    reused_tokens: int = 0    # tokens whose keys/values came from the previous prefix
    branch_reuse: bool = False  # keep the longest common prefix of a prompt that is not a continuation

    def reset(self) -> None:
        self.ids, self.cache = [], None

    def get(self, prefix: list[int], extend: Extend) -> object:
        """A private copy of the KV cache covering exactly ``prefix``."""
        n = len(self.ids)
        if self.cache is None or n > len(prefix) or prefix[:n] != self.ids:
            common = _common(self.ids, prefix) if self.branch_reuse and self.cache is not None else 0
            kept = crop_cache(self.cache, common) if common > 0 else None
            if kept is None:
                self.reset()
                n = 0
            else:
                self.ids, self.cache, n = self.ids[:common], kept, common
        if len(prefix) > n:
            self.cache = extend(list(prefix[n:]), self.cache, n)
            self.computed_tokens += len(prefix) - n
        self.reused_tokens += n
        self.ids = list(prefix)
        return copy.deepcopy(self.cache)

    def stats(self) -> dict:
        total = self.computed_tokens + self.reused_tokens
        return {"computed_tokens": self.computed_tokens, "reused_tokens": self.reused_tokens,
                "reuse_share": self.reused_tokens / total if total else 0.0}


def _common(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of ``a`` and ``b`` (at most len(b) - 1: one token is always computed)."""
    n = min(len(a), len(b) - 1)
    for i in range(max(0, n)):
        if a[i] != b[i]:
            return i
    return max(0, n)
