"""The one rule for paths a user writes in params (data folders, task files, model directories)."""
from __future__ import annotations

from pathlib import Path


def project_root() -> Path:
    return Path(__file__).resolve().parents[2]  # qlass_lib/core/paths.py -> the project


def resolve_path(p: str, root: Path | None = None) -> Path:
    """``~`` expands; a relative path is taken from the project root (not from a notebook's folder)."""
    q = Path(p).expanduser()
    return q if q.is_absolute() else (root or project_root()) / q


def looks_like_path(name: str, root: Path | None = None) -> bool:
    """A model name is a local path when it starts like one, exists (as given or from the project root), or has
    more than one '/' (hub ids have one); anything else is a hub id."""
    root = root or project_root()
    return name.startswith((".", "/", "~")) or (root / name).exists() or Path(name).expanduser().exists() \
        or name.count("/") > 1
