"""``python -m qlass_lib bench runs/<id>``: hot-path costs measured side by side in one process.

On a finished run's BC policy (and its ``q`` QNet when stage 04 ran) it replays the states of stage 01's
evaluation episodes in order, as search meets them, and times:

- sampling M candidates ÷ sampling one, with the prefix KV cache (``model.kv_cache``) and without it;
- QNet scoring of M candidates in one call ÷ scoring one candidate;
- from stage 02's records, the environment's share of tree-building wall time;
- generated tokens per second with 1 and M rows, and with ``train_steps`` > 0 the input tokens per second of BC
  training steps (LoRA where the run uses it) on the run's expert data;
- with ``search_tasks`` > 0, the search stage itself (greedy, Best-of-N, QLASS at every M, one seed) on that many
  held-out tasks, wall time per task with the KV cache and without it (the hot path before this change).

Ratios come from the same states in the same process, one configuration after another; absolute times are
this machine's.  Writes ``bench/bench.json`` in the run folder and prints a markdown table.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from qlass_lib.core.artifacts import write_json


def _states(run_dir: Path, env_name: str, limit: int) -> list[list[dict]]:
    from qlass_lib.text import prompts
    from qlass_lib.core.artifacts import read_jsonl
    from qlass_lib.core.series import STAGES
    out: list[list[dict]] = []
    for ep in read_jsonl(run_dir / STAGES["01"] / "eval_episodes.jsonl"):
        s = prompts.initial_state(env_name, ep["task_text"], ep["first_observation"])
        out.append(s)
        for t in ep["turns"][:-1]:
            s = prompts.extend(s, t["text"], t["observation"])
            out.append(s)
        if len(out) >= limit:
            break
    return out[:limit]


def _time_policy(pol, states, m: int, kv: bool, sampling, seed: int) -> tuple[float, list, int]:
    """(seconds, candidate texts per state, tokens generated) for ``m`` samples at every state, starting from an
    empty prefix cache (the policy is loaded once and shared by every timing)."""
    from qlass_lib.core.budget import Budget
    pol.model_cfg = dataclasses.replace(pol.model_cfg, kv_cache=kv)
    if hasattr(pol, "prefix"):
        pol.prefix.reset()
    torch.manual_seed(seed)
    t0, cands, b = time.perf_counter(), [], Budget()
    for s in states:
        cands.append([c.text for c in pol.propose(s, m, sampling, b)])
    return time.perf_counter() - t0, cands, b.gen_tokens


def train_rate(ctx, steps: int = 2, seed: int = 0) -> dict:
    """Input tokens per second of BC training steps (the run's model switches: LoRA, precision) on the run's
    expert data, one batch of ``bc.batch_tokens`` per step, after one untimed step."""
    import random

    from qlass_lib.method import bc
    from qlass_lib.text.examples import build_examples
    from qlass_lib.models.loading import load_model, model_device
    cfg = ctx.cfg
    tok = ctx.policy().tokenizer
    examples = build_examples(tok, ctx.expert_records(), cfg.bc.max_length)
    batches = bc.make_batches(examples, cfg.bc.batch_tokens, random.Random(seed))[:steps + 1]
    torch.manual_seed(seed)
    model = load_model(ctx.bc_base(), cfg.model, train=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    secs, tokens = 0.0, 0
    for i, batch in enumerate(batches):
        t0 = time.perf_counter()
        loss, _ = bc.action_loss(model, bc.batch_of(batch, tok.pad_token_id, model_device(model)), cfg.model)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if i:  # the first step warms up
            secs += time.perf_counter() - t0
            tokens += sum(len(e.input_ids) for e in batch)
    return {"train_steps": max(0, len(batches) - 1), "train_tokens_per_s": tokens / secs if secs else None}


def decoding_precision(pol, states, m: int, sampling, seed: int = 0, rounds: int = 2) -> dict:
    """Generated tokens per second with decoding under bf16 autocast and in fp32 (``model.bf16_decoding`` true /
    false), 1 and ``m`` rows, KV cache on; the two settings alternate ``rounds`` times on the same states so that
    neither gets the warmer machine.  Meaningful only where the device runs bf16 natively
    (``decoding_precision_native_bf16``); elsewhere both settings decode in fp32."""
    from qlass_lib.models.loading import model_device, native_bf16
    original = pol.model_cfg
    out = {"decoding_precision_native_bf16": native_bf16(model_device(pol.model))}
    totals = {(d, n): [0, 0.0] for d in (True, False) for n in (1, m)}
    for _ in range(rounds):
        for bf16_dec in (True, False):
            pol.model_cfg = dataclasses.replace(original, bf16=True, bf16_decoding=bf16_dec)
            for n in (1, m):
                secs, _, tokens = _time_policy(pol, states, n, True, sampling, seed)
                totals[(bf16_dec, n)][0] += tokens
                totals[(bf16_dec, n)][1] += secs
    pol.model_cfg = original
    for (bf16_dec, n), (tokens, secs) in totals.items():
        out[f"decode_tokens_per_s_{n}_{'bf16' if bf16_dec else 'fp32'}"] = tokens / secs
    return out


def _time_qnet(qnet, states, cands, m: int) -> float:
    qnet.prefix.reset()
    t0 = time.perf_counter()
    for s, c in zip(states, cands):
        qnet.score(s, (c * m)[:m] if m > 1 else c[:1])
    return time.perf_counter() - t0


def tree_env_share(run_dir: Path) -> dict | None:
    from qlass_lib.core.series import STAGES
    p = run_dir / STAGES["02"] / "tree_summary.json"
    if not p.is_file():
        return None
    s = json.loads(p.read_text())
    env, gen, wall = s.get("env_s"), s.get("gen_s"), s.get("wall_s")
    return {"env_s": env, "gen_s": gen, "wall_s": wall, "env_share": env / wall if env and wall else None}


def search_wall(ctx, n_tasks: int) -> dict:
    """Wall seconds per task of the search suite (one seed, no paraphrases) with and without the KV cache."""
    import tempfile

    from qlass_lib.core.series import STAGES
    from qlass_lib.envs import eval_tasks, make_env, per_type
    from qlass_lib.text.paraphrase import make_paraphraser
    from qlass_lib.method.qnet import load_qnet
    from qlass_lib.method.executor import local
    from qlass_lib.method.search import run_suite
    cfg = ctx.cfg
    scfg = dataclasses.replace(cfg.search, seeds=[0], augmented=False)
    env = make_env(cfg.env)
    out = {}
    try:
        tasks = per_type(eval_tasks(env, cfg.env), max(1, n_tasks // max(1, len(cfg.env.task_types))))[:n_tasks]
        qnet = load_qnet(ctx.run_dir / STAGES["04"] / "qnet_q", cfg.model)
        for kv in (True, False):
            policy = ctx.policy(env.name)
            policy.model_cfg = dataclasses.replace(policy.model_cfg, kv_cache=kv)
            qnet.model_cfg = policy.model_cfg
            qnet.prefix.reset()
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                run_suite(local(env, policy, {"q": qnet}), tasks, scfg, Path(d) / "episodes.jsonl",
                          make_paraphraser(scfg))
                out[f"search_s_per_task_{'cache' if kv else 'nocache'}"] = (time.perf_counter() - t0) / len(tasks)
        out["search_tasks"] = len(tasks)
        out["search_nocache_over_cache"] = out["search_s_per_task_nocache"] / out["search_s_per_task_cache"]
    finally:
        env.close()
    return out


def bench(run_dir: str | Path, n_states: int = 60, m: int = 4, seed: int = 0, search_tasks: int = 0,
          train_steps: int = 0, precision_states: int = 0) -> dict:
    from qlass_lib.core.series import STAGES
    from qlass_lib.run.context import RunContext
    run_dir = Path(run_dir)
    ctx = RunContext.open(str(run_dir / "params.json"), run_dir=str(run_dir))
    cfg = ctx.cfg
    states = _states(run_dir, cfg.env.name, n_states)
    if not states:
        raise FileNotFoundError(f"no evaluation episodes in {run_dir / STAGES['01']}: run stage 01 first")
    sampling = cfg.search.sampling
    rows, gen = {}, {}
    pol = ctx.policy()
    for kv in (True, False):
        for n in (1, m):
            secs, cands, tokens = _time_policy(pol, states, n, kv, sampling, seed)
            rows[f"sample_{n}_{'cache' if kv else 'nocache'}_s"] = secs
            gen[f"gen_tokens_per_s_{n}_{'cache' if kv else 'nocache'}"] = tokens / secs
            if n == m and kv:
                sampled = cands
    out = {"schema_version": 2, "states": len(states), "m": m,
           **{k: v / len(states) for k, v in rows.items()}, **gen}
    out["sample_m_over_1_cache"] = rows[f"sample_{m}_cache_s"] / rows["sample_1_cache_s"]
    out["sample_m_over_1_nocache"] = rows[f"sample_{m}_nocache_s"] / rows["sample_1_nocache_s"]
    out["cache_speedup_m"] = rows[f"sample_{m}_nocache_s"] / rows[f"sample_{m}_cache_s"]
    out["cache_speedup_1"] = rows["sample_1_nocache_s"] / rows["sample_1_cache_s"]
    qdir = run_dir / STAGES["04"] / "qnet_q"
    if (qdir / "value_head.safetensors").is_file():
        from qlass_lib.method.qnet import load_qnet
        q = load_qnet(qdir, cfg.model)
        one = _time_qnet(q, states, sampled, 1)
        many = _time_qnet(q, states, sampled, m)
        out.update(qnet_1_s=one / len(states), qnet_m_s=many / len(states), qnet_m_over_1=many / one)
    out["tree"] = tree_env_share(run_dir)
    if train_steps:
        out.update(train_rate(ctx, train_steps, seed))
    if precision_states:
        out.update(decoding_precision(pol, states[:precision_states], m, sampling, seed))
    if search_tasks and (qdir / "value_head.safetensors").is_file():
        out.update(search_wall(ctx, search_tasks))
    d = run_dir / "bench"
    d.mkdir(exist_ok=True)
    write_json(d / "bench.json", out)
    return out


def markdown(b: dict) -> str:
    m = b["m"]
    lines = [f"| measure ({b['states']} states, per state) | value |", "|---|---|",
             f"| sample 1 / {m}, KV cache (s) | {b['sample_1_cache_s']:.4f} / {b[f'sample_{m}_cache_s']:.4f} |",
             f"| sample 1 / {m}, no cache (s) | {b['sample_1_nocache_s']:.4f} / {b[f'sample_{m}_nocache_s']:.4f} |",
             f"| M={m} ÷ 1, KV cache (goal <= 1.3) | {b['sample_m_over_1_cache']:.2f} |",
             f"| M={m} ÷ 1, no cache | {b['sample_m_over_1_nocache']:.2f} |",
             f"| cache speed-up at M={m} / at 1 | {b['cache_speedup_m']:.2f} / {b['cache_speedup_1']:.2f} |"]
    if "qnet_m_over_1" in b:
        lines.append(f"| QNet scoring M={m} batched ÷ one (goal <= 1.5) | {b['qnet_m_over_1']:.2f} |")
    if "search_nocache_over_cache" in b:
        lines.append(f"| search stage wall per task ({b['search_tasks']} tasks), no cache ÷ cache | "
                     f"{b['search_s_per_task_nocache']:.1f} s ÷ {b['search_s_per_task_cache']:.1f} s = "
                     f"{b['search_nocache_over_cache']:.2f} |")
    lines.append(f"| generated tokens/s, 1 / {m} rows, KV cache | {b['gen_tokens_per_s_1_cache']:.1f} / "
                 f"{b[f'gen_tokens_per_s_{m}_cache']:.1f} |")
    if b.get("train_tokens_per_s"):
        lines.append(f"| BC training input tokens/s ({b['train_steps']} steps) | {b['train_tokens_per_s']:.0f} |")
    if "decode_tokens_per_s_1_fp32" in b:
        lines.append(f"| decoding tokens/s, 1 / {m} rows: bf16 autocast | {b['decode_tokens_per_s_1_bf16']:.1f} / "
                     f"{b[f'decode_tokens_per_s_{m}_bf16']:.1f} |")
        lines.append(f"| decoding tokens/s, 1 / {m} rows: fp32 | {b['decode_tokens_per_s_1_fp32']:.1f} / "
                     f"{b[f'decode_tokens_per_s_{m}_fp32']:.1f} |")
    t = b.get("tree") or {}
    if t.get("env_share") is not None:
        lines.append(f"| env share of tree-building wall time (goal <= 0.2) | {t['env_share']:.2f} |")
    return "\n".join(lines)
