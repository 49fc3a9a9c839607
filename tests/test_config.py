from pathlib import Path

import pytest
import yaml

from qlass_lib.core.config import ConfigError, RunConfig, field_docs, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_all_shipped_params_validate():
    files = sorted((ROOT / "params").glob("*.yaml"))
    assert {"smoke.yaml", "default.yaml"} <= {f.name for f in files}
    for f in files:
        load_config(f)


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("bc:\n  lerning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bc\.lerning_rate"):
        load_config(p)
    p.write_text("bogus: 1\n")
    with pytest.raises(ConfigError, match="'bogus'"):
        load_config(p)


def test_wrong_types_are_named(tmp_path):
    p = tmp_path / "p.yaml"
    for text, key in [("bc:\n  max_epochs: many\n", "bc.max_epochs"), ("model:\n  bf16: 1\n", "model.bf16"),
                      ("env:\n  task_types: boil\n", "env.task_types"), ("env:\n  eval_split: val\n", "env.eval_split"),
                      ("tree:\n  sampling:\n    temperature: hot\n", "tree.sampling.temperature")]:
        p.write_text(text)
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(p)


def test_plan_notes_need_the_alfworld_searcher(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("expert:\n  thoughts: plan\n")  # the default env is ScienceWorld: its expert keeps no plan
    with pytest.raises(ConfigError, match=r"expert\.thoughts"):
        load_config(p)
    p.write_text("env:\n  name: alfworld\n  alfworld_expert: planner\nexpert:\n  thoughts: plan\n")
    with pytest.raises(ConfigError, match=r"expert\.thoughts"):
        load_config(p)
    p.write_text("env:\n  name: alfworld\n  alfworld_expert: searcher\nexpert:\n  thoughts: plan\n")
    assert load_config(p).expert.thoughts == "plan"


def test_int_accepted_for_float_and_defaults_fill_in(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("bc:\n  learning_rate: 1\n")
    cfg = load_config(p)
    assert cfg.bc.learning_rate == 1.0 and isinstance(cfg.bc.learning_rate, float)
    assert cfg.qvalues.gamma == 0.9 and cfg.tree.sampling.temperature == 0.7


def test_every_field_has_a_doc():
    docs = field_docs(RunConfig)
    missing = [k for k, v in docs.items() if not v]
    assert not missing, missing


def _deps(names):
    import re
    return {re.split(r"[<>=!~\[ ]", n.strip())[0].lower() for n in names if n and not n.startswith("-")}


def test_environment_yml_matches_pyproject():
    import tomllib
    pp = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    want = _deps(pp["dependencies"] + pp["optional-dependencies"]["dev"] + pp["optional-dependencies"]["scale"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _deps(pip) == want
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert any(d.startswith("python") for d in conda) and any(d.startswith("openjdk") for d in conda)
