"""The series, defined once: each stage's key, its folder and notebook name, the module that runs it, the config
sections it reads (its fingerprint's params) and, for optional stages, the params switch that turns it on."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    key: str               # "01" .. "06"
    name: str              # folder under runs/<run_id>/ and notebook stem under notebooks/
    module: str            # module of qlass_lib.stages with run(ctx)
    sections: tuple        # config sections the stage reads (a stage also depends on everything upstream)
    switch: str | None = None  # params switch of an optional stage


SERIES = (
    Stage("01", "01_behavior_cloning", "behavior_cloning", ("seed", "env", "expert", "model", "bc")),
    Stage("02", "02_tree_construction", "trees", ("tree",)),
    Stage("03", "03_q_values", "q_values", ("qvalues",)),
    Stage("04", "04_qnet_training", "qnet_training", ("qnet",)),
    Stage("05", "05_guided_search", "guided_search", ("search",)),
    Stage("06", "06_self_training", "self_training", ("self_training",), switch="self_training.enabled"),
)
STAGES = {s.key: s.name for s in SERIES}                     # key -> folder/notebook name
OPTIONAL = {s.key: s.switch for s in SERIES if s.switch}     # key -> the params switch that turns it on
STAGE_SECTIONS = {s.key: list(s.sections) for s in SERIES}   # key -> config sections it reads
MODULES = {s.key: s.module for s in SERIES}                  # key -> module of qlass_lib.stages
