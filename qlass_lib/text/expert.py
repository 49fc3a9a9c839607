"""Expert trajectories: generated from gold action paths and replay-checked, or loaded from ETO SFT files.

Records use the ETO ``conversations`` schema plus a few fields of ours::

    {"schema_version": 1, "id": "lifespan-longest-lived_12", "task_type": ..., "variation": ..., "reward": 1.0,
     "conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": "Action: ..."}, ...]}
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

from tqdm.auto import tqdm

from qlass_lib.text import prompts
from qlass_lib.core.artifacts import dumps, read_jsonl  # noqa: F401 (re-exported: tests and notebooks import it from here)
from qlass_lib.envs import EnvError, TaskRef, TextEnv

SCHEMA_VERSION = 1
_MOVE = re.compile(r"^(go to|teleport to) ", re.IGNORECASE)


def template_thought(action: str) -> str:
    """A short rationale in the project's own words, derived only from the action itself."""
    a = action.strip()
    rules = [
        (r"^look around$", "I should look around to see what is here."),
        (r"^(?:go|teleport) to (.+)$", "I will go to the {0}."),
        (r"^open door to (.+)$", "The door to the {0} is in my way, so I open it."),
        (r"^open (.+)$", "I open the {0}."),
        (r"^focus on (.+)$", "The {0} is what the task asks for, so I focus on it."),
        (r"^move (.+) to (.+)$", "I move the {0} to the {1}."),
        (r"^pick up (.+)$", "I need the {0}, so I pick it up."),
        (r"^wait1?$", "I wait for a moment."),
        (r"^(?:examine|look at) (.+)$", "I take a closer look at the {0}."),
    ]
    for pat, text in rules:
        m = re.match(pat, a, re.IGNORECASE)
        if m:
            return text.format(*m.groups())
    return f"Next I will {a}."


def teleport_moves(actions: list[str]) -> list[str]:
    """Gold paths walk door by door; with ScienceWorld's 'easy' simplification (doors open, teleport) the
    same path is: drop 'open door to X', and each run of consecutive 'go to X' becomes 'teleport to <last X>'."""
    out: list[str] = []
    for a in actions:
        low = a.strip().lower()
        if low.startswith("open door to "):
            continue
        if low.startswith("go to "):
            dest = a.strip()[len("go to "):]
            if out and out[-1].lower().startswith("teleport to "):
                out[-1] = f"teleport to {dest}"
            else:
                out.append(f"teleport to {dest}")
            continue
        out.append(a)
    return out


def with_looks(actions: list[str], look: str = "look around") -> list[str]:
    """Insert ``look`` after every move that is not already followed by one."""
    out = []
    for i, a in enumerate(actions):
        out.append(a)
        nxt = actions[i + 1] if i + 1 < len(actions) else None
        if _MOVE.match(a) and (nxt is None or nxt.strip().lower() != look):
            out.append(look)
    return out


def to_conversations(messages: list[dict]) -> list[dict]:
    """Chat messages -> ETO conversation turns; an agent turn marked ``loss: False`` (not supervised) keeps it."""
    return [{"from": "gpt" if m["role"] == "assistant" else "human", "value": m["content"],
             **({"loss": False} if m.get("loss") is False else {})} for m in messages]


def to_messages(conversations: list[dict]) -> list[dict]:
    """ETO conversation turns -> chat messages (the inverse of :func:`to_conversations`)."""
    return [{"role": "assistant" if c["from"] in ("gpt", "assistant") else "user", "content": c["value"],
             **({"loss": False} if c.get("loss") is False else {})} for c in conversations]


def record_trajectory(env: TextEnv, task: TaskRef, actions: list[str], thoughts: str = "none",
                      example=None) -> dict:
    """Replay ``actions`` and write the conversation, stopping when the episode ends.

    The turn cap is lifted to fit the whole gold path (the cap is an evaluation budget, not part of the task).
    """
    cap = env.max_turns
    env.max_turns = max(cap, len(actions) + 1)
    try:
        return _record(env, task, actions, thoughts, example)
    finally:
        env.max_turns = cap


def _record(env: TextEnv, task: TaskRef, actions: list[str], thoughts: str, example) -> dict:
    first = env.reset(task)
    state = prompts.initial_state(env.name, first.task_text, first.observation, example)
    score, used = 0.0, []
    notes = env.plan_notes(task, first.observation, list(actions)) if thoughts == "plan" else [None] * len(actions)
    for a, note in zip(actions, notes):
        text = prompts.agent_turn(a, template_thought(a) if thoughts == "template" else note)
        step = env.step(a)
        state = prompts.extend(state, text, step.observation)
        used.append(a)
        score = step.info["score"]
        if step.done:
            break
    return {"schema_version": SCHEMA_VERSION, "id": task.id, "task_type": task.task_type,
            "variation": task.variation, "reward": score, "actions": used, "task_text": first.task_text,
            "first_observation": first.observation,
            "conversations": to_conversations(state[:-1] if state[-1]["role"] == "user" and used else state)}


def generate_expert(env, tasks: Iterable[TaskRef], out_path: str | Path, thoughts: str = "none",
                    look_on_arrival: bool = True, example=None, teleport: bool = False) -> dict:
    """Generate replay-checked expert trajectories for ``tasks`` into a JSONL file (resumable).

    A trajectory is kept only if its replay reaches the full score.  When the look-augmented path fails,
    the plain gold path is tried.  ``teleport`` first tries the path with moves compressed to teleports
    (for ScienceWorld's 'easy' simplification).  Returns counts.
    """
    out_path = Path(out_path)
    failed_path = out_path.with_name(out_path.stem + "_failed.jsonl")  # ids whose gold path did not reach 1.0
    from qlass_lib.core.artifacts import repair_jsonl
    repair_jsonl(out_path)
    repair_jsonl(failed_path)
    done = {r["id"] for r in read_jsonl(out_path)} if out_path.exists() else set()
    failed = {r["id"] for r in read_jsonl(failed_path)} if failed_path.exists() else set()
    stats = {"kept": len(done), "failed": len(failed), "fallback": 0}
    skip = done | failed
    tasks = [t for t in tasks if t.id not in skip]
    look = getattr(env, "arrival_look", None) if look_on_arrival else None
    with out_path.open("a") as f, failed_path.open("a") as ff:
        for task in tqdm(tasks, desc="expert trajectories"):
            try:
                gold = env.gold_actions(task)
            except EnvError as exc:  # e.g. ALFWorld's planner past its time limit: a failed expert game
                stats["failed"] += 1
                ff.write(dumps({"id": task.id, "gold_steps": None, "error": str(exc)[:500]}) + "\n")
                ff.flush()
                continue
            candidates = ([with_looks(gold, look)] if look else []) + [gold]
            if teleport:
                short = teleport_moves(gold)
                candidates = ([with_looks(short, look)] if look else []) + [short] + candidates
            rec = None
            for k, acts in enumerate(candidates):
                r = record_trajectory(env, task, acts, thoughts, example)
                if r["reward"] >= 1.0 - 1e-9:
                    rec = r
                    stats["fallback"] += int(k > 0)
                    break
            if rec is None:
                stats["failed"] += 1
                ff.write(dumps({"id": task.id, "gold_steps": len(gold)}) + "\n")
                ff.flush()
                continue
            f.write(dumps(rec) + "\n")
            f.flush()
            stats["kept"] += 1
    return stats


def load_eto_sft(path: str | Path) -> list[dict]:
    """Read an ETO-format SFT file (JSON list of {"id", "conversations"}) into our record form."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"SFT file not found: {p}")
    data = json.loads(p.read_text())
    out = []
    for item in data:
        conv = item["conversations"]
        if not conv or not any(c["from"] == "gpt" for c in conv):
            continue
        tid = str(item["id"])
        head, _, var = tid.rpartition("_")
        out.append({"schema_version": SCHEMA_VERSION, "id": tid, "task_type": head or tid,
                    "variation": int(var) if var.isdigit() else -1, "reward": item.get("reward", 1.0),
                    "conversations": conv})
    return out


def prepare(cfg, env, out_dir: str | Path, resolve=lambda p: Path(p)) -> tuple[list[dict], dict]:
    """Expert records for BC: the user's ETO SFT file when ``expert.sft_file`` is set, else trajectories
    generated from gold paths of ``env.train_per_type`` train variations of every task type (resumable)."""
    out = Path(out_dir) / "expert.jsonl"
    if cfg.expert.sft_file:
        recs = load_eto_sft(resolve(cfg.expert.sft_file))
        return recs, {"source": str(cfg.expert.sft_file), "kept": len(recs)}
    from qlass_lib.envs import per_type
    tasks = per_type(env.tasks(cfg.env.train_split), cfg.env.train_per_type)
    teleport = cfg.env.name == "scienceworld" and "easy" in cfg.env.simplifications.split(",")
    stats = generate_expert(env, tasks, out, cfg.expert.thoughts, cfg.expert.look_on_arrival, teleport=teleport)
    stats["source"] = "gold paths"
    stats["tasks"] = len(tasks)
    stats["success_rate"] = stats["kept"] / max(len(tasks), 1)
    from qlass_lib.core.artifacts import write_json
    write_json(Path(out_dir) / "expert_stats.json", {"schema_version": SCHEMA_VERSION, **stats})
    return read_jsonl(out), stats


def one_shot_example(records: list[dict]) -> list[dict] | None:
    """A one-shot demonstration: the median-length expert record (task line, then its turns)."""
    recs = sorted((r for r in records if r.get("task_text")), key=lambda r: (len(r["conversations"]), r["id"]))
    if not recs:
        return None
    rec = recs[len(recs) // 2]
    msgs = to_messages(rec["conversations"])
    return [{"role": "user", "content": f"Task: {rec['task_text']}"}] + msgs[1:]


def with_example(records: list[dict], env_name: str, example: list[dict] | None) -> list[dict]:
    """Records whose first message carries ``example`` (the same first message the agent sees later)."""
    if example is None:
        return records
    out = []
    for r in records:
        if "first_observation" not in r:
            out.append(r)
            continue
        conv = list(r["conversations"])
        first = prompts.first_message(env_name, r["task_text"], r["first_observation"], example)
        conv[0] = {"from": "human", "value": first}
        out.append({**r, "conversations": conv})
    return out


def expert_subset(records: list[dict], fraction: float) -> list[dict]:
    """The first ``fraction`` of the expert trajectories of every task type (at least one per type), in order:
    the fewer-annotations experiment trains BC on these."""
    if fraction >= 1.0:
        return list(records)
    count: dict[str, int] = {}
    for r in records:
        count[r["task_type"]] = count.get(r["task_type"], 0) + 1
    keep = {t: max(1, int(n * fraction + 0.5)) for t, n in count.items()}  # half rounds up
    seen: dict[str, int] = {}
    out = []
    for r in records:
        seen[r["task_type"]] = seen.get(r["task_type"], 0) + 1
        if seen[r["task_type"]] <= keep[r["task_type"]]:
            out.append(r)
    return out
