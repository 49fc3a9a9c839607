"""Smoke run of the notebook series through the runner with params/smoke.yaml; asserts on artifacts."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = "pytest-smoke"
RUN = ROOT / "runs" / RUN_ID


def _runner(*args):
    return subprocess.run([sys.executable, "-m", "qlass_lib", "run", "params/smoke.yaml", "--run-id", RUN_ID, *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def smoke_run():
    proc = _runner("--force")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.smoke
def test_stage01_artifacts(smoke_run):
    d = RUN / "01_behavior_cloning"
    m = json.loads((d / "manifest.json").read_text())
    assert m["status"] == "complete" and len(m["fingerprint"]["all"]) == 16 and m["seed"] == 0
    assert set(m["fingerprint"]) == {"params", "code", "data", "notebook", "packages", "upstream", "all"}
    assert all(len(d["sha256"]) == 64 for d in m["artifacts"].values()) and "policy/model.safetensors" in m["artifacts"]
    assert m["wall_clock_guard_hit"] == []
    assert m["versions"]["torch"] and m["versions"]["transformers"] and m["wall_time_s"] > 0
    from qlass_lib.models.loading import precision
    from qlass_lib.core.config import ModelConfig
    assert m["execution"]["precision"] == precision(ModelConfig()) and m["execution"]["precision"].startswith(("bf16", "fp32"))
    assert (RUN / "01_behavior_cloning.ipynb").is_file()
    metrics = json.loads((d / "bc_metrics.json").read_text())
    rows = {r["task_type"]: r for r in metrics["per_type"]}
    assert rows["all"]["episodes"] == 4  # 2 task types x eval_per_type 2
    assert 0 <= rows["all"]["mean_reward_x100"] <= 100
    episodes = [json.loads(l) for l in (d / "eval_episodes.jsonl").read_text().splitlines()]
    assert len(episodes) == 4 and all(1 <= e["steps"] <= 8 for e in episodes)
    assert all(e["budget"]["gen_tokens"] > 0 for e in episodes)
    policy = d / "policy"
    assert (policy / "model.safetensors").is_file() and (policy / "tokenizer.json").is_file()
    assert (d / "bc_loss.png").stat().st_size > 1000
    experts = [json.loads(l) for l in (d / "expert.jsonl").read_text().splitlines()]
    assert len(experts) == 20 and all(e["reward"] == 1.0 for e in experts)


@pytest.mark.smoke
def test_rerun_skips_finished_stages(smoke_run):
    before = {p: p.stat().st_mtime for p in RUN.glob("*/manifest.json")}
    proc = _runner()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "up to date, skipped" in proc.stdout
    assert {p: p.stat().st_mtime for p in RUN.glob("*/manifest.json")} == before


def test_bad_params_stop_with_named_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("run_id: x\nbc:\n  max_minuts: 1\n")
    proc = subprocess.run([sys.executable, "-m", "qlass_lib", "run", str(p)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "bc.max_minuts" in proc.stderr
    p.write_text("run_id: x\nmodel:\n  model_name_or_path: ./no/such/model\n")
    proc = subprocess.run([sys.executable, "-m", "qlass_lib", "run", str(p)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "model path not found" in proc.stderr


@pytest.mark.smoke
def test_stage02_03_artifacts(smoke_run):
    trees = [json.loads(l) for l in (RUN / "02_tree_construction" / "trees.jsonl").read_text().splitlines()]
    assert len(trees) == 4 and all(t["schema_version"] == 1 for t in trees)
    for t in trees:
        assert t["nodes"][0]["parent"] is None and t["stats"]["rollouts"] <= 4
        assert t["stats"]["replay_mismatches"] == 0  # replay from reset is exact
        assert any(n["source"] == "expert" for n in t["nodes"])  # expert branch attached
    summary = json.loads((RUN / "02_tree_construction" / "tree_summary.json").read_text())
    assert summary["trees"] == 4 and summary["env_steps"] > 0
    q = [json.loads(l) for l in (RUN / "03_q_values" / "trees_q.jsonl").read_text().splitlines()]
    assert all(n["q"] is not None and 0 <= n["q_norm"] <= 1 for t in q for n in t["nodes"])
    ds = json.loads((RUN / "03_q_values" / "qnet_dataset.json").read_text())
    assert ds["train_examples"] > 0 and ds["val_examples"] > 0
    assert not set(ds["train_tasks"]) & set(ds["val_tasks"])
    for name in ["tree_stats.png", "example_tree.png"]:
        assert (RUN / "02_tree_construction" / name).stat().st_size > 1000


@pytest.mark.smoke
def test_stage04_05_artifacts(smoke_run):
    d4, d5 = RUN / "04_qnet_training", RUN / "05_guided_search"
    for target in ["q", "avg_reward", "outcome"]:
        q = d4 / f"qnet_{target}"
        assert (q / "value_head.safetensors").is_file() and (q / "model.safetensors").is_file()
        m = json.loads((q / "metrics.json").read_text())
        assert m["target"] == target and m["examples"] > 0 and m["mse"] >= 0
    rows = {r["method"]: r for r in csv.DictReader((d5 / "results.csv").open())}
    assert set(rows) == {"greedy", "BoN", "BoN-aug", "QLASS-M2", "QLASS-aug-M2", "QLASS-prior-M2"}
    sweep = list(csv.DictReader((d4 / "prior_sweep.csv").open()))
    assert [float(r["prior_weight"]) for r in sweep][-1] == float("inf") and len(sweep) == 9
    for name, r in rows.items():
        assert int(r["tasks"]) == 4 and float(r["gen_tokens_per_task"]) > 0
        oracle = float(r["reward_x100_oracle_bestofN"])
        assert oracle >= float(r["reward_x100_first"]) - 1e-9 and oracle >= float(r["reward_x100_qnet_selected"]) - 1e-9
    assert float(rows["BoN"]["qnet_tokens_per_task"]) == 0
    eps = [json.loads(l) for l in (d5 / "search_episodes.jsonl").read_text().splitlines()]
    qlass = [e for e in eps if e["method"] == "QLASS-M2"]
    assert len(qlass) == 4 * 2 and all(len(t["candidates"]) == 2 for e in qlass for t in e["turns"])
    # the QNet is called exactly on the steps whose candidates differ (duplicates are scored once)
    for e in qlass:
        assert (e["budget"]["qnet_calls"] > 0) == any(t["distinct"] > 1 for t in e["turns"])
        assert e["budget"]["qnet_calls"] == sum(t["distinct"] > 1 for t in e["turns"])
    # QLASS-prior executed the argmax of Q + 1.0 * log pi among the distinct candidates it scored
    prior = [e for e in eps if e["method"] == "QLASS-prior-M2"]
    assert len(prior) == 4 * 2 and all(e["prior_weight"] == 1.0 for e in prior)
    for t in (t for e in prior for t in e["turns"]):
        assert all(c["logprob"] is not None and c["logprob"] < 0 for c in t["candidates"])
        scored = [c for c in t["candidates"] if c["q"] is not None]
        if scored:
            assert t["text"] == max(scored, key=lambda c: c["q"] + c["logprob"])["text"]
    sel = [json.loads(l) for l in (d5 / "selection_values.jsonl").read_text().splitlines()]
    assert len(sel) == len(eps)  # every trajectory has the QNet value of its final action
    comp = list(csv.DictReader((d5 / "comparisons.csv").open()))
    assert {(c["score"], c["A"], c["B"]) for c in comp} >= {("first", "QLASS-M2", "greedy"), ("qnet", "QLASS-M2", "BoN"),
                                                                  ("first", "QLASS-prior-M2", "QLASS-M2")}
    for c in comp:
        assert float(c["ci_low"]) <= float(c["mean_diff"]) <= float(c["ci_high"]) and int(c["tasks"]) == 4
    assert (d5 / "budget_curves.png").stat().st_size > 1000
    ratio = json.loads((d5 / "budget_ratio.json").read_text())
    assert "QLASS-M2" in ratio and "bon_best_reward_x100" in ratio["QLASS-M2"]
    abl = list(csv.DictReader((d5 / "ablation.csv").open()))
    assert [r["target"] for r in abl] == ["q", "avg_reward", "outcome"]
    assert (RUN / "05_guided_search.ipynb").is_file()


@pytest.mark.smoke
def test_lookahead_diagnostic_reruns_stage05_qlass(smoke_run):
    """The diagnostic's `qnet` ranker is stage 05's QLASS-M2 trajectory 0 (same seeded draws, same QNet): it
    executes the same turns on every task.  Each decisive state's lookahead values come from rollouts in a
    second environment; the episode's own environment never sees an unchosen candidate."""
    proc = subprocess.run([sys.executable, "-m", "qlass_lib", "lookahead", str(RUN), "--split", "test",
                           "--per-type", "1", "--rankers", "qnet", "lookahead"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    d = RUN / "lookahead" / "test-M2"
    eps = [json.loads(l) for l in (d / "lookahead_episodes.jsonl").read_text().splitlines()]
    stage5 = {e["task"]: e for e in map(json.loads, (RUN / "05_guided_search" / "search_episodes.jsonl").read_text()
                                        .splitlines()) if e["method"] == "QLASS-M2" and e["traj"] == 0
              and e.get("seed", 0) == 0}
    qnet = {e["task"]: e for e in eps if e["method"] == "qnet"}
    assert len(qnet) == 2 and set(qnet) <= set(stage5)
    for task, e in qnet.items():
        assert [t["text"] for t in e["turns"]] == [t["text"] for t in stage5[task]["turns"]], task
        assert e["reward"] == stage5[task]["reward"]
    for t in (t for e in eps if e["method"] != "greedy" for t in e["turns"]):
        values = [c["lookahead"] for c in t["candidates"]]
        assert (t["distinct"] > 1) == all(v is not None and 0 <= v <= 1 for v in values)
    rank = {r["predictor"]: r for r in csv.DictReader((d / "lookahead_ranking.csv").open())}
    assert set(rank) == {"qnet", "policy (log π)", "random"}
    assert "| lookahead − qnet |" in proc.stdout


@pytest.mark.smoke
def test_gpu_check_runs_every_section_here(smoke_run, tmp_path):
    """The device check drives the project's own BC, adapter, sampling and QNet code on a random Llama it builds
    and saves itself.  Here (no CUDA, so LoRA on bf16-stored weights instead of 4-bit) every section must run;
    a saved adapter or QNet must reload to the same logits and values."""
    from qlass_lib.diagnostics import gpu_check
    data = gpu_check.run_check(RUN, tmp_path, shape="tiny", quant=False, bc_steps=2, batch_tokens=1024,
                               qnet_steps=2, qnet_examples=24, m=2, states=2)
    sec = data["sections"]
    assert list(sec) == ["build_base", "bc_lora", "adapter_roundtrip", "generation", "qnet", "precision"]
    assert all(s["ok"] for s in sec.values()), {k: s.get("error") for k, s in sec.items()}
    assert sec["bc_lora"]["steps"] == 2 and sec["bc_lora"]["linear4bit_modules"] == 0
    assert sec["adapter_roundtrip"]["max_abs_logit_diff"] == 0.0 and sec["qnet"]["reload_max_abs_diff"] == 0.0
    assert 0 < sec["generation"]["generated_tokens"] <= 2 * 2 * 48
    assert sec["precision"]["stored_dtype"] == "torch.bfloat16" and sec["precision"]["rel_error_vs_fp32"]["bf16"] < 0.05
    assert json.loads((tmp_path / "gpu_check.json").read_text())["sections"]["qnet"]["steps"] == 2


@pytest.mark.smoke
def test_stage06_self_training_artifacts(smoke_run):
    d, d1 = RUN / "06_self_training", RUN / "01_behavior_cloning"
    assert json.loads((d / "manifest.json").read_text())["status"] == "complete"
    assert (RUN / "06_self_training.ipynb").is_file() and (d / "self_training.png").stat().st_size > 1000
    rows = {r["method"]: r for r in csv.DictReader((d / "results.csv").open())}
    methods = ["SFT", "SFT (seed 1)", "QLASS-ST", "QLASS-ST (avg_reward)", "QLASS-ST (outcome)", "RFT"]
    assert list(rows) == methods and all(int(r["tasks"]) == 4 for r in rows.values())
    sft_eval = {e["task"] for e in map(json.loads, (d1 / "eval_episodes.jsonl").read_text().splitlines())}
    gen = [json.loads(l) for l in (d / "generation.jsonl").read_text().splitlines()]
    tok = {}
    for e in gen:
        tok[(e["method"], e["task"])] = tok.get((e["method"], e["task"]), 0) + e["budget"]["gen_tokens"]
    tasks = {e["task"] for e in gen}
    assert len(tasks) == 4 and not tasks & sft_eval  # generated on training tasks, evaluated on held-out ones
    assert sum(e["method"] == "QLASS-ST" for e in gen) == 4  # N = 1 per task
    for t in tasks:  # RFT spent at least QLASS-ST's tokens on every task (or hit its cap of 3 samples)
        n_rft = sum(e["method"] == "RFT" and e["task"] == t for e in gen)
        assert tok[("RFT", t)] >= tok[("QLASS-ST", t)] or n_rft == 3
    sft_train = json.loads((d1 / "bc_result.json").read_text())
    control = json.loads((d / "finetune" / "sft_seed1" / "bc_result.json").read_text())
    assert control["train_seed"] == 1 and control["train_tasks"] == sft_train["train_tasks"]
    assert control["val_tasks"] == sft_train["val_tasks"] and 0 < control["steps"] <= 10
    for m in methods[2:]:
        name = m.lower().replace(" (", "_").replace(")", "")
        kept = (d / "data" / f"{name}.jsonl").read_text().splitlines()
        res = json.loads((d / "finetune" / name / "bc_result.json").read_text())
        assert res["train_tasks"] == sft_train["train_tasks"] + len(kept)  # expert train split + kept trajectories
        assert res["val_tasks"] == sft_train["val_tasks"] and 0 < res["steps"] <= 10  # self_training.max_steps
        evals = [json.loads(l) for l in (d / f"eval_{name}.jsonl").read_text().splitlines()]
        assert {e["task"] for e in evals} == sft_eval
    comp = {(c["A"], c["B"]) for c in csv.DictReader((d / "comparisons.csv").open())}
    assert ("QLASS-ST", "SFT") in comp and ("QLASS-ST", "RFT") in comp and ("SFT (seed 1)", "SFT") in comp


WS_DATA = ROOT.parent / "shared" / "data" / "webshop"


def _series(params: str, run_id: str, data_dir: Path) -> tuple[list[dict], set[str]]:
    """Run notebooks 01-05 for one environment; check every stage completed; return experts and methods."""
    run = ROOT / "runs" / run_id
    proc = subprocess.run([sys.executable, "-m", "qlass_lib", "run", params, "--run-id", run_id, "--force",
                           "--set", f"env.data_dir={data_dir}"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for stage in ["01_behavior_cloning", "02_tree_construction", "03_q_values", "04_qnet_training", "05_guided_search"]:
        assert json.loads((run / stage / "manifest.json").read_text())["status"] == "complete"
    experts = [json.loads(l) for l in (run / "01_behavior_cloning" / "expert.jsonl").read_text().splitlines()]
    rows = {r["method"] for r in csv.DictReader((run / "05_guided_search" / "results.csv").open())}
    return experts, rows


@pytest.mark.smoke
@pytest.mark.skipif(not WS_DATA.is_dir(), reason="shared WebShop data not present")
def test_webshop_series_runs_through_the_runner():
    experts, rows = _series("params/webshop-smoke.yaml", "pytest-webshop-smoke", WS_DATA)
    assert len(experts) == 16 and all(e["reward"] == 1.0 for e in experts)
    assert experts[0]["actions"][0].startswith("search[") and experts[0]["actions"][-1] == "click[Buy Now]"
    assert rows == {"greedy", "BoN", "QLASS-M2"}
    stage = ROOT / "runs" / "pytest-webshop-smoke" / "01_behavior_cloning"
    pre = json.loads((stage / "pretrained_base" / "pretrain_result.json").read_text())
    assert pre["steps"] == 6 and pre["copy_drills"] > 0 and 0.0 <= pre["copy_accuracy"] <= 1.0
    assert pre["copy_phase"]["steps"] == 4 and pre["copy_phase"]["stopped"] == "steps"
    from qlass_lib.report import summarize_run
    assert "## Pretraining of the tiny model" in summarize_run(stage.parent)
    failures = (stage / "bc_failures.csv").read_text().splitlines()
    assert failures[0].startswith("task_type,no search,bad search") and failures[-1].startswith("all,")


@pytest.mark.smoke
def test_report_summarizes_the_run(smoke_run):
    proc = subprocess.run([sys.executable, "-m", "qlass_lib", "report", str(RUN)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for heading in ["## Stage wall times", "## Behavior cloning", "## Trees", "## QNet", "## Search", "budget ratio"]:
        assert heading in proc.stdout


@pytest.mark.smoke
def test_bench_reports_the_hot_path_ratios(smoke_run):
    """The benchmark runs on a finished run and writes its ratios (values are timings: not asserted)."""
    proc = subprocess.run([sys.executable, "-m", "qlass_lib", "bench", str(RUN), "--states", "6", "--search-tasks", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    b = json.loads((RUN / "bench" / "bench.json").read_text())
    assert b["states"] == 6 and b["m"] == 4 and b["search_tasks"] == 2
    for key in ("sample_m_over_1_cache", "sample_m_over_1_nocache", "cache_speedup_m", "qnet_m_over_1",
                "search_nocache_over_cache"):
        assert b[key] > 0
    assert 0 <= b["tree"]["env_share"] <= 1
    assert "M=4 ÷ 1, KV cache" in proc.stdout


ALF_DATA = ROOT.parent / "shared" / "data" / "alfworld"


def _has_alfworld():
    try:
        import alfworld  # noqa: F401
        import textworld  # noqa: F401
        return True
    except ImportError:
        return False


@pytest.mark.smoke
@pytest.mark.skipif(not ALF_DATA.is_dir() or not _has_alfworld(), reason="ALFWorld data or packages not present")
def test_alfworld_series_runs_through_the_runner():
    experts, rows = _series("params/alfworld-smoke.yaml", "pytest-alfworld-smoke", ALF_DATA)
    assert experts and all(e["reward"] == 1.0 for e in experts)
    assert rows == {"greedy", "BoN", "QLASS-M2"}
    stage = ROOT / "runs" / "pytest-alfworld-smoke" / "01_behavior_cloning"
    episodes = (stage / "eval_episodes.jsonl").read_text().splitlines()
    failures = list(csv.DictReader((stage / "bc_failures.csv").open()))
    from qlass_lib.analysis.alfworld_failures import STEPS
    assert failures[-1]["task_type"] == "all" and sum(int(failures[-1][s]) for s in STEPS) == len(episodes)
    wins = sum(json.loads(e)["success"] for e in episodes)
    assert int(failures[-1]["won"]) == wins


@pytest.mark.smoke
def test_every_json_artifact_of_the_run_is_strict_json(smoke_run):
    """Any JSON reader can load the run (NaN/Infinity are not JSON); the log-pi-only row of the prior sweep says
    so by name, its infinite weight being null."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    files = [p for p in RUN.rglob("*") if p.suffix in (".json", ".jsonl") and p.is_file()]
    assert len(files) > 20
    for p in files:
        text = p.read_text()
        for chunk in (text.splitlines() if p.suffix == ".jsonl" else [text]):
            try:
                json.loads(chunk, parse_constant=refuse)
            except ValueError as exc:
                raise AssertionError(f"{p.relative_to(RUN)}: {exc}") from None
    sweep = json.loads((RUN / "04_qnet_training" / "qnet_metrics.json").read_text())["prior_sweep"]
    assert [r["scorer"] for r in sweep] == ["q + w*log_pi"] * 8 + ["log_pi"] and sweep[-1]["prior_weight"] is None


@pytest.mark.smoke
def test_executed_notebooks_pass_nbval(smoke_run, tmp_path):
    """The smoke run's executed notebooks run again under nbval (``--nbval-lax``: every cell must run without an
    error) on a copy of the run, so the run itself is not touched; every stage finds its results and reloads."""
    import shutil
    copy = tmp_path / RUN_ID
    shutil.copytree(RUN, copy, ignore=shutil.ignore_patterns(".runner*", ".kernel*"))
    notebooks = sorted(copy.glob("0*.ipynb"))
    assert [p.stem for p in notebooks] == [p.name for p in sorted(RUN.glob("0*_*")) if p.is_dir()]
    for nb in notebooks:
        text = nb.read_text()
        assert text.count(json.dumps(f'run_dir = "{RUN}"')[1:-1]) == 1
        nb.write_text(text.replace(json.dumps(f'run_dir = "{RUN}"')[1:-1], json.dumps(f'run_dir = "{copy}"')[1:-1]))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                           "--nbval-current-env", *map(str, notebooks)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:]
    cells = sum(sum(c["cell_type"] == "code" for c in json.loads(nb.read_text())["cells"]) for nb in notebooks)
    assert f"{cells} passed" in proc.stdout, proc.stdout[-2000:]
