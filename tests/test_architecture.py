"""The shape of the library: packages by role in one direction, no import circles, small modules.

Every ``import`` in ``qlass_lib`` (also those inside functions) is read from the source, so a circle hidden in a
lazy import counts too.
"""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "qlass_lib"
# lowest first: a package imports only packages before it (and its own modules); the entry points (cli, report,
# __main__) sit on top
LAYERS = ["core", "envs", "text", "models", "method", "analysis", "run", "viz", "stages", "diagnostics"]
ENTRY_POINTS = {"qlass_lib.cli", "qlass_lib.report", "qlass_lib.__main__"}
MAX_LINES = 320


def _modules() -> dict[str, Path]:
    out = {}
    for p in LIB.rglob("*.py"):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    edges = {m: set() for m in mods}
    for m, p in mods.items():
        package = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            edges[m].update(n for n in names if n in mods and n != m and n != "qlass_lib")
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def _package(module: str) -> str | None:
    if module in ENTRY_POINTS or module == "qlass_lib":
        return None
    return module.split(".")[1]


def test_the_import_graph_reads_its_own_lazy_imports():
    edges = _graph()
    assert "qlass_lib.method.search" in edges["qlass_lib.stages.guided_search"]  # imported inside run()
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles():
    assert _cycles(_graph()) == []


def test_packages_import_only_the_layers_below_them():
    wrong = []
    for a, targets in _graph().items():
        pa = _package(a)
        for b in targets:
            pb = _package(b)
            if pa is None or pb is None or pa == pb:  # entry points may import anything
                continue
            assert pa in LAYERS and pb in LAYERS, (a, b)
            if LAYERS.index(pb) > LAYERS.index(pa):
                wrong.append(f"{a} -> {b}")
    assert wrong == []
    assert sorted(p.name for p in LIB.iterdir() if p.is_dir() and (p / "__init__.py").is_file()) == sorted(LAYERS)


def test_modules_are_small():
    big = {m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}


def test_the_method_is_in_one_folder():
    method = {p.stem for p in (LIB / "method").glob("*.py")}
    assert {"bc", "rollout", "tree", "qvalues", "qnet", "qnet_train", "search", "selection"} <= method
    # one QLASS step, sample -> score -> act, in four files: method/rollout.py (the loop that acts),
    # method/search.py (qlass_chooser), models/policy.py (M candidates from one prefill), method/qnet.py (scores)
    edges = _graph()
    assert "qlass_lib.method.rollout" in edges["qlass_lib.method.search"]
    assert "qlass_lib.models.policy" in edges["qlass_lib.method.search"]
    search = (LIB / "method" / "search.py").read_text()
    chooser = search[search.index("def qlass_chooser"):search.index("def _qlass_turn")]
    assert "policy.propose(state, m, sampling, budget)" in chooser and "qnet.score(state" in chooser
    assert "ranked_chooser(propose, value" in chooser


def test_one_way_to_act():
    """Agents act through one loop and one step: outside the environments, only ``method/rollout.py`` steps an
    env (``act``) or loops over turns (``play``); the expert's replay of its gold actions is text preparation.
    Trees, episodes and the lookahead diagnostic call ``play``; QLASS and the lookahead rankers share
    ``search.ranked_chooser``; episode logs are written by ``rollout.episode_record``."""
    stepping = {m for m, p in _modules().items() if re.search(r"\benv\.(step|skip_turn)\(|self\.env\.step\(",
                                                              p.read_text()) and ".envs." not in m}
    assert stepping == {"qlass_lib.method.rollout", "qlass_lib.text.expert"}
    for mod in ("method/tree.py", "method/rollout.py", "diagnostics/lookahead.py"):
        assert "play(" in (LIB / mod).read_text(), mod
    assert "search_chooser(" in (LIB / "diagnostics" / "lookahead.py").read_text()
    for mod in ("method/search.py", "method/evaluation.py", "method/self_training.py", "diagnostics/lookahead.py"):
        assert "episode_record(" in (LIB / mod).read_text(), mod
    for mod in ("method/bc.py", "method/qnet_data.py", "method/prior.py"):
        text = (LIB / mod).read_text()
        assert "collate(" in text and "pad(" not in text, mod  # the one collator
