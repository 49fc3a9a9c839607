"""Device check of the GPU code path: 4-bit NF4 + LoRA + bf16 on a random-initialized Llama of a real size.

Nothing can be downloaded, so the check builds its own base model (a Llama-2-7B-shaped config by default, random
weights saved in bf16 with ``save_pretrained``) and then drives the project's own code on it, exactly as stage
01 and 04 would with a hub model: ``models.load_model`` (4-bit, LoRA, gradient checkpointing), ``bc.train_bc`` on
a run's expert trajectories, ``save_policy``/``load_policy`` (adapter round trip), ``models.policy.Policy.propose``
(M sampled candidates with the KV cache), ``qnet.from_policy`` + ``qnet_train.train_qnet`` + ``QNet.score``
and ``load_qnet``; last, the logits of the 4-bit and bf16 models against an fp32 reference.  Every section is
timed (device-synchronized) with its peak device memory, and the results are rewritten to ``gpu_check.json``
after each section, so a run cut short still reports what it finished.

    python -m qlass_lib gpu-check runs/default --out /tmp/gpu_check --shape 7b
"""
from __future__ import annotations

import json
import random
import time
import traceback
from pathlib import Path

import torch

from qlass_lib.core.artifacts import write_json

SHAPES = {  # hidden, intermediate, layers, heads; "7b" is Llama-2-7B's shape (its vocabulary is the corpus's)
    "tiny": (64, 172, 2, 4),
    "1b": (2048, 5632, 22, 32),
    "7b": (4096, 11008, 32, 32),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


class _Report:
    """Sections of results, rewritten to ``out/gpu_check.json`` after each one."""

    def __init__(self, out: Path, device: torch.device):
        self.out, self.device, self.data = out, device, {"schema_version": 1, "sections": {}}

    def section(self, name: str, fn) -> dict | None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        _sync(self.device)
        t0 = time.perf_counter()
        try:
            res = fn() or {}
            res["ok"] = True
        except Exception as exc:  # a failed section is reported, and the next one still runs
            res = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        _sync(self.device)
        res.update(wall_s=round(time.perf_counter() - t0, 2), peak_gib=_peak_gib(self.device))
        self.data["sections"][name] = res
        write_json(self.out / "gpu_check.json", self.data)
        print(f"[gpu-check] {name}: {'ok' if res['ok'] else res['error']} ({res['wall_s']} s)", flush=True)
        return res if res["ok"] else None


def _environment(device: torch.device) -> dict:
    import importlib.metadata as md
    from qlass_lib.models.loading import native_bf16
    info = {"torch": torch.__version__, "device": str(device), "native_bf16": native_bf16(device)}
    for pkg in ("transformers", "peft", "bitsandbytes", "accelerate"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = None
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    capability=f"{p.major}.{p.minor}")
    return info


def build_random_base(out_dir: Path, records: list[dict], shape: str, device: torch.device, seed: int = 0) -> dict:
    """A tokenizer trained on the expert text and a random Llama of ``shape``, saved in bf16 to ``out_dir``."""
    from transformers import LlamaForCausalLM
    from qlass_lib.models.loading import llama_config, train_tokenizer
    hidden, inter, layers, heads = SHAPES[shape]
    corpus = ["\n".join(c["value"] for c in r["conversations"]) for r in records]
    tok = train_tokenizer(out_dir, corpus, vocab_size=32000)
    config = llama_config(tok, hidden, inter, layers, heads, max_positions=4096)
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with device:
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    n_params = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    model.save_pretrained(out_dir)
    save_s = time.perf_counter() - t0
    del model
    size = sum(f.stat().st_size for f in out_dir.glob("*.safetensors"))
    return {"shape": shape, "params_b": round(n_params / 1e9, 3), "vocab": len(tok), "hidden": hidden,
            "layers": layers, "save_s": round(save_s, 1), "safetensors_gib": round(size / 2**30, 2)}


def _cfg(quant: bool, steps: int, batch_tokens: int, qnet_steps: int, device: str):
    from qlass_lib.core.config import load_config
    return load_config(None, {
        "model": {"load_in_4bit": quant, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "bf16": True,
                  "gradient_checkpointing": True, "device": device,
                  "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
        "bc": {"max_length": 2048, "learning_rate": 1e-3, "batch_tokens": batch_tokens, "max_steps": steps,
               "warmup_steps": 3, "stop_at_loss": 0.0, "eval_every": 10**6, "save_every": 10**6, "val_fraction": 0.05},
        "qnet": {"max_length": 2048, "learning_rate": 1e-4, "backbone_lr_scale": 1.0, "batch_size": 8,
                 "max_steps": qnet_steps, "warmup_steps": 2, "eval_every": 10**6, "select": "last"},
    })


def _logits(model, batch: dict, model_cfg) -> torch.Tensor:
    from qlass_lib.models.loading import autocast
    with torch.no_grad(), autocast(model_cfg, batch["input_ids"].device):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()


def _rel(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    m = mask.bool()
    return float((a[m] - b[m]).norm() / b[m].norm())


def _timed_forward(model, batch: dict, model_cfg, device, reps: int = 3) -> float:
    """Tokens per second of a no-grad forward over ``batch`` (median of ``reps`` after one warm-up)."""
    _logits(model, batch, model_cfg)
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        _logits(model, batch, model_cfg)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return round(int(batch["attention_mask"].sum()) / sorted(times)[len(times) // 2], 1)


def run_check(run_dir: str | Path, out: str | Path, shape: str = "7b", quant: bool | None = None,
              bc_steps: int = 12, batch_tokens: int = 8192, qnet_steps: int = 8, qnet_examples: int = 256,
              m: int = 4, states: int = 6, seed: int = 0) -> dict:
    """Run every section (see the module doc); returns the report (also in ``out/gpu_check.json``)."""
    from qlass_lib.core.splits import split_records
    from qlass_lib.method import bc, qnet as qn, qnet_data, qnet_train
    from qlass_lib.text.examples import build_examples
    from qlass_lib.text.expert import to_messages
    from qlass_lib.models import loading as models
    from qlass_lib.models.policy import Policy
    from qlass_lib.core.artifacts import read_jsonl
    from qlass_lib.core.config import SamplingConfig
    run_dir, out = Path(run_dir), Path(out)
    expert = run_dir / "01_behavior_cloning" / "expert.jsonl"
    qdata = run_dir / "03_q_values" / "qnet_train.jsonl"
    for p in (expert, qdata):
        if not p.is_file():
            raise FileNotFoundError(f"gpu-check needs a run with stages 01 and 03 done: {p} is missing")
    out.mkdir(parents=True, exist_ok=True)
    models.quiet_hf()
    device = models.pick_device("auto")
    quant = device.type == "cuda" if quant is None else quant
    records = read_jsonl(expert)
    rep = _Report(out, device)
    rep.data["environment"] = _environment(device)
    cfg = _cfg(quant, bc_steps, batch_tokens, qnet_steps, device.type)
    base = out / "base"
    if not rep.section("build_base", lambda: build_random_base(base, records, shape, device, seed)):
        return rep.data
    tok = models.load_tokenizer(str(base), cfg.model)
    train_recs, val_recs = split_records(records, cfg.bc.val_fraction, seed)
    train_ex = build_examples(tok, train_recs, cfg.bc.max_length)
    val_ex = build_examples(tok, val_recs, cfg.bc.max_length)
    probe = bc.batch_of(sorted(val_ex, key=lambda e: -len(e.input_ids))[:4], tok.pad_token_id, device)
    policy_dir = out / "policy"
    held: dict = {}

    def bc_section():
        t0 = time.perf_counter()
        model = models.load_model(str(base), cfg.model, train=True)
        _sync(device)
        load_s = time.perf_counter() - t0
        import bitsandbytes as bnb  # noqa: F401  (imported by transformers when quantizing)
        n4 = sum(type(mod).__name__ == "Linear4bit" for mod in model.modules())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        load_gib = _peak_gib(device)
        res = bc.train_bc(model, tok, train_ex, val_ex, cfg.bc, cfg.model, out / "bc", seed)
        hist = [h for h in res["history"] if "train_loss" in h]
        step_s = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(hist, hist[1:])]
        tokens = [h["tokens"] for h in hist]
        batches = bc.make_batches(train_ex, cfg.bc.batch_tokens, random.Random(seed))
        padded = sum(len(b) * max(len(e.input_ids) for e in b) for b in batches) / len(batches)
        models.save_policy(model, tok, policy_dir, str(base))
        held["policy"] = model
        return {"load_s": round(load_s, 1), "linear4bit_modules": n4, "trainable_params_m": round(trainable / 1e6, 2),
                "memory_after_load_gib": load_gib, "steps": res["steps"], "precision": models.precision(cfg.model, device),
                "train_loss_first": round(hist[0]["train_loss"], 3), "train_loss_last": round(hist[-1]["train_loss"], 3),
                "val_loss_after": round(res["final_val_loss"], 3),
                "median_step_s": round(sorted(step_s)[len(step_s) // 2], 3) if step_s else None,
                "supervised_tokens_per_step": round(sum(tokens) / len(tokens), 1),
                "padded_tokens_per_step": round(padded, 1),
                "padded_tokens_per_s": round(padded / sorted(step_s)[len(step_s) // 2], 1) if step_s else None,
                "adapter_mib": round(sum(f.stat().st_size for f in policy_dir.glob("adapter_model.*")) / 2**20, 1)}

    def roundtrip_section():
        before = _logits(held["policy"].eval(), probe, cfg.model)
        again, _ = models.load_policy(policy_dir, cfg.model, train=False)
        after = _logits(again, probe, cfg.model)
        del again
        return {"max_abs_logit_diff": float((before - after).abs().max()),
                "rel_diff": _rel(after, before, probe["attention_mask"])}

    def generation_section():
        pol = Policy(held["policy"], tok, cfg.model, max_length=2048)
        sampling = SamplingConfig(temperature=0.7, max_new_tokens=48)
        rng = random.Random(seed)
        picked = rng.sample(records, min(states, len(records)))
        msgs = [to_messages(r["conversations"]) for r in picked]
        prompts_ = [ms[:max(1, [i for i, x in enumerate(ms) if x["role"] == "assistant"][-1])] for ms in msgs]
        pol.propose(prompts_[0], n=m, sampling=sampling)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        n_tok = 0
        for st in prompts_:
            n_tok += sum(c.tokens for c in pol.propose(st, n=m, sampling=sampling))
        _sync(device)
        dt = time.perf_counter() - t0
        return {"states": len(prompts_), "m": m, "generated_tokens": n_tok, "seconds": round(dt, 2),
                "tokens_per_s": round(n_tok / dt, 1), "seconds_per_step_of_m": round(dt / len(prompts_), 2)}

    def qnet_section():
        held.pop("policy", None)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        t0 = time.perf_counter()
        q = qn.from_policy(policy_dir, cfg.model, cfg.qnet.max_length, train=True)
        load_s = time.perf_counter() - t0
        exs = qnet_data.load_examples(q, qdata)[:qnet_examples]
        cut = max(1, len(exs) // 8)
        res = qnet_train.train_qnet(q, exs[cut:], exs[:cut], cfg.qnet, seed)
        pred = qnet_data.predict(q, exs[:cut], cfg.qnet.batch_size)
        losses = [h["train_loss"] for h in res["history"] if "train_loss" in h]
        vals_ = [h["val_mse"] for h in res["history"] if "val_mse" in h]
        rows = list(read_jsonl(qdata))[:8]
        state, texts = rows[0]["state"], [r["action_text"] for r in rows[:m]]
        q.score(state, texts)
        _sync(device)
        t1 = time.perf_counter()
        vals = q.score(state, texts)
        _sync(device)
        score_s = time.perf_counter() - t1
        q.save(out / "qnet", str(base))
        back = qn.load_qnet(out / "qnet", cfg.model)
        again = back.score(state, texts)
        return {"load_s": round(load_s, 1), "examples": len(exs), "steps": res["steps"],
                "train_s": round(res["train_seconds"], 1),
                "train_loss_first": round(losses[0], 4), "train_loss_last": round(losses[-1], 4),
                "val_mse_first": round(vals_[0], 4), "val_mse_last": round(vals_[-1], 4),
                "pred_range": [round(float(pred.min()), 3), round(float(pred.max()), 3)],
                "score_m_s": round(score_s, 3), "reload_max_abs_diff": max(abs(a - b) for a, b in zip(vals, again))}

    def precision_section():
        from dataclasses import replace
        res = {}
        plain = replace(cfg.model, lora_r=0, gradient_checkpointing=False)
        logits, speed, mem = {}, {}, {}
        if quant:
            torch.cuda.reset_peak_memory_stats(device)
            m4 = models.load_model(str(base), plain, train=False)
            mem["nf4"] = _peak_gib(device)
            logits["nf4"], speed["nf4"] = _logits(m4, probe, plain).cpu(), _timed_forward(m4, probe, plain, device)
            del m4
            torch.cuda.empty_cache() if device.type == "cuda" else None
        full = replace(plain, load_in_4bit=False)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        mb = models.load_model(str(base), full, train=False)
        mem["bf16"] = _peak_gib(device)
        res["stored_dtype"] = str(next(mb.parameters()).dtype)
        logits["bf16"], speed["bf16"] = _logits(mb, probe, full).cpu(), _timed_forward(mb, probe, full, device)
        mb = mb.float()
        fp32 = replace(full, bf16=False)
        logits["fp32"], speed["fp32"] = _logits(mb, probe, fp32).cpu(), _timed_forward(mb, probe, fp32, device)
        del mb
        mask = probe["attention_mask"].cpu()
        res["rel_error_vs_fp32"] = {k: round(_rel(v, logits["fp32"], mask), 5) for k, v in logits.items() if k != "fp32"}
        res.update(forward_tokens_per_s=speed, load_peak_gib=mem, probe_tokens=int(mask.sum()))
        return res

    rep.section("bc_4bit_lora" if quant else "bc_lora", bc_section)
    if "policy" in held:
        rep.section("adapter_roundtrip", roundtrip_section)
        rep.section("generation", generation_section)
    if (policy_dir / "qlass_base.json").is_file():
        rep.section("qnet", qnet_section)
    rep.section("precision", precision_section)
    return rep.data


def markdown(data: dict) -> str:
    """The report as a short table per section."""
    lines = [f"environment: {json.dumps(data.get('environment', {}))}", ""]
    for name, res in data["sections"].items():
        keep = {k: v for k, v in res.items() if k not in ("traceback",)}
        lines.append(f"- **{name}**: " + ", ".join(f"{k}={v}" for k, v in keep.items()))
    return "\n".join(lines)
