"""Notebook 06_ecat at the smoke budget through papermill: what it records (every variant of both
settings, coherent full rankings over the target's items) and its verdicts' wording."""
from __future__ import annotations

import nbformat
import pytest

from seqtransfer.methods import ecat


@pytest.mark.notebook
def test_ecat_notebook_smoke(smoke_notebook):
    out, rows = smoke_notebook("06_ecat")
    expect = {f"ecat:Film-Noir | {v}" for v in ecat.VARIANTS}
    expect |= {f"ecat:ml-100k | {v}" for v in ("ECAT", *ecat.BASELINES)}
    assert set(rows["method"]) == expect
    assert rows["value"].between(0, 1).all()
    wide = rows.pivot_table(index=["method", "group", "k"], columns="metric", values="value")
    assert (wide["mrr"] <= wide["ndcg"] + 1e-9).all() and (wide["ndcg"] <= wide["hr"] + 1e-9).all()
    users = rows[rows["group"] == "all"].groupby("method")["n_users"].first()
    assert (users <= 300).all()                                  # the smoke budget's user sample
    noir = rows[rows["method"].str.startswith("ecat:Film-Noir")]
    assert set(noir["group"]) == {"all", "head", "tail", "cold"}  # short genre histories are cold
    text = "\n".join(o.get("text", "") for c in nbformat.read(str(out), 4).cells if c.cell_type == "code"
                     for o in c.outputs if o.output_type == "stream")
    lines = text.splitlines()
    for v in ecat.VARIANTS:                                      # one verdict per variant and group
        if v == "target-only":
            continue
        for g in ("all", "head", "tail", "cold"):
            said = [ln for ln in lines if any(ln.strip().startswith(f"Film-Noir | {v} {word} ")
                                              for word in ("beats", "does", "vs"))
                    and "Film-Noir | target-only" in ln and f"for {g} users" in ln]
            assert len(said) == 1, (v, g)
            assert any(f"-- {verdict}" in said[0] for verdict in
                       ("negative transfer", "positive transfer", "no detectable difference")), said[0]
    # ECAT against every other variant but target-only, from ECAT's side, once each
    for label, others in (("Film-Noir", [v for v in ecat.VARIANTS if v not in ("ECAT", "target-only")]),
                          ("ml-100k", [v for v in ecat.BASELINES if v != "target-only"])):
        block = text.split(f"{label}, ECAT against the other variants:\n", 1)[1].split("\n\n", 1)[0].splitlines()
        assert [ln.strip().split(" for all users")[0] for ln in block] == [f"ECAT vs {v}" for v in others]
        assert all(ln.rstrip().endswith(("ECAT is better.", "ECAT is worse.", "no detectable difference."))
                   for ln in block)
