"""The sampling policy: candidate agent turns for a state from a Hugging Face model (one prefill shared by the
candidates through a KV prefix cache), each cut, decoded and parsed the same way, every generated token charged to
a :class:`~qlass_lib.core.budget.Budget`.  Other generation backends (:mod:`qlass_lib.models.generation`) return
the same :class:`Candidate` lists.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from qlass_lib.core.budget import Budget
from qlass_lib.models.kvcache import PrefixCache
from qlass_lib.models.loading import autocast, cache_kwarg, model_device, returned_cache
from qlass_lib.text import prompts


@dataclass
class Candidate:
    text: str
    action: str | None
    tokens: int
    ids: list[int] | None = field(default=None, repr=False)  # the generated token ids (backend parity checks)
    logprob: float | None = None  # the policy's own (temperature-1) log-probability of the charged tokens


@dataclass
class Policy:
    """A causal LM + tokenizer that proposes agent turns."""
    model: object
    tokenizer: object
    model_cfg: object
    max_length: int = 1024
    env_name: str = "scienceworld"
    greedy_max_new_tokens: int = 48
    prefix: PrefixCache = field(default_factory=PrefixCache, repr=False)

    @torch.no_grad()
    def propose(self, state: list[dict], n: int = 1, sampling=None, budget: Budget | None = None) -> list[Candidate]:
        """``n`` candidate turns for ``state``; greedy when ``sampling`` is None (then n must be 1).

        With ``model.kv_cache`` the prompt's prefix comes from the episode's previous prompt (only the new
        turn and observation are computed) and its one prefill is shared by all ``n`` samples."""
        tok, model = self.tokenizer, self.model
        max_new = sampling.max_new_tokens if sampling is not None else self.greedy_max_new_tokens
        ids = prompts.encode_prompt(tok, state, self.max_length, reserve=max_new)
        device = model_device(model)
        rows = n if sampling is not None else 1
        kwargs = dict(max_new_tokens=max_new, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        if sampling is None:
            kwargs.update(do_sample=False)
        else:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
        if model.training:
            self.prefix.reset()  # the model was being trained since the last call: cached keys may be stale
        model.eval()
        ctx = budget.timing("gen") if budget is not None else _null()
        computed = self.prefix.computed_tokens
        with ctx, autocast(self.model_cfg, device, decoding=True):
            if getattr(self.model_cfg, "kv_cache", False) and len(ids) > 1:
                cache = self.prefix.get(ids[:-1], self._extend)
                if rows > 1:
                    cache.batch_repeat_interleave(rows)
                input_ids = torch.tensor([ids] * rows, device=device)
                kwargs.update({cache_kwarg(model): cache, "num_return_sequences": 1})
                prompt_tokens = self.prefix.computed_tokens - computed + rows  # new prefix + each row's last token
            else:
                input_ids = torch.tensor([ids], device=device)
                kwargs.update(num_return_sequences=rows)
                prompt_tokens = len(ids) * rows  # generate expands the prompt to every returned row
            kwargs["attention_mask"] = torch.ones_like(input_ids)
            out = model.generate(input_ids, return_dict_in_generate=True, output_logits=True, **kwargs)
        if budget is not None:
            budget.add_prompt(prompt_tokens)
        return self._candidates(out, input_ids.shape[1], budget)

    def _extend(self, new_ids: list[int], cache, start: int):
        """Run the policy on ``new_ids`` after ``start`` cached positions; returns the grown cache."""
        device = model_device(self.model)
        x = torch.tensor([new_ids], device=device)
        att = torch.ones((1, start + len(new_ids)), dtype=torch.long, device=device)
        out = self.model(input_ids=x, attention_mask=att, use_cache=True, logits_to_keep=1,
                         **{cache_kwarg(self.model): cache})
        return returned_cache(out)


    @torch.no_grad()
    def propose_many(self, states: list[list[dict]], sampling, budget: Budget | None = None) -> list[Candidate]:
        """One sampled candidate for each of several states, in one left-padded generate call."""
        tok, model = self.tokenizer, self.model
        enc = [prompts.encode_prompt(tok, s, self.max_length, reserve=sampling.max_new_tokens) for s in states]
        from qlass_lib.text.batching import pad
        device = model_device(model)
        ids, att = pad(enc, tok.pad_token_id, "left")
        n = ids.shape[1]
        model.eval()
        ctx = budget.timing("gen") if budget is not None else _null()
        with ctx, autocast(self.model_cfg, device, decoding=True):
            out = model.generate(ids.to(device), attention_mask=att.to(device), do_sample=True,
                                 temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                                 max_new_tokens=sampling.max_new_tokens, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id, return_dict_in_generate=True, output_logits=True)
        if budget is not None:
            budget.add_prompt(int(att.sum()))
        return self._candidates(out, n, budget)

    def _candidates(self, out, n_prompt: int, budget: Budget | None) -> list[Candidate]:
        """The generated rows of ``generate``'s output as candidates, each with the policy's log-probability of
        its charged tokens from the raw (unwarped) logits."""
        seqs = out.sequences[:, n_prompt:]
        logp = token_logprobs(out.logits, seqs)
        cands = []
        for row, seq in enumerate(seqs.tolist()):
            cand = make_candidate(self.tokenizer, seq)
            cand.logprob = float(logp[row, :cand.tokens].sum())
            if budget is not None:
                budget.add_generation(cand.tokens)
            cands.append(cand)
        return cands


def token_logprobs(logits: tuple, seqs: torch.Tensor) -> torch.Tensor:
    """log p(token) of each generated token under the model's own distribution (temperature 1, no top-k/p):
    ``logits`` is ``generate``'s per-step tuple of (rows, vocab) raw scores, ``seqs`` the (rows, steps) tokens."""
    steps = torch.stack([x.float() for x in logits], 1)[:, :seqs.shape[1]]
    return torch.log_softmax(steps, -1).gather(2, seqs[:, :steps.shape[1], None].to(steps.device))[..., 0].cpu()


def make_candidate(tokenizer, seq: list[int]) -> Candidate:
    """A generated token sequence as a candidate turn: cut after the end-of-sequence token (which is charged),
    decoded, cut before any hallucinated observation, its action parsed.  Every backend cuts the same way."""
    eos = tokenizer.eos_token_id
    n_tok = seq.index(eos) + 1 if eos in seq else len(seq)
    text = tokenizer.decode(seq[:n_tok], skip_special_tokens=True).split("\nObservation:")[0].strip()
    return Candidate(text, prompts.parse_action(text), n_tok, list(seq[:n_tok]))


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
