"""One module per stage of the series: ``run(ctx) -> <Stage>Result``.

Each ``run`` does the stage's work, writes every artifact of the stage folder (tables, JSON, PNG figures) and
returns a typed result; the notebooks call it and display what it returns, and ``report`` reads the same
artifacts.  Stage keys, folders and modules come from :mod:`qlass_lib.core.series`.
"""
from __future__ import annotations

from qlass_lib.core.series import MODULES, STAGES


def stage_module(key: str):
    """The module that runs stage ``key`` (``"01"`` .. ``"06"``)."""
    import importlib
    return importlib.import_module(f"{__name__}.{MODULES[key]}")


def close_figure(fig) -> None:
    """Figures are saved as PNG and closed: notebooks show the PNG, so outputs stay one image per figure."""
    import matplotlib.pyplot as plt
    plt.close(fig)


__all__ = ["STAGES", "MODULES", "stage_module", "close_figure"]
