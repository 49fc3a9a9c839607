"""Exploration trees (paper Algorithm 3) with stop-expansion pre-pruning.

Per training task the root is the task prompt.  The expert trajectory, when given, is attached as a branch.
Expansion is breadth-first: a node at depth <= D whose branch can still succeed gets new children until it
has W; every new child is rolled out by the policy to a terminal state (or the turn cap) and the rollout is
merged into the tree as a chain.  Nodes of a rollout that ends with zero reward are never queued (pre-pruning).
A node is reached by replaying its action prefix from reset; the env checker guarantees this is exact.
"""
from __future__ import annotations

import hashlib
import heapq
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

import torch

from qlass_lib.text import prompts
from qlass_lib.core.artifacts import ResumableLog, read_jsonl
from qlass_lib.core.budget import Budget
from qlass_lib.envs import TaskRef, TextEnv
from qlass_lib.method.rollout import act, continuing, play, sampling_chooser

SCHEMA_VERSION = 1


class Proposer(Protocol):
    def propose(self, state: list[dict], n: int, sampling, budget: Budget | None): ...


@dataclass
class Node:
    id: int
    parent: int | None
    depth: int
    text: str | None  # the agent turn as generated ("Thought: ...\nAction: ...")
    action: str | None  # parsed action (None: the output had none)
    observation: str
    reward: float  # step reward (score delta) from the env
    score: float  # env score after this step, in [0, 1]
    terminal: bool
    source: str  # "root" | "expert" | "policy"
    rollout_reward: float  # final reward of the rollout that created this node
    tokens: int = 0
    children: list[int] = field(default_factory=list)
    q: float | None = None
    q_norm: float | None = None


@dataclass
class Tree:
    task: TaskRef
    task_text: str
    nodes: list[Node]
    stats: dict = field(default_factory=dict)

    def path(self, node_id: int) -> list[Node]:
        out = []
        while node_id is not None:
            out.append(self.nodes[node_id])
            node_id = self.nodes[node_id].parent
        return out[::-1]

    def state(self, node_id: int, env_name: str, example=None) -> list[dict]:
        """Prompt messages at ``node_id`` (the conversation up to and including its observation)."""
        path = self.path(node_id)
        st = prompts.initial_state(env_name, self.task_text, path[0].observation, example)
        for n in path[1:]:
            st = prompts.extend(st, n.text or "", n.observation)
        return st

    def leaves(self) -> list[Node]:
        return [n for n in self.nodes if not n.children and n.parent is not None]

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "task": self.task.id, "task_type": self.task.task_type,
                "variation": self.task.variation, "task_text": self.task_text, "stats": self.stats,
                "nodes": [asdict(n) for n in self.nodes]}

    @classmethod
    def from_dict(cls, d: dict) -> "Tree":
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"tree schema {d.get('schema_version')} != {SCHEMA_VERSION}")
        return cls(TaskRef(d["task_type"], d["variation"]), d["task_text"], [Node(**n) for n in d["nodes"]],
                   d.get("stats", {}))


def task_seed(seed: int, task: TaskRef) -> int:
    """A per-task seed, so a tree does not depend on which trees were built before it (resume = same result)."""
    return int(hashlib.sha256(f"{seed}:{task.id}".encode()).hexdigest()[:8], 16)


class TreeBuilder:
    def __init__(self, env: TextEnv, proposer: Proposer, tree_cfg, example=None):
        self.env, self.proposer, self.cfg, self.example = env, proposer, tree_cfg, example

    # -- env helpers -------------------------------------------------------------------------------------
    def _goto(self, tree: Tree, node_id: int, budget: Budget, stats: dict) -> None:
        """Reset and replay the action prefix of ``node_id``; count replay steps and any mismatch."""
        with budget.timing("env"):
            self.env.reset(tree.task)
        for n in tree.path(node_id)[1:]:
            step = act(self.env, n.action, budget)
            stats["replay_steps"] += 1
            if step.observation != n.observation:
                stats["replay_mismatches"] += 1

    def _add(self, tree: Tree, parent: int, text, action, step, source: str, tokens: int) -> int:
        p = tree.nodes[parent]
        node = Node(len(tree.nodes), parent, p.depth + 1, text, action, step.observation, step.reward,
                    step.info["score"], step.done, source, 0.0, tokens)
        tree.nodes.append(node)
        p.children.append(node.id)
        return node.id

    # -- building ----------------------------------------------------------------------------------------
    def build(self, task: TaskRef, expert_actions: list[str] | None = None, seed: int = 0) -> Tree:
        prefix = getattr(self.proposer, "prefix", None)  # the policy's KV prefix cache (in-process backend)
        if prefix is None:
            return self._build(task, expert_actions, seed)
        # branches share the prompt above their fork: keep its keys across branch switches, from a cache emptied
        # at the tree's start, so a tree's tokens do not depend on the trees built before it (resume = same tree)
        prefix.reset()
        prefix.branch_reuse = True
        try:
            return self._build(task, expert_actions, seed)
        finally:
            prefix.branch_reuse = False
            prefix.reset()

    def _build(self, task: TaskRef, expert_actions: list[str] | None, seed: int) -> Tree:
        torch.manual_seed(task_seed(seed, task))
        t0 = time.perf_counter()
        errors0 = self.env.exceptions
        budget = Budget()
        stats = {"rollouts": 0, "duplicates_rejected": 0, "replay_steps": 0, "replay_mismatches": 0,
                 "expanded": 0, "pruned": 0, "expert_attached": False}
        with budget.timing("env"):
            first = self.env.reset(task)
        tree = Tree(task, first.task_text, [Node(0, None, 0, None, None, first.observation, 0.0, 0.0, False,
                                                 "root", 1.0)])
        if expert_actions:
            self._attach(tree, expert_actions, budget)
            stats["expert_attached"] = True
        queue: list[tuple[int, int]] = []
        considered: set[int] = set()
        cfg = self.cfg

        def enqueue_new():
            # breadth-first over every node not yet considered; pre-pruning drops zero-reward branches
            for n in tree.nodes:
                if n.id in considered:
                    continue
                considered.add(n.id)
                if n.terminal or n.depth > cfg.depth:
                    continue
                if n.rollout_reward <= 0:
                    stats["pruned"] += 1
                    continue
                heapq.heappush(queue, (n.depth, n.id))

        enqueue_new()
        while queue and stats["rollouts"] < cfg.max_rollouts:
            _, nid = heapq.heappop(queue)
            self._expand(tree, nid, budget, stats)
            stats["expanded"] += 1
            enqueue_new()
        snap = budget.snapshot()
        stats.update(nodes=len(tree.nodes), leaves=len(tree.leaves()), max_depth=max(n.depth for n in tree.nodes),
                     nonzero_leaves=sum(1 for n in tree.leaves() if n.score > 0),
                     nonzero_policy_leaves=sum(1 for n in tree.leaves() if n.score > 0 and n.source == "policy"),
                     env_steps=snap["env_steps"], env_errors=self.env.exceptions - errors0,
                     gen_tokens=snap["gen_tokens"], prompt_tokens=snap["prompt_tokens"], gen_s=snap["gen_s"],
                     env_s=snap["env_s"],
                     wall_s=time.perf_counter() - t0)
        tree.stats = stats
        return tree

    def _attach(self, tree: Tree, actions: list[str], budget: Budget) -> None:
        nid, chain = 0, []
        for a in actions:
            step = act(self.env, a, budget)
            nid = self._add(tree, nid, prompts.agent_turn(a), a, step, "expert", 0)
            chain.append(nid)
            if step.done:
                break
        final = tree.nodes[nid].score
        for c in chain:
            tree.nodes[c].rollout_reward = final

    def _expand(self, tree: Tree, nid: int, budget: Budget, stats: dict) -> list[int]:
        """Give ``nid`` up to W children (deduplicated), each rolled out to the end; returns the new ids."""
        cfg, new = self.cfg, []
        need = cfg.width - len(tree.nodes[nid].children)
        if need <= 0:
            return new
        state = tree.state(nid, self.env.name, self.example)
        seen = {prompts.normalize_action(tree.nodes[c].action) for c in tree.nodes[nid].children}
        accepted = []
        for attempt in range(1 + cfg.max_resample):
            if len(accepted) >= need:
                break
            for cand in self.proposer.propose(state, need - len(accepted), cfg.sampling, budget):
                key = prompts.normalize_action(cand.action)
                if key in seen:
                    stats["duplicates_rejected"] += 1
                    continue
                seen.add(key)
                accepted.append(cand)
        for cand in accepted[:need]:
            if stats["rollouts"] >= cfg.max_rollouts:
                break
            self._goto(tree, nid, budget, stats)
            chain, cur = [], nid
            # the accepted candidate first, then the policy samples until the episode ends
            rollout = continuing(cand, sampling_chooser(self.proposer, cfg.sampling, budget))
            for c, _, step, _ in play(self.env, state, rollout, budget):
                cur = self._add(tree, cur, c.text, c.action, step, "policy", c.tokens)
                chain.append(cur)
            child = chain[0]
            final = tree.nodes[cur].score
            for c_id in chain:
                tree.nodes[c_id].rollout_reward = final
            stats["rollouts"] += 1
            new.append(child)
        return new


def build_trees(executor, tasks: list[TaskRef], out_path: str | Path, tree_cfg, expert: dict[str, list[str]],
                seed: int, postprocess=None) -> list[dict]:
    """Build one tree per task on ``executor`` (:mod:`qlass_lib.method.executor`: each worker explores with its own env
    and policy), appending each finished tree to ``out_path`` (JSONL) in task order; resumable.
    ``postprocess(tree)`` runs in the driver before a tree is written."""
    log = ResumableLog(out_path, key=lambda r: r["task"])
    items = [(t, expert.get(t.id)) for t in log.todo(tasks, lambda t: t.id)]
    executor.run(items, partial(_tree_job, tree_cfg, seed), _Postprocessed(log, postprocess), "trees")
    wanted = {t.id for t in tasks}
    return log.records(lambda r: r["task"] in wanted)


def _tree_job(tree_cfg, seed: int, ws, item) -> dict:
    task, expert_actions = item
    return TreeBuilder(ws.env, ws.policy, tree_cfg, ws.example).build(task, expert_actions, seed).to_dict()


class _Postprocessed:
    """A log that runs ``fn`` on each tree before appending it."""

    def __init__(self, log: ResumableLog, fn):
        self.log, self.fn = log, fn

    def append(self, record: dict) -> None:
        if self.fn is not None:
            tree = Tree.from_dict(record)
            self.fn(tree)
            record = tree.to_dict()
        self.log.append(record)


def stats_frame(records: list[dict]):
    """One row per tree: size, shape, pruning, dedup, success, cost."""
    import pandas as pd
    rows = []
    for r in records:
        s = r["stats"]
        inner = [n for n in r["nodes"] if n["children"]]
        rows.append({"task": r["task"], "task_type": r["task_type"], "nodes": s["nodes"], "leaves": s["leaves"],
                     "max_depth": s["max_depth"], "mean_branching": sum(len(n["children"]) for n in inner) / max(1, len(inner)),
                     "rollouts": s["rollouts"], "expanded": s["expanded"], "pruned": s["pruned"],
                     "share_pruned": s["pruned"] / max(1, s["pruned"] + s["expanded"]),
                     "duplicates_rejected": s["duplicates_rejected"], "nonzero_leaves": s["nonzero_leaves"],
                     "nonzero_policy_leaves": s.get("nonzero_policy_leaves", 0),
                     "env_steps": s["env_steps"], "replay_steps": s["replay_steps"],
                     "replay_mismatches": s["replay_mismatches"], "env_errors": s.get("env_errors", 0),
                     "gen_tokens": s["gen_tokens"], "prompt_tokens": s.get("prompt_tokens", 0),
                     "gen_s": s["gen_s"], "env_s": s["env_s"], "wall_s": s["wall_s"]})
    return pd.DataFrame(rows)


def load_trees(path: str | Path) -> list[Tree]:
    return [Tree.from_dict(r) for r in read_jsonl(path)]


def exploration_pool(env: TextEnv, cfg) -> list[TaskRef]:
    """The training tasks that exploration (trees, self-training data) draws from: ``env.train_split``; with
    ``tree.disjoint_from_bc`` only tasks BC did not train on (after the first ``env.train_per_type`` per type)."""
    from qlass_lib.envs import per_type
    pool = env.tasks(cfg.env.train_split)
    if cfg.tree.disjoint_from_bc:
        seen = {t.id for t in per_type(pool, cfg.env.train_per_type)}
        pool = [t for t in pool if t.id not in seen]
    return pool


def tree_tasks(env: TextEnv, cfg, per_type_count: int | None = None) -> list[TaskRef]:
    """The training tasks that get a tree: the first ``tree.num_tasks_per_type`` (or ``per_type_count``) of
    every type of :func:`exploration_pool`."""
    from qlass_lib.envs import per_type
    return per_type(exploration_pool(env, cfg), per_type_count or cfg.tree.num_tasks_per_type)
