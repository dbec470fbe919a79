"""Would successive halving pick the same learning rates as the full grid, and for how much less?

Every arm of every notebook chooses its learning rate on validation NDCG@10 from the budget's
grid, training each grid point (seed 0) to early stopping: a 3-point grid costs about three
models per arm. Successive halving trains every grid point a short while (a *rung*), keeps the
best on validation and lets only it continue to early stopping. On one grid round that is
``(n - 1)`` rungs plus one full run.

The engine does it when the budget sets ``rung`` (``Budget.rung``; ``TrainConfig.rung`` stops
a run there, and the winner continues from its checkpoint: ``Experiment.run``). Nothing needs
re-training to see beforehand what it would choose. ``train.fit`` is deterministic given its
seed, shuffles each epoch with its own generator and checkpoints after every validation, so the
first epochs of a full run *are* its rung, and the winner resumes from its rung checkpoint to
the same end (a test checks it bit for bit). The histories the run cache keeps (``Experiment.run``
stores every grid point) therefore answer exactly, per arm:

- which rate a rung of ``k`` validations after the warm-up would keep (the best validation
  NDCG@10 so far, the measure the full grid reads at the end);
- whether that is the full grid's choice, and if not, how much validation NDCG@10 the arm loses
  (the chosen rate's final best against the grid's best);
- the training seconds: the losers' seconds to their rung plus the winner's whole run, against
  the sum of every grid point's run.

The rung is counted from the end of the warm-up (the first epoch at the peak rate), since every
grid point is still ramping up before it. A run that stopped before its rung counts whole. Runs
whose history restarts (two-stage plugins) are left out and listed: their rung is not a prefix
of one training. ECAT's period-by-period student takes its rung in its first period (what the
engine does), and its whole run's validation is its last period's best. Read a cache filled by one code version (a fresh
``cache_runs`` folder for one batch); where a folder holds several, the newest file per
(arm, rate) is read.

    seqtransfer bench --halving data/runs [--rungs 1,2,3,5] [--keep 1,2]

With ``keep`` > 1 the best ``keep`` rungs continue to early stopping and the best of those on
validation is chosen (``Budget.keep``; quick continues two of three).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch


@dataclass
class Trial:
    """One grid point of one arm: its peak rate and its validation curve."""

    lr: float
    history: pd.DataFrame     # epoch, lr (per epoch), seconds (cumulative), valid_ndcg10
    seconds: float            # the whole run's training seconds
    final: float | None = None   # the whole run's best validation NDCG@10 where ``history`` is
                                 # only its first part (ECAT: the first period, the last's best)


def rung_index(history: pd.DataFrame, k: int) -> int:
    """Row of ``history`` that ends a rung of ``k`` validations counted from the first epoch
    at the peak rate (the warm-up's end); the last row when the run stopped before it."""
    if k < 1:
        raise ValueError(f"a rung is at least one validation, got {k}")
    valid = history["valid_ndcg10"].notna().to_numpy()
    peak = history["lr"].to_numpy() >= history["lr"].max() * (1 - 1e-9)
    after = np.flatnonzero(valid & (np.cumsum(peak) > 0))
    return int(after[k - 1]) if len(after) >= k else len(history) - 1


def best_so_far(history: pd.DataFrame, row: int) -> float:
    return float(history["valid_ndcg10"].iloc[:row + 1].max())


def best_rungs(scores: list[float], keep: int) -> list[int]:
    """Indices, in grid order, of the ``keep`` best rung scores (validation NDCG@10): the rates
    successive halving continues to early stopping. Ties go to the earlier rate; a NaN score (a
    rung without a validation) ranks last. The engine (``experiment.continuing``) and this
    module's replay (:func:`halve`) both choose with it."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (the rates that continue past a rung), got {keep}")
    order = sorted(range(len(scores)), key=lambda j: (np.isnan(scores[j]), -np.nan_to_num(scores[j]), j))
    return sorted(order[:keep])


def halve(trials: list[Trial], k: int, keep: int = 1) -> dict:
    """What a rung of ``k`` validations chooses among ``trials`` when the best ``keep`` rungs
    continue to early stopping (the best of those on validation is chosen), against the full
    grid."""
    if len(trials) < 2:
        raise ValueError("successive halving needs a grid of at least two rates")
    finals = [t.final if t.final is not None else best_so_far(t.history, len(t.history) - 1) for t in trials]
    rungs = [rung_index(t.history, k) for t in trials]
    at_rung = [best_so_far(t.history, r) for t, r in zip(trials, rungs)]
    cont = best_rungs(at_rung, keep)
    grid = int(np.argmax(finals))
    kept = max(cont, key=lambda j: (finals[j], -j))
    cost = sum(trials[j].seconds for j in cont) + sum(float(t.history["seconds"].iloc[r])
                                                      for j, (t, r) in enumerate(zip(trials, rungs)) if j not in cont)
    return {"grid_lr": trials[grid].lr, "halving_lr": trials[kept].lr, "same": grid == kept,
            "valid_loss": 1 - finals[kept] / finals[grid] if finals[grid] > 0 else 0.0,
            "halving_seconds": cost, "grid_seconds": sum(t.seconds for t in trials)}


def restarts(history: pd.DataFrame) -> bool:
    """True when the history is more than one training (stages or periods restart)."""
    if any(c in history and history[c].nunique(dropna=False) > 1 for c in ("stage", "period")):
        return True
    return bool((np.diff(history["epoch"].to_numpy()) <= 0).any())


def _periods(history: pd.DataFrame) -> bool:
    """A period-by-period training (ECAT's student): periods, one stage, a validation in the first."""
    return ("period" in history and history["period"].nunique() > 1
            and ("stage" not in history or history["stage"].nunique() == 1)
            and history.loc[history["period"] == history["period"].min(), "valid_ndcg10"].notna().any())


def cached_results(folders: list[str | Path], pattern: str = "*.pt"):
    """Every run ``(folder, path, result)`` a batch's run cache ``folders`` holds (files matching
    ``pattern``, in name order); a folder that is not there is a clear error."""
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"no run cache at {folder}; pass the folder a batch's "
                                    "cache_runs wrote (default data/runs)")
        for path in sorted(folder.glob(pattern)):
            yield folder, path, torch.load(path, map_location="cpu", weights_only=False)


def is_rung(result) -> bool:
    """A successive-halving rung: a run the engine stopped at its rung (``TrainConfig.rung``; its
    ``train.stopped`` reads ``rung=k``). Its variant is the arm's own; only its cache file is
    named ``<variant> (rung k)``."""
    return str(getattr(getattr(result, "train", None), "stopped", "") or "").startswith("rung=")


def run_seconds(result) -> float:
    """Training seconds of one cached run: the sum of the stages it trained itself (ECAT's
    periods, the intervened network's backbone and plugins; not a stage marked ``trained``
    False, an input run's backbone) where it records them, else its training loop's (else its
    history's last ``seconds``)."""
    stages = (getattr(result, "diagnostics", None) or {}).get("stages")
    if isinstance(stages, pd.DataFrame) and "seconds" in stages and len(stages):
        if "trained" in stages:
            stages = stages[stages["trained"].fillna(True).astype(bool)]
        return float(stages["seconds"].sum())
    train = getattr(result, "train", None)
    if train is not None:
        return float(train.seconds or 0.0)
    h = getattr(result, "history", None)
    return float(h["seconds"].iloc[-1]) if h is not None and "seconds" in h and len(h) else 0.0


def cached_grids(folders: list[str | Path]) -> tuple[dict[str, list[Trial]], list[str]]:
    """Every arm's seed-0 grid in the run cache ``folders``: ``{label: trials}`` for arms with
    at least two rates, and the labels left out with why."""
    found: dict[tuple[str, str, float], tuple[float, Trial]] = {}
    skipped: list[str] = []
    for folder, path, result in cached_results(folders):
        h = getattr(result, "history", None)
        if getattr(result, "seed", None) != 0 or h is None or "valid_ndcg10" not in h or "lr" not in h:
            continue
        label = f"{folder}: {result.variant}"
        final = None
        if _periods(h):                 # ECAT's student: its rung is in its first period
            final = float(h.loc[h["period"] == h["period"].max(), "valid_ndcg10"].max())
            h = h[h["period"] == h["period"].min()]
        elif restarts(h) or h["valid_ndcg10"].notna().sum() == 0:
            skipped.append(f"{label} (its history is more than one training)")
            continue
        trial = Trial(float(h["lr"].max()), h.reset_index(drop=True), run_seconds(result), final)
        key = (str(folder), result.variant, round(trial.lr, 12))
        mtime = path.stat().st_mtime
        if key not in found or found[key][0] < mtime:
            found[key] = (mtime, trial)
    grids: dict[str, list[Trial]] = {}
    for (folder, variant, _), (_, trial) in found.items():
        grids.setdefault(f"{folder}: {variant}", []).append(trial)   # two folders never merge
    grids = {k: sorted(v, key=lambda t: t.lr) for k, v in grids.items() if len(v) > 1}
    return grids, sorted(set(skipped))


def halving_table(grids: dict[str, list[Trial]], rungs: tuple[int, ...] = (1, 2, 3, 5),
                  keeps: tuple[int, ...] = (1,)) -> pd.DataFrame:
    """One row per (arm, keep, rung): the grid's and the search's choice, the validation lost,
    the seconds of each search."""
    rows = [{"arm": arm, "keep": c, "rung": k, **halve(trials, k, c)} for arm, trials in grids.items()
            for c in keeps for k in rungs]
    return pd.DataFrame(rows, columns=["arm", "keep", "rung", "grid_lr", "halving_lr", "same", "valid_loss",
                                       "halving_seconds", "grid_seconds"])


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (keep, rung): arms, how many choose as the grid does, the worst and mean validation
    lost, and the search's seconds as a share of the full grid's."""
    g = table.groupby(["keep", "rung"] if "keep" in table else "rung")
    return pd.DataFrame({"arms": g.size(), "same_choice": g["same"].sum(),
                         "worst_valid_loss": g["valid_loss"].max(), "mean_valid_loss": g["valid_loss"].mean(),
                         "seconds_share": g["halving_seconds"].sum() / g["grid_seconds"].sum()}).reset_index()


def print_halving(folders: list[str | Path], rungs: tuple[int, ...] = (1, 2, 3, 5),
                  keeps: tuple[int, ...] = (1,)) -> pd.DataFrame:
    grids, skipped = cached_grids(folders)
    if not grids:
        raise ValueError(f"no arm in {', '.join(map(str, folders))} has two or more learning rates at "
                         "seed 0; run a notebook at quick (its grid) with cache_runs first")
    table = halving_table(grids, rungs, keeps)
    with pd.option_context("display.width", 200, "display.max_rows", 500, "display.max_colwidth", 70):
        print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
        print("\nper rates continued (keep) and rung (validations after the warm-up):")
        print(summary(table).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    if skipped:
        print("\nleft out: " + "; ".join(skipped))
    return table
