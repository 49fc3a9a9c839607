"""The runner's promises under hostile or broken input (issue 42): each case is injected by hand and checked.

Nothing is written outside runs/; a wall-clock guard fails the stage instead of cutting training silently; damaged
files are one ``error:`` line naming them (exit 2), never a traceback or a partial view; an API key never follows
a redirect; an episode cut by a dying environment is played again, not scored; data files are fingerprinted.
"""
import http.server
import json
import threading
from pathlib import Path

import pytest
import torch

from qlass_lib.run import pipeline
from qlass_lib.core.artifacts import ArtifactError, ResumableLog, append_jsonl
from qlass_lib.cli import main as cli
from qlass_lib.core.config import ConfigError, load_config
from qlass_lib.core.series import STAGES
from test_integrity import FakeExecutor, _run, project  # noqa: F401 (the fixture)


# -- 1. run_id -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("run_id", ["../../escape_rel", "/tmp/qlass-escape-abs", ".", "..", "a/b", "x/../../y"])
def test_a_run_id_that_is_not_a_plain_name_is_refused_before_anything_is_written(project, run_id, tmp_path):
    root, p = project
    before = sorted(str(f) for f in root.parent.rglob("*"))
    with pytest.raises(ConfigError, match="run_id"):
        pipeline.run(str(p), root=root, execute=FakeExecutor(), log=lambda m: None, run_id=run_id)
    assert sorted(str(f) for f in root.parent.rglob("*")) == before
    assert not Path("/tmp/qlass-escape-abs").exists()


def test_check_refuses_a_bad_run_id_in_the_params_file(tmp_path, capsys):
    p = tmp_path / "p.yaml"
    p.write_text("run_id: ../up\nenv: {name: scripted, task_types: [doors]}\n")
    assert cli(["check", str(p)]) == 2
    assert capsys.readouterr().err.startswith("error: run_id: '../up' is not a plain folder name")


# -- 2. the wall-clock guard -----------------------------------------------------------------------------------
def _loop(minutes, state, saved):
    from qlass_lib.models.training import Schedule, train_loop
    w = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([w], lr=0.1)
    for g in opt.param_groups:
        g["base_lr"] = 0.1
    return train_loop(opt, lambda e: [torch.ones(3)] * 5, lambda b: (((w - b) ** 2).sum(), {}),
                      Schedule(10, 2, 10, minutes, guard="bc.max_minutes"), state,
                      checkpoint=lambda st: saved.append(st.to_dict()), save_every=5, leave=False)


def test_a_wall_clock_guard_fails_training_loudly_and_a_raised_guard_resumes():
    from qlass_lib.models.training import LoopState, WallClockGuardHit
    saved = []
    with pytest.raises(WallClockGuardHit, match=r"bc\.max_minutes = 1e-09 min at step 1 of 10.*--set bc\.max_minutes="):
        _loop(1e-9, LoopState(), saved)
    state = LoopState.from_dict(saved[-1])  # the checkpoint written where the guard stopped it
    assert state.stopped == "time" and state.step == 1
    done = _loop(60.0, state, saved)  # the raised guard decides again; the step budget finishes
    assert done.stopped == "steps" and done.step == 10


def test_raising_a_guard_is_not_a_params_change(project):
    _run(project, FakeExecutor())
    ex = FakeExecutor()
    logs = _run(project, ex, overrides={"bc": {"max_minutes": 500.0}, "qnet": {"max_minutes": 300.0}})
    assert ex.ran == [] and sum("up to date" in line for line in logs) == 5


# -- 3. damaged input is one error line ------------------------------------------------------------------------
def test_a_params_file_that_is_not_utf8_is_one_error(tmp_path, capsys):
    p = tmp_path / "p.yaml"
    p.write_bytes(b"run_id: r\nenv: {name: scripted, task_types: [d\xe9oors]}\n")
    assert cli(["check", str(p)]) == 2
    assert "not UTF-8 text (byte 46 is 0xe9)" in capsys.readouterr().err


def test_an_empty_params_file_is_refused(tmp_path, capsys):
    p = tmp_path / "empty.yaml"
    p.write_text("# nothing here\n")
    with pytest.raises(ConfigError, match="the params file is empty"):
        load_config(p)
    assert cli(["run", str(p)]) == 2 and not (tmp_path / "runs").exists()


def _finished(project):
    root, p = project
    _run(project, FakeExecutor())
    return root / "runs" / "r"


def test_a_manifest_cut_short_is_an_error_in_run_and_report(project, capsys):
    run = _finished(project)
    m = run / STAGES["02"] / "manifest.json"
    m.write_text(m.read_text()[:40])
    with pytest.raises(ArtifactError, match=r"02_tree_construction/manifest.json: damaged \(not valid JSON.*--overwrite 02"):
        _run(project, FakeExecutor())
    assert cli(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "manifest.json: damaged" in err and "Traceback" not in err
    ex = FakeExecutor()
    _run(project, ex, overwrite="02")  # the way out the error names: 02 reruns, the same files keep 03-05 valid
    assert ex.ran == ["02"]


def test_a_manifest_without_its_wall_time_is_an_error_in_report(project, capsys):
    run = _finished(project)
    m = run / STAGES["03"] / "manifest.json"
    man = json.loads(m.read_text())
    del man["wall_time_s"]
    m.write_text(json.dumps(man))
    assert cli(["report", str(run)]) == 2
    assert "03_q_values/manifest.json: damaged (no wall_time_s)" in capsys.readouterr().err


def test_report_and_inspect_name_a_stage_whose_files_fail_their_checksums(project, capsys):
    from qlass_lib.viz.inspector import write_html
    run = _finished(project)
    f = run / STAGES["04"] / "out.json"
    f.write_text(f.read_text()[:-3])  # a cut file (as a truncated value_head.safetensors or trees_q.jsonl)
    assert cli(["report", str(run)]) == 2
    assert "04_qnet_training: stage damaged" in capsys.readouterr().err and "out.json" in f.name
    with pytest.raises(ArtifactError, match=r"04_qnet_training: stage damaged.*out\.json"):
        write_html(run)
    (run / STAGES["03"] / "extra.txt").write_text("not recorded")
    with pytest.raises(ArtifactError, match=r"03_q_values: stage damaged.*extra\.txt"):
        write_html(run, qnet=False)


def test_the_inspector_page_survives_script_comment_payloads():
    from qlass_lib.viz.inspector import page
    payload = [{"obs": "<!--<script>", "b": "</script><script>alert(1)</script>", "c": "<img src=x onerror=alert(1)>"}]
    html = page("<t>", payload)
    data = html[html.index("const TREES = ") + len("const TREES = "):]
    data = data[:data.index(";\n")]
    assert "<" not in data  # no tag, comment or script state can open inside the data
    assert json.loads(data) == payload  # and it reads back unchanged
    assert "<title>QLASS trees: &lt;t&gt;</title>" in html


# -- 4. an API key never follows a redirect --------------------------------------------------------------------
class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list = []
    redirect_to: str | None = None

    def do_POST(self):
        type(self).seen.append({"path": self.path, "authorization": self.headers.get("Authorization")})
        if type(self).redirect_to:
            self.send_response(302)
            self.send_header("Location", type(self).redirect_to)
            self.end_headers()
            return
        body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "reworded"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def _serve(handler):
    srv = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_an_api_key_is_not_sent_on_after_a_redirect():
    import openai
    from qlass_lib.text.paraphrase import OpenAIParaphraser
    Other = type("Other", (_Recorder,), {"seen": [], "redirect_to": None})
    other = _serve(Other)
    First = type("First", (_Recorder,), {"seen": [],
                                         "redirect_to": f"http://localhost:{other.server_port}/v1/chat/completions"})
    first = _serve(First)
    try:
        para = OpenAIParaphraser(f"http://127.0.0.1:{first.server_port}/v1", "m", api_key="sk-secret")
        with pytest.raises(openai.APIStatusError):
            para("Your task is to find an animal.", 1)
        assert First.seen and First.seen[0]["authorization"] == "Bearer sk-secret"
        assert Other.seen == []  # the redirect was not followed: nothing (and no key) reached the other host
        ok = OpenAIParaphraser(f"http://127.0.0.1:{other.server_port}/v1", "m", api_key=None)
        assert ok("Your task is to find an animal.", 1) == "reworded"  # the same client works without a redirect
    finally:
        first.shutdown()
        other.shutdown()


def test_check_refuses_a_key_for_a_plain_http_remote_before_any_work(tmp_path, monkeypatch, capsys):
    p = tmp_path / "p.yaml"
    p.write_text("run_id: r\nenv: {name: scripted, task_types: [doors]}\n"
                 "search: {paraphraser: openai, paraphrase_endpoint: 'http://api.example.com/v1', paraphrase_model: m}\n")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    assert cli(["check", str(p)]) == 2
    assert "search.paraphrase_endpoint: refusing to send OPENAI_API_KEY over plain HTTP" in capsys.readouterr().err
    monkeypatch.delenv("OPENAI_API_KEY")
    assert cli(["check", str(p)]) == 0


# -- 5. an episode cut by a dying environment is played again ---------------------------------------------------
def test_an_episode_cut_by_a_dying_environment_is_played_again_not_scored(tmp_path):
    from qlass_lib.models.policy import Candidate
    from qlass_lib.envs.scripted import ScriptedEnv, secret_for
    from qlass_lib.method.evaluation import evaluate
    from qlass_lib.method.executor import local

    class Mortal(ScriptedEnv):
        dead, kill_at = False, None

        def _reset(self, task):
            if self.dead:
                raise ConnectionError("the JVM is gone")
            return super()._reset(task)

        def _step(self, action):
            if self.kill_at == (self.task.variation, self.turns):
                self.dead = True
            if self.dead:
                raise ConnectionError("the JVM is gone")
            return super()._step(action)

    def chooser(ws, budget):
        def choose(state, turn):
            door = secret_for(ws.env.task.variation)[turn] if turn < 3 else "red"
            return Candidate(f"Action: go {door}", f"go {door}", 2), {}
        return choose

    env = Mortal(max_turns=4)
    tasks = env.tasks("train")[:3]
    whole = evaluate(local(env, None), tasks, chooser, tmp_path / "whole.jsonl")
    env2 = Mortal(max_turns=4)
    env2.kill_at = (tasks[1].variation, 2)
    with pytest.raises(ConnectionError, match="the JVM is gone"):
        evaluate(local(env2, None), tasks, chooser, tmp_path / "cut.jsonl")
    kept = [json.loads(line) for line in (tmp_path / "cut.jsonl").read_text().splitlines()]
    assert [r["task"] for r in kept] == [tasks[0].id]  # the cut episode was never logged
    resumed = evaluate(local(Mortal(max_turns=4), None), tasks, chooser, tmp_path / "cut.jsonl")
    assert [(r["task"], r["reward"], r["env_errors"]) for r in resumed] == \
           [(r["task"], r["reward"], r["env_errors"]) for r in whole] and all(r["reward"] == 1.0 for r in whole)


def test_a_logged_record_with_env_errors_is_redone_and_replaced(tmp_path):
    path = tmp_path / "log.jsonl"
    for rec in ({"task": "a", "reward": 1.0, "env_errors": 0}, {"task": "b", "reward": 0.3, "env_errors": 6}):
        append_jsonl(path, rec)
    log = ResumableLog(path, key=lambda r: r["task"])
    assert log.todo(["a", "b", "c"], lambda t: t) == ["b", "c"]
    log.append({"task": "b", "reward": 1.0, "env_errors": 0})
    assert [(r["task"], r["reward"]) for r in log.records()] == [("a", 1.0), ("b", 1.0)]


# -- 6. data files are part of the fingerprint -----------------------------------------------------------------
def test_a_changed_data_file_makes_the_run_stale(project):
    root, p = project
    data = root / "split"
    data.mkdir()
    (data / "test_indices.json").write_text("[]")
    p.write_text(p.read_text() + "expert: {sft_file: split/test_indices.json}\n")
    _run(project, FakeExecutor())
    ex = FakeExecutor()
    _run(project, ex)
    assert ex.ran == []
    (data / "test_indices.json").write_text("[[\"doors\", 1]]")
    ex = FakeExecutor()
    logs = _run(project, ex)
    assert ex.ran == ["01", "02", "03", "04", "05"] and any("data changed" in line for line in logs)


# -- 7. a notebook opened by hand holds the run ----------------------------------------------------------------
def test_a_notebook_opened_by_hand_holds_the_run_against_runners_and_other_kernels(tmp_path, monkeypatch):
    import os
    from qlass_lib.run import runlock
    from qlass_lib.run.runlock import RunLocked, RunnerLock, claim_for_kernel
    monkeypatch.delenv(runlock.RUNNER_ENV, raising=False)
    monkeypatch.setattr(runlock, "_in_notebook_kernel", lambda: True)
    run = tmp_path / "r"
    run.mkdir()
    claim_for_kernel(run)
    try:
        with pytest.raises(RunLocked, match="is open in a notebook .*notebook opened by hand"):
            with RunnerLock(run):
                pass
        fd = runlock._try_lock(run / ".kernel.lock")  # as a second hand-opened kernel would try
        assert fd is None
    finally:
        for held in runlock._BY_HAND.pop(str(run.resolve())):
            os.close(held)
    with RunnerLock(run):  # closed: the runner may write again
        pass
