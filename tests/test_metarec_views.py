"""The VQ codebook views (diagnostics and plots at the end of their modules) on hand-made
frames of different shapes: one or several domains, steps and variants, widths 2 and 8."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from seqtransfer import diagnostics as dg
from seqtransfer import plots

pytestmark = pytest.mark.unit


def codes_frame(domains: dict[str, list[int]], steps=(0,), n_codes=4, dim=2, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for s in steps:
        items = {d: rng.normal(size=(len(c), dim)) for d, c in domains.items()}
        frames.append(dg.codebook_projection(rng.normal(size=(n_codes, dim)), items,
                                             {d: np.array(c) for d, c in domains.items()}).assign(step=s))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("dim", [2, 8])
@pytest.mark.parametrize("domains", [{"a": [0, 1, 1]}, {"a": [0, 0, 1, 1], "b": [1, 2], "c": [3]}])
def test_codebook_projection_rows_and_columns(dim, domains):
    f = codes_frame(domains, dim=dim)
    assert list(f.columns) == ["domain", "item", "code", "x", "y", "step"]
    assert (f["domain"] == dg.CODEBOOK).sum() == 4
    for d, c in domains.items():
        part = f[f["domain"] == d]
        assert part["item"].tolist() == list(range(1, len(c) + 1)) and part["code"].tolist() == c
    assert np.isfinite(f[["x", "y"]].to_numpy()).all()
    assert f["x"].mean() == pytest.approx(0, abs=1e-9)          # centred principal components


def test_codebook_projection_names_bad_shapes():
    with pytest.raises(ValueError, match="same domains"):
        dg.codebook_projection(np.zeros((4, 2)), {"a": np.zeros((2, 2))}, {"b": np.zeros(2)})
    with pytest.raises(ValueError, match=r"domain 'a'.*\(N, 2\)"):
        dg.codebook_projection(np.zeros((4, 2)), {"a": np.zeros((2, 3))}, {"a": np.zeros(2)})
    with pytest.raises(ValueError, match=r"\(K, D\)"):
        dg.codebook_projection(np.zeros(4), {}, {})


def test_code_usage_over_training_by_hand():
    f = codes_frame({"a": [0, 0, 1, 1], "b": [3, 3, 3]}, steps=(0, 10, -1))
    u = dg.code_usage_over_training(f, n_codes=4)
    assert len(u) == 6
    a = u[(u["domain"] == "a") & (u["step"] == 10)].iloc[0]
    assert (a["items"], a["codes_used"], a["share_used"]) == (4, 2, 0.5)
    assert a["perplexity"] == pytest.approx(2.0)
    assert u[u["domain"] == "b"]["perplexity"].tolist() == pytest.approx([1.0] * 3)


def test_code_sharing_by_hand():
    # a uses codes 0, 1; b uses 1, 2: code 1 is shared by both (1 of 3 used codes; 3 of 6 items)
    f = codes_frame({"a": [0, 1, 1, 1], "b": [1, 2]})
    s = dg.code_sharing(f).set_index("domains")
    assert s.loc[1, "codes"] == 2 and s.loc[2, "codes"] == 1
    assert s.loc[2, "share_of_used"] == pytest.approx(1 / 3)
    assert s.loc[2, "share_of_items"] == pytest.approx(4 / 6)
    one = dg.code_sharing(codes_frame({"a": [2, 2]}))
    assert one["domains"].tolist() == [1] and one["share_of_used"].tolist() == [1.0]
    with pytest.raises(ValueError, match="no domain"):
        dg.code_sharing(f[f["domain"] == dg.CODEBOOK])


def test_code_sharing_reads_the_last_step_by_default():
    f = pd.concat([codes_frame({"a": [0], "b": [0]}, steps=(0,)), codes_frame({"a": [0], "b": [1]}, steps=(5,))])
    assert dg.code_sharing(f).set_index("domains").loc[1, "codes"] == 2
    assert dg.code_sharing(f, step=0).set_index("domains").loc[2, "codes"] == 1


def test_title_code_agreement_by_hand():
    src_t = {"x": pd.Series(["Alien", "Babe"]), "y": pd.Series(["Casino"])}
    src_c = {"x": np.array([0, 1]), "y": np.array([2])}
    out = dg.title_code_agreement(src_t, src_c, pd.Series(["babe ", "ALIEN", "Zelig"]), np.array([1, 5, 0])).iloc[0]
    assert (out["matched"], out["same_code"], out["rate"]) == (2, 1, 0.5)
    assert out["chance"] == pytest.approx(0.25)                 # p_src(1) p_tgt(1) = 0.5 * 0.5
    none = dg.title_code_agreement(src_t, src_c, pd.Series(["Zelig"]), np.array([0])).iloc[0]
    assert none["matched"] == 0 and np.isnan(none["rate"])
    with pytest.raises(ValueError, match="3 titles but 2 codes"):
        dg.title_code_agreement(src_t, src_c, pd.Series(["a", "b", "c"]), np.array([0, 1]))


def weights_frame(variants=("descent",), sources=("s1", "s2", "s3"), steps=4, sampled=2):
    rows = []
    for v in variants:
        for t in range(1, steps + 1):
            pick = [sources[(t + j) % len(sources)] for j in range(min(sampled, len(sources)))]
            w = np.full(len(pick), 1 / len(pick))
            rows += [{"variant": v, "step": t, "source": s, "alignment": 0.1 * t, "grad_cosine": 0.5,
                      "weight": wi, "target_loss": 1.0, "target_loss_after": 0.9} for s, wi in zip(pick, w)]
    return pd.DataFrame(rows)


def test_source_weight_summary_by_hand():
    s = dg.source_weight_summary(weights_frame(sources=("s1",), sampled=1, steps=3))
    assert s.iloc[0][["sampled", "mean_weight", "first_weight", "last_weight"]].tolist() == [3, 1.0, 1.0, 1.0]
    assert s.iloc[0]["mean_alignment"] == pytest.approx(0.2)
    two = dg.source_weight_summary(weights_frame(variants=("descent", "public")))
    assert set(two["variant"]) == {"descent", "public"} and len(two) == 6


# -- figures ----------------------------------------------------------------------------------

@pytest.mark.parametrize("domains,steps", [({"a": [0, 1]}, (0,)), ({"a": [0, 1], "b": [2, 3, 3]}, (0, 5, 10, -1))])
def test_codebook_figures_in_shapes(domains, steps):
    f = codes_frame(domains, steps=steps)
    usage = dg.code_usage_over_training(f, 4)
    fig = plots.code_usage_lines(usage, n_codes=4)
    assert len(fig.data) == 2 * len(domains)
    assert all(min(t.x) >= 0 for t in fig.data)                  # the kept (-1) snapshot is not a step
    m = plots.codebook_map(f, max_items=2)
    assert [t.name for t in m.data] == [*domains, "codes"]
    assert all(len(t.x) <= 2 for t in m.data[:-1])
    if len(steps) > 1:
        assert [s.label for s in m.layout.sliders[0].steps] == ["0", "5", "10", "kept"]
        assert len(m.frames) == len(steps) and m.layout.sliders[0].active == len(steps) - 1
        lo, hi = m.layout.xaxis.range
        assert lo <= f["x"].min() and hi >= f["x"].max()        # fixed axes hold every step
    else:
        assert not m.layout.sliders
    sh = plots.code_sharing_bars(dg.code_sharing(f))
    assert len(sh.data) == 2 and list(sh.data[0].x) == list(range(1, len(domains) + 1))
    with pytest.raises(ValueError, match="empty"):
        plots.codebook_map(f.iloc[:0])
    h = plots.codebook_map(f, highlight="a")
    assert h.data[-2].name == "a" and h.data[-2].marker.size == 6
    with pytest.raises(ValueError, match="highlight 'zz'"):
        plots.codebook_map(f, highlight="zz")


@pytest.mark.parametrize("variants,sources", [(("descent",), ("s1",)), (("descent", "public", "uniform"), ("s1", "s2", "s3"))])
def test_source_weight_lines_in_shapes(variants, sources):
    w = weights_frame(variants, sources, sampled=2)
    fig = plots.source_weight_lines(w, smooth=2)
    assert len(fig.data) == 2 * len(variants) * len(sources)
    assert len(fig.layout.annotations) >= 2 * len(variants)      # one title per panel
    for r in range(len(variants)):                                # fixed scales: weights, cosines
        assert fig.layout[f"yaxis{2 * r + 1 if r else ''}"].range == (0, 1.02)
        assert fig.layout[f"yaxis{2 * r + 2}"].range == (-1.02, 1.02)
    plain = plots.source_weight_lines(w.drop(columns="variant"))
    assert len(plain.data) == 2 * len(sources)
