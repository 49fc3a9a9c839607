"""Checks before any work starts: each missing prerequisite or nonsensical value is one clear error.

``python -m qlass_lib check params.yaml [--set k=v]`` and every ``run`` call :func:`preflight` first, so a
mistake in a params file fails in seconds, not inside stage 01 after minutes of expert generation.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from qlass_lib.core.config import ConfigError, RunConfig
from qlass_lib.core.paths import looks_like_path, resolve_path  # noqa: F401 (the one path rule; re-exported)

WEBSHOP_FILES = ("resources_1k_documents.jsonl", "items_ins_v2_1000.json")
WEBSHOP_TYPES = ("webshop", "webshop-human")


def scienceworld_task_names() -> list[str]:
    """Task names the installed scienceworld package knows (read from its task list, no JVM start)."""
    import scienceworld
    data = json.loads((Path(scienceworld.__file__).parent / "tasks.json").read_text())
    return sorted(t["task_name"] for t in data)


def check_task_types(cfg: RunConfig) -> None:
    tt = cfg.env.task_types
    if not tt:
        raise ConfigError("env.task_types: give at least one task type")
    if cfg.env.name == "scienceworld":
        from qlass_lib.envs.scienceworld import canonical_task
        known = set(scienceworld_task_names())
        bad = []
        for t in tt:
            try:
                if canonical_task(t) not in known:
                    bad.append(t)
            except Exception:  # infer_task raises on names it cannot map
                bad.append(t)
        if bad:
            raise ConfigError(f"env.task_types: unknown ScienceWorld task types {bad} (known: {sorted(known)})")
    elif cfg.env.name == "alfworld":
        from qlass_lib.envs.alfworld import TASK_TYPES
        bad = [t for t in tt if t not in TASK_TYPES]
        if bad:
            raise ConfigError(f"env.task_types: unknown ALFWorld task types {bad} (known: {TASK_TYPES})")
    elif cfg.env.name == "webshop":
        bad = [t for t in tt if t not in WEBSHOP_TYPES]
        if bad:
            raise ConfigError(f"env.task_types: unknown WebShop task types {bad} (known: {list(WEBSHOP_TYPES)})")


def check_data(cfg: RunConfig, root: Path) -> None:
    e = cfg.env
    if e.split_dir:
        d = resolve_path(e.split_dir, root)
        if not d.is_dir():
            raise ConfigError(f"env.split_dir: data directory not found: {d}")
        if e.name == "scienceworld" and not any((d / f"{s}_indices.json").is_file() for s in ("train", "dev", "test")):
            raise ConfigError(f"env.split_dir: {d} holds no train/dev/test_indices.json (ETO's eval_agent/data/sciworld)")
    if e.name == "webshop" and not e.server_url:
        if not e.data_dir or not resolve_path(e.data_dir, root).is_dir():
            raise ConfigError(f"env.data_dir: WebShop data directory not found: "
                              f"{resolve_path(e.data_dir, root) if e.data_dir else '(not set)'} (it must hold "
                              f"{' and '.join(WEBSHOP_FILES)}; see data/README.md)")
        d = resolve_path(e.data_dir, root)
        missing = [f for f in WEBSHOP_FILES if not (d / f).is_file() or (d / f).stat().st_size == 0]
        if missing:
            raise ConfigError(f"env.data_dir: {d} lacks the WebShop files {missing} (see data/README.md)")
    if e.name == "alfworld":
        if not e.data_dir or not resolve_path(e.data_dir, root).is_dir():
            raise ConfigError(f"env.data_dir: ALFWorld data directory not found: "
                              f"{resolve_path(e.data_dir, root) if e.data_dir else '(not set)'} (it must follow the "
                              f"ALFWORLD_DATA layout: json_2.1.1/valid_seen, valid_unseen, train; see data/README.md)")
        d = resolve_path(e.data_dir, root) / "json_2.1.1"
        from qlass_lib.envs.alfworld import SPLITS
        need = {SPLITS[e.train_split], SPLITS[e.eval_split]}
        for split in sorted(need):
            has = (d / split).is_dir() and any((d / split).glob("*/*/game.tw-pddl"))
            tar = split == "train" and (d.parent / "json_2.1.1_train.tar.xz").is_file()
            if not has and not tar:
                raise ConfigError(f"env.data_dir: no ALFWorld games for split '{split}' under {d} "
                                  f"(json_2.1.1/{split}/<task>/<trial>/game.tw-pddl"
                                  f"{' or json_2.1.1_train.tar.xz' if split == 'train' else ''})")
    if e.eval_task_file and not resolve_path(e.eval_task_file, root).is_file():
        raise ConfigError(f"env.eval_task_file: file not found: {resolve_path(e.eval_task_file, root)}")
    if cfg.expert.sft_file and not resolve_path(cfg.expert.sft_file, root).is_file():
        raise ConfigError(f"expert.sft_file: file not found: {resolve_path(cfg.expert.sft_file, root)}")


def check_model(cfg: RunConfig, root: Path, timeout: float = 10.0) -> None:
    m = cfg.model.model_name_or_path
    from qlass_lib.models.packaged import PackagedModelError, gguf_file, is_packaged
    if m == "embedded-tiny":
        pass
    elif is_packaged(m):
        try:
            gguf_file(m)
        except PackagedModelError as exc:
            raise ConfigError(f"model.model_name_or_path: {exc}") from None
    elif looks_like_path(m, root):
        if not resolve_path(m, root).exists():
            raise ConfigError(f"model.model_name_or_path: model path not found: {resolve_path(m, root)}")
    else:
        check_hub_model(m, timeout)
    if cfg.model.load_in_4bit:
        import torch
        if not torch.cuda.is_available():
            raise ConfigError("model.load_in_4bit: true needs a CUDA GPU (bitsandbytes would silently run ~13x "
                              "slower on the CPU); set it to false here")


def check_hub_model(repo_id: str, timeout: float = 10.0) -> None:
    """A hub id must be in the local Hugging Face cache, or the hub must answer for it (checked now, not after
    minutes of expert generation)."""
    from huggingface_hub import model_info, try_to_load_from_cache
    cached = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):
        return
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ConfigError(f"model.model_name_or_path: {repo_id!r} is not in the local Hugging Face cache and "
                          f"HF_HUB_OFFLINE is set (download it first, or give a local folder)")
    try:
        model_info(repo_id, timeout=timeout)
    except Exception as exc:  # network down, no such repo, gated, ...
        raise ConfigError(f"model.model_name_or_path: {repo_id!r} is neither a local folder nor in the Hugging "
                          f"Face cache, and the hub did not answer for it ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:200]})") from None


def preflight(cfg: RunConfig, root: Path) -> None:
    """Fail early with one clear error per missing prerequisite or nonsensical value."""
    if cfg.env.name == "scienceworld" and shutil.which("java") is None:
        raise ConfigError("Java was not found on PATH: ScienceWorld needs Java 11+ (e.g. openjdk-17).")
    check_task_types(cfg)
    check_data(cfg, root)
    check_model(cfg, root)
    check_keys(cfg)


def check_keys(cfg: RunConfig) -> None:
    """An API key in the environment never goes over plain http to another machine: refused before any work."""
    from qlass_lib.core.http import check_key_url
    s, g = cfg.search, cfg.generation
    checks = []
    if s.paraphraser == "openai" and s.paraphrase_endpoint:
        checks.append(("search.paraphrase_endpoint", s.paraphrase_endpoint, "OPENAI_API_KEY"))
    if g.backend == "openai" and g.base_url:
        checks.append(("generation.base_url", g.base_url, g.api_key_env))
    for key, url, env_name in checks:
        try:
            check_key_url(url, os.environ.get(env_name), env_name)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from None
