"""The notebooks: paired with their py:percent scripts, a tagged parameters cell, clean, one stage module each."""
from pathlib import Path

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))


def _cells(nb):
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", []))) for c in nb.cells]


def test_every_stage_has_a_notebook():
    from qlass_lib.core.series import STAGES
    assert [p.stem for p in NOTEBOOKS] == list(STAGES.values())


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_and_script_are_in_sync(path):
    script = path.with_suffix(".py")
    assert script.is_file(), f"{script.name} missing: run `make notebooks`"
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent"
    paired = jupytext.read(script)
    assert _cells(nb) == _cells(paired), f"{path.name} and {script.name} differ: run `make notebooks`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_clean_and_parameterized(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "params_path" in tagged[0].source
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    from qlass_lib.stages import MODULES
    key = path.stem[:2]
    assert f"from qlass_lib.stages import {MODULES[key]} as stage" in "".join(c.source for c in nb.cells)
