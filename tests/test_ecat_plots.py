"""ECAT's diagnostics and figures on hand-made frames: the selection funnel's shares, the
per-period table, and what each figure draws (traces, cut-off line, empty panels, one-period runs)."""
import numpy as np
import pandas as pd
import pytest

from seqtransfer import diagnostics as dg, plots

pytestmark = pytest.mark.unit


def _counts():
    return pd.DataFrame([
        {"variant": "ECAT", "period": 0, "source samples": 100, "graph candidates": 40, "selected": 30,
         "target samples": 10, "auc": 0.7},
        {"variant": "ECAT", "period": 1, "source samples": 200, "graph candidates": 50, "selected": 25,
         "target samples": 20, "auc": 0.8},
        {"variant": "target-only", "period": 0, "target samples": 20},
    ])


def test_selection_funnel_shares_and_missing_stages():
    f = dg.selection_funnel(_counts())
    assert len(f) == 6                                   # target-only records no source stage
    p1 = f[(f["period"] == 1)].set_index("stage")
    assert p1.loc["graph candidates", "share"] == 0.25 and p1.loc["selected", "share"] == 0.125
    assert p1.loc["selected", "auc"] == 0.8
    assert list(f["stage"][:3]) == ["source samples", "graph candidates", "selected"]


def _periods():
    rows = [{"variant": "ECAT", "period": t, "split": s, "group": g, "ndcg10": 0.1 * t + (g == "tail") * 0.01}
            for t in range(3) for s in ("valid", "test") for g in ("all", "tail")]
    rows += [{"variant": "one period", "period": 0, "split": "test", "group": g, "ndcg10": 0.15}
             for g in ("all", "tail")]
    return pd.DataFrame(rows)


def test_period_table():
    t = dg.period_table(_periods())
    assert t.loc[("ECAT", 2), "tail"] == pytest.approx(0.21) and t.loc[("one period", 0), "all"] == 0.15
    assert list(t.columns) == ["all", "tail"]


def test_funnel_bars_one_panel_per_variant():
    fig = plots.selection_funnel_bars(dg.selection_funnel(_counts()))
    assert len(fig.data) == 3 and fig.layout.yaxis.type == "log"
    several = plots.selection_funnel_bars(pd.concat([dg.selection_funnel(_counts()).assign(variant=v)
                                                     for v in ("ECAT", "w/o graph", "w/o DA")]))
    axes = [several.layout[f"yaxis{i}" if i > 1 else "yaxis"] for i in (1, 2, 3)]
    assert all(a.type == "log" for a in axes)                     # every panel on the log axis
    assert axes[1].matches == axes[2].matches == "y"              # one range: bars compare across panels
    assert list(fig.data[2].y) == [30, 25] and list(fig.data[2].x) == ["period 0", "period 1"]


def test_histograms_mark_the_cut_and_empty_panels():
    fig = plots.selection_histograms(np.array([0.1, 0.5, 0.9]), np.array([0.5, 1.5]), np.array([]), p_min=0.2)
    assert [t.type for t in fig.data] == ["histogram", "histogram"]
    assert any(s.x0 == 0.2 for s in fig.layout.shapes)
    notes = [a for a in fig.layout.annotations if a.text == "not recorded in this run"]
    assert len(notes) == 1 and notes[0].xref == "x3 domain"          # the alpha panel


def test_period_curves_place_one_period_runs_at_the_last_period():
    fig = plots.period_curves(_periods())
    by = {(t.name, t.xaxis): t for t in fig.data}
    assert list(by["ECAT", "x"].x) == [0, 1, 2] and list(by["one period", "x"].x) == [2]
    assert len(fig.data) == 4                                        # 2 variants x (all, tail)
