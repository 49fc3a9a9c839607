"""Write the numbered notebooks from the cell lists below (clean: no outputs).

The notebooks are the source users open and edit; this script is how the project keeps them uniform.
Run: python tools/make_notebooks.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from notebook_cells import NOTEBOOKS  # noqa: E402

PARAMS = '''# Parameters (papermill injects its own values below this cell)
params_path = "../params/default.yaml"  # the params file of the run
run_dir = ""  # empty means runs/RUN_ID under the project root
overrides = {}  # nested params overrides, for example {"bc": {"max_minutes": 1.0}}'''


def build(name: str, cells: list[tuple[str, str]]) -> None:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    out = []
    for kind, src in cells:
        src = src.strip("\n")
        if kind == "md":
            out.append(new_markdown_cell(src))
        elif kind == "params":
            c = new_code_cell(PARAMS)
            c.metadata["tags"] = ["parameters"]
            out.append(c)
        else:
            out.append(new_code_cell(src))
    for i, c in enumerate(out):
        c["id"] = f"{name[:2]}-{i:02d}"
    nb.cells = out
    nbformat.write(nb, ROOT / "notebooks" / f"{name}.ipynb")


if __name__ == "__main__":
    for name, cells in NOTEBOOKS.items():
        build(name, cells)
        print("wrote", name)
