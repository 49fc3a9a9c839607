"""Prompt-prefix KV caching shared by the policy's sampling and the QNet's scoring.

An episode's prompts grow turn by turn: the prompt at step t+1 is the prompt at step t plus the agent's turn
and the next observation.  :class:`PrefixCache` keeps the KV cache of the last prefix it computed and, when
the next prefix extends it token for token, runs the model only on the new tokens.  Anything else (a new
episode, a prompt that ``prompts.fit`` had to shorten) starts from an empty cache.  The chunks a prefix is
computed in therefore depend only on the episode's own prompts since its first step, so results are the same
whatever ran before (another episode, a resumed stage): :func:`tests.test_kvcache` checks this.

Callers get a private copy of the cache (generation appends to it, and M candidates expand it to a batch of M:
one prefill serves all M).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

Extend = Callable[[list[int], object, int], object]  # (new ids, cache or None, start position) -> cache


@dataclass
class PrefixCache:
    """The KV cache of one token prefix, extended in place when the next prefix continues it."""
    ids: list[int] = field(default_factory=list)
    cache: object = None
    computed_tokens: int = 0  # tokens run through the model to build prefixes
    reused_tokens: int = 0    # tokens whose keys/values came from the previous prefix

    def reset(self) -> None:
        self.ids, self.cache = [], None

    def get(self, prefix: list[int], extend: Extend) -> object:
        """A private copy of the KV cache covering exactly ``prefix``."""
        n = len(self.ids)
        if self.cache is None or n > len(prefix) or prefix[:n] != self.ids:
            self.reset()
            n = 0
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
