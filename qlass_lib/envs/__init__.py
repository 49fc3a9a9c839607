"""Text environments behind one protocol (see :mod:`qlass_lib.envs.base`)."""
from qlass_lib.envs.base import EnvError, Reset, Step, TaskRef, TextEnv, check_env, replay

__all__ = ["EnvError", "Reset", "Step", "TaskRef", "TextEnv", "check_env", "replay", "make_env", "eval_tasks"]


def make_env(env_cfg, max_turns: int | None = None) -> TextEnv:
    """Build the adapter named by ``env_cfg.name``."""
    turns = max_turns or env_cfg.max_turns
    if env_cfg.name == "scienceworld":
        from qlass_lib.envs.scienceworld import ScienceWorldEnv
        return ScienceWorldEnv(env_cfg.task_types, max_turns=turns, jvm_memory=env_cfg.jvm_memory,
                               split_dir=env_cfg.split_dir, simplifications=env_cfg.simplifications)
    if env_cfg.name == "webshop":
        if env_cfg.server_url:
            from qlass_lib.envs.webshop_http import WebShopHTTPEnv
            return WebShopHTTPEnv(env_cfg.server_url, _eto_goal_ids(env_cfg.split_dir), max_turns=turns)
        from qlass_lib.envs.webshop import WebShopEnv
        return WebShopEnv(env_cfg.data_dir, max_turns=turns, options_per_product=env_cfg.options_per_product,
                          task_types=env_cfg.task_types)
    if env_cfg.name == "alfworld":
        from qlass_lib.envs.alfworld import ALFWorldEnv
        return ALFWorldEnv(env_cfg.data_dir, env_cfg.task_types, max_turns=turns, cache_dir=env_cfg.cache_dir,
                           expert=env_cfg.alfworld_expert, order=env_cfg.alfworld_order,
                           expert_max_seconds=env_cfg.alfworld_expert_max_seconds)
    if env_cfg.name == "scripted":
        from qlass_lib.envs.scripted import ScriptedEnv
        return ScriptedEnv(max_turns=turns)
    raise EnvError(f"unknown environment {env_cfg.name!r}")


def _eto_goal_ids(split_dir: str | None) -> dict[str, list[int]]:
    """ETO's WebShop goal indices (train_indices.json / test_indices.json) when a split folder is given."""
    import json
    from pathlib import Path
    out: dict[str, list[int]] = {}
    if split_dir:
        for split in ("train", "dev", "test"):
            p = Path(split_dir) / f"{split}_indices.json"
            if p.is_file():
                out[split] = [int(i) for i in json.loads(p.read_text())]
    return out


def read_task_file(path: str) -> list[TaskRef]:
    """Tasks from a file: JSON list of [task, variation] / {"task_type", "variation"}, or 'task variation' lines."""
    import json
    from pathlib import Path
    p = Path(path)
    if not p.is_file():
        raise EnvError(f"evaluation task file not found: {p}")
    text = p.read_text()
    if text.lstrip().startswith("["):
        out = []
        for item in json.loads(text):
            if isinstance(item, dict):
                out.append(TaskRef(item["task_type"], int(item["variation"])))
            else:
                out.append(TaskRef(str(item[0]), int(item[1])))
        return out
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, var = line.replace(",", " ").split()
            out.append(TaskRef(name, int(var)))
    return out


def per_type(tasks: list[TaskRef], k: int | None) -> list[TaskRef]:
    """The first ``k`` tasks of every task type, keeping order."""
    if k is None:
        return list(tasks)
    seen: dict[str, int] = {}
    out = []
    for t in tasks:
        if seen.get(t.task_type, 0) < k:
            seen[t.task_type] = seen.get(t.task_type, 0) + 1
            out.append(t)
    return out


def eval_tasks(env: TextEnv, env_cfg, per_type_count: int | None = None) -> list[TaskRef]:
    """The held-out evaluation tasks: the first ``per_type_count`` (default ``eval_per_type``) per type of
    ``eval_split``; with a task file, its tasks (the first ``per_type_count`` per type when given)."""
    if env_cfg.eval_task_file:
        tasks = read_task_file(env_cfg.eval_task_file)
        if env_cfg.name == "scienceworld":
            from qlass_lib.envs.scienceworld import canonical_task
            tasks = [TaskRef(canonical_task(t.task_type), t.variation) for t in tasks]
        return per_type(tasks, per_type_count)
    return per_type(env.tasks(env_cfg.eval_split), per_type_count or env_cfg.eval_per_type)
