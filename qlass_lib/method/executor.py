"""Task executors: the maps over independent tasks (trees, BC evaluation, search episodes) in this process or
on Ray workers.

A *job* is ``job(ws, item) -> record``: it acts only through its :class:`Workspace` (environment, policy,
QNets, in-context example), so the same job runs in the driver (:class:`LocalExecutor`) or in a worker actor
that owns its own environment and policy (:class:`RayExecutor`).  Jobs seed themselves per item (every stage
already seeds per episode or tree), so where a job runs does not change what it draws.  Either executor
appends each record to the stage's :class:`~qlass_lib.core.artifacts.ResumableLog` in the order of ``items``
(a Ray result that arrives early waits for the ones before it), so the JSONL has the same order whatever the
number of workers, and a stopped stage resumes from it.

QNet scoring stays on the QNet's device: Ray workers score through one scorer actor (:class:`_ScorerProxy`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from tqdm.auto import tqdm

from qlass_lib.core.artifacts import ResumableLog


@dataclass
class Workspace:
    """What a job acts with."""
    env: Any
    policy: Any = None
    qnets: dict = field(default_factory=dict)  # training target ("q", "avg_reward", ...) -> scorer
    example: Any = None


Job = Callable[[Workspace, Any], dict]


class LocalExecutor:
    """Jobs one after another in this process, on the driver's own workspace."""
    kind = "local"

    def __init__(self, ws: Workspace):
        self.ws = ws

    def run(self, items: list, job: Job, log: ResumableLog, desc: str = "tasks") -> None:
        for item in tqdm(items, desc=desc, leave=False):
            log.append(job(self.ws, item))

    def close(self) -> None:
        pass


def local(env, policy=None, qnets: dict | None = None, example=None) -> LocalExecutor:
    return LocalExecutor(Workspace(env, policy, qnets or {}, example))


@dataclass
class WorkerSpec:
    """How a Ray worker builds its own workspace: the run config, stage 01's policy folder, the example."""
    cfg: Any
    policy_dir: str
    example: Any = None
    env_name: str | None = None
    backend: str | None = None  # overrides generation.backend (stage 01 evaluates the policy it just trained: hf)


class _ScorerProxy:
    """A QNet stand-in inside a worker: scores through the scorer actor and charges the budget here."""

    def __init__(self, actor, target: str):
        self.actor, self.target = actor, target

    def score(self, state, action_texts, budget=None):
        import contextlib

        import ray
        with budget.timing("qnet") if budget is not None else contextlib.nullcontext():
            values, tokens = ray.get(self.actor.score.remote(self.target, state, list(action_texts)))
        if budget is not None:
            budget.add_qnet(tokens)
        return values


class RayExecutor:
    """Jobs spread over ``workers`` Ray actors (a local cluster, or ``address``); records merged in item order."""
    kind = "ray"

    def __init__(self, spec: WorkerSpec, workers: int = 2, address: str | None = None,
                 qnet_dirs: dict[str, str] | None = None, in_flight: int = 2):
        import ray
        self._started = not ray.is_initialized()  # a cluster this executor started is shut down by close()
        if self._started:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        self.ray, self.in_flight = ray, in_flight
        scorer = None
        if qnet_dirs:
            scorer = ray.remote(num_cpus=0)(_Scorer).remote(spec.cfg.model, dict(qnet_dirs))
        self.scorer = scorer
        worker_cls = ray.remote(num_cpus=0)(_Worker)
        self.workers = [worker_cls.remote(spec, scorer, sorted(qnet_dirs or {}), workers) for _ in range(workers)]
        ray.get([w.ready.remote() for w in self.workers])  # a worker that cannot build its env fails here, named

    def run(self, items: list, job: Job, log: ResumableLog, desc: str = "tasks") -> None:
        ray = self.ray
        pending: dict = {}  # object ref -> (index, worker)
        results: dict[int, dict] = {}
        next_item, next_write = 0, 0
        free = [w for w in self.workers for _ in range(self.in_flight)]
        bar = tqdm(total=len(items), desc=f"{desc} ({len(self.workers)} ray workers)", leave=False)
        try:
            while next_write < len(items):
                while free and next_item < len(items):
                    w = free.pop(0)
                    pending[w.run.remote(job, items[next_item])] = (next_item, w)
                    next_item += 1
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    idx, w = pending.pop(ref)
                    results[idx] = ray.get(ref)
                    free.append(w)
                while next_write in results:  # append in item order: the same JSONL whatever the schedule
                    log.append(results.pop(next_write))
                    next_write += 1
                    bar.update(1)
        finally:
            bar.close()
            for ref in pending:  # stopped early (an error): drop what is still queued on the workers
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001 (a task already running or finished cannot always be cancelled)
                    pass

    def close(self) -> None:
        for w in self.workers:
            self.ray.kill(w)
        if self.scorer is not None:
            self.ray.kill(self.scorer)
        self.workers, self.scorer = [], None
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()


class _Worker:
    """A Ray actor owning one environment and one policy (an ``openai`` backend talks to the shared server)."""

    def __init__(self, spec: WorkerSpec, scorer, targets: list[str], n_workers: int):
        import os

        import torch

        from qlass_lib.envs import make_env
        from qlass_lib.models.generation import make_policy
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // n_workers))
        env = make_env(spec.cfg.env)
        policy = make_policy(spec.cfg, spec.policy_dir, spec.env_name or env.name, spec.backend)
        self.ws = Workspace(env, policy, {t: _ScorerProxy(scorer, t) for t in targets}, spec.example)

    def ready(self) -> bool:
        return True

    def run(self, job: Job, item) -> dict:
        return job(self.ws, item)


class _Scorer:
    """The one QNet holder: every worker's scoring runs here, on the QNet's device."""

    def __init__(self, model_cfg, qnet_dirs: dict[str, str]):
        from qlass_lib.method.qnet import load_qnet
        self.qnets = {t: load_qnet(d, model_cfg) for t, d in qnet_dirs.items()}

    def score(self, target: str, state, action_texts) -> tuple[list[float], int]:
        from qlass_lib.core.budget import Budget
        b = Budget()
        values = self.qnets[target].score(state, action_texts, b)
        return values, b.qnet_tokens


def make_executor(ctx, env, policy, qnets: dict | None = None, qnet_dirs: dict | None = None,
                  backend: str | None = None):
    """The executor ``ctx.cfg.executor`` asks for: ``local`` on the driver's env/policy/QNets, or ``ray`` workers
    that build their own (policy from stage 01's folder with ``backend`` or ``generation.backend``; QNets loaded
    once, in one scorer actor, from ``qnet_dirs``)."""
    from qlass_lib.core.series import STAGES
    ex = ctx.cfg.executor
    if ex.kind == "local":
        return local(env, policy, qnets, ctx.example())
    spec = WorkerSpec(ctx.cfg, str(ctx.run_dir / STAGES["01"] / "policy"), ctx.example(), env.name, backend)
    return RayExecutor(spec, ex.workers, ex.address, {k: str(v) for k, v in (qnet_dirs or {}).items()})
