"""Run integrity, by fault injection: the runner never wipes, reuses stale, reads half, or shares a run folder.

The runner is driven in-process with a fake stage executor (it writes small artifacts that depend on the
params and on the upstream stage's artifacts), so every case runs in milliseconds and is deterministic.
"""
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from qlass_lib.run import pipeline
from qlass_lib.core.artifacts import (
    ArtifactError,
    append_jsonl,
    read_json,
    read_jsonl,
    repair_jsonl,
    write_json,
    write_jsonl,
)
from qlass_lib.core.config import ConfigError
from qlass_lib.core.series import STAGES
from qlass_lib.run.runlock import RunLocked, RunnerLock, claim_for_kernel


@pytest.fixture()
def project(tmp_path):
    """A project root with the five notebooks (placeholders), a library source file and a params file."""
    (tmp_path / "notebooks").mkdir()
    for name in STAGES.values():
        (tmp_path / "notebooks" / f"{name}.ipynb").write_text(json.dumps({"cells": [], "name": name}))
    (tmp_path / "qlass_lib").mkdir()
    (tmp_path / "qlass_lib" / "mod.py").write_text("X = 1\n")
    (tmp_path / "params").mkdir()
    p = tmp_path / "params" / "p.yaml"
    p.write_text("run_id: r\nenv: {name: scripted, task_types: [doors]}\ntree: {width: 3}\n")
    return tmp_path, p


class FakeExecutor:
    """Writes ``out.json`` per stage (a function of the params and of the upstream stage's output)."""

    def __init__(self):
        self.ran = []

    def __call__(self, nb, out_nb, params_path, run_dir, overrides):
        key = nb.name[:2]
        self.ran.append(key)
        sdir = run_dir / STAGES[key]
        prev = sorted(k for k in STAGES if k < key)
        up = (run_dir / STAGES[prev[-1]] / "out.json").read_text() if prev else ""
        params = json.loads((run_dir / "params.json").read_text())
        (sdir / "out.json").write_text(json.dumps({"stage": key, "width": params["tree"]["width"], "up": len(up)}))
        out_nb.write_text("{}")


def _run(project, ex, **kw):
    root, p = project
    logs = []
    pipeline.run(str(p), root=root, execute=ex, log=logs.append, **kw)
    return logs


def test_finished_stages_are_skipped_and_resume_is_cheap(project):
    ex = FakeExecutor()
    _run(project, ex)
    assert ex.ran == ["01", "02", "03", "04", "05"]
    ex2 = FakeExecutor()
    logs = _run(project, ex2)
    assert ex2.ran == [] and sum("up to date" in l for l in logs) == 5
    m = json.loads((project[0] / "runs" / "r" / "02_tree_construction" / "manifest.json").read_text())
    assert set(m["artifacts"]) == {"out.json"} and len(m["artifacts"]["out.json"]["sha256"]) == 64


def test_a_run_with_other_params_is_refused_and_left_untouched(project):
    root, p = project
    _run(project, FakeExecutor())
    run = root / "runs" / "r"
    def snapshot():  # everything but the lock files' bookkeeping (holder pid and start time)
        return {f: f.read_bytes() for f in run.rglob("*") if f.is_file() and not f.name.startswith((".runner", ".kernel"))}
    before = snapshot()
    ex = FakeExecutor()
    with pytest.raises(ConfigError, match=r"tree\.width: 3 -> 4.*--overwrite 02"):
        _run(project, ex, overrides={"tree": {"width": 4}})
    assert ex.ran == [] and snapshot() == before
    with pytest.raises(ConfigError, match="other params"):
        _run(project, ex, overrides={"tree": {"width": 4}}, overwrite="03")  # 02 changed: 03+ is not enough
    _run(project, ex, overrides={"tree": {"width": 4}}, overwrite="02")
    assert ex.ran == ["02", "03", "04", "05"]


def test_a_params_file_without_run_id_runs_under_its_own_name(project):
    root, p = project
    q = root / "params" / "other.yaml"
    q.write_text("env: {name: scripted, task_types: [doors]}\n")
    pipeline.run(str(q), root=root, execute=FakeExecutor(), log=lambda m: None)
    assert (root / "runs" / "other" / "params.json").is_file() and not (root / "runs" / "default").exists()


def test_a_code_change_reruns_every_stage(project, monkeypatch):
    _run(project, FakeExecutor())
    monkeypatch.setattr(pipeline, "source_hash", lambda root: "0123456789abcdef")
    ex = FakeExecutor()
    logs = _run(project, ex)
    assert ex.ran == ["01", "02", "03", "04", "05"] and any("code changed" in l for l in logs)


def test_a_notebook_change_reruns_that_stage_and_everything_after_it(project):
    root, _ = project
    _run(project, FakeExecutor())
    nb = root / "notebooks" / "03_q_values.ipynb"
    nb.write_text(nb.read_text() + " ")
    ex = FakeExecutor()
    _run(project, ex)
    assert ex.ran == ["03", "04", "05"]


def test_a_forced_stage_makes_later_stages_stale_across_commands(project):
    _run(project, FakeExecutor())
    root, _ = project
    out3 = root / "runs" / "r" / "03_q_values" / "out.json"

    class Changing(FakeExecutor):
        def __call__(self, nb, out_nb, params_path, run_dir, overrides):
            super().__call__(nb, out_nb, params_path, run_dir, overrides)
            out3.write_text(out3.read_text() + " changed")
    ex = Changing()
    _run(project, ex, only=["03"], force=True)
    assert ex.ran == ["03"]
    ex2 = FakeExecutor()
    _run(project, ex2)  # a later plain run: 04 read the old 03 output
    assert ex2.ran == ["04", "05"]


def test_reuse_keeps_stale_stages_and_records_it(project, monkeypatch):
    root, _ = project
    _run(project, FakeExecutor())
    monkeypatch.setattr(pipeline, "source_hash", lambda root: "0123456789abcdef")
    ex = FakeExecutor()
    logs = _run(project, ex, reuse=True)
    assert ex.ran == [] and sum("kept, as --reuse asks" in l for l in logs) == 5
    m = json.loads((root / "runs" / "r" / "04_qnet_training" / "manifest.json").read_text())
    assert m["reused"][0]["stale_parts"] == ["code"]


def test_damaged_artifacts_are_not_up_to_date(project):
    root, _ = project
    _run(project, FakeExecutor())
    f = root / "runs" / "r" / "02_tree_construction" / "out.json"
    f.write_text(f.read_text()[:-3])
    ex = FakeExecutor()
    logs = _run(project, ex)
    assert ex.ran[0] == "02" and any("files changed since it finished" in l for l in logs)
    # the rerun rewrote the same bytes (the fake stage is deterministic), so 03-05 read what they read before
    assert ex.ran == ["02"] and f.read_text().endswith("}")


def test_a_torn_middle_line_is_an_error_and_a_torn_last_line_is_repaired(tmp_path):
    p = tmp_path / "trees.jsonl"
    for i in range(4):
        append_jsonl(p, {"i": i})
    lines = p.read_text().splitlines(keepends=True)
    p.write_text(lines[0] + lines[1][: len(lines[1]) // 2] + "\n" + lines[2] + lines[3])
    with pytest.raises(ArtifactError, match=r"trees\.jsonl: line 2 is not valid JSON"):
        read_jsonl(p)
    p.write_text("".join(lines[:3]) + lines[3][:5])  # a crash in the middle of the last append
    msgs = []
    assert [r["i"] for r in read_jsonl(p, log=msgs.append)] == [0, 1, 2] and "torn last line" in msgs[0]
    assert repair_jsonl(p, log=msgs.append) == 3 and "repaired" in msgs[1]
    assert p.read_text() == "".join(lines[:3])
    append_jsonl(p, {"i": 3})
    assert [r["i"] for r in read_jsonl(p)] == [0, 1, 2, 3]


def test_a_second_runner_is_refused_and_named(project):
    root, p = project
    run = root / "runs" / "r"
    with RunnerLock(run):
        with pytest.raises(RunLocked, match=r"another runner \(pid %d" % os.getpid()):
            _run(project, FakeExecutor())
        os.environ.pop("QLASS_RUNNER_PID", None)  # a notebook opened by hand, not by this runner
        with pytest.raises(RunLocked, match="being written by a runner"):
            claim_for_kernel(run)
    claim_for_kernel(run)  # free again


def test_a_runner_waits_for_a_leftover_kernel(tmp_path):
    import fcntl
    run = tmp_path / "run"
    run.mkdir()
    fd = os.open(run / ".kernel.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # the kernel of a killed runner, still alive
    try:
        with RunnerLock(run, kernel_wait_s=0.5) as lock:
            with pytest.raises(RunLocked, match="a notebook kernel still writes"):
                lock.wait_for_kernels()
    finally:
        os.close(fd)
    with RunnerLock(run, kernel_wait_s=0.5) as lock:
        lock.wait_for_kernels()


@pytest.mark.parametrize("override, message", [
    ({"tree": {"width": 0}}, r"tree\.width: 0 is out of range \(must be >= 1\)"),
    ({"tree": {"depth": -1}}, r"tree\.depth: -1 is out of range"),
    ({"search": {"sampling": {"top_p": 1.5}}}, r"search\.sampling\.top_p: 1\.5 is out of range"),
    ({"qvalues": {"gamma": 2}}, r"qvalues\.gamma"),
    ({"env": {"task_types": ["lifespan-longest"]}}, r"unknown ScienceWorld task types \['lifespan-longest'\]"),
    ({"env": {"name": "alfworld", "task_types": ["pick_and_fly"], "data_dir": "."}}, r"unknown ALFWorld task types"),
])
def test_nonsense_values_fail_in_check(override, message):
    from qlass_lib.core.config import load_config
    from qlass_lib.core.paths import project_root
    from qlass_lib.run.preflight import preflight
    with pytest.raises(ConfigError, match=message):
        preflight(load_config(None, override), project_root())


def test_empty_data_folders_fail_in_check(tmp_path):
    from qlass_lib.core.config import load_config
    from qlass_lib.run.preflight import preflight
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"lacks the WebShop files"):
        preflight(load_config(None, {"env": {"name": "webshop", "task_types": ["webshop"], "data_dir": str(tmp_path / "empty")}}), tmp_path)
    with pytest.raises(ConfigError, match=r"no ALFWorld games for split"):
        preflight(load_config(None, {"env": {"name": "alfworld", "task_types": ["pick_and_place_simple"],
                                             "data_dir": str(tmp_path / "empty")}}), tmp_path)


def test_an_unreachable_hub_model_fails_before_any_work(monkeypatch):
    from qlass_lib.core.config import load_config
    from qlass_lib.core.paths import project_root
    from qlass_lib.run.preflight import preflight
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = load_config(None, {"env": {"name": "scripted", "task_types": ["doors"]},
                             "model": {"model_name_or_path": "someone/not-cached-model"}})
    with pytest.raises(ConfigError, match="not in the local Hugging Face cache"):
        preflight(cfg, project_root())


def test_yaml_syntax_errors_and_float_text():
    from qlass_lib.core.config import load_config
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write("bc:\n  learning_rate: 1e-3\n  max_length: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f.name)
    Path(f.name).write_text("bc:\n  learning_rate: 1e-3\n")
    assert load_config(f.name).bc.learning_rate == 0.001
    os.unlink(f.name)


def test_an_env_that_raises_is_counted_and_stops_the_stage():
    from qlass_lib.models.policy import Candidate
    from qlass_lib.method.rollout import run_episode
    from qlass_lib.envs.scripted import ScriptedEnv
    from qlass_lib.method.evaluation import check_env_errors, summarize

    class Dying(ScriptedEnv):
        def _step(self, action):
            if self.task.variation % 4 == 2:
                raise ConnectionError("simulator went away")
            return super()._step(action)

    env = Dying(max_turns=2)
    eps = [run_episode(env, t, lambda s, i: (Candidate("Action: go red", "go red", 2), {})).to_dict()
           | {"task_type": "doors"} for t in env.tasks("train")[:4]]
    assert [e["env_errors"] for e in eps] == [0, 2, 0, 2]
    assert "simulator went away" in eps[1]["turns"][0]["observation"]
    assert summarize(eps).set_index("task_type").loc["all", "episodes_with_env_errors"] == 2
    assert check_env_errors(eps, 0.5, "episodes")["with_env_errors"] == 2
    with pytest.raises(RuntimeError, match=r"2 of 4 episodes hit an environment exception"):
        check_env_errors(eps, 0.2, "episodes")


def test_a_key_never_travels_over_plain_http():
    from qlass_lib.text.paraphrase import OpenAIParaphraser
    with pytest.raises(ValueError, match="plain HTTP"):
        OpenAIParaphraser("http://api.example.com/v1", "m", api_key="sk-x")
    OpenAIParaphraser("http://127.0.0.1:8000/v1", "m", api_key="sk-x")
    OpenAIParaphraser("https://api.example.com/v1", "m", api_key="sk-x")
    OpenAIParaphraser("http://api.example.com/v1", "m", api_key=None)


def test_killed_and_resumed_search_equals_an_uninterrupted_one(tiny_tok, tmp_path):
    """Per-episode seeding: a stage interrupted after some episodes and resumed writes the same episodes."""
    import torch
    from qlass_lib.method import search
    from qlass_lib.models.policy import Policy
    from qlass_lib.core.config import ModelConfig, SamplingConfig
    from qlass_lib.envs.scripted import ScriptedEnv
    from qlass_lib.models.loading import load_model
    tok, path = tiny_tok
    cfg = ModelConfig(device="cpu", bf16=False)
    torch.manual_seed(0)
    pol = Policy(load_model(str(path), cfg), tok, cfg, 256, "scripted")
    env, samp = ScriptedEnv(max_turns=2), SamplingConfig(temperature=1.0, max_new_tokens=6)
    tasks = env.tasks("train")[:2]

    from qlass_lib.method.executor import local
    runner = local(env, pol)

    def chooser(ws, b, i):
        return search.sampling_chooser(ws.policy, samp, b)
    whole = search.run_method(runner, tasks, "BoN", chooser, 3, tmp_path / "a.jsonl")

    class Killed(Exception):
        pass
    calls = {"n": 0}

    def dying(ws, b, i):
        calls["n"] += 1
        if calls["n"] == 4:
            raise Killed
        return chooser(ws, b, i)
    with pytest.raises(Killed):
        search.run_method(runner, tasks, "BoN", dying, 3, tmp_path / "b.jsonl")
    torch.manual_seed(123)  # whatever the global RNG holds after a restart
    resumed = search.run_method(runner, tasks, "BoN", chooser, 3, tmp_path / "b.jsonl")

    def strip(eps):
        return sorted(({k: v for k, v in e.items() if k != "budget"} for e in eps), key=lambda e: (e["task"], e["traj"]))
    assert strip(whole) == strip(resumed) and len(whole) == 6


def test_stage06_runs_only_when_switched_on_and_reuses_01_to_05(project):
    ex = FakeExecutor()
    logs = _run(project, ex)
    assert ex.ran == ["01", "02", "03", "04", "05"] and any("off (self_training.enabled: false)" in l for l in logs)
    ex2 = FakeExecutor()
    logs = _run(project, ex2, overrides={"self_training": {"enabled": True}})  # only stage 06's section changed
    assert ex2.ran == ["06"] and sum("up to date" in l for l in logs) == 5
    ex3 = FakeExecutor()  # switched off again: the ordinary run goes on and leaves stage 06's results alone
    logs = _run(project, ex3)
    assert ex3.ran == [] and (project[0] / "runs" / "r" / STAGES["06"] / "manifest.json").is_file()


def test_a_key_added_to_the_config_later_at_its_default_is_not_a_change(project):
    """Runs recorded before a key existed (here bc.expert_fraction and the self_training section) stay valid."""
    root, p = project
    _run(project, FakeExecutor())
    run = root / "runs" / "r"
    params = json.loads((run / "params.json").read_text())
    del params["bc"]["expert_fraction"], params["self_training"]
    (run / "params.json").write_text(json.dumps(params))
    m_path = run / STAGES["01"] / "manifest.json"
    m = json.loads(m_path.read_text())
    del m["params"]["bc"]["expert_fraction"]
    m["fingerprint"]["params"] = "0000000000000000"  # the hash the older library wrote
    m_path.write_text(json.dumps(m))
    ex = FakeExecutor()
    logs = _run(project, ex)
    assert ex.ran == [] and sum("up to date" in l for l in logs) == 5
    ex = FakeExecutor()
    with pytest.raises(ConfigError, match="bc.expert_fraction: 1.0 -> 0.5"):  # a real change still is one
        _run(project, ex, overrides={"bc": {"expert_fraction": 0.5}})


def test_switching_backend_or_executor_is_not_a_params_change(project):
    """How a run executes (generation backend, executor) is recorded in the manifests, never a reason to refuse
    or rerun finished stages: a user builds stage 01 in-process, starts a server on its policy and goes on."""
    root, p = project
    _run(project, FakeExecutor())
    ex = FakeExecutor()
    logs = _run(project, ex, overrides={"generation": {"backend": "openai", "base_url": "http://127.0.0.1:9/v1"},
                                        "executor": {"kind": "ray", "workers": 2}})
    assert ex.ran == [] and sum("up to date" in l for l in logs) == 5
    ex = FakeExecutor()
    _run(project, ex, force=True, overrides={"generation": {"backend": "openai", "base_url": "http://h:1/v1"}})
    m = json.loads((root / "runs" / "r" / STAGES["02"] / "manifest.json").read_text())
    assert m["execution"]["generation"]["backend"] == "openai" and m["execution"]["executor"]["kind"] == "local"


def test_fewer_annotations_runs_one_series_per_expert_share(project):
    from qlass_lib.diagnostics import annotations
    root, p = project
    ex = FakeExecutor()
    dirs = annotations.run_fractions(str(p), [1.0, 0.5], root=root, execute=ex, log=lambda m: None)
    assert [d.name for d in dirs] == ["r", "r-expert50"] and ex.ran == ["01", "02", "03", "04", "05"] * 2
    assert json.loads((dirs[1] / "params.json").read_text())["bc"]["expert_fraction"] == 0.5
    with pytest.raises(ConfigError, match="not in"):
        annotations.run_fractions(str(p), [0.0], root=root, execute=ex, log=lambda m: None)


def _strict_loads(text: str):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def test_artifacts_are_strict_json_with_undefined_numbers_as_null(tmp_path):
    """NaN and ±inf are not JSON (RFC 8259): artifacts write them as null, and NumPy values as plain numbers."""
    rec = {"loss": float("nan"), "w": float("inf"), "neg": -math.inf, "np_nan": np.float32("nan"), "ok": 0.25,
           "n": np.int64(7), "flag": np.bool_(True), "arr": np.array([1.5, np.nan]), "pair": (1, float("nan")),
           "nested": [{"r2": np.float64("nan")}], "path": tmp_path / "x", np.int64(3): "numpy key"}
    want = {"loss": None, "w": None, "neg": None, "np_nan": None, "ok": 0.25, "n": 7, "flag": True,
            "arr": [1.5, None], "pair": [1, None], "nested": [{"r2": None}], "path": str(tmp_path / "x"),
            "3": "numpy key"}
    write_json(tmp_path / "a.json", rec)
    write_jsonl(tmp_path / "b.jsonl", [rec])
    append_jsonl(tmp_path / "c.jsonl", rec)
    assert _strict_loads((tmp_path / "a.json").read_text()) == want == read_json(tmp_path / "a.json")
    for name in ("b.jsonl", "c.jsonl"):
        lines = (tmp_path / name).read_text().splitlines()
        assert len(lines) == 1 and _strict_loads(lines[0]) == want == read_jsonl(tmp_path / name)[0]
    assert type(read_json(tmp_path / "a.json")["n"]) is int  # not the string "7"
