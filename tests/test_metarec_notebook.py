"""Notebook 05_metarec at the smoke budget through papermill: what it records (every variant on
both targets, coherent full rankings) and its verdicts' wording, and the VQ views it draws."""
from __future__ import annotations

import nbformat
import pytest

from seqtransfer.methods import metarec

@pytest.mark.notebook
def test_metarec_notebook_smoke(smoke_notebook, amazon_scientific):
    out, rows = smoke_notebook("05_metarec")
    targets = ("ml-100k", "amazon-scientific")
    assert set(rows["method"]) == {f"metarec:{t} | {v}" for t in targets for v in metarec.SPECS}
    assert rows["value"].between(0, 1).all()
    wide = rows.pivot_table(index=["method", "group", "k"], columns="metric", values="value")
    assert (wide["mrr"] <= wide["ndcg"] + 1e-9).all() and (wide["ndcg"] <= wide["hr"] + 1e-9).all()
    users = rows[rows["group"] == "all"].groupby("method")["n_users"].first()
    assert (users[users.index.str.contains("ml-100k")] == 60).all()      # 20% of the 300-user sample
    nb = nbformat.read(str(out), 4)
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.outputs if o.output_type == "stream")
    for t in targets:
        for v in metarec.TRANSFER:
            assert any(f"{t} | {v} {word} {t} | target only" in text for word in ("beats", "does NOT beat", "vs"))
    titles = [o["data"]["application/vnd.plotly.v1+json"]["layout"]["title"]["text"] for c in nb.cells
              if c.cell_type == "code" for o in c.outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    for part in ("codebook use per domain", "codebook and items", "codes shared by several domains",
                 "source weights and meta-gradient cosines"):
        assert any(part in t for t in titles), part
    html = "\n".join(o["data"].get("text/html", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.outputs if "data" in o)
    assert "matched" in html and "chance" in html                         # the title-matched agreement table
