"""Notebook 04_ant at the smoke budget through papermill: what it records (every setting's
variants and the ID-only SASRec, coherent full rankings) and its verdicts' wording."""
from __future__ import annotations

import nbformat
import pytest


@pytest.mark.notebook
def test_ant_notebook_smoke(smoke_notebook, amazon_scientific):
    out, rows = smoke_notebook("04_ant")
    labels = ("Horror", "Film-Noir", "amazon-scientific", "ml-100k")
    expect = {f"ant:{t} | ANT {v}" for t in labels for v in ("scratch", "fine-tune", "adaptor-tune", "re-learn")}
    expect |= {f"baseline:{t} | SASRec ID (target only)" for t in labels}
    expect |= {f"ant:Horror | ANT re-learn [{a}]" for a in
               ("text", "text+numeric", "text+numeric+categorical", "all, no fusion product")}
    assert set(rows["method"]) == expect
    assert rows["value"].between(0, 1).all()                 # no empty group, no NaN
    wide = rows.pivot_table(index=["method", "group", "k"], columns="metric", values="value")
    assert (wide["mrr"] <= wide["ndcg"] + 1e-9).all() and (wide["ndcg"] <= wide["hr"] + 1e-9).all()
    users = rows[rows["group"] == "all"].groupby("method")["n_users"].first()
    assert (users <= 300).all()                                # the smoke budget's user sample
    sci = rows[rows["method"].str.contains("amazon-scientific")]
    assert "cold" in set(sci["group"])                         # Amazon has natural cold-start users
    text = "\n".join(o.get("text", "") for c in nbformat.read(str(out), 4).cells if c.cell_type == "code"
                     for o in c.outputs if o.output_type == "stream")
    for t in labels:                                           # one verdict per transfer variant
        for v in ("fine-tune", "adaptor-tune", "re-learn"):
            # verdict_sentence: "beats" / "does NOT beat" outside the noise, "vs ... no detectable
            # difference" inside it
            assert any(f"{t} | ANT {v} {word} {t} | ANT scratch" in text
                       for word in ("beats", "does NOT beat", "vs"))
    assert "negative transfer" in text or "no transfer variant ends below from scratch" in text
