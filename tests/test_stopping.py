"""A shorter early-stopping patience replayed on cached curves (hand-made, the answers worked out
in the comments): where it stops, what it keeps and saves, and its check against the real stop."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from seqtransfer import bench, stopping
from seqtransfer.results import MethodResult
from seqtransfer.train import TrainResult

pytestmark = pytest.mark.unit


def curve(valids, lr=1e-3, warm=1):
    """``warm`` warm-up epochs below the peak rate, then the peak; 10 s an epoch, a validation each."""
    n = len(valids)
    return pd.DataFrame({"epoch": range(n), "lr": [lr / 2 if e < warm else lr for e in range(n)],
                         "seconds": [10.0 * (e + 1) for e in range(n)], "valid_ndcg10": valids})


# row:      0 (warm-up)  1     2     3     4     5     6     7     8
LATE = curve([0.05, 0.04, 0.10, 0.09, 0.09, 0.11, 0.10, 0.10, 0.10])


def test_stop_row_counts_bad_validations_past_the_warm_up_only():
    # best 0.05 at row 0; row 1 (0.04) is bad 1; row 2 is a new best; rows 3, 4 bad 1, 2; row 5 new
    # best; rows 6, 7, 8 bad 1, 2, 3
    assert stopping.stop_row(LATE, 2) == 4
    assert stopping.stop_row(LATE, 3) == 8
    assert stopping.stop_row(LATE, 4) == 8            # never reached: the last row
    warm = curve([0.05, 0.04, 0.03, 0.06], warm=3)    # rows 1-2 inside the warm-up count for nothing
    assert stopping.stop_row(warm, 1) == 3
    with pytest.raises(ValueError, match="at least one"):
        stopping.stop_row(LATE, 0)


def test_replay_keeps_the_best_before_the_stop_and_saves_what_follows():
    two = stopping.replay(LATE, 2)
    # stops at row 4: keeps 0.10 of the whole run's 0.11, saves rows 5-8 (40 of 90 s)
    assert (two["valid_kept"], two["valid_whole"]) == (0.10, 0.11)
    assert (two["seconds"], two["seconds_saved"], two["exact"]) == (90.0, 40.0, True)
    assert stopping.replay(LATE, 3)["seconds_saved"] == 0.0


def test_several_trainings_are_replayed_one_by_one_and_marked_inexact():
    first = curve([0.05, 0.04, 0.10, 0.09, 0.09, 0.11])        # patience 2 stops at row 4, before its best
    h = pd.concat([first.assign(period=0), curve([0.2, 0.1, 0.1, 0.3], warm=0).assign(period=1)], ignore_index=True)
    r = stopping.replay(h, 2)
    # period 1 (no warm-up): 0.2, then bad 1, bad 2 -> stops at its row 2, keeps 0.2 of 0.3
    assert (r["valid_kept"], r["valid_whole"]) == (0.2, 0.3)
    assert r["seconds"] == 60.0 + 40.0 and r["seconds_saved"] == 10.0 + 10.0
    assert r["exact"] is False                                   # period 0 lost its best: period 1 differs
    assert stopping.replay(h, 5)["exact"] is True


def test_the_table_checks_itself_against_the_real_stop(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    stopped = curve([0.05, 0.04, 0.10, 0.09, 0.09])              # a patience-2 run, stopped at row 4
    for name, h, why in (("a", stopped, "early stop: no better valid NDCG@10 for 2 evaluations"),
                         ("b", LATE, "epochs=9")):
        t = TrainResult(torch.nn.Linear(1, 1), h, 2, 0.1, why, "cpu", 50.0, 5)
        torch.save(MethodResult("baseline", f"arm {name}", 0, pd.DataFrame(), h, torch.nn.Linear(1, 1), t),
                   runs / f"{name}.pt")
    # a rung as the engine caches it: the arm's own variant, stopped at its rung; left out
    rung = TrainResult(torch.nn.Linear(1, 1), LATE, 2, 0.1, "rung=1", "cpu", 5.0, 2)
    torch.save(MethodResult("baseline", "arm a", 0, pd.DataFrame(), LATE, torch.nn.Linear(1, 1), rung),
               runs / "rung.pt")
    assert [label for label, _, _ in stopping.cached_runs([runs])] == ["arm a (seed 0)", "arm b (seed 0)"]
    table = stopping.patience_table(stopping.cached_runs([runs]), (1, 2), budget_patience=2)
    assert sorted(table["run"].unique()) == ["arm a (seed 0)", "arm b (seed 0)"]
    assert table.set_index(["run", "patience"]).loc[("arm a (seed 0)", 2), "replays"]
    # patience 1 on run a stops at row 1 (0.04 < 0.05): keeps 0.05 of 0.10
    row = table.set_index(["run", "patience"]).loc[("arm a (seed 0)", 1)]
    assert row["valid_loss"] == pytest.approx(0.5) and row["seconds_saved"] == 30.0
    s = stopping.summary(table)
    assert s["over_2pct"].tolist() == [2, 1]
    assert bench.main(["--patience", str(runs), "--patiences", "1", "--budget-patience", "2"]) == 0
    assert "stops 2 of them where they stopped" in capsys.readouterr().out
    assert bench.main(["--patience", str(tmp_path / "nowhere")]) == 2
