from qlass_lib import qvalues
from qlass_lib.widgets import TreeInspector, best_path, plot_tree, render_html

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
