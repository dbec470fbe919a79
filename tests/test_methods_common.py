"""The shared result helpers that notebooks print their verdicts with."""
import numpy as np
import pandas as pd
import pytest
import torch

from seqtransfer.methods import (MethodResult, convergence_sentence, gap_sentence, still_improving,
                                 stopped_by_cap, summarize, transfer_verdict)
from seqtransfer.train import TrainResult

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


def _stopped(variant: str, *reasons: str) -> MethodResult:
    """A run whose training stages ended for ``reasons`` (one: plain; several: staged)."""
    model = torch.nn.Linear(1, 1)
    train = TrainResult(model, pd.DataFrame(), 0, 0.1, reasons[-1], "cpu", 1.0, 1)
    diagnostics = {"stages": pd.DataFrame({"stage": range(len(reasons)), "stopped": reasons})} if len(reasons) > 1 else {}
    return MethodResult("toy", variant, 0, pd.DataFrame(), pd.DataFrame(), model, train, diagnostics)


def test_models_stopped_by_a_cap_are_named():
    early = "early stop: no better valid NDCG@10 for 5 evaluations"
    converged = _stopped("early-stopped", early)
    capped = _stopped("capped", "max_minutes=10.0")
    two_stage = _stopped("plugins", "epochs=200", early)      # stage 1 hit its epoch cap
    assert stopped_by_cap(converged) == [] and stopped_by_cap(two_stage) == ["epochs=200"]
    assert still_improving([converged, capped, two_stage]) == ["capped", "plugins"]
    assert convergence_sentence([converged]).startswith("Every model stopped early")
    text = convergence_sentence([converged, capped])
    assert text.startswith("1 of 2 models were stopped by a cap (max_minutes=10.0)") and "capped" in text
    assert convergence_sentence([capped]).startswith("The model was stopped by a cap")
    assert convergence_sentence([capped, two_stage]).startswith("All 2 models were")
