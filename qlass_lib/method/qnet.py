"""QNet (paper Appendix A.2): the BC policy's backbone plus an MLP value head hidden -> 1024 -> 1024 -> 1.

- A (state, candidate) pair is the rendered state with the candidate as the next agent turn; the value is
  read at the candidate's last token, found from the attention mask (left or right padding give the same
  values; position ids come from the mask too).
- ``pool="last"`` (the paper's) feeds the head the hidden state of that token; ``pool="mean"`` feeds it the
  mean hidden state of the candidate's tokens so far (a running mean inside each action span), so the head
  sees every token of the action directly instead of what the last token's attention kept of it.
- Loss: MSE over every token of the candidate against its target (the paper's objective) or last-token MSE.
- Saved as the backbone (full model or LoRA adapter, via save_pretrained) + ``value_head.safetensors``.
- :meth:`QNet.score` scores all candidates of a state in one forward pass over their tokens after the
  longest common token prefix, which is encoded once and its KV cache shared.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from qlass_lib.text.batching import pad
from qlass_lib.text.examples import encode_pair
from qlass_lib.models.kvcache import PrefixCache
from qlass_lib.models.loading import (
    autocast,
    cache_kwarg,
    is_adapter_dir,
    load_policy,
    model_device,
    returned_cache,
    save_policy,
)


def positions(attention_mask: torch.Tensor, offset: torch.Tensor | int = 0) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0) + offset


def last_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token in each row, for left or right padding alike."""
    T = attention_mask.shape[1]
    return T - 1 - attention_mask.long().flip(-1).argmax(-1)


def span_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """At each token of a run of 1s in ``mask`` [B, T], the mean of ``h`` [B, T, H] over that run up to and
    including the token; other tokens keep their ``h``. Several runs per row (path-packed examples) are
    averaged separately."""
    m = mask.to(h.dtype)
    c, n = torch.cumsum(h * m[..., None], 1), torch.cumsum(m, 1)
    t = torch.arange(m.shape[1], device=h.device).expand_as(mask)
    prev = torch.cat([torch.zeros_like(m[:, :1]), m[:, :-1]], 1)
    start = torch.where((m > 0) & (prev == 0), t, torch.zeros_like(t)).cummax(1).values  # start of the current run
    c_before = torch.cat([torch.zeros_like(c[:, :1]), c[:, :-1]], 1).gather(1, start[..., None].expand_as(c))
    n_before = torch.cat([torch.zeros_like(n[:, :1]), n[:, :-1]], 1).gather(1, start)
    mean = (c - c_before) / (n - n_before).clamp(min=1)[..., None]
    return torch.where(m[..., None] > 0, mean, h)


class QNet(nn.Module):
    def __init__(self, lm, tokenizer, model_cfg, max_length: int = 1024, pool: str = "last"):
        super().__init__()
        if pool not in ("last", "mean"):
            raise ValueError(f"QNet pool must be 'last' or 'mean', not {pool!r}")
        self.lm, self.tokenizer, self.model_cfg, self.max_length = lm, tokenizer, model_cfg, max_length
        self.pool = pool
        hidden = lm.config.get_text_config().hidden_size if hasattr(lm.config, "get_text_config") else lm.config.hidden_size
        self.head = nn.Sequential(nn.Linear(hidden, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                                  nn.Linear(1024, 1)).to(model_device(lm))
        self.prefix = PrefixCache()  # the state prefix of the last scored step (see :meth:`score`)

    def train(self, mode: bool = True):
        if mode:
            self.prefix.reset()  # weights may change in training: a cached prefix would be stale
        return super().train(mode)

    @property
    def decoder(self):
        return self.lm.get_decoder() if hasattr(self.lm, "get_decoder") else self.lm

    def hidden(self, input_ids, attention_mask, position_ids=None, past_key_values=None, use_cache=None):
        if position_ids is None:
            position_ids = positions(attention_mask)
        if use_cache is None:
            use_cache = past_key_values is not None
        with autocast(self.model_cfg, input_ids.device):
            out = self.decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=use_cache, **{cache_kwarg(self.decoder): past_key_values})
        return out.last_hidden_state, returned_cache(out)

    def features(self, h: torch.Tensor, action_mask=None) -> torch.Tensor:
        """What the head reads at each token: the hidden state (pool last) or the running action mean."""
        h = h.float()
        if self.pool == "last":
            return h
        if action_mask is None:
            raise ValueError("a QNet with pool='mean' needs the action mask of its inputs")
        return span_mean(h, action_mask)

    def forward(self, input_ids, attention_mask, action_mask=None) -> torch.Tensor:
        """Per-token values [B, T] (``action_mask`` marks the candidate's tokens; needed with pool mean)."""
        h, _ = self.hidden(input_ids, attention_mask)
        return self.head(self.features(h, action_mask)).squeeze(-1)

    def values(self, input_ids, attention_mask, action_mask=None) -> torch.Tensor:
        """The value at each row's last real token [B]."""
        v = self.forward(input_ids, attention_mask, action_mask)
        return v.gather(1, last_index(attention_mask)[:, None]).squeeze(1)

    def loss(self, batch: dict, kind: str = "per_token", values: torch.Tensor | None = None) -> torch.Tensor:
        """MSE against per-token targets over every labeled action token (``per_token``, the paper's
        objective) or over the last token of each labeled action (``last_token``); ``values`` reuses a
        forward pass already made on ``batch``."""
        v = self.forward(batch["input_ids"], batch["attention_mask"], batch["action_mask"]) if values is None else values
        m = (batch["last_mask"] if kind == "last_token" else batch["action_mask"]).float()
        return (((v - batch["target_tok"]) ** 2) * m).sum() / m.sum().clamp(min=1)

    # -- scoring -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, state: list[dict], action_texts: list[str], budget=None, share_prefix: bool = True) -> list[float]:
        """Values of every candidate turn for one state, in one forward pass after a shared prefix."""
        self.eval()
        pairs = [encode_pair(self.tokenizer, state, a, self.max_length) for a in action_texts]
        enc, masks = [p[0] for p in pairs], [p[1] for p in pairs]
        device = model_device(self.lm)
        ctx = budget.timing("qnet") if budget is not None else _Null()
        with ctx:
            kv = getattr(self.model_cfg, "kv_cache", False)  # then even one candidate reuses the cached state
            P = _common_prefix(enc) if share_prefix and (len(enc) > 1 or kv) else 0
            P = min(P, min(len(e) for e in enc) - 1)
            if self.pool == "mean":  # the whole action must be in the suffix to be averaged
                P = min([P] + [m.index(1) for m in masks if 1 in m])
            if P < 8:
                vals, n_tok = self._score_padded(enc, masks, device), sum(len(e) for e in enc)
            else:
                vals, n_tok = self._score_shared(enc, masks, P, device)
        if budget is not None:
            budget.add_qnet(n_tok)
        return vals

    def _score_padded(self, enc, masks, device) -> list[float]:
        ids, att = pad(enc, self.tokenizer.pad_token_id, side="left")
        am, _ = pad(masks, 0, side="left")
        return self.values(ids.to(device), att.to(device), am.to(device)).tolist()

    def _extend(self, new_ids: list[int], cache, start: int):
        device = model_device(self.lm)
        x = torch.tensor([new_ids], device=device)
        att = torch.ones((1, start + len(new_ids)), dtype=torch.long, device=device)
        pos = torch.arange(start, start + len(new_ids), device=device)[None]
        return self.hidden(x, att, position_ids=pos, past_key_values=cache, use_cache=True)[1]

    def _score_shared(self, enc, masks, P: int, device) -> tuple[list[float], int]:
        """Values after one shared prefix, and the tokens run through the model for them (the prefix tokens the
        KV cache did not hold, plus every candidate's suffix)."""
        if getattr(self.model_cfg, "kv_cache", False):
            before = self.prefix.computed_tokens
            cache = self.prefix.get(enc[0][:P], self._extend)  # the episode's previous steps are not recomputed
            prefix_tokens = self.prefix.computed_tokens - before
        else:
            cache, prefix_tokens = self._extend(enc[0][:P], None, 0), P
        if cache is None:
            return self._score_padded(enc, masks, device), prefix_tokens + sum(len(e) for e in enc)
        n = len(enc)
        cache.batch_repeat_interleave(n)
        suffix, s_att = pad([e[P:] for e in enc], self.tokenizer.pad_token_id, side="right")
        suffix, s_att = suffix.to(device), s_att.to(device)
        att = torch.cat([torch.ones((n, P), dtype=s_att.dtype, device=device), s_att], dim=1)
        pos = positions(s_att, offset=P)
        h, _ = self.hidden(suffix, att, position_ids=pos, past_key_values=cache)
        am, _ = pad([m[P:] for m in masks], 0, side="right")
        v = self.head(self.features(h, am.to(device))).squeeze(-1)
        return v.gather(1, last_index(s_att)[:, None]).squeeze(1).tolist(), prefix_tokens + sum(len(e) - P for e in enc)

    # -- persistence -------------------------------------------------------------------------------------
    def save(self, out_dir: str | Path, base: str, meta: dict | None = None) -> Path:
        out = save_policy(self.lm, self.tokenizer, out_dir, base)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                  str(out / "value_head.safetensors"))
        (out / "qnet.json").write_text(json.dumps({"schema_version": 1, "max_length": self.max_length,
                                                   "head": "hidden-1024-1024-1", "pool": self.pool,
                                                   **(meta or {})}))
        return out


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _common_prefix(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        t = seqs[0][i]
        if any(s[i] != t for s in seqs[1:]):
            return i
    return n


def from_policy(policy_dir: str | Path, model_cfg, max_length: int, train: bool = True, pool: str = "last") -> QNet:
    """A fresh QNet whose backbone starts from the BC policy (the paper's initialization)."""
    lm, tok = load_policy(policy_dir, model_cfg, train=train)
    return QNet(lm, tok, model_cfg, max_length, pool)


def load_qnet(path: str | Path, model_cfg) -> QNet:
    """Bring back a QNet saved by :meth:`QNet.save` (backbone or adapter + value head)."""
    path = Path(path)
    if not (path / "value_head.safetensors").is_file():
        raise FileNotFoundError(f"no QNet at {path} (value_head.safetensors missing)")
    meta = json.loads((path / "qnet.json").read_text())
    lm, tok = load_policy(path, model_cfg, train=False)
    q = QNet(lm, tok, model_cfg, meta["max_length"], meta.get("pool", "last"))
    q.head.load_state_dict({k: v.to(model_device(lm)) for k, v in load_file(str(path / "value_head.safetensors")).items()})
    q.eval()
    return q


__all__ = ["QNet", "from_policy", "load_qnet", "is_adapter_dir"]
