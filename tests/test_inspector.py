"""The HTML tree inspector, driven in a real browser (Debian's Chromium through Playwright)."""
import json
import shutil
from pathlib import Path

import pytest

from qlass_lib.method import qvalues
from qlass_lib.envs import TaskRef
from qlass_lib.viz.inspector import tree_payload, write_html
from qlass_lib.method.tree import Tree

from test_qvalues import _tree

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _run_dir(tmp_path: Path) -> Path:
    """A run folder holding stage 02's trees: the hand-made tree of test_qvalues and a second, other task."""
    t1, t2 = _tree(), _tree(leaf_scores=(0.0, 1.0, 0.2))
    t2 = Tree(TaskRef("u", 7), "another task", t2.nodes)
    d = tmp_path / "run" / "02_tree_construction"
    d.mkdir(parents=True)
    (d / "trees.jsonl").write_text("".join(json.dumps(t.to_dict()) + "\n" for t in (t1, t2)))
    return tmp_path / "run"


def test_payload_carries_targets_predictions_and_best_path():
    t = _tree()
    qvalues.compute([t], 0.9, "tree")
    p = tree_payload(t, {1: 0.3, 4: 0.9})
    nodes = {n["id"]: n for n in p["nodes"]}
    assert p["best_leaf"] == 0.8 and nodes[1]["best"] and not nodes[4]["best"]
    assert nodes[4]["q_norm"] == pytest.approx(0.625) and nodes[4]["pred"] == 0.9 and nodes[2]["pred"] is None


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium not installed (make test installs it)")
def test_inspector_in_chromium(tmp_path):
    from playwright.sync_api import sync_playwright
    page_path = write_html(_run_dir(tmp_path), qnet=False)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"])
        page = browser.new_page()
        page.goto(page_path.resolve().as_uri())
        options = page.locator("#tree option").all_inner_texts()
        assert options == ["t_1 (5 nodes, best leaf 0.80)", "u_7 (5 nodes, best leaf 1.00)"]
        assert page.locator(".node").count() == 3  # root expanded: root, a, b
        page.locator("[data-toggle='2']").click()  # expand b
        assert page.locator(".node").count() == 5
        page.locator(".node[data-id='4']").click()  # d: Q target 0.625 (test_qvalues), siblings c and d
        fields = page.locator("#fields").inner_text()
        assert "0.6250" in fields and "d" in fields
        rows = page.locator("#siblings tr[data-id]")
        assert rows.count() == 2 and rows.nth(1).get_attribute("style").endswith("font-weight:bold")
        page.select_option("#tree", "1")  # the other task's tree
        assert "another task" in page.locator("#task").inner_text()
        page.check("#expand")
        assert page.locator(".node").count() == 5 and page.locator(".node.best").count() == 3
        page.screenshot(path=str(tmp_path / "inspector.png"))
        browser.close()
    assert (tmp_path / "inspector.png").stat().st_size > 5000
