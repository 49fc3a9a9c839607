"""Tree inspector: an ipywidgets viewer for saved trees, plus static renderings (HTML and a plotted graph)
that survive in papermill's executed notebooks, where widget state is not saved."""
from __future__ import annotations

import html

import ipywidgets as W

from qlass_lib.method.tree import Tree


def _color(q: float | None) -> str:
    """White -> green by normalized Q; grey when unknown."""
    if q is None:
        return "#eeeeee"
    q = min(max(q, 0.0), 1.0)
    r, g, b = int(255 - 155 * q), int(255 - 40 * q), int(255 - 155 * q)
    return f"#{r:02x}{g:02x}{b:02x}"


def best_path(tree: Tree) -> set[int]:
    """Node ids on the path from the root to the best leaf (highest score, then highest Q, then shallowest)."""
    leaves = tree.leaves()
    if not leaves:
        return {0}
    best = max(leaves, key=lambda n: (n.score, n.q if n.q is not None else 0.0, -n.depth))
    return {n.id for n in tree.path(best.id)}


def _label(n) -> str:
    if n.parent is None:
        return "ROOT (task)"
    act = n.action if n.action is not None else "<no action>"
    q = "-" if n.q_norm is None else f"{n.q_norm:.2f}"
    return f"{act}  [Q̂={q} r={n.score:.2f}{' T' if n.terminal else ''}]"


class TreeInspector:
    """Expand/collapse nodes, see action/observation/reward/Q, filter by depth, colour by Q, best path."""

    def __init__(self, tree: Tree, expand_depth: int = 1, predictions: dict[int, float] | None = None):
        self.tree = tree
        self.predictions = predictions or {}  # node id -> QNet value, when a QNet scored this tree
        self.expanded = {n.id for n in tree.nodes if n.depth < expand_depth}
        self.best = best_path(tree)
        max_depth = max(n.depth for n in tree.nodes)
        self.depth = W.IntSlider(value=max_depth, min=0, max=max_depth, description="max depth")
        self.highlight = W.Checkbox(value=True, description="highlight best path")
        self.select = W.Select(options=[], rows=14, layout=W.Layout(width="60%"))
        self.toggle = W.Button(description="expand / collapse")
        self.expand_all = W.Button(description="expand all")
        self.detail = W.HTML()
        self.overview = W.HTML()
        self.depth.observe(lambda _: self.refresh(), names="value")
        self.highlight.observe(lambda _: self.refresh(), names="value")
        self.select.observe(lambda _: self._show_detail(), names="value")
        self.toggle.on_click(lambda _: self.toggle_node(self.select.value))
        self.expand_all.on_click(lambda _: self._expand_all())
        self.widget = W.VBox([
            W.HTML(f"<b>{html.escape(tree.task.id)}</b>: {html.escape(tree.task_text)}"),
            W.HBox([self.depth, self.highlight, self.toggle, self.expand_all]),
            W.HBox([self.select, self.detail]), self.overview])
        self.refresh()

    def visible(self) -> list[int]:
        """Node ids shown: children of expanded nodes, within the depth filter, in depth-first order."""
        out, stack = [], [0]
        while stack:
            nid = stack.pop()
            n = self.tree.nodes[nid]
            if n.depth > self.depth.value:
                continue
            out.append(nid)
            if nid in self.expanded:
                stack.extend(reversed(n.children))
        return out

    def toggle_node(self, nid: int | None) -> None:
        if nid is None:
            return
        self.expanded.symmetric_difference_update({nid})
        self.refresh()

    def _expand_all(self):
        self.expanded = {n.id for n in self.tree.nodes}
        self.refresh()

    def refresh(self) -> None:
        keep = self.select.value
        opts = []
        for nid in self.visible():
            n = self.tree.nodes[nid]
            mark = ("▾ " if nid in self.expanded else "▸ ") if n.children else "  "
            star = "★ " if self.highlight.value and nid in self.best else ""
            opts.append(("    " * n.depth + mark + star + _label(n), nid))
        self.select.options = opts
        ids = [v for _, v in opts]
        self.select.value = keep if keep in ids else (ids[0] if ids else None)
        self.overview.value = render_html(self.tree, max_depth=self.depth.value, highlight=self.highlight.value,
                                          only=set(ids))
        self._show_detail()

    def _show_detail(self) -> None:
        nid = self.select.value
        if nid is None:
            self.detail.value = ""
            return
        n = self.tree.nodes[nid]
        rows = [("node", n.id), ("depth", n.depth), ("source", n.source), ("action", n.action),
                ("agent text", n.text), ("reward (step)", f"{n.reward:.3f}"), ("score", f"{n.score:.3f}"),
                ("terminal", n.terminal), ("Q", "-" if n.q is None else f"{n.q:.4f}"),
                ("normalized Q", "-" if n.q_norm is None else f"{n.q_norm:.4f}"),
                ("rollout reward", f"{n.rollout_reward:.2f}"), ("children", len(n.children))]
        if nid in self.predictions:
            rows.append(("QNet value", f"{self.predictions[nid]:.4f}"))
        body = "".join(f"<tr><td><b>{k}</b></td><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
        obs = html.escape(n.observation).replace("\n", "<br>")
        self.detail.value = (f"<div style='background:{_color(n.q_norm)};padding:4px'><table>{body}</table>"
                             f"<div style='font-family:monospace;font-size:11px'>{obs}</div>"
                             f"{siblings_html(self.tree, nid, self.predictions)}</div>")

    @staticmethod
    def for_run(run_dir, qnet: bool = True) -> "RunInspector":
        """Pick any tree of a run (by task, with its outcome); see :class:`RunInspector`."""
        return RunInspector(run_dir, qnet)

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)


def render_html(tree: Tree, max_depth: int | None = None, highlight: bool = True, only: set[int] | None = None,
                obs_chars: int = 80) -> str:
    """A static nested-list rendering, coloured by normalized Q, best path in bold."""
    best = best_path(tree) if highlight else set()

    def rec(nid: int) -> str:
        n = tree.nodes[nid]
        if (max_depth is not None and n.depth > max_depth) or (only is not None and nid not in only):
            return ""
        obs = html.escape(n.observation[:obs_chars].replace("\n", " "))
        style = f"background:{_color(n.q_norm)};" + ("font-weight:bold;" if nid in best else "")
        kids = "".join(rec(c) for c in n.children)
        kids = f"<ul style='margin:0;padding-left:18px'>{kids}</ul>" if kids else ""
        return (f"<li><span style='{style}'>{html.escape(_label(n))}</span> "
                f"<span style='color:#777;font-size:11px'>{obs}</span>{kids}</li>")

    return (f"<div style='font-family:monospace;font-size:12px'><b>{html.escape(tree.task.id)}</b> "
            f"({len(tree.nodes)} nodes)<ul style='margin:0;padding-left:10px'>{rec(0)}</ul></div>")


def plot_tree(tree: Tree, path=None, ax=None):
    """Nodes placed by depth (y) and leaf order (x), coloured by normalized Q; best path drawn thick."""
    import matplotlib.pyplot as plt
    xs: dict[int, float] = {}
    counter = [0]

    def place(nid):
        n = tree.nodes[nid]
        if not n.children:
            xs[nid] = counter[0]
            counter[0] += 1
        else:
            for c in n.children:
                place(c)
            xs[nid] = sum(xs[c] for c in n.children) / len(n.children)

    place(0)
    best = best_path(tree)
    if ax is None:
        fig, ax = plt.subplots(figsize=(min(14, max(7, 2 + 0.25 * counter[0])), 4))
    for n in tree.nodes:
        if n.parent is not None:
            on = n.id in best and n.parent in best
            ax.plot([xs[n.parent], xs[n.id]], [-tree.nodes[n.parent].depth, -n.depth], "-",
                    color="black" if on else "#bbbbbb", lw=2.5 if on else 0.8, zorder=1)
    q = [n.q_norm if n.q_norm is not None else 0.0 for n in tree.nodes]
    sc = ax.scatter([xs[n.id] for n in tree.nodes], [-n.depth for n in tree.nodes], c=q, cmap="viridis",
                    vmin=0, vmax=1, s=25, zorder=2, edgecolors=["red" if n.source == "expert" else "none"
                                                                 for n in tree.nodes])
    ax.set_yticks([-d for d in range(max(n.depth for n in tree.nodes) + 1)])
    ax.set_yticklabels(range(max(n.depth for n in tree.nodes) + 1))
    ax.set_ylabel("depth")
    ax.set_xticks([])
    ax.set_title(f"{tree.task.id}: {len(tree.nodes)} nodes (colour = normalized Q, red edge = expert)")
    ax.figure.colorbar(sc, ax=ax, fraction=0.03)
    if path is not None:
        ax.figure.savefig(path, dpi=110, bbox_inches="tight")
    return ax.figure


def siblings_html(tree: Tree, nid: int, predictions: dict[int, float] | None = None) -> str:
    """The node and its siblings side by side: action, step reward, rollout reward, Q target, QNet value."""
    n = tree.nodes[nid]
    if n.parent is None:
        return ""
    predictions = predictions or {}
    head = "<tr><th>action</th><th>reward</th><th>rollout</th><th>Q target</th><th>QNet</th></tr>"
    rows = []
    for cid in tree.nodes[n.parent].children:
        c = tree.nodes[cid]
        q = "-" if c.q_norm is None else f"{c.q_norm:.3f}"
        p = f"{predictions[cid]:.3f}" if cid in predictions else "-"
        weight = "font-weight:bold;" if cid == nid else ""
        rows.append(f"<tr style='{weight}background:{_color(c.q_norm)}'><td>{html.escape(str(c.action))}</td>"
                    f"<td>{c.reward:.2f}</td><td>{c.rollout_reward:.2f}</td><td>{q}</td><td>{p}</td></tr>")
    return f"<p><b>siblings</b></p><table class='qlass-siblings'>{head}{''.join(rows)}</table>"


def tree_outcome(tree: Tree) -> str:
    leaves = tree.leaves()
    best = max((n.score for n in leaves), default=0.0)
    return f"{tree.task.id}: {len(tree.nodes)} nodes, best leaf {best:.2f}"


def load_run_trees(run_dir) -> list[Tree]:
    """A run's trees with their Q targets (stage 03's ``trees_q.jsonl``; else stage 02's, Q computed here)."""
    from pathlib import Path

    from qlass_lib.method import qvalues
    from qlass_lib.core.artifacts import read_json
    from qlass_lib.core.series import STAGES
    from qlass_lib.method.tree import load_trees
    rd = Path(run_dir)
    q = rd / STAGES["03"] / "trees_q.jsonl"
    if q.is_file():
        return load_trees(q)
    trees = load_trees(rd / STAGES["02"] / "trees.jsonl")
    gamma = read_json(rd / "params.json").get("qvalues", {}).get("gamma", 0.9) if (rd / "params.json").is_file() else 0.9
    qvalues.compute(trees, gamma, "tree")
    return trees


def run_qnet(run_dir):
    """A run's trained ``q`` QNet with its env name and one-shot example, or None before stage 04."""
    from pathlib import Path

    from qlass_lib.core.artifacts import read_json
    from qlass_lib.core.config import load_config
    from qlass_lib.core.series import STAGES
    from qlass_lib.method.qnet import load_qnet
    rd = Path(run_dir)
    qdir = rd / STAGES["04"] / "qnet_q"
    if not (qdir / "value_head.safetensors").is_file():
        return None
    cfg = load_config(rd / "params.json")
    ex = rd / STAGES["01"] / "prompt_example.json"
    return load_qnet(qdir, cfg.model), cfg.env.name, (read_json(ex) if ex.is_file() else None)


def qnet_predictions(tree: Tree, qnet, env_name: str, example=None) -> dict[int, float]:
    """The QNet's value of every non-root node of ``tree`` (the state before the node, its agent turn)."""
    out, stack = {}, [0]
    while stack:  # depth first, so each parent's state extends the last one scored (the QNet's prefix cache)
        nid = stack.pop()
        kids = tree.nodes[nid].children
        if kids:
            vals = qnet.score(tree.state(nid, env_name, example), [tree.nodes[c].text or "" for c in kids])
            out.update(zip(kids, vals))
            stack.extend(reversed(kids))
    return out


class RunInspector:
    """Every tree of a run in one viewer: a task picker (with each tree's outcome) above a :class:`TreeInspector`;
    with ``qnet`` and a trained QNet (stage 04), each node also shows the QNet's prediction."""

    def __init__(self, run_dir, qnet: bool = True):
        from pathlib import Path

        from qlass_lib.core.series import STAGES
        self.run_dir = Path(run_dir)
        self.trees = load_run_trees(self.run_dir)
        if not self.trees:
            raise FileNotFoundError(f"no trees in {self.run_dir}: run stage 02 first")
        self._qnet = None  # (qnet, env name, example), loaded on first use
        self.use_qnet = qnet and (self.run_dir / STAGES["04"] / "qnet_q" / "value_head.safetensors").is_file()
        self.picker = W.Dropdown(options=[(tree_outcome(t), i) for i, t in enumerate(self.trees)],
                                 description="tree", layout=W.Layout(width="70%"))
        self.body = W.VBox()
        self.picker.observe(lambda _: self.show(self.picker.value), names="value")
        self.widget = W.VBox([self.picker, self.body])
        self.show(0)

    def predictions(self, tree: Tree) -> dict[int, float]:
        if not self.use_qnet:
            return {}
        if self._qnet is None:
            self._qnet = run_qnet(self.run_dir)
        return qnet_predictions(tree, *self._qnet)

    def show(self, index: int) -> None:
        tree = self.trees[index]
        self.inspector = TreeInspector(tree, predictions=self.predictions(tree))
        self.body.children = [self.inspector.widget]

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)
