"""What a stage's results depend on, as one hash: its params, the code that computes them, the packages that
matter, and the artifacts of the stage before it (whose own fingerprint chains the ones before).

A stage is up to date only when its recorded fingerprint equals the one computed now and its files still
match the checksums its manifest recorded.  A change anywhere upstream therefore reruns every later stage,
across separate commands.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from qlass_lib.core.artifacts import versions
from qlass_lib.core.config import RunConfig, config_hash
from qlass_lib.core.series import STAGE_SECTIONS

# sections that say how a run executes (generation backend, task executor), not what it computes: switching them
# on a finished run is not a params change (a server backend reproduces the in-process tokens; tests check it)
EXECUTION_SECTIONS = ("generation", "executor")
# wall-clock guards: past one the stage fails, so a guard never shapes a finished result; raising one to resume a
# stage that hit it is not a params change
GUARD_KEYS = ("bc.max_minutes", "qnet.max_minutes", "model.tiny.pretrain_minutes")
# packages whose versions can change numbers (a new version reruns the stages)
NUMERIC_PACKAGES = ("torch", "transformers", "tokenizers", "peft", "bitsandbytes", "scienceworld", "numpy", "gguf")


def source_hash(root: Path) -> str:
    """sha256 over the library's Python sources (path and content), so any code change shows."""
    h = hashlib.sha256()
    for p in sorted((root / "qlass_lib").rglob("*.py")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


# params keys that name data a run reads: their files' contents are part of stage 01's fingerprint (and through
# the chain, of every later stage's)
DATA_KEYS = ("env.split_dir", "env.data_dir", "env.eval_task_file", "expert.sft_file")


def data_files(cfg: RunConfig, root: Path) -> dict[str, tuple[Path, list[Path]]]:
    """``params key -> (its path, the files under it)``: a folder's files recursively and sorted, a file itself,
    a missing path none."""
    from qlass_lib.core.paths import resolve_path
    out = {}
    for dotted in DATA_KEYS:
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if not value:
            continue
        p = resolve_path(value, root)
        out[dotted] = (p, sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p] if p.is_file() else [])
    return out


def data_hash(cfg: RunConfig, root: Path, cache_path: Path | None = None) -> str:
    """One hash over the content of every data file the params name (path under its key, size, sha256).

    A file's sha256 is reused from ``cache_path`` while its size and mtime are unchanged (the fast path); any
    change there hashes it again."""
    from qlass_lib.core.artifacts import read_json, sha256_file, write_json
    cache = {}
    if cache_path is not None and cache_path.is_file():
        try:
            cache = read_json(cache_path)
        except Exception:  # a damaged cache is only a cache
            cache = {}
    new_cache, h = {}, hashlib.sha256()
    for dotted, (top, files) in data_files(cfg, root).items():
        h.update(f"{dotted}:{len(files)}".encode())
        for f in files:
            st = f.stat()
            stamp = [st.st_size, st.st_mtime_ns]
            hit = cache.get(str(f))
            digest = hit[2] if isinstance(hit, list) and hit[:2] == stamp else sha256_file(f)
            new_cache[str(f)] = stamp + [digest]
            h.update(f"{f.relative_to(top) if f != top else f.name}:{st.st_size}:{digest}".encode())
    if cache_path is not None and new_cache != cache:
        write_json(cache_path, new_cache)
    return h.hexdigest()[:16]


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "missing"


def package_versions() -> dict:
    v = versions()
    return {k: v.get(k) for k in ("python",) + NUMERIC_PACKAGES}


def artifacts_hash(manifest: dict | None) -> str:
    """One hash over a finished stage's recorded artifact checksums ('none' when there is no such stage)."""
    if not manifest:
        return "none"
    return config_hash(manifest.get("artifacts", {}))


def without_guards(d: dict) -> dict:
    """A params dict without the wall-clock guard keys."""
    d = json.loads(json.dumps(d, default=str))
    for dotted in GUARD_KEYS:
        *path, last = dotted.split(".")
        node = d
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return d


def params_of(cfg: RunConfig, key: str) -> dict:
    d = without_guards(dataclasses.asdict(cfg))
    return {s: d[s] for s in STAGE_SECTIONS[key]}


def stage_fingerprint(cfg: RunConfig, key: str, root: Path, notebook: Path, upstream: dict | None,
                      code: str | None = None, data: str | None = None) -> dict:
    """The parts of stage ``key``'s fingerprint (each a short hash) and their combination under ``"all"``; stage
    01's includes ``data`` (:func:`data_hash`), the later ones inherit it through ``upstream``."""
    parts = {"params": config_hash(params_of(cfg, key)), "code": code or source_hash(root),
             "notebook": file_hash(notebook), "packages": config_hash(package_versions()),
             "upstream": config_hash({"fingerprint": (upstream or {}).get("fingerprint", {}).get("all"),
                                      "artifacts": artifacts_hash(upstream)}) if key != "01" else "none"}
    if key == "01":
        parts["data"] = data if data is not None else data_hash(cfg, root)
    parts["all"] = config_hash(parts)
    return parts


def with_new_defaults(old: dict, sections: list[str] | None = None) -> dict:
    """Recorded params with every key the config has gained since filled in at its default (within
    ``sections`` of the config, or all of it): a key added to the library later, at its default, reproduces what
    the run did before the key existed, so it is not a change."""
    from qlass_lib.core.config import deep_merge
    defaults = dataclasses.asdict(RunConfig())
    keep = defaults if sections is None else {k: defaults[k] for k in sections if k in defaults}
    return deep_merge(keep, old)


def changed_parts(old: dict | None, new: dict) -> list[str]:
    if not old:
        return ["(no fingerprint recorded)"]
    return [k for k in ("params", "code", "data", "notebook", "packages", "upstream") if old.get(k) != new.get(k)]


def differing_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested param dicts, as 'key: old -> new'."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        name = f"{prefix}{k}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += differing_keys(a, b, name + ".")
        elif json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            out.append(f"{name}: {a!r} -> {b!r}")
    return out
