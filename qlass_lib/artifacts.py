"""Artifact helpers: schema-versioned JSON/JSONL written safely, and per-stage manifests."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ["torch", "transformers", "tokenizers", "peft", "bitsandbytes", "scienceworld", "papermill",
            "pandas", "numpy"]


def write_json(path: str | Path, obj) -> Path:
    """Write JSON atomically (temp file + rename), so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)
    return path


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one record and flush it to disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict]:
    """All complete records of a JSONL file; a torn last line (crash mid-write) is dropped."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def repair_jsonl(path: str | Path) -> int:
    """Rewrite a JSONL file keeping only its complete records; returns how many there are."""
    recs = read_jsonl(path)
    if Path(path).exists():
        tmp = Path(str(path) + ".tmp")
        tmp.write_text("".join(json.dumps(r, default=str) + "\n" for r in recs))
        os.replace(tmp, path)
    return len(recs)


def git_commit(cwd: str | Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{commit}-dirty" if commit and dirty else commit
    except Exception:
        return None


def versions() -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def guard_hits(stage_dir: str | Path) -> list[str]:
    """Training results in a stage folder that stopped on the wall-clock guard (``"stopped": "time"``): their
    numbers depend on the machine's speed, so the manifest and ``report`` name them."""
    out = []
    for p in sorted(Path(stage_dir).rglob("*result.json")):
        try:
            if json.loads(p.read_text()).get("stopped") == "time":
                out.append(str(p.relative_to(stage_dir)))
        except (OSError, ValueError, AttributeError):
            continue
    return out
