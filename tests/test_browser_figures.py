"""Every figure function of ``seqtransfer.plots`` on inputs of different shapes (two backbones
with different layers, one step, one variant, NaN cells, an empty group, a log axis with a
cut-off line): checked on the figure objects (``unit``) and as headless Chromium draws them
(``browser``, ``seqtransfer.browser.check_page``), including that the checker itself flags the
two bugs it was built for."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from plotly.subplots import make_subplots

from seqtransfer import browser, plots

SASREC_LAYERS = ["item_emb", "pos_emb", "blocks.0", "blocks.1", "ln_f", "all"]
GRU_LAYERS = ["item_emb", "gru", "proj", "all"]


def _activeness() -> np.ndarray:
    """300 users: activeness 20..319, one each (a flat histogram on a log axis)."""
    return np.arange(20, 320)


def _conflict(variants: dict[str, list[str]], steps=(0, 5, 10), nan_layer: str | None = None) -> pd.DataFrame:
    rows = [{"variant": v, "step": s, "layer": layer,
             "cosine": np.nan if layer == nan_layer else math.cos(s + i) * 0.9}
            for v, layers in variants.items() for s in steps for i, layer in enumerate(layers)]
    return pd.DataFrame(rows)


def _seeds_apart() -> pd.DataFrame:
    """Seed 0's records start at step 110 (continued from its rung checkpoint), seed 1's at 0."""
    return pd.concat([_conflict({"sasrec joint": SASREC_LAYERS}, steps=(110, 120, 130)).assign(seed=0),
                      _conflict({"sasrec joint": SASREC_LAYERS}, steps=(0, 10, 110)).assign(seed=1)],
                     ignore_index=True)


def _summary(variants=("sasrec joint", "sasrec tail-only"), groups=("all", "head", "tail", "cold"),
             empty=("cold",)) -> pd.DataFrame:
    """``methods.summarize`` output: one seed (ci95 NaN); groups in ``empty`` have no users."""
    rows = []
    for i, v in enumerate(variants):
        for j, g in enumerate(groups):
            for metric in ("ndcg", "hr"):
                mean = np.nan if g in empty else 0.05 + 0.01 * j - 0.02 * i
                rows.append({"variant": v, "group": g, "metric": metric, "k": 10, "mean": mean,
                             "std": np.nan, "n_seeds": 0 if g in empty else 1, "ci95": np.nan})
    return pd.DataFrame(rows)


def _seeded_summary(variants=("sasrec joint", "sasrec GA"), groups=("all", "head", "tail")) -> pd.DataFrame:
    """``methods.summarize`` of three seeds (seeds 0-2) per variant and group."""
    from seqtransfer.methods import summarize
    rows = [{"split": "test", "variant": v, "group": g, "metric": m, "k": 10, "seed": s,
             "value": 0.08 + 0.01 * j - 0.01 * i + 0.006 * (s - 1) * (1 if i else -1)}
            for i, v in enumerate(variants) for j, g in enumerate(groups) for m in ("ndcg", "hr") for s in range(3)]
    return summarize(pd.DataFrame(rows))


def _funnel() -> pd.DataFrame:
    """ECAT's selection counts for three variants over two periods, orders of magnitude apart."""
    from seqtransfer import diagnostics
    rows = [{"variant": v, "period": k, "source samples": 300_000 * (k + 1), "graph candidates": 40_000 // f,
             "selected": 3_000 // f, "target samples": 900, "auc": 0.7 + 0.1 * k}
            for v, f in (("ECAT", 1), ("w/o graph", 1), ("w/o DA", 10)) for k in range(2)]
    return diagnostics.selection_funnel(pd.DataFrame(rows))


def _history(variants=("sasrec joint",), epochs=1) -> pd.DataFrame:
    return pd.DataFrame([{"variant": v, "epoch": e, "step": 4 * (e + 1), "loss": 8.0 - e - i,
                          "valid_ndcg10": np.nan if e % 2 else 0.01 * (e + 1)}
                         for i, v in enumerate(variants) for e in range(epochs)])


def _strata(empty: int | None = None) -> pd.DataFrame:
    rows = []
    for z, (lo, hi) in enumerate([(20, 40), (41, 90), (91, 400)]):
        users = 0 if z == empty else 100
        rows.append({"stratum": z, "users": users, "share of users": users / 200,
                     "min activeness": np.nan if z == empty else lo, "max activeness": np.nan if z == empty else hi,
                     "positions": 0 if z == empty else users * (lo + hi) // 2, "prior": users / 200})
    return pd.DataFrame(rows)


def _stratum_gradients() -> pd.DataFrame:
    rows = [{"gradient": f"stratum {z}", "stratum": z, "norm": 1.0 + z, "cos_plain": 0.5 + 0.1 * z,
             "cos_adjusted": np.nan if z == 2 else 0.4} for z in range(3)]
    rows += [{"gradient": "plain", "stratum": np.nan, "norm": 2.0, "cos_plain": 1.0, "cos_adjusted": 0.9},
             {"gradient": "adjusted", "stratum": np.nan, "norm": 2.0, "cos_plain": 0.9, "cos_adjusted": 1.0}]
    return pd.DataFrame(rows)


def _figures() -> dict[str, go.Figure]:
    """Every figure function, several input shapes each."""
    a = _activeness()
    head = np.arange(300) >= 240
    rng = np.random.default_rng(0)
    disc = pd.DataFrame([{"variant": v, "step": s, "accuracy": 0.5 + 0.01 * s, "loss": 0.69 - 0.01 * s}
                         for v in ("+adv", "GA") for s in range(1, 9)])
    sens = pd.DataFrame([{"sweep": "n_strata", "setting": 4, "group": g, "base": 0.05, "method": m}
                         for g, m in (("head", 0.06), ("tail", 0.04))])
    return {
        "histogram, log axis with a cut-off line": plots.activeness_histogram(a, 100.0),
        "histogram, no cut-off": plots.activeness_histogram(a),
        "histogram, every user alike": plots.activeness_histogram(np.full(50, 25), 25.0),
        "lorenz, two curves": plots.lorenz_curve({"as released": a, "with cold start": np.r_[a[:-30], [5] * 30]}),
        "lorenz, no head line": plots.lorenz_curve({"a": a}, head_frac=None),
        "group bars, one variant": plots.group_bars(_summary(variants=("sasrec joint",), empty=())),
        "group bars, empty cold group, NaN intervals": plots.group_bars(_summary(), baseline="sasrec joint"),
        "group bars, three seeds as points": plots.group_bars(_seeded_summary(), baseline="sasrec joint"),
        "selection funnel, three panels on one log axis": plots.selection_funnel_bars(_funnel()),
        "training curves, one epoch": plots.training_curves(_history()),
        "training curves, two variants, NaN validations": plots.training_curves(
            _history(("sasrec joint", "gru4rec joint"), epochs=4)),
        "conflict, backbones with different layers": plots.conflict_heatmap(
            _conflict({"sasrec joint": SASREC_LAYERS, "gru4rec joint": GRU_LAYERS})),
        "conflict, one step": plots.conflict_heatmap(
            _conflict({"sasrec joint": SASREC_LAYERS, "gru4rec joint": GRU_LAYERS}, steps=(0,))),
        "conflict, one variant without a variant column": plots.conflict_heatmap(
            _conflict({"m": GRU_LAYERS}).drop(columns="variant")),
        "conflict, same layers, a NaN layer": plots.conflict_heatmap(
            _conflict({"a": GRU_LAYERS, "b": GRU_LAYERS}, nan_layer="gru")),
        "conflict, seeds whose records start at different steps": plots.conflict_heatmap(_seeds_apart()),
        "domains, one domain": plots.domain_bars(pd.DataFrame({"items": [30], "interactions": [900], "users": [40]},
                                                              index=["Drama"])),
        "discriminator, one step": plots.discriminator_curves(disc[disc["step"] == 1].drop(columns="variant")),
        "discriminator, two variants": plots.discriminator_curves(disc, smooth=3),
        "projection, one variant": plots.projection_scatter({"sasrec joint": rng.normal(size=(300, 2))}, head),
        "projection, no tail users": plots.projection_scatter({"a": rng.normal(size=(300, 2)),
                                                               "b": rng.normal(size=(300, 2))}, np.ones(300, bool)),
        "strata, an empty stratum": plots.strata_bars(_strata(empty=1)),
        "stratum gradients, a NaN cosine": plots.stratum_gradient_bars(_stratum_gradients()),
        "sensitivity, one sweep, one setting": plots.sensitivity_lines(sens),
    }


def _log_axis_labels_outside_data(fig: go.Figure) -> list[str]:
    """Annotations placed on a log x axis more than a decade outside the data (plotly reads an
    annotation's x there in log10 units)."""
    full = fig
    bad = []
    for ann in full.layout.annotations:
        ref = ann.xref or ""
        if not ref.startswith("x") or ref.endswith("domain") or ref == "paper":
            continue
        axis = full.layout["xaxis" + ref[1:]]
        if axis.type != "log":
            continue
        xs = np.concatenate([np.asarray(t.x, float) for t in full.data if (t.xaxis or "x") == ref])
        if not (np.log10(xs.min()) - 1 <= ann.x <= np.log10(xs.max()) + 1):
            bad.append(f"{ann.text!r} at log10 x = {ann.x} outside the data [{xs.min()}, {xs.max()}]")
    return bad


@pytest.mark.unit
@pytest.mark.parametrize("name", list(_figures()))
def test_every_figure_has_title_traces_and_labels_inside_its_data(name):
    fig = _figures()[name]
    assert fig.layout.title.text, "no title"
    assert len(fig.data) >= 1, "no trace"
    assert not _log_axis_labels_outside_data(fig)


@pytest.mark.unit
def test_histogram_cut_off_label_is_in_log_units():
    fig = plots.activeness_histogram(_activeness(), 100.0)
    (line,) = fig.layout.shapes
    (label,) = fig.layout.annotations
    assert line.x0 == line.x1 == 100.0            # a shape on a log axis: data units
    assert label.x == pytest.approx(2.0)          # an annotation on a log axis: log10(100)
    assert label.text == "head: > 100"
    # the old construction put the label at x = 100 (10^100), far outside the data
    old = go.Figure(go.Scatter(x=[20, 300], y=[1, 2])).add_vline(x=100, annotation_text="head")
    old.update_xaxes(type="log")
    assert _log_axis_labels_outside_data(old)


@pytest.mark.unit
def test_conflict_panels_share_the_layer_axis_only_when_layers_agree():
    fig = plots.conflict_heatmap(_conflict({"sasrec joint": SASREC_LAYERS, "gru4rec joint": GRU_LAYERS}))
    assert [list(t.y) for t in fig.data] == [SASREC_LAYERS, GRU_LAYERS]
    assert fig.layout.yaxis2.matches is None      # matched category axes with other categories: plotly.js throws
    same = plots.conflict_heatmap(_conflict({"a": GRU_LAYERS, "b": GRU_LAYERS}, nan_layer="gru"))
    assert same.layout.yaxis2.matches == "y"
    z = np.asarray(same.data[0].z, dtype=float)   # (layers, steps)
    assert z.shape == (4, 3)
    assert np.isnan(z[GRU_LAYERS.index("gru")]).all()          # the NaN layer stays, as a gap
    assert z[0, 1] == pytest.approx(math.cos(5 + 0) * 0.9)      # item_emb at step 5


@pytest.mark.unit
def test_conflict_steps_run_in_order_when_seeds_start_apart():
    """The 60d60a3 batch drew 02's `joint` panel empty: seed 0 (continued from its rung) began at
    step 110, so the first-seen column order put seeds 1-2's steps 0-100 after step 610."""
    fig = plots.conflict_heatmap(_seeds_apart())
    assert list(fig.data[0].x) == [0, 10, 110, 120, 130]
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z[0, 2] == pytest.approx(math.cos(110) * 0.9)       # step 110: both seeds, the same value
    assert z[0, 0] == pytest.approx(math.cos(0) * 0.9)         # step 0: seed 1 alone
    assert list(fig.data[0].y) == SASREC_LAYERS                # layers keep the model's order


@pytest.mark.unit
def test_conflict_one_step_ticks_at_that_step_and_bad_input_is_named():
    fig = plots.conflict_heatmap(_conflict({"a": GRU_LAYERS}, steps=(7,)))
    assert list(fig.data[0].x) == [7] and list(fig.layout.xaxis.tickvals) == [7]
    with pytest.raises(ValueError, match="lacks column.*cosine"):
        plots.conflict_heatmap(pd.DataFrame({"step": [0], "layer": ["a"]}))
    with pytest.raises(ValueError, match="no rows"):
        plots.conflict_heatmap(pd.DataFrame(columns=["step", "layer", "cosine"]))


@pytest.mark.unit
def test_group_bars_leave_out_an_empty_group_and_outline_negative_transfer():
    fig = plots.group_bars(_summary(), baseline="sasrec joint")
    assert [t.name for t in fig.data] == ["all", "head", "tail"]           # cold has no users
    tail = fig.data[2]
    assert list(tail.y) == pytest.approx([0.07, 0.05])                     # joint, tail-only
    assert list(tail.marker.line.color) == ["rgba(0,0,0,0)", plots.NEGATIVE]  # tail-only below joint
    # with the paired comparisons, only an interval below zero is outlined: here tail's is not,
    # head's is
    boot = pd.DataFrame([{"variant": "sasrec tail-only", "baseline": "sasrec joint", "group": g, "metric": "ndcg",
                          "k": 10, "verdict": v} for g, v in (("tail", "none"), ("head", "negative"))])
    fig = plots.group_bars(_summary(), baseline="sasrec joint", comparisons=boot)
    assert list(fig.data[2].marker.line.color) == ["rgba(0,0,0,0)", "rgba(0,0,0,0)"]
    assert list(fig.data[1].marker.line.color) == ["rgba(0,0,0,0)", plots.NEGATIVE]


@pytest.mark.unit
def test_group_bars_draw_each_seed_as_a_point_on_its_bar():
    fig = plots.group_bars(_seeded_summary(), baseline="sasrec joint")
    bars = [t for t in fig.data if t.type == "bar"]
    points = [t for t in fig.data if t.type == "scatter"]
    assert [t.name for t in bars] == ["all", "head", "tail"] and len(points) == 3
    tail_bar, tail_points = bars[2], points[2]
    assert tail_points.offsetgroup == tail_bar.offsetgroup == "tail"        # drawn on the tail bars
    assert list(tail_points.x) == ["sasrec joint"] * 3 + ["sasrec GA"] * 3
    assert list(tail_points.y) == pytest.approx([0.106, 0.1, 0.094, 0.084, 0.09, 0.096])
    assert list(tail_points.customdata) == [0, 1, 2, 0, 1, 2]
    assert list(tail_bar.y) == pytest.approx([0.1, 0.09])                 # the means of those points
    assert fig.layout.scattermode == "group"
    one = plots.group_bars(_summary(), baseline="sasrec joint")             # one seed: no points
    assert all(t.type == "bar" for t in one.data)


@pytest.mark.unit
def test_strata_bars_name_an_empty_stratum():
    fig = plots.strata_bars(_strata(empty=1))
    assert list(fig.data[0].x) == ["0 (20-40)", "1 (empty)", "2 (91-400)"]


# ---------------------------------------------------------------------------------------------
# In the browser
# ---------------------------------------------------------------------------------------------


def _page(path, figures: dict[str, go.Figure]) -> None:
    """One HTML page with the figures, plotly.js inlined once (as in the reports)."""
    parts = [fig.to_html(full_html=False, include_plotlyjs=i == 0) for i, fig in enumerate(figures.values())]
    path.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
                    + "\n".join(parts) + "</body></html>", encoding="utf-8")


@pytest.mark.browser
def test_every_figure_shape_draws_in_chromium(tmp_path, browser_ready):
    figures = _figures()
    _page(tmp_path / "figures.html", figures)
    with browser.chromium() as b:
        check = browser.check_page(b, tmp_path / "figures.html", tmp_path / "png", "case")
    assert check.errors == []
    assert len(check.figures) == len(figures)
    assert check.problems == [], "\n".join(check.problems)
    for name, fig in zip(figures, check.figures):
        assert fig.drawn >= 1 and fig.title, name
        assert (tmp_path / "png" / fig.png).stat().st_size > 5000, name   # a picture, not a blank


@pytest.mark.browser
def test_the_check_flags_the_broken_figures(tmp_path, browser_ready):
    """The histogram's label at 10^100 (the old add_vline(annotation_text=...) on a log axis),
    heatmap panels on matched category axes with different layers (the old conflict heatmap),
    a heatmap whose steps are out of order (drawn blank, yet it passed the check before), and a
    blank panel in a figure whose other panel drew."""
    hist = go.Figure(go.Scatter(x=[20, 50, 300], y=[5, 3, 1])).add_vline(x=100, annotation_text="head")
    hist.update_xaxes(type="log").update_layout(title="old histogram")
    heat = make_subplots(rows=1, cols=2, shared_yaxes=True)
    heat.add_heatmap(z=[[0.1], [0.2], [0.3]], x=[0], y=SASREC_LAYERS[:3], row=1, col=1)
    heat.add_heatmap(z=[[0.1], [0.2]], x=[0], y=GRU_LAYERS[1:3], row=1, col=2)
    heat.update_layout(title="old heatmap")
    # the 2d55679 and 60d60a3 batches' conflict heatmap: seed 0's steps first, then seed 1's
    late_first = list(range(110, 620, 10)) + list(range(0, 110, 10))
    steps = go.Figure(go.Heatmap(z=[[0.01 * i for i in range(len(late_first))]], x=late_first, y=["ln_f"]))
    steps.update_layout(title="steps out of order")
    # one blank panel beside a drawn one: the figure-wide trace count passes it
    panels = make_subplots(rows=1, cols=2)
    panels.add_scatter(x=[0, 10, 20], y=[0.1, 0.2, 0.3], row=1, col=1)
    panels.add_scatter(x=[0, 10, 20], y=[None, None, None], row=1, col=2)
    panels.update_layout(title="one blank panel")
    _page(tmp_path / "broken.html", {"hist": hist, "heat": heat, "steps": steps, "panels": panels})
    with browser.chromium() as b:
        check = browser.check_page(b, tmp_path / "broken.html")
    hist_check, heat_check, steps_check, panels_check = check.figures
    # drawn as an image 0 px wide (the batches' shape; some other orders draw a misshaped one):
    # no mark, and its panel is blank
    assert steps_check.problems == ["no trace drawn (0 of 1 traces have visible marks)",
                                    "heatmap trace(s) [0]: numeric x out of order, which plotly.js draws blank",
                                    "panel xy: none of its 1 trace(s) drew a mark"]
    assert panels_check.problems == ["panel x2y2: none of its 1 trace(s) drew a mark"]
    assert any("axis x (log10)" in p and "more than 10x" in p for p in hist_check.problems), hist_check.problems
    assert any("reading 'length'" in e for e in check.errors), check.errors
    assert heat_check.problems, "the undrawn heatmap passed"


@pytest.mark.unit
def test_a_stopped_check_lists_the_pages_it_checked_and_no_earlier_batchs(tmp_path, monkeypatch):
    """Ctrl-C during ``capture_batch``: checks.json lists the pages checked before it, not an
    earlier batch's, whose PNGs of these notebooks are gone too; the interrupt goes on up."""
    from contextlib import nullcontext

    figures = tmp_path / browser.FIGURES_DIR
    figures.mkdir()
    (figures / "checks.json").write_text('[{"page": "old.html", "errors": [], "figures": []}]')
    for stale in ("a_1.png", "b_1.png", "z_1.png"):
        (figures / stale).write_bytes(b"old")
    for name in ("a", "b"):
        (tmp_path / f"{name}.html").write_text("<html></html>")

    def check_page(b, page, into, name):
        if name == "b":
            raise KeyboardInterrupt
        return browser.PageCheck(page=page.name)

    monkeypatch.setattr(browser, "browser_missing", lambda: None)
    monkeypatch.setattr(browser, "chromium", nullcontext)
    monkeypatch.setattr(browser, "check_page", check_page)
    with pytest.raises(KeyboardInterrupt):
        browser.capture_batch(tmp_path, ["a", "b"])
    assert [c["page"] for c in browser.read_checks(tmp_path)] == ["a.html"]
    assert sorted(p.name for p in figures.glob("*.png")) == ["z_1.png"]   # another notebook's

    # no browser on this machine now: nothing of the earlier batch's check is shown either
    monkeypatch.setattr(browser, "browser_missing", lambda: "no chromium")
    assert browser.capture_batch(tmp_path, ["a"]) == [] and browser.read_checks(tmp_path) == []


def _inspected(**axis) -> dict:
    """An ``inspect`` result with one titled, drawn trace and one axis."""
    ax = {"id": "x", "type": "linear", "range": [0.0, 1.0], "data": [0.0, 1.0], "labels": True, "ticks": 5,
          "fixed": False, **axis}
    return {"drawnOk": True, "title": "t", "traces": 1, "drawn": 1, "axes": [ax]}


@pytest.mark.unit
def test_judge_hand_made_cases():
    assert browser.judge(_inspected()) == []
    # the batch's broken histogram: a log axis over 10^-13..10^258 for data in 10^1.24..10^3.07
    (p,) = browser.judge(_inspected(type="log", range=[-13.36, 258.0], data=[1.241, 3.073]))
    assert p.startswith("axis x (log10): range [-13.36, 258] is more than 10x")
    # 10x the data's span passes, a little more fails
    assert browser.judge(_inspected(range=[0.0, 10.0], data=[0.0, 1.0])) == []
    assert browser.judge(_inspected(range=[0.0, 10.5], data=[0.0, 1.0]))
    # one value (one epoch at x = 1): plotly's [0, 2] passes; a fixed range must hold the data
    assert browser.judge(_inspected(range=[0.0, 2.0], data=[1.0, 1.0])) == []
    assert browser.judge(_inspected(range=[-1.0, 1.05], data=[0.5, 0.7], fixed=True)) == []
    (p,) = browser.judge(_inspected(range=[0.0, 1.0], data=[0.5, 1.5], fixed=True))
    assert "cuts off data" in p
    (p,) = browser.judge(_inspected(range=[2.0, 3.0], data=[0.0, 1.0]))
    assert "misses the data" in p
    assert browser.judge(_inspected(ticks=0)) == ["axis x: no tick labels drawn"]
    assert browser.judge({**_inspected(), "title": "", "drawn": 0}) == [
        "no title drawn", "no trace drawn (0 of 1 traces have visible marks)"]
    assert browser.judge({"drawnOk": False}) == ["plotly did not draw it (no layout; see the page errors)"]
    assert browser.judge({**_inspected(), "unordered": [1]}) == [
        "heatmap trace(s) [1]: numeric x out of order, which plotly.js draws blank"]
    assert browser.judge({**_inspected(), "blank": [{"id": "x2y2", "traces": 2}]}) == [
        "panel x2y2: none of its 2 trace(s) drew a mark"]
