"""The shared result helpers that notebooks print their verdicts with."""
import numpy as np
import pandas as pd
import pytest
import torch

from seqtransfer.methods import (MethodResult, convergence_sentence, gap_sentence, still_improving,
                                 summarize, transfer_verdict)

pytestmark = pytest.mark.unit


def _metrics(variant: str, values: dict[str, list[float]]) -> pd.DataFrame:
    """Test NDCG@10 rows of one variant, one seed per list entry."""
    rows = [{"split": "test", "group": g, "metric": "ndcg", "k": 10, "value": v, "variant": variant, "seed": s}
            for g, vs in values.items() for s, v in enumerate(vs)]
    return pd.DataFrame(rows)


def _run(variant: str, valid: list[float], stage: list[str] | None = None) -> MethodResult:
    history = pd.DataFrame({"epoch": range(len(valid)), "valid_ndcg10": valid})
    if stage is not None:
        history["stage"] = stage
    return MethodResult("toy", variant, 0, pd.DataFrame(), history, torch.nn.Linear(1, 1))


def test_summarize_gives_mean_and_t_interval_over_seeds():
    table = summarize(_metrics("a", {"all": [0.1, 0.2, 0.3]}))
    row = table.iloc[0]
    assert row["mean"] == pytest.approx(0.2) and row["n_seeds"] == 3
    assert row["ci95"] == pytest.approx(4.303 * 0.1 / np.sqrt(3))       # t(2) * sd / sqrt(n)
    assert np.isnan(summarize(_metrics("b", {"all": [0.1]}))["ci95"].iloc[0])


def test_verdicts_name_negative_transfer_and_the_gap():
    table = summarize(pd.concat([_metrics("base", {"tail": [0.10], "head": [0.20]}),
                                 _metrics("ours", {"tail": [0.12], "head": [0.15]})]))
    assert transfer_verdict(table, "ours", "base", "tail") == (
        "ours beats base for tail users: NDCG@10 0.1200 vs 0.1000 (+20.0%).")
    assert transfer_verdict(table, "ours", "base", "head").endswith("(-25.0%) -- negative transfer.")
    assert "has no cold" in transfer_verdict(table, "ours", "base", "cold")
    tie = summarize(pd.concat([_metrics("base", {"head": [0.07331]}), _metrics("ours", {"head": [0.07330]})]))
    assert "(-0.01%) -- negative transfer" in transfer_verdict(tie, "ours", "base", "head")
    assert gap_sentence(table, "base") == "base: head NDCG@10 0.2000, tail 0.1000 (tail/head = 0.50)."


def test_models_cut_off_while_improving_are_named():
    converged = _run("early-stopped", [0.1, 0.3, 0.2, 0.2])
    rising = _run("rising", [0.1, 0.2, 0.3])
    two_stage = _run("plugins", [0.1, 0.2, 0.3, 0.25], stage=["backbone", "backbone", "plugins", "plugins"])
    assert still_improving([converged, rising, two_stage]) == ["rising", "plugins"]   # stage 1 still rising
    assert convergence_sentence([converged]).startswith("Every model stopped early")
    text = convergence_sentence([converged, rising])
    assert text.startswith("1 of 2 models were still improving") and "rising" in text
    assert convergence_sentence([rising]).startswith("The model was still improving")
    assert convergence_sentence([rising, two_stage]).startswith("All 2 models were")
