"""The runner: execute the numbered notebooks in order with papermill into ``runs/<run_id>/``.

What it guarantees:
- **Never deletes finished work implicitly.** A run folder that holds a run with other params is not touched:
  the runner stops and names the differing keys (``--force`` reruns everything, ``--overwrite 03`` lets
  stages 03 and later be replaced).  Without ``run_id`` in the params file the run id is the file's name.
- **Never reuses stale work.** A stage is skipped only when its fingerprint (params, library code, notebook,
  package versions, and the upstream stage's fingerprint and artifact checksums) is unchanged and its files
  still match the checksums in its manifest; otherwise it reruns, and so does everything after it.
  ``--reuse`` keeps stale-but-complete stages anyway and records that in their manifests.
- **One writer per run** (:mod:`qlass_lib.run.runlock`).
- A stage that crashed resumes from what it had flushed when its fingerprint is unchanged.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import time
from pathlib import Path
from typing import Callable

from qlass_lib.core.artifacts import (
    ArtifactError,
    artifact_digests,
    changed_files,
    git_commit,
    guard_hits,
    read_json,
    read_manifest,
    versions,
    write_json,
)
from qlass_lib.core.config import ConfigError, RunConfig, config_hash, load_config
from qlass_lib.core.series import OPTIONAL, STAGES
from qlass_lib.core.paths import project_root
from qlass_lib.run.fingerprint import (
    EXECUTION_SECTIONS,
    STAGE_SECTIONS,
    changed_parts,
    data_hash,
    differing_keys,
    source_hash,
    stage_fingerprint,
    with_new_defaults,
    without_guards,
)
from qlass_lib.run.preflight import preflight
from qlass_lib.run.runlock import RunnerLock


def notebooks(root: Path) -> list[tuple[str, Path]]:
    out = []
    for nb in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        key = nb.name[:2]
        if key in STAGES and nb.stem == STAGES[key]:
            out.append((key, nb))
    return out


def _ipc_kernel_manager():
    """A kernel manager whose kernel talks over local IPC sockets (no TCP ports, no 'unencrypted TCP' warning)."""
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.transport = "ipc"
            import tempfile
            self.ip = str(Path(tempfile.mkdtemp(prefix="qlass-kernel-")) / "k")
    return IPCKernelManager


def papermill_execute(nb: Path, out_nb: Path, params_path: Path, run_dir: Path, overrides: dict) -> None:
    import papermill as pm
    try:
        pm.execute_notebook(str(nb), str(out_nb), parameters={"params_path": str(params_path),
                            "run_dir": str(run_dir), "overrides": overrides},
                            cwd=str(nb.parent), progress_bar=False, log_output=False, kernel_name="python3",
                            kernel_manager_class=_ipc_kernel_manager())
    except pm.PapermillExecutionError as exc:
        raise RuntimeError(f"stage {nb.name[:2]} ({nb.name}) failed: {exc.ename}: {exc.evalue}\n"
                           f"see the executed notebook {out_nb}") from None


def load_run_config(params: str | Path, overrides: dict | None = None) -> tuple[RunConfig, dict]:
    """Config of a params file; ``run_id`` defaults to the file's name (never a shared default folder)."""
    import yaml
    overrides = dict(overrides or {})
    p = Path(params)
    cfg = load_config(p, overrides)
    if "run_id" not in overrides:
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except Exception:
            raw = {}
        if "run_id" not in raw:
            overrides["run_id"] = p.stem
            cfg = load_config(p, overrides)
    return cfg, overrides


def run(params: str, force: bool = False, only: list[str] | None = None, overrides: dict | None = None,
        run_id: str | None = None, root: Path | None = None, log=print, overwrite: str | None = None,
        reuse: bool = False, execute: Callable | None = None) -> Path:
    root = root or project_root()
    params_path = Path(params).resolve()
    overrides = dict(overrides or {})
    if run_id:
        overrides["run_id"] = run_id
    cfg, overrides = load_run_config(params_path, overrides)
    preflight(cfg, root)
    run_dir = root / "runs" / cfg.run_id
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the run folder {run_dir}: {exc.strerror}") from None
    execute = execute or papermill_execute
    stages = notebooks(root)
    if not stages:
        raise ConfigError(f"no numbered notebooks found under {root / 'notebooks'}")
    with RunnerLock(run_dir) as lock:
        _guard_params(run_dir, cfg, force, overwrite)
        write_json(run_dir / "params.json", dataclasses.asdict(cfg))
        code = source_hash(root)
        data = data_hash(cfg, root, run_dir / ".data_digests.json")
        upstream, upstream_ran = None, False
        for key, nb in stages:
            sdir = run_dir / STAGES[key]
            if key in OPTIONAL and not _switch(cfg, OPTIONAL[key]):
                log(f"[{key}] {nb.stem}: off ({OPTIONAL[key]}: false)")
                continue
            manifest_path = sdir / "manifest.json"
            try:
                old = read_manifest(sdir)
            except ArtifactError as exc:
                if not (force or (overwrite and overwrite <= key)):
                    raise ArtifactError(f"{exc}; rerun the stage with --overwrite {key} (or every stage with "
                                        f"--force)") from None
                old = None
            fp = stage_fingerprint(cfg, key, root, nb, upstream, code, data)
            if only and key not in only:
                if old is None or old.get("status") != "complete":
                    upstream = None
                    continue
                upstream = old
                continue
            complete = old is not None and old.get("status") == "complete"
            changed = changed_parts(old.get("fingerprint") if old else None, fp) if complete else []
            if "params" in changed and isinstance(old.get("params"), dict) and \
                    config_hash(without_guards(with_new_defaults(old["params"], STAGE_SECTIONS[key]))) == fp["params"]:
                changed.remove("params")  # only keys added to the config since, at their defaults
            damaged = changed_files(sdir, old) if complete else []
            if complete and not force and not changed and not damaged:
                log(f"[{key}] {nb.stem}: up to date, skipped")
                upstream = old
                continue
            if complete and not force and reuse and not damaged and "params" not in changed:
                old.setdefault("reused", []).append({"at": _now(), "stale_parts": changed, "fingerprint_now": fp})
                write_json(manifest_path, old)
                log(f"[{key}] {nb.stem}: stale ({', '.join(changed)} changed) but kept, as --reuse asks")
                upstream = old
                continue
            marker = sdir / ".fingerprint"
            partial = sdir.exists() and not complete
            resume = partial and marker.is_file() and marker.read_text() == fp["all"] and not force and not upstream_ran
            if sdir.exists() and not resume:
                why = ("--force" if force else "upstream stage reran" if upstream_ran else
                       f"files changed since it finished: {damaged[:3]}" if damaged else
                       f"{', '.join(changed)} changed" if complete else "stale partial results")
                log(f"[{key}] {nb.stem}: {why}; starting clean")
                shutil.rmtree(sdir)
            sdir.mkdir(parents=True, exist_ok=True)
            marker.write_text(fp["all"])
            lock.wait_for_kernels()
            log(f"[{key}] {nb.stem}: {'resuming' if resume else 'running'}")
            t0, started = time.time(), _now()
            execute(nb, run_dir / nb.name, params_path, run_dir, overrides)
            wall = time.time() - t0
            manifest = {
                "schema_version": 2, "stage": key, "notebook": nb.name, "status": "complete", "fingerprint": fp,
                "params": {s: dataclasses.asdict(cfg).get(s) for s in STAGE_SECTIONS[key]}, "seed": cfg.seed,
                "execution": _execution(cfg), "model_source": _model_source(cfg),
                "versions": versions(), "git_commit": git_commit(root), "started": started,
                "wall_time_s": round(wall, 2), "wall_clock_guard_hit": guard_hits(sdir),
                "artifacts": artifact_digests(sdir)}
            write_json(manifest_path, manifest)
            for g in manifest["wall_clock_guard_hit"]:
                log(f"[{key}] warning: {g} stopped on its wall-clock guard (max_minutes): its numbers depend on "
                    f"this machine's speed; raise the guard or lower the step/epoch budget")
            log(f"[{key}] {nb.stem}: done in {wall:.1f}s")
            upstream, upstream_ran = manifest, True
    return run_dir


def _guard_params(run_dir: Path, cfg: RunConfig, force: bool, overwrite: str | None) -> None:
    """Refuse to touch a folder that holds finished stages of a run with other params (unless told to)."""
    prev = run_dir / "params.json"
    if not prev.is_file():
        return
    old, new = without_guards(with_new_defaults(read_json(prev))), without_guards(dataclasses.asdict(cfg))
    diff = [d for d in differing_keys(old, new) if d.split(":")[0] not in OPTIONAL.values()  # switches only skip
            and d.split(".")[0].split(":")[0] not in EXECUTION_SECTIONS]  # how a run executes, not what it computes
    if not diff or force:
        return
    first = min((k for k, secs in STAGE_SECTIONS.items() for d in diff if d.split(".")[0].split(":")[0] in secs),
                default="01")
    finished = [k for k in STAGES if (run_dir / STAGES[k] / "manifest.json").is_file() and k >= first]
    if not finished:
        return
    if overwrite and overwrite <= first:
        return
    shown = "; ".join(diff[:8]) + (f"; ... ({len(diff)} keys)" if len(diff) > 8 else "")
    raise ConfigError(f"{run_dir} holds a finished run with other params ({shown}). Nothing was changed. Use "
                      f"another run_id (run_id: in the params file, or --run-id), or replace it with --force "
                      f"(every stage) or --overwrite {first} (stages {first} and later).")


def _execution(cfg: RunConfig) -> dict:
    """How the stage ran (generation backend, executor, the precision this machine computes in), for its manifest
    (keys live in the environment only)."""
    from qlass_lib.models.loading import precision
    return {**{s: dataclasses.asdict(cfg).get(s) for s in EXECUTION_SECTIONS}, "precision": precision(cfg.model)}


def _model_source(cfg: RunConfig) -> dict | None:
    """A packaged model's package, version and GGUF sha256 (None for other models)."""
    from qlass_lib.models.packaged import describe, is_packaged
    m = cfg.model.model_name_or_path
    return describe(m) if is_packaged(m) else None


def _switch(cfg: RunConfig, dotted: str) -> bool:
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return bool(obj)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
