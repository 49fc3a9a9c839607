"""The README is a guide that stays true: everything it names exists, and it stays short."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_is_short():
    assert len(README.encode()) <= 12 * 1024


def test_every_notebook_params_file_and_doc_it_names_exists():
    named = set(re.findall(r"notebooks/\d\d_\w+\.ipynb", README))
    assert named and all((ROOT / n).is_file() for n in named)
    params = set(re.findall(r"params/([\w.-]+\.yaml)", README)) | set(re.findall(r"`([\w-]+\.yaml)`", README))
    assert "default.yaml" in params and [p for p in sorted(params) if not (ROOT / "params" / p).is_file()] == []
    docs = set(re.findall(r"\]\(([\w/.-]+\.md)\)", README)) | set(re.findall(r"`(docs/[\w.-]+\.md)`", README))
    assert docs and [d for d in sorted(docs) if not (ROOT / d).is_file()] == []
    modules = set(re.findall(r"`(?:qlass_lib/)?((?:method|models|core|run|envs|text|stages)/\w+\.py)`", README))
    assert [m for m in sorted(modules) if not (ROOT / "qlass_lib" / m).is_file()] == []


def test_every_make_target_it_names_exists():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    named = set(re.findall(r"`make ([a-z][\w-]*)", README)) | set(re.findall(r"^make ([a-z][\w-]*)", README, re.M))
    assert {"run", "test"} <= named and sorted(named - targets) == []


def test_every_cli_command_it_names_exists():
    from qlass_lib.cli import main
    import contextlib
    import io
    commands = set(re.findall(r"python -m qlass_lib ([a-z-]+)", README))
    assert commands
    for c in sorted(commands):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                main([c, "--help"])
            except SystemExit as exc:
                assert exc.code == 0, c
