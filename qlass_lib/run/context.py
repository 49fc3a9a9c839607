"""What every notebook opens first: the validated config, the run folder, seeding and quiet logging."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qlass_lib.core.config import RunConfig, load_config
from qlass_lib.models.loading import quiet_hf
from qlass_lib.core.paths import project_root

from qlass_lib.core.series import STAGES


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def absolutize(cfg: RunConfig, root: Path) -> RunConfig:
    """Make the path-valued params absolute (relative paths are taken from the project root), so that
    notebooks, whose working directory is notebooks/, read the same files as the runner."""
    from qlass_lib.core.paths import looks_like_path, resolve_path

    def fix(p):
        return None if p is None else str(resolve_path(p, root).resolve())
    cfg.env.split_dir = fix(cfg.env.split_dir)
    cfg.env.data_dir = fix(cfg.env.data_dir)
    cfg.env.cache_dir = fix(cfg.env.cache_dir)
    cfg.env.eval_task_file = fix(cfg.env.eval_task_file)
    cfg.expert.sft_file = fix(cfg.expert.sft_file)
    m = cfg.model.model_name_or_path
    if m != "embedded-tiny" and looks_like_path(m, root):
        cfg.model.model_name_or_path = fix(m)
    return cfg


@dataclass
class RunContext:
    cfg: RunConfig
    run_dir: Path

    @classmethod
    def open(cls, params_path: str | None, run_dir: str | None = None, overrides: dict | None = None) -> "RunContext":
        """Load + validate params; ``run_dir`` defaults to ``runs/<run_id>`` under the project root."""
        quiet_hf()
        if params_path is not None and not Path(params_path).is_absolute():
            candidate = project_root() / params_path
            params_path = str(candidate) if candidate.exists() else params_path
        cfg = absolutize(load_config(params_path, overrides), project_root())
        rd = Path(run_dir) if run_dir else project_root() / "runs" / cfg.run_id
        rd.mkdir(parents=True, exist_ok=True)
        from qlass_lib.run.runlock import claim_for_kernel
        claim_for_kernel(rd)  # one writer per run folder
        seed_everything(cfg.seed)
        torch.set_num_threads(max(1, torch.get_num_threads()))
        return cls(cfg, rd)

    def stage_dir(self, key: str) -> Path:
        d = self.run_dir / STAGES[key]
        d.mkdir(parents=True, exist_ok=True)
        return d

    def policy(self, env_name: str | None = None):
        """The behavior-cloned policy saved by stage 01, ready to act through ``generation.backend``."""
        from qlass_lib.models.generation import make_policy
        return make_policy(self.cfg, self.run_dir / STAGES["01"] / "policy", env_name)

    def expert_actions(self) -> dict[str, list[str]]:
        """task id -> expert action list, from stage 01's expert file (empty when it has none)."""
        from qlass_lib.core.artifacts import read_jsonl
        from qlass_lib.text.expert import expert_subset
        records = expert_subset(read_jsonl(self.run_dir / STAGES["01"] / "expert.jsonl"), self.cfg.bc.expert_fraction)
        return {r["id"]: r["actions"] for r in records if "actions" in r}

    def expert_records(self) -> list[dict]:
        """The expert trajectories BC trained on (``bc.expert_fraction`` of stage 01's file, with its example)."""
        from qlass_lib.core.artifacts import read_jsonl
        from qlass_lib.text.expert import expert_subset
        from qlass_lib.text.expert import load_eto_sft, with_example
        if self.cfg.expert.sft_file:
            records = load_eto_sft(self.resolve(self.cfg.expert.sft_file))
        else:
            records = [r for r in read_jsonl(self.run_dir / STAGES["01"] / "expert.jsonl") if "conversations" in r]
        return expert_subset(with_example(records, self.cfg.env.name, self.example()), self.cfg.bc.expert_fraction)

    def bc_base(self) -> str:
        """The model stage 01 fine-tuned from (after the tiny model's pretraining, when it had one)."""
        d = self.run_dir / STAGES["01"]
        for name in ("pretrained_base", "base_model"):
            if (d / name / "config.json").is_file():
                return str(d / name)
        return self.cfg.model.model_name_or_path

    def example(self):
        """The one-shot demonstration chosen by stage 01 (None unless expert.one_shot)."""
        import json
        p = self.run_dir / STAGES["01"] / "prompt_example.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def resolve(self, path: str | None) -> Path | None:
        """A user path from params: relative paths are taken from the project root."""
        from qlass_lib.core.paths import resolve_path
        return None if path is None else resolve_path(path, project_root())
