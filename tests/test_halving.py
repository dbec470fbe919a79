"""Successive halving read off the run cache: which rate a rung keeps, what it costs, and which
histories it reads (hand-made curves, whose answers are worked out in the comments)."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from seqtransfer import bench, halving
from seqtransfer.results import MethodResult


def curve(lr, valids, warm=1, step_seconds=10.0):
    """A history: ``warm`` warm-up epochs below the peak rate, then the peak; a validation every epoch."""
    n = len(valids)
    return pd.DataFrame({"epoch": range(n), "lr": [lr * (e + 1) / (warm + 1) if e < warm else lr for e in range(n)],
                         "seconds": [step_seconds * (e + 1) for e in range(n)], "valid_ndcg10": valids})


# three rates; epoch 0 is the warm-up. The fast rate leads early and fades, the middle one wins
# at the end, the slow one climbs late but not enough
SLOW = curve(1e-3, [0.01, 0.02, 0.03, 0.05, 0.07, 0.08])         # best 0.08, 60 s
MID = curve(3e-3, [0.02, 0.04, 0.06, 0.09, 0.10, 0.10, 0.10])    # best 0.10, 70 s
FAST = curve(1e-2, [0.05, 0.07, 0.075, 0.076, 0.07])             # best 0.076, 50 s


def trials():
    return [halving.Trial(1e-3, SLOW, 60.0), halving.Trial(3e-3, MID, 70.0), halving.Trial(1e-2, FAST, 50.0)]


@pytest.mark.unit
def test_a_rung_counts_validations_from_the_end_of_the_warm_up():
    assert halving.rung_index(MID, 1) == 1       # epoch 0 is warm-up: the first peak-rate validation is row 1
    assert halving.rung_index(MID, 3) == 3
    assert halving.rung_index(FAST, 9) == 4      # stopped before its rung: counts whole
    with pytest.raises(ValueError, match="at least one validation"):
        halving.rung_index(MID, 0)


@pytest.mark.unit
def test_a_short_rung_keeps_the_early_leader_and_a_longer_one_the_grid_choice():
    short = halving.halve(trials(), 1)
    # after 1 validation past warm-up: slow 0.02, mid 0.04, fast 0.07 -> fast is kept; the grid
    # keeps mid (0.10); fast's final best 0.076 loses 24% of validation NDCG@10
    assert (short["grid_lr"], short["halving_lr"], short["same"]) == (3e-3, 1e-2, False)
    assert short["valid_loss"] == pytest.approx(0.24)
    # cost: fast's whole run (50 s) + slow and mid to row 1 (20 s each); the grid: 60 + 70 + 50
    assert short["halving_seconds"] == pytest.approx(90.0)
    assert short["grid_seconds"] == pytest.approx(180.0)
    longer = halving.halve(trials(), 3)
    # after 3: slow 0.05, mid 0.09, fast 0.076 -> mid, the grid's choice; cost 70 + 40 + 40
    assert (longer["halving_lr"], longer["same"], longer["valid_loss"]) == (3e-3, True, 0.0)
    assert longer["halving_seconds"] == pytest.approx(150.0)
    table = halving.halving_table({"arm": trials()}, (1, 3))
    s = halving.summary(table)
    assert s["same_choice"].tolist() == [0, 1]
    assert s["seconds_share"].tolist() == pytest.approx([0.5, 150 / 180])


@pytest.mark.unit
def test_keeping_two_rungs_recovers_the_grid_choice_the_short_rung_misses():
    two = halving.halve(trials(), 1, keep=2)
    # after 1 validation: fast 0.07, mid 0.04, slow 0.02 -> fast and mid continue; their finals
    # 0.076 and 0.10 -> mid, the grid's choice; cost: fast 50 + mid 70 whole, slow to row 1 (20)
    assert (two["halving_lr"], two["same"], two["valid_loss"]) == (3e-3, True, 0.0)
    assert two["halving_seconds"] == pytest.approx(140.0)
    assert halving.halve(trials(), 1, keep=3)["halving_seconds"] == pytest.approx(180.0)
    table = halving.halving_table({"arm": trials()}, (1,), (1, 2))
    s = halving.summary(table)
    assert s["keep"].tolist() == [1, 2] and s["same_choice"].tolist() == [0, 1]
    with pytest.raises(ValueError, match="keep"):
        halving.halve(trials(), 1, keep=0)


def store(folder, name, variant, seed, history, seconds=None):
    r = MethodResult("baseline", variant, seed, pd.DataFrame(), history, torch.nn.Linear(1, 1))
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(r, folder / f"{name}.pt")


@pytest.mark.unit
def test_the_grids_are_read_from_the_run_cache(tmp_path, capsys):
    runs = tmp_path / "runs"
    for name, h in (("a-slow", SLOW), ("a-mid", MID), ("a-fast", FAST)):
        store(runs, name, "sasrec joint", 0, h)
    store(runs, "a-mid-seed1", "sasrec joint", 1, MID)            # other seeds are not the grid
    store(runs, "lonely", "tail-only", 0, MID)                    # one rate: no search to simulate
    two = pd.concat([MID.assign(stage="backbone"), FAST.assign(stage="plugins")], ignore_index=True)
    store(runs, "plugins", "plugins", 0, two)                     # two trainings: left out, named
    other = tmp_path / "b" / "runs"                               # another cache, the same folder name
    store(other, "a-mid", "sasrec joint", 0, MID)
    store(other, "a-slow", "sasrec joint", 0, SLOW)
    grids, skipped = halving.cached_grids([runs, other])
    joint = f"{runs}: sasrec joint"
    assert list(grids) == [joint, f"{other}: sasrec joint"]         # never merged into one grid
    assert [t.lr for t in grids[joint]] == [1e-3, 3e-3, 1e-2]
    # without a TrainResult the run's seconds are its history's last
    assert [t.seconds for t in grids[joint]] == [60.0, 70.0, 50.0]
    assert skipped == [f"{runs}: plugins (its history is more than one training)"]
    assert bench.main(["--halving", str(runs), "--rungs", "1,3"]) == 0
    out = capsys.readouterr().out
    assert f"{runs}: sasrec joint" in out and f"left out: {runs}: plugins" in out
    assert bench.main(["--halving", str(tmp_path / "nowhere")]) == 2
    assert "no run cache at" in capsys.readouterr().err


@pytest.mark.unit
def test_a_period_by_period_student_is_read_by_its_first_period(tmp_path):
    """ECAT's student (periods, one stage): the rung reads its first period; its whole run's
    validation is its last period's best (not the best of every period) and its seconds are
    every period's. Two rates: the first period's leader after one validation is not the rate
    whose last period ends best."""
    def student(lr, first, last):
        h = pd.concat([curve(lr, first).assign(period=0, stage="student"),
                       curve(lr, last, warm=0).assign(period=1, stage="student")], ignore_index=True)
        stages = pd.DataFrame({"period": [0, 1], "seconds": [10.0 * len(first), 10.0 * len(last)]})
        return h, stages

    runs = tmp_path / "runs"
    runs.mkdir()
    # rate 1e-3: period 0 at its first peak validation 0.05 (row 1), ends 0.08; period 1 best 0.09
    # rate 1e-2: period 0 leads at 0.07 after one validation and reaches 0.12 (above either last
    # period); period 1 best 0.085
    for name, lr, first, last in (("slow", 1e-3, [0.01, 0.05, 0.08], [0.07, 0.09]),
                                  ("fast", 1e-2, [0.02, 0.07, 0.12], [0.08, 0.085, 0.08])):
        h, stages = student(lr, first, last)
        r = MethodResult("ecat", "ECAT", 0, pd.DataFrame(), h, torch.nn.Linear(1, 1), diagnostics={"stages": stages})
        torch.save(r, runs / f"{name}.pt")
    grids, skipped = halving.cached_grids([runs])
    (trials,) = grids.values()
    assert skipped == [] and [t.final for t in trials] == [0.09, 0.085]
    assert [t.seconds for t in trials] == [50.0, 60.0] and [len(t.history) for t in trials] == [3, 3]
    one = halving.halve(trials, 1)
    # the rung keeps 1e-2 (0.07 > 0.05); the grid 1e-3 (0.09 > 0.085): 1 - 0.085 / 0.09 lost;
    # cost: the fast run whole (60 s) + the slow one to its first peak validation (row 1, 20 s)
    assert (one["grid_lr"], one["halving_lr"]) == (1e-3, 1e-2)
    assert one["valid_loss"] == pytest.approx(1 - 0.085 / 0.09)
    assert one["halving_seconds"] == pytest.approx(80.0) and one["grid_seconds"] == pytest.approx(110.0)
