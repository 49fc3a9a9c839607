"""Generation backends: where the policy's tokens come from.

- ``hf`` (default): :class:`qlass_lib.models.policy.Policy`, ``model.generate`` in this process.
- ``openai``: :class:`ServerPolicy`, any OpenAI-compatible *completions* server (vLLM, SGLang,
  ``transformers serve``).  The prompt is rendered by the project's one formatter
  (:func:`qlass_lib.text.prompts.fitted_prompt`) and sent as text, so every backend sees the same prompt; the M
  candidates of a state are one request (``n=M``); the request seed is drawn from torch's generator, which every
  stage seeds per episode or tree, so a run (and a resumed run) sends the same seeds.  Completion tokens are
  charged from the server's answer and checked against the local tokenizer (:attr:`ServerPolicy.stats`).

Both expose ``propose(state, n, sampling, budget)`` and ``propose_many(states, sampling, budget)`` returning
:class:`~qlass_lib.models.policy.Candidate` lists cut and parsed the same way (:func:`make_candidate`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from qlass_lib.text import prompts
from qlass_lib.models.policy import Candidate, make_candidate
from qlass_lib.core.budget import Budget


class GenerationServerError(RuntimeError):
    """The generation server could not be reached (or kept failing) after every retry."""


@dataclass
class ServerPolicy:
    """The acting policy served by an OpenAI-compatible completions endpoint; tokenizer and formatter local."""
    tokenizer: object
    gen_cfg: object            # config.GenerationConfig
    max_length: int = 1024
    env_name: str = "scienceworld"
    greedy_max_new_tokens: int = 48
    stats: dict = field(default_factory=lambda: {"requests": 0, "completions": 0, "completion_tokens": 0,
                                                 "prompt_mismatches": 0, "token_mismatches": 0})
    _client: object = field(default=None, repr=False)
    _model: str | None = field(default=None, repr=False)

    # -- the server ----------------------------------------------------------------------------------------
    def client(self):
        if self._client is None:
            import os

            from qlass_lib.core.http import openai_client
            g = self.gen_cfg
            self._client = openai_client(g.base_url, os.environ.get(g.api_key_env), g.api_key_env, g.timeout_s,
                                         g.max_retries)
        return self._client

    def model_name(self) -> str:
        if self._model is None:
            self._model = self.gen_cfg.model or self._call(lambda c: c.models.list()).data[0].id
        return self._model

    def _call(self, fn):
        import openai
        try:
            return fn(self.client())
        except (openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError,
                openai.RateLimitError) as exc:
            raise GenerationServerError(
                f"generation server {self.gen_cfg.base_url} failed after {self.gen_cfg.max_retries} retries with "
                f"backoff ({type(exc).__name__}: {exc}). Finished work is kept in the stage's logs; start the "
                f"server again and rerun the stage to resume.") from exc

    def __getstate__(self):  # the HTTP client does not travel to Ray workers; each builds its own
        return {**self.__dict__, "_client": None}

    # -- proposing -----------------------------------------------------------------------------------------
    def propose(self, state: list[dict], n: int = 1, sampling=None, budget: Budget | None = None) -> list[Candidate]:
        """``n`` candidate turns for ``state`` in one request; greedy (temperature 0) when ``sampling`` is None."""
        return self._complete([state], n, sampling, budget)

    def propose_many(self, states: list[list[dict]], sampling, budget: Budget | None = None) -> list[Candidate]:
        """One sampled candidate for each of several states (one request with a list of prompts)."""
        return self._complete(states, 1, sampling, budget)

    def _complete(self, states, n, sampling, budget) -> list[Candidate]:
        max_new = sampling.max_new_tokens if sampling is not None else self.greedy_max_new_tokens
        fitted = [prompts.fitted_prompt(self.tokenizer, s, self.max_length, reserve=max_new) for s in states]
        req = dict(model=self.model_name(), prompt=[t for t, _ in fitted] if len(fitted) > 1 else fitted[0][0],
                   max_tokens=max_new, n=n if sampling is not None else 1, logprobs=0)
        if sampling is None:
            req.update(temperature=0.0)
        else:
            req.update(temperature=sampling.temperature, top_p=sampling.top_p,
                       seed=int(torch.randint(0, 2**31 - 1, (1,)).item()))
        extra = {}
        if sampling is not None and sampling.top_k > 0:
            extra["top_k"] = sampling.top_k
        if self.gen_cfg.stop:
            req["stop"] = list(self.gen_cfg.stop)
        if self.gen_cfg.vllm_extensions:
            extra.update(add_special_tokens=False, return_token_ids=True)
        if extra:
            req["extra_body"] = extra
        with budget.timing("gen") if budget is not None else contextlib.nullcontext():
            resp = self._call(lambda c: c.completions.create(**req))
        self.stats["requests"] += 1
        choices = sorted(resp.choices, key=lambda c: c.index)
        per_prompt = len(choices) // len(fitted)
        out, counted = [], 0
        for i, ch in enumerate(choices):
            prompt_ids = fitted[i // per_prompt][1]
            served = getattr(ch, "prompt_token_ids", None) or (ch.model_extra or {}).get("prompt_token_ids")
            if served is not None and list(served) != list(prompt_ids):
                self.stats["prompt_mismatches"] += 1
            out.append(self._candidate(ch))
            counted += out[-1].tokens
        usage = getattr(resp, "usage", None)
        if usage is not None and budget is not None:
            budget.add_prompt(usage.prompt_tokens or 0)  # as the server counts them (its prefix cache aside)
        if usage is not None and usage.completion_tokens != counted:
            self.stats["token_mismatches"] += 1
            out[0].tokens = max(0, out[0].tokens + usage.completion_tokens - counted)  # the server's count wins
        for c in out:
            if budget is not None:
                budget.add_generation(c.tokens)
            self.stats["completions"] += 1
            self.stats["completion_tokens"] += c.tokens
        return out

    def _candidate(self, choice) -> Candidate:
        cand = self._cut(choice)
        lp = getattr(getattr(choice, "logprobs", None), "token_logprobs", None)
        if lp:  # the sampled tokens' log-probabilities (vLLM: of the raw logits, before temperature and top-k/p)
            cand.logprob = float(sum(x for x in lp[:cand.tokens] if x is not None))
        return cand

    def _cut(self, choice) -> Candidate:
        ids = getattr(choice, "token_ids", None) or (choice.model_extra or {}).get("token_ids")
        if ids is not None:  # the server's own tokens: cut and decoded exactly as the in-process policy does
            return make_candidate(self.tokenizer, list(ids))
        # no ids: the local tokenizer counts the text, plus the end-of-sequence token when that is what stopped it
        tok = self.tokenizer
        n_tok = len(tok(choice.text, add_special_tokens=False)["input_ids"])
        if choice.finish_reason == "stop" and getattr(choice, "stop_reason", None) is None:
            n_tok += 1
        text = choice.text.split("\nObservation:")[0].strip()
        return Candidate(text, prompts.parse_action(text), n_tok)


def make_policy(cfg, policy_dir, env_name: str | None = None, backend: str | None = None):
    """The acting policy of ``backend`` (default ``cfg.generation.backend``) for the model saved at
    ``policy_dir`` (stage 01's policy): ``hf`` loads the weights here; ``openai`` loads only the tokenizer and
    talks to ``generation.base_url``."""
    from pathlib import Path
    policy_dir = Path(policy_dir)
    if not policy_dir.is_dir():
        raise FileNotFoundError(f"no BC policy at {policy_dir}: run stage 01 first")
    env_name = env_name or cfg.env.name
    if (backend or cfg.generation.backend) == "openai":
        from qlass_lib.models.loading import load_tokenizer
        return ServerPolicy(load_tokenizer(str(policy_dir), cfg.model), cfg.generation, cfg.bc.max_length, env_name,
                            cfg.env.max_action_tokens)
    from qlass_lib.models.policy import Policy
    from qlass_lib.models.loading import load_policy
    model, tok = load_policy(policy_dir, cfg.model)
    model.eval()
    return Policy(model, tok, cfg.model, cfg.bc.max_length, env_name, cfg.env.max_action_tokens)
