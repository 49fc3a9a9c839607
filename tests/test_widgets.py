from qlass_lib.method import qvalues
from qlass_lib.viz.widgets import TreeInspector, best_path, plot_tree, render_html

from test_qvalues import _tree


def test_inspector_builds_and_responds_headless():
    t = _tree()
    qvalues.compute([t], 0.9, "tree")
    ins = TreeInspector(t, expand_depth=1)
    assert [v for _, v in ins.select.options] == [0, 1, 2]  # b (2) collapsed
    ins.toggle_node(2)
    assert [v for _, v in ins.select.options] == [0, 1, 2, 3, 4]
    ins.depth.value = 1  # depth filter
    assert [v for _, v in ins.select.options] == [0, 1, 2]
    ins.depth.value = 2
    ins.select.value = 4
    assert "d" in ins.detail.value and "0.6250" in ins.detail.value  # normalized Q of d
    assert best_path(t) == {0, 1}
    labels = dict((v, k) for k, v in ins.select.options)
    assert "★" in labels[1] and "★" not in labels[4]
    ins.highlight.value = False
    labels = dict((v, k) for k, v in ins.select.options)
    assert "★" not in labels[1]
    ins.toggle.click()  # collapse nothing: 4 is a leaf; must not fail
    ins.select.value = 2
    ins.toggle.click()
    assert [v for _, v in ins.select.options] == [0, 1, 2]


def test_static_renderings(tmp_path):
    t = _tree()
    qvalues.compute([t], 0.9, "tree")
    h = render_html(t)
    assert h.count("<li>") == 5 and "font-weight:bold" in h
    fig = plot_tree(t, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 1000
    assert render_html(t, max_depth=1).count("<li>") == 3


def test_run_inspector_picks_any_tree_and_shows_siblings(tmp_path):
    from qlass_lib.viz.widgets import RunInspector
    from test_inspector import _run_dir
    ins = RunInspector(_run_dir(tmp_path), qnet=False)
    assert [label for label, _ in ins.picker.options] == ["t_1: 5 nodes, best leaf 0.80", "u_7: 5 nodes, best leaf 1.00"]
    ins.picker.value = 1
    assert ins.inspector.tree.task.id == "u_7"
    ins.inspector.toggle_node(2)
    ins.inspector.select.value = 3
    detail = ins.inspector.detail.value
    assert "siblings" in detail and detail.count("<tr style=") == 2  # c and d side by side
