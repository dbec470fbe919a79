"""What a shorter early-stopping patience would have cost, read off a batch's run cache.

Every model of every notebook trains until validation NDCG@10 has not improved for
``patience`` evaluations (``Budget.patience``: 5 at ``quick``), then keeps its best weights.
The last ``patience`` validations of a run that stops early therefore never change the model it
returns: they are the price of being sure. ``train.fit`` is deterministic given its seed and,
with ``plateau_factor`` 1 (every budget), the rate after the warm-up does not depend on how
many evaluations went without improvement, so a run with a shorter patience is *exactly* the
prefix of the cached run up to where it would have stopped. The histories the run cache keeps
answer, per run and without training anything:

- where patience ``p`` stops it (the first validation that is the ``p``-th in a row without a
  better one, counted only once the rate has reached its peak: evaluations inside the warm-up
  count toward nothing, as ``min_steps`` makes them);
- the best validation NDCG@10 up to there against the whole run's (the validation lost);
- the training seconds after that validation (the seconds saved).

A history of several trainings (ECAT's periods, the intervened network's two stages) is read
one training at a time. Such a replay is exact while every earlier training keeps its best
validation (the next one then starts from the same weights); a run where an earlier one does
not is counted but marked ``exact=False``. Rungs of successive halving (runs stopped at their
rung, :func:`~seqtransfer.halving.is_rung`) are left out: they stop at their rung, not by
patience. The replay checks itself:
at the budget's own patience it must stop every run where it stopped (``replays``), except
runs a cap ended.

    seqtransfer bench --patience data/runs [--patiences 2,3,4] [--budget-patience 5]

The learning rate a grid would choose under a shorter patience can change too (each grid point
ends elsewhere); this replay reads single runs, so it measures the recipe, not the search.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .halving import cached_results, is_rung


def stop_row(history: pd.DataFrame, patience: int) -> int:
    """Row of ``history`` (one training) where early stopping with ``patience`` ends it: the
    validation that is the ``patience``-th in a row without a better one, counting only rows at
    the peak rate (past the warm-up); the last row when it never would."""
    if patience < 1:
        raise ValueError(f"patience must be at least one evaluation, got {patience}")
    valid = history["valid_ndcg10"].to_numpy(dtype=float)
    lr = history["lr"].to_numpy(dtype=float)
    peak = lr >= np.nanmax(lr) * (1 - 1e-9)
    best, bad = -np.inf, 0
    for i, v in enumerate(valid):
        if np.isnan(v):
            continue
        if v > best:
            best, bad = v, 0
        elif peak[i]:
            bad += 1
            if bad >= patience:
                return i
    return len(history) - 1


def _durations(seconds: np.ndarray) -> np.ndarray:
    """Per-row seconds from a cumulative column that may restart (a run resumed from its
    checkpoint counts from the resumption)."""
    d = np.diff(seconds, prepend=0.0)
    return np.where(d < 0, seconds, d)


def _trainings(history: pd.DataFrame) -> list[pd.DataFrame]:
    keys = [c for c in ("period", "stage") if c in history]
    if not keys:
        return [history.reset_index(drop=True)]
    h = history.assign(_seg=(history[keys].ne(history[keys].shift())).any(axis=1).cumsum())
    return [g.drop(columns="_seg").reset_index(drop=True) for _, g in h.groupby("_seg", sort=True)]


def replay(history: pd.DataFrame, patience: int) -> dict:
    """One run's replay at ``patience``: the validation it keeps (its last training's best up to
    its stop), the whole run's, the seconds it trains and saves, and whether it is exact."""
    parts = _trainings(history)
    seconds = saved = 0.0
    exact = True
    for j, h in enumerate(parts):
        if h["valid_ndcg10"].notna().sum() == 0:
            continue
        r = stop_row(h, patience)
        d = _durations(h["seconds"].to_numpy(dtype=float))
        seconds += float(d.sum())
        saved += float(d[r + 1:].sum())
        kept, whole = float(h["valid_ndcg10"].iloc[:r + 1].max()), float(h["valid_ndcg10"].max())
        if j < len(parts) - 1 and kept < whole:
            exact = False
    return {"valid_kept": kept, "valid_whole": whole, "seconds": seconds, "seconds_saved": saved, "exact": exact}


def cached_runs(folders: list[str | Path]) -> list[tuple[str, pd.DataFrame, str]]:
    """(label, history, why it stopped) of every run in the run cache ``folders`` with a
    validation curve, rungs left out."""
    out = []
    for _, path, r in cached_results(folders):
        h = getattr(r, "history", None)
        variant = str(getattr(r, "variant", path.stem))
        if h is None or "valid_ndcg10" not in h or "lr" not in h or is_rung(r):
            continue
        if h["valid_ndcg10"].notna().sum() == 0:
            continue
        stopped = str(getattr(getattr(r, "train", None), "stopped", ""))
        out.append((f"{variant} (seed {getattr(r, 'seed', '?')})", h, stopped))
    return out


def patience_table(runs: list[tuple[str, pd.DataFrame, str]], patiences: tuple[int, ...],
                   budget_patience: int = 5) -> pd.DataFrame:
    """One row per (run, patience): validation kept and lost, seconds and seconds saved, exact;
    ``replays``: whether the replay at the budget's patience stops where the run stopped."""
    rows = []
    for label, h, stopped in runs:
        own = replay(h, budget_patience)
        for p in patiences:
            o = replay(h, p)
            loss = 1 - o["valid_kept"] / o["valid_whole"] if o["valid_whole"] > 0 else 0.0
            rows.append({"run": label, "patience": p, **o, "valid_loss": loss,
                         "replays": own["seconds_saved"] == 0.0, "stopped": stopped})
    return pd.DataFrame(rows, columns=["run", "patience", "valid_kept", "valid_whole", "valid_loss", "seconds",
                                       "seconds_saved", "exact", "replays", "stopped"])


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per patience: runs, the share of training seconds saved, the mean and worst validation
    lost, runs that lose more than 1% and 2%, inexact runs."""
    g = table.groupby("patience")
    return pd.DataFrame({"runs": g.size(), "seconds_share_saved": g["seconds_saved"].sum() / g["seconds"].sum(),
                         "mean_valid_loss": g["valid_loss"].mean(), "worst_valid_loss": g["valid_loss"].max(),
                         "over_1pct": g["valid_loss"].apply(lambda s: int((s > 0.01).sum())),
                         "over_2pct": g["valid_loss"].apply(lambda s: int((s > 0.02).sum())),
                         "inexact": g["exact"].apply(lambda s: int((~s).sum()))}).reset_index()


def print_patience(folders: list[str | Path], patiences: tuple[int, ...] = (2, 3, 4),
                   budget_patience: int = 5, worst: int = 10) -> pd.DataFrame:
    runs = cached_runs(folders)
    if not runs:
        raise ValueError(f"no run with a validation curve in {', '.join(map(str, folders))}; run a notebook "
                         "with cache_runs first")
    table = patience_table(runs, patiences, budget_patience)
    early = table["stopped"].str.startswith("early stop")
    off = table[early & ~table["replays"]]["run"].unique()
    with pd.option_context("display.width", 200, "display.max_colwidth", 70):
        print(f"{len(runs)} runs; the replay at patience {budget_patience} stops {len(runs) - len(off)} of them where "
              f"they stopped" + (f" (not: {', '.join(off[:5])})" if len(off) else ""))
        print(summary(table).to_string(index=False, float_format=lambda x: f"{x:.4f}"))
        for p in patiences:
            t = table[table["patience"] == p].nlargest(worst, "valid_loss")
            print(f"\nthe {worst} runs patience {p} costs most:")
            print(t[["run", "valid_whole", "valid_kept", "valid_loss", "seconds", "seconds_saved", "exact"]]
                  .to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    return table
