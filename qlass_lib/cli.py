"""``python -m qlass_lib``: run the series, check a params file, report a run, benchmark.

Every error a user can cause (params, data, locks, missing runs) is one ``error: ...`` line and exit code 2.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

from qlass_lib.core.config import ConfigError

_EPILOG = """examples:
  python -m qlass_lib run params/default.yaml
  python -m qlass_lib run params/default.yaml --only 02,03 --set tree.width=4 --run-id width4
  python -m qlass_lib check params/my.yaml --set env.eval_per_type=20
  python -m qlass_lib report runs/default
  python -m qlass_lib bench runs/default
  python -m qlass_lib serve runs/default          # vLLM on the run's BC policy, then:
  python -m qlass_lib run params/default.yaml --set generation.backend=openai --set generation.base_url=URL
  python -m qlass_lib bench-parallel runs/default
  python -m qlass_lib inspect runs/default
  python -m qlass_lib lookahead runs/default --split dev --per-type 15 --m 2
  python -m qlass_lib gpu-check runs/default --out runs/gpu-check --shape 7b   # on a CUDA machine
  python -m qlass_lib annotations params/default.yaml --fractions 1 0.5 0.25
  python -m qlass_lib expert-survey params/alfworld-tiny.yaml --set env.alfworld_expert=planner --per-type 10"""


def parse_set(items: list[str]) -> dict:
    """``['bc.max_steps=200', 'seed=1']`` -> nested overrides (values parsed as YAML scalars)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r} conflicts with another --set of {p!r}")
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML") from None
    return out


def _stages(text: str | None) -> list[str] | None:
    if not text:
        return None
    only = [s.strip().zfill(2) for s in text.split(",")]
    bad = [s for s in only if not re.fullmatch(r"0[1-6]", s)]
    if bad:
        raise ConfigError(f"unknown stages {bad} (stages are 01..06)")
    return only


def _serve(run_dir: Path, port: int) -> int:
    import json
    import time

    from qlass_lib.models.server import servable, start_vllm
    max_len = json.loads((run_dir / "params.json").read_text())["bc"]["max_length"]
    model_dir = servable(run_dir / "01_behavior_cloning" / "policy")
    print(f"starting vLLM on {model_dir} (log: {run_dir / 'vllm.log'}) ...")
    server = start_vllm(model_dir, run_dir / "vllm.log", max_model_len=max_len, port=port, name="policy")
    print(f"serving at {server.base_url}; use it with\n  --set generation.backend=openai "
          f"--set generation.base_url={server.base_url}\nCtrl-C stops the server.")
    try:
        while server.alive():
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m qlass_lib", description=__doc__, epilog=_EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the notebook series from one params file")
    r.add_argument("params", help="params YAML file, e.g. params/default.yaml")
    r.add_argument("--force", action="store_true", help="rerun every selected stage, replacing its results")
    r.add_argument("--overwrite", default=None, metavar="STAGE",
                   help="allow replacing the results of STAGE and later stages when the params changed")
    r.add_argument("--reuse", action="store_true",
                   help="keep complete stages whose code/packages/upstream changed (recorded in their manifests)")
    r.add_argument("--only", default=None, help="comma-separated stage numbers, e.g. 01,02")
    r.add_argument("--run-id", default=None, help="override run_id")
    r.add_argument("--set", dest="sets", action="append", default=[], help="override a key, e.g. bc.max_steps=200")
    c = sub.add_parser("check", help="validate a params file and the prerequisites it names")
    c.add_argument("params")
    c.add_argument("--set", dest="sets", action="append", default=[], help="override a key, as for run")
    rp = sub.add_parser("report", help="print a markdown summary of a finished run")
    rp.add_argument("run_dir", help="e.g. runs/default")
    b = sub.add_parser("bench", help="time the hot path (M candidates vs one, KV cache, QNet scoring) on a run")
    b.add_argument("run_dir", help="a run with stage 01 done, e.g. runs/default")
    b.add_argument("--states", type=int, default=60, help="evaluation-episode states to replay")
    b.add_argument("--m", type=int, default=4, help="candidates per state")
    b.add_argument("--search-tasks", type=int, default=0,
                   help="also time the search stage on this many held-out tasks, with and without the KV cache")
    b.add_argument("--train-steps", type=int, default=0, help="also time this many BC training steps (tokens/s)")
    b.add_argument("--decoding-precision", type=int, default=0, metavar="STATES",
                   help="also time decoding on this many states under bf16 autocast and in fp32 (model.bf16_decoding)")
    bp = sub.add_parser("bench-parallel", help="hf vs openai (vLLM) tokens/s and tree-stage wall time on 1 vs 2 Ray workers")
    bp.add_argument("run_dir", help="a run with stage 01 done, e.g. runs/default")
    bp.add_argument("--states", type=int, default=40, help="evaluation-episode states to sample at")
    bp.add_argument("--m", type=int, default=4, help="candidates per state")
    bp.add_argument("--tasks", type=int, default=8, help="training tasks whose trees each configuration builds")
    sv = sub.add_parser("serve", help="start a vLLM OpenAI server (.venv-vllm) on a run's BC policy and wait")
    sv.add_argument("run_dir", help="a run with stage 01 done, e.g. runs/default")
    sv.add_argument("--port", type=int, default=8000)
    ins = sub.add_parser("inspect", help="write runs/<id>/inspector.html: every tree, Q targets, QNet predictions")
    ins.add_argument("run_dir", help="a run with stage 02 done, e.g. runs/default")
    ins.add_argument("--no-qnet", action="store_true", help="leave out the QNet's predictions")
    la = sub.add_parser("lookahead", help="diagnostic: rankers (sampling, log pi, QNet, lookahead oracle) on the same "
                        "candidates, and how well each ranks the states search visits")
    la.add_argument("run_dir", help="a run with stages 01-04 done, e.g. runs/default")
    la.add_argument("--split", default="dev", help="task split (default dev; the test split is for final tables)")
    la.add_argument("--per-type", type=int, default=15, help="tasks per task type")
    la.add_argument("--m", type=int, default=None, help="candidates per step (default: the run's smallest M)")
    la.add_argument("--seeds", type=int, nargs="+", default=None, help="search seeds (default: the run's first)")
    la.add_argument("--rankers", nargs="+", default=None, help="subset of: sample policy qnet lookahead")
    gc = sub.add_parser("gpu-check", help="the GPU path (4-bit NF4, LoRA, bf16) on a random-initialized Llama: "
                        "BC, adapter round trip, sampling, QNet, precision; timed, with peak memory")
    gc.add_argument("run_dir", help="a run with stages 01 and 03 done (its expert and QNet data are used)")
    gc.add_argument("--out", required=True, help="folder for the random base model, adapters and gpu_check.json")
    gc.add_argument("--shape", choices=["tiny", "1b", "7b"], default="7b", help="Llama shape (7b = Llama-2-7B's)")
    gc.add_argument("--no-4bit", action="store_true", help="bf16/fp32 weights even on CUDA (4-bit is CUDA-only)")
    gc.add_argument("--bc-steps", type=int, default=12, help="BC optimizer steps")
    gc.add_argument("--batch-tokens", type=int, default=8192, help="tokens per BC step")
    gc.add_argument("--qnet-steps", type=int, default=8, help="QNet optimizer steps")
    an = sub.add_parser("annotations", help="fewer-annotations experiment: the series per share of expert data, one table")
    an.add_argument("params")
    an.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.5, 0.25],
                    help="shares of the expert trajectories BC trains on (1 = the ordinary run)")
    an.add_argument("--set", dest="sets", action="append", default=[], help="override a key, as for run")
    an.add_argument("--reuse", action="store_true", help="as for run: keep complete stages whose code changed")
    es = sub.add_parser("expert-survey", help="the env's expert on a seeded sample of a split: wins, steps and "
                        "seconds per game, per task type")
    es.add_argument("params", help="params file whose env section (and expert) is surveyed")
    es.add_argument("--split", default="train", help="task split (default train)")
    es.add_argument("--per-type", type=int, default=10, help="games per task type, drawn with --seed")
    es.add_argument("--seed", type=int, default=0, help="seed of the sample")
    es.add_argument("--repeats", type=int, default=1, help="runs of the expert per game (2+ checks determinism)")
    es.add_argument("--out", default=None, help="output folder (default runs/<run_id>-expert-survey-<split>)")
    es.add_argument("--set", dest="sets", action="append", default=[], help="override a key, as for run")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "annotations":
            from qlass_lib.diagnostics import annotations
            from qlass_lib.run.pipeline import load_run_config
            dirs = annotations.run_fractions(args.params, args.fractions, parse_set(args.sets), reuse=args.reuse)
            out = dirs[0].parent / f"{load_run_config(args.params, parse_set(args.sets))[0].run_id}-annotations"
            tab = annotations.write(dirs, out)
            print(tab.round(2).to_string(index=False))
            print(f"wrote {out / 'annotations.csv'}")
            return 0
        if args.cmd == "lookahead":
            from qlass_lib.diagnostics import lookahead
            if not (Path(args.run_dir) / "params.json").is_file():
                raise ConfigError(f"no run at {args.run_dir} (expected a folder written by 'python -m qlass_lib run')")
            bad = sorted(set(args.rankers or []) - set(lookahead.RANKERS))
            if bad:
                raise ConfigError(f"unknown rankers {bad} (choose from {', '.join(lookahead.RANKERS)})")
            res = lookahead.diagnose(args.run_dir, args.split, args.per_type, args.m, args.seeds,
                                     tuple(args.rankers or lookahead.RANKERS))
            print(lookahead.markdown(res))
            print(f"wrote {res['out']}")
            return 0
        if args.cmd == "expert-survey":
            from qlass_lib.diagnostics import expert_survey
            from qlass_lib.core.paths import project_root
            from qlass_lib.run.pipeline import load_run_config
            if args.per_type < 1 or args.repeats < 1:
                raise ConfigError("--per-type and --repeats must be at least 1")
            out = args.out or (project_root() / "runs" / f"{load_run_config(args.params, parse_set(args.sets))[0].run_id}"
                                                           f"-expert-survey-{args.split}")
            res = expert_survey.survey(args.params, out, args.split, args.per_type, args.seed, args.repeats,
                                       parse_set(args.sets))
            print(expert_survey.markdown(res["table"]))
            print(f"wrote {res['out']}")
            return 0
        if args.cmd == "gpu-check":
            from qlass_lib.diagnostics import gpu_check
            data = gpu_check.run_check(args.run_dir, args.out, args.shape, False if args.no_4bit else None,
                                       args.bc_steps, args.batch_tokens, args.qnet_steps)
            print(gpu_check.markdown(data))
            failed = [k for k, v in data["sections"].items() if not v["ok"]]
            return 1 if failed else 0
        if args.cmd == "inspect":
            from qlass_lib.viz.inspector import write_html
            if not (Path(args.run_dir) / "02_tree_construction" / "trees.jsonl").is_file():
                raise ConfigError(f"no trees in {args.run_dir} (run stage 02 first)")
            print(f"wrote {write_html(args.run_dir, qnet=not args.no_qnet)}")
            return 0
        if args.cmd in ("bench-parallel", "serve"):
            if not (Path(args.run_dir) / "01_behavior_cloning" / "policy").is_dir():
                raise ConfigError(f"no BC policy in {args.run_dir} (run stage 01 first)")
        if args.cmd == "bench-parallel":
            from qlass_lib.diagnostics.bench_parallel import bench_parallel, markdown
            print(markdown(bench_parallel(args.run_dir, args.states, args.m, args.tasks)))
            return 0
        if args.cmd == "serve":
            return _serve(Path(args.run_dir), args.port)
        if args.cmd == "bench":
            from qlass_lib.diagnostics.bench import bench, markdown
            if not (Path(args.run_dir) / "params.json").is_file():
                raise ConfigError(f"no run at {args.run_dir} (expected a folder written by 'python -m qlass_lib run')")
            print(markdown(bench(args.run_dir, args.states, args.m, search_tasks=args.search_tasks,
                                 train_steps=args.train_steps, precision_states=args.decoding_precision)))
            return 0
        if args.cmd == "report":
            from qlass_lib.report import summarize_run
            if not (Path(args.run_dir) / "params.json").is_file():
                raise ConfigError(f"no run at {args.run_dir} (expected a folder written by 'python -m qlass_lib run')")
            print(summarize_run(args.run_dir))
            return 0
        from qlass_lib.run.pipeline import load_run_config, run
        if args.cmd == "check":
            from qlass_lib.core.paths import project_root
            from qlass_lib.run.preflight import preflight
            cfg, _ = load_run_config(args.params, parse_set(args.sets))
            preflight(cfg, project_root())
            print(f"{args.params}: ok (run_id={cfg.run_id})")
            return 0
        overwrite = _stages(args.overwrite)
        out = run(args.params, args.force, _stages(args.only), parse_set(args.sets), args.run_id,
                  overwrite=overwrite[0] if overwrite else None, reuse=args.reuse)
        print(f"run finished: {out}")
        return 0
    except (ConfigError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
