"""A run's trees in one self-contained HTML page (no kernel, any browser): ``python -m qlass_lib inspect runs/<id>``.

Pick a tree by task (each listed with its size and best leaf reward); expand and collapse nodes; click one to
see its action, agent text, observation, step reward, rollout reward, Q target and — when the run has a trained
QNet (stage 04) — the QNet's prediction, with its siblings side by side.  Nodes are coloured by normalized Q
and the best path is bold.  The page embeds the data as JSON; ``tests/test_inspector.py`` drives it in Chromium.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

from tqdm.auto import tqdm

from qlass_lib.method.tree import Tree
from qlass_lib.viz.widgets import best_path, load_run_trees, qnet_predictions, run_qnet


def tree_payload(tree: Tree, predictions: dict[int, float] | None = None) -> dict:
    predictions = predictions or {}
    best = best_path(tree)
    leaves = tree.leaves()
    return {
        "task": tree.task.id, "task_text": tree.task_text,
        "best_leaf": max((n.score for n in leaves), default=0.0),
        "nodes": [{"id": n.id, "parent": n.parent, "depth": n.depth, "children": list(n.children),
                   "action": n.action, "text": n.text, "observation": n.observation, "reward": n.reward,
                   "score": n.score, "rollout": n.rollout_reward, "q": n.q, "q_norm": n.q_norm,
                   "pred": predictions.get(n.id), "terminal": n.terminal, "source": n.source,
                   "best": n.id in best} for n in tree.nodes]}


def run_payload(run_dir: str | Path, qnet: bool = True) -> list[dict]:
    """Every tree of the run; with ``qnet`` and a trained QNet, each node's QNet prediction too."""
    from qlass_lib.core.artifacts import verify_stage
    from qlass_lib.core.series import STAGES
    rd = Path(run_dir)
    for key in ("02", "03", "04") if qnet else ("02", "03"):
        verify_stage(rd / STAGES[key])  # a finished stage's damaged file is an error, never a partial view
    trees = load_run_trees(rd)
    loaded = run_qnet(rd) if qnet else None
    if loaded is None:
        return [tree_payload(t) for t in trees]
    return [tree_payload(t, qnet_predictions(t, *loaded)) for t in tqdm(trees, desc="QNet predictions")]


def write_html(run_dir: str | Path, out: str | Path | None = None, qnet: bool = True) -> Path:
    rd = Path(run_dir)
    out = Path(out) if out else rd / "inspector.html"
    out.write_text(page(rd.name, run_payload(rd, qnet)))
    return out


def page(title: str, trees: list[dict]) -> str:
    """The HTML page around the trees' JSON.  Every "<" in the JSON is written \\u003c, so no text in the data
    can open or close a tag, a comment or a script state ("</script>", "<!--<script>") of the page."""
    data = json.dumps(trees).replace("<", "\\u003c")
    return PAGE.replace("__TITLE__", html.escape(title)).replace("__DATA__", data)


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>QLASS trees: __TITLE__</title>
<style>
body{font-family:sans-serif;font-size:13px;margin:12px}
#layout{display:flex;gap:16px} #view{flex:3;font-family:monospace;font-size:12px} #detail{flex:2}
ul{list-style:none;margin:0;padding-left:18px} .node{cursor:pointer;padding:0 3px;border-radius:3px}
.node.selected{outline:2px solid #d33} .best{font-weight:bold} .toggle{cursor:pointer;display:inline-block;width:14px}
table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}
.obs{font-family:monospace;font-size:11px;white-space:pre-wrap;background:#f6f6f6;padding:4px}
</style></head><body>
<h3>Exploration trees of run <code>__TITLE__</code></h3>
<label>tree <select id="tree"></select></label>
<label><input type="checkbox" id="expand"> expand all</label>
<p id="task"></p>
<div id="layout"><div id="view"></div><div id="detail"><i>click a node</i></div></div>
<script>
const TREES = __DATA__;
let current = 0, open = new Set([0]), selected = null;
const fmt = (v, d = 3) => (v === null || v === undefined) ? "-" : Number(v).toFixed(d);
const esc = s => String(s ?? "").replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
function color(q) { if (q === null || q === undefined) return "#eee";
  q = Math.min(Math.max(q, 0), 1); const h = x => Math.round(x).toString(16).padStart(2, "0");
  return "#" + h(255 - 155 * q) + h(255 - 40 * q) + h(255 - 155 * q); }
function label(n) { if (n.parent === null) return "ROOT (task)";
  return (n.action ?? "<no action>") + "  [Q=" + fmt(n.q_norm, 2) + " r=" + fmt(n.score, 2) +
         (n.pred !== null && n.pred !== undefined ? " QNet=" + fmt(n.pred, 2) : "") + (n.terminal ? " T" : "") + "]"; }
function render() {
  const t = TREES[current];
  document.getElementById("task").textContent = t.task + ": " + t.task_text;
  const rec = id => { const n = t.nodes[id]; const kids = n.children.length;
    const tog = kids ? `<span class="toggle" data-toggle="${id}">${open.has(id) ? "\\u25be" : "\\u25b8"}</span>` : '<span class="toggle"></span>';
    let s = `<li>${tog}<span class="node${n.best ? " best" : ""}${selected === id ? " selected" : ""}" data-id="${id}" ` +
            `style="background:${color(n.q_norm)}">${esc(label(n))}</span>`;
    if (kids && open.has(id)) s += "<ul>" + n.children.map(rec).join("") + "</ul>";
    return s + "</li>"; };
  document.getElementById("view").innerHTML = "<ul>" + rec(0) + "</ul>";
}
function detail(id) {
  const t = TREES[current], n = t.nodes[id];
  const rows = [["node", n.id], ["depth", n.depth], ["source", n.source], ["action", n.action], ["agent text", n.text],
    ["step reward", fmt(n.reward)], ["score", fmt(n.score)], ["rollout reward", fmt(n.rollout, 2)], ["Q", fmt(n.q, 4)],
    ["Q target (normalized)", fmt(n.q_norm, 4)], ["QNet prediction", fmt(n.pred, 4)], ["terminal", n.terminal]];
  let s = "<table id='fields'>" + rows.map(r => `<tr><th>${r[0]}</th><td>${esc(r[1])}</td></tr>`).join("") + "</table>";
  s += `<p class="obs">${esc(n.observation)}</p>`;
  if (n.parent !== null) {
    s += "<h4>siblings</h4><table id='siblings'><tr><th>action</th><th>reward</th><th>rollout</th><th>Q target</th><th>QNet</th></tr>";
    for (const c of t.nodes[n.parent].children.map(i => t.nodes[i]))
      s += `<tr data-id="${c.id}" style="background:${color(c.q_norm)};${c.id === id ? "font-weight:bold" : ""}">` +
           `<td>${esc(c.action)}</td><td>${fmt(c.reward, 2)}</td><td>${fmt(c.rollout, 2)}</td><td>${fmt(c.q_norm)}</td><td>${fmt(c.pred)}</td></tr>`;
    s += "</table>";
  }
  document.getElementById("detail").innerHTML = s;
}
const sel = document.getElementById("tree");
TREES.forEach((t, i) => { const o = document.createElement("option"); o.value = i;
  o.textContent = `${t.task} (${t.nodes.length} nodes, best leaf ${fmt(t.best_leaf, 2)})`; sel.appendChild(o); });
sel.onchange = () => { current = +sel.value; open = new Set([0]); selected = null;
  document.getElementById("expand").checked = false; render(); document.getElementById("detail").innerHTML = "<i>click a node</i>"; };
document.getElementById("expand").onchange = e => { open = e.target.checked ? new Set(TREES[current].nodes.map(n => n.id)) : new Set([0]); render(); };
document.getElementById("view").onclick = e => {
  const tg = e.target.closest("[data-toggle]"); if (tg) { const id = +tg.dataset.toggle; open.has(id) ? open.delete(id) : open.add(id); render(); return; }
  const nd = e.target.closest(".node"); if (nd) { selected = +nd.dataset.id; render(); detail(selected); } };
render();
</script></body></html>
"""
