"""The pipeline runner: execute the numbered notebooks in order with papermill into ``runs/<run_id>/``.

Each stage gets a ``manifest.json`` (params hash, seed, package versions, git commit, wall time).  A stage
whose manifest matches the current params is skipped (resume); a stage that crashed resumes from the
artifacts it had flushed; a stage whose params changed starts clean.  ``--force`` reruns, ``--only``
selects stages.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import re
import shutil
import sys
import time
from pathlib import Path

import yaml

from .artifacts import git_commit, guard_hits, read_json, versions, write_json
from .config import ConfigError, RunConfig, config_hash, load_config
from .context import STAGES, project_root

# which config sections each stage reads (its hash also chains the previous stage's hash)
STAGE_SECTIONS = {"01": ["seed", "env", "expert", "model", "bc"], "02": ["tree"], "03": ["qvalues"],
                  "04": ["qnet"], "05": ["search"]}


def stage_hashes(cfg: RunConfig) -> dict[str, str]:
    d = dataclasses.asdict(cfg)
    out, prev = {}, ""
    for key in sorted(STAGE_SECTIONS):
        prev = config_hash({"prev": prev, **{s: d[s] for s in STAGE_SECTIONS[key]}})
        out[key] = prev
    return out


def preflight(cfg: RunConfig, root: Path) -> None:
    """Fail early with one clear error per missing prerequisite."""
    def resolve(p):
        q = Path(p).expanduser()
        return q if q.is_absolute() else root / q
    if cfg.env.name == "scienceworld" and shutil.which("java") is None:
        raise ConfigError("Java was not found on PATH: ScienceWorld needs Java 11+ (e.g. openjdk-17).")
    if cfg.env.split_dir and not resolve(cfg.env.split_dir).is_dir():
        raise ConfigError(f"env.split_dir: data directory not found: {resolve(cfg.env.split_dir)}")
    if cfg.env.name == "webshop" and not cfg.env.server_url and not (cfg.env.data_dir and resolve(cfg.env.data_dir).is_dir()):
        raise ConfigError(f"env.data_dir: WebShop data directory not found: "
                          f"{resolve(cfg.env.data_dir) if cfg.env.data_dir else '(not set)'} (it must hold "
                          f"resources_1k_documents.jsonl and items_ins_v2_1000.json; see data/README.md)")
    if cfg.env.name == "alfworld" and not (cfg.env.data_dir and resolve(cfg.env.data_dir).is_dir()):
        raise ConfigError(f"env.data_dir: ALFWorld data directory not found: "
                          f"{resolve(cfg.env.data_dir) if cfg.env.data_dir else '(not set)'} (it must follow the "
                          f"ALFWORLD_DATA layout: json_2.1.1/valid_seen, valid_unseen, train; see data/README.md)")
    if cfg.env.eval_task_file and not resolve(cfg.env.eval_task_file).is_file():
        raise ConfigError(f"env.eval_task_file: file not found: {resolve(cfg.env.eval_task_file)}")
    if cfg.expert.sft_file and not resolve(cfg.expert.sft_file).is_file():
        raise ConfigError(f"expert.sft_file: file not found: {resolve(cfg.expert.sft_file)}")
    m = cfg.model.model_name_or_path
    if m != "embedded-tiny" and (m.startswith((".", "/", "~")) or m.count("/") > 1) and not resolve(m).exists():
        raise ConfigError(f"model.model_name_or_path: model path not found: {resolve(m)}")
    if cfg.model.load_in_4bit:
        import torch
        if not torch.cuda.is_available():
            raise ConfigError("model.load_in_4bit: true needs a CUDA GPU (bitsandbytes would silently run ~13x "
                              "slower on the CPU); set it to false here")


def notebooks(root: Path) -> list[tuple[str, Path]]:
    out = []
    for nb in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        key = nb.name[:2]
        if key in STAGES and nb.stem == STAGES[key]:
            out.append((key, nb))
    return out


def parse_set(items: list[str]) -> dict:
    """``['bc.max_minutes=2', 'seed=1']`` -> nested overrides (values parsed as YAML scalars)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


def run(params: str, force: bool = False, only: list[str] | None = None, overrides: dict | None = None,
        run_id: str | None = None, root: Path | None = None, log=print) -> Path:
    root = root or project_root()
    params_path = Path(params).resolve()
    overrides = dict(overrides or {})
    if run_id:
        overrides["run_id"] = run_id
    cfg = load_config(params_path, overrides)
    preflight(cfg, root)
    run_dir = root / "runs" / cfg.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "params.json", dataclasses.asdict(cfg))
    hashes = stage_hashes(cfg)
    import papermill as pm

    stages = notebooks(root)
    if not stages:
        raise ConfigError(f"no numbered notebooks found under {root / 'notebooks'}")
    upstream_ran = False  # once a stage reruns, every later stage must rerun from clean
    for key, nb in stages:
        if only and key not in only:
            continue
        sdir = run_dir / STAGES[key]
        manifest = sdir / "manifest.json"
        redo = force or upstream_ran
        if not redo and manifest.exists():
            m = read_json(manifest)
            if m.get("params_hash") == hashes[key] and m.get("status") == "complete":
                log(f"[{key}] {nb.stem}: up to date, skipped")
                continue
        marker = sdir / ".params_hash"
        if sdir.exists() and (redo or (marker.exists() and marker.read_text() != hashes[key])):
            log(f"[{key}] {nb.stem}: {'rerun' if redo else 'params changed'}; starting clean")
            shutil.rmtree(sdir)
        sdir.mkdir(parents=True, exist_ok=True)
        marker.write_text(hashes[key])
        if manifest.exists():
            manifest.unlink()
        upstream_ran = True
        log(f"[{key}] {nb.stem}: running")
        t0, started = time.time(), dt.datetime.now(dt.timezone.utc).isoformat()
        out_nb = run_dir / nb.name
        try:
            pm.execute_notebook(str(nb), str(out_nb), parameters={"params_path": str(params_path),
                                "run_dir": str(run_dir), "overrides": overrides},
                                cwd=str(nb.parent), progress_bar=False, log_output=False, kernel_name="python3")
        except pm.PapermillExecutionError as exc:
            raise RuntimeError(f"stage {key} ({nb.name}) failed: {exc.ename}: {exc.evalue}\n"
                               f"see the executed notebook {out_nb}") from None
        wall = time.time() - t0
        write_json(manifest, {
            "schema_version": 1, "stage": key, "notebook": nb.name, "status": "complete",
            "params_hash": hashes[key], "params": {s: dataclasses.asdict(cfg).get(s) for s in STAGE_SECTIONS[key]},
            "seed": cfg.seed, "versions": versions(), "git_commit": git_commit(root), "started": started,
            "wall_time_s": round(wall, 2), "wall_clock_guard_hit": guard_hits(sdir),
            "artifacts": sorted(str(p.relative_to(sdir)) for p in sdir.rglob("*") if p.is_file()
                                and p.name not in ("manifest.json", ".params_hash"))[:500],
        })
        for g in guard_hits(sdir):
            log(f"[{key}] warning: {g} stopped on its wall-clock guard (max_minutes): its numbers depend on this "
                f"machine's speed; raise the guard or lower the step/epoch budget")
        log(f"[{key}] {nb.stem}: done in {wall:.1f}s")
    return run_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m qlass_lib", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the notebook series from one params file")
    r.add_argument("params", help="params YAML file, e.g. params/default.yaml")
    r.add_argument("--force", action="store_true", help="rerun stages even when their manifest matches")
    r.add_argument("--only", default=None, help="comma-separated stage numbers, e.g. 01,02")
    r.add_argument("--run-id", default=None, help="override run_id")
    r.add_argument("--set", dest="sets", action="append", default=[], help="override a key, e.g. bc.max_minutes=2")
    c = sub.add_parser("check", help="validate a params file and the prerequisites it names")
    c.add_argument("params")
    rp = sub.add_parser("report", help="print a markdown summary of a finished run")
    rp.add_argument("run_dir", help="e.g. runs/default")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "report":
            from .report import summarize_run
            print(summarize_run(args.run_dir))
            return 0
        if args.cmd == "check":
            cfg = load_config(args.params)
            preflight(cfg, project_root())
            print(f"{args.params}: ok (run_id={cfg.run_id})")
            return 0
        only = [s.strip().zfill(2) for s in args.only.split(",")] if args.only else None
        if only:
            bad = [s for s in only if not re.fullmatch(r"0[1-5]", s)]
            if bad:
                raise ConfigError(f"--only: unknown stages {bad}")
        out = run(args.params, args.force, only, parse_set(args.sets), args.run_id)
        print(f"run finished: {out}")
        return 0
    except (ConfigError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
