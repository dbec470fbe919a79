"""Where a batch spent its time: per notebook and per numbered section ("stage") of each.

papermill records every executed cell's wall-clock ``duration`` in the cell's metadata. A
notebook's cells fall into the sections its markdown headings open (``## 2. Train``); the cells
before the first numbered heading are its setup (imports, parameters, data preparation). So an
executed batch folder (``seqtransfer run --out DIR``) answers, with no extra instrumentation,
which stage dominates each notebook and what the next recipe change has to beat:

    seqtransfer bench --batch reports/latest

prints one table per notebook (section, seconds, share of the notebook) and the batch's own
wall-clock time and status from ``status.csv``. Nothing is timed here: it reads what the batch
measured, so the figures are those of that run's machine and load.

    seqtransfer bench --batch reports/latest --runs data/runs

adds the level below a section: the training seconds of every arm, pre-training and teacher in
the batch's run cache (:func:`arm_times`: every grid point, rung and seed, each counted once: a
run continued from its rung's checkpoint records only its own seconds).
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pandas as pd

from .halving import cached_results, is_rung, run_seconds

SETUP = "setup"
_HEADING = re.compile(r"^#{1,3}\s+(\d+\.\s*.+?)\s*$", re.MULTILINE)


def stage_times(nb_path: str | Path) -> pd.DataFrame:
    """(section, seconds, cells) of one executed notebook, in notebook order.

    A code cell counts toward the last numbered heading above it (``SETUP`` before the first);
    cells without a papermill duration (never executed) count as 0 s. Raises FileNotFoundError
    naming the file when it is missing, and ValueError when no cell carries a duration (not a
    papermill output).
    """
    path = Path(nb_path)
    if not path.exists():
        raise FileNotFoundError(f"no executed notebook at {path}; run `seqtransfer run --out {path.parent}` first")
    nb = nbformat.read(path, as_version=4)
    section, rows, timed = SETUP, {}, False
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            found = _HEADING.findall(cell.source)
            if found:
                section = found[0]
            continue
        if cell.cell_type != "code":
            continue
        duration = (cell.metadata.get("papermill") or {}).get("duration")
        timed |= duration is not None
        seconds, cells = rows.get(section, (0.0, 0))
        rows[section] = (seconds + float(duration or 0.0), cells + 1)
    if not timed:
        raise ValueError(f"{path} has no papermill cell durations: not a notebook executed by `seqtransfer run`")
    return pd.DataFrame([(s, t, n) for s, (t, n) in rows.items()], columns=["section", "seconds", "cells"])


def batch_times(out: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(notebooks, stages) of a batch folder: ``status.csv`` rows (notebook, status, seconds) and
    every executed notebook's :func:`stage_times` with ``notebook`` and ``share`` (of that
    notebook's cell time) columns, the longest notebook first."""
    out = Path(out)
    status_file = out / "status.csv"
    if not status_file.exists():
        raise FileNotFoundError(f"{status_file} not found: pass the --out folder of a `seqtransfer run`")
    status = pd.read_csv(status_file)[["notebook", "status", "seconds"]]
    status = status.sort_values("seconds", ascending=False, kind="stable").reset_index(drop=True)
    frames = []
    for name in status["notebook"]:
        path = out / f"{name}.ipynb"
        if path.exists():
            t = stage_times(path)
            frames.append(t.assign(notebook=name, share=t["seconds"] / max(t["seconds"].sum(), 1e-9)))
    stages = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["section", "seconds", "cells", "notebook", "share"])
    return status, stages[["notebook", "section", "seconds", "share", "cells"]]


def dominant_stage(stages: pd.DataFrame) -> pd.DataFrame:
    """Per notebook, the section that took longest (notebook, section, seconds, share)."""
    if stages.empty:
        return stages
    idx = stages.groupby("notebook", sort=False)["seconds"].idxmax()
    return stages.loc[idx, ["notebook", "section", "seconds", "share"]].reset_index(drop=True)


def print_batch_times(out: str | Path) -> None:
    """The per-notebook and per-stage figures of a batch folder, as text."""
    status, stages = batch_times(out)
    total = pd.read_csv(Path(out) / "status.csv")
    print(f"batch {out}: {len(total)} notebooks, {int((total['status'] == 'ok').sum())} ok; "
          f"notebook times add up to {status['seconds'].sum() / 60:.1f} min (they overlap with --jobs > 1)")
    for _, nb in status.iterrows():
        print(f"\n{nb['notebook']}: {nb['status']}, {nb['seconds']:.0f} s")
        part = stages[stages["notebook"] == nb["notebook"]]
        for _, r in part.iterrows():
            print(f"  {r['seconds']:8.1f} s  {100 * r['share']:5.1f}%  {r['section']}")
    top = dominant_stage(stages)
    if not top.empty:
        print("\nlongest stage of each notebook:")
        for _, r in top.iterrows():
            print(f"  {r['notebook']}: {r['section']} ({r['seconds']:.0f} s, {100 * r['share']:.0f}%)")


def run_times(folders: list[str | Path]) -> pd.DataFrame:
    """One row per cached run of the run cache ``folders``: variant, seed, ``rung`` (True for a
    successive-halving rung, :func:`~seqtransfer.halving.is_rung`), seconds
    (:func:`~seqtransfer.halving.run_seconds`), steps."""
    rows = []
    for _, path, r in cached_results(folders):
        rows.append({"variant": getattr(r, "variant", path.stem), "seed": getattr(r, "seed", None),
                     "rung": is_rung(r), "seconds": run_seconds(r),
                     "steps": getattr(getattr(r, "train", None), "steps", None)})
    return pd.DataFrame(rows, columns=["variant", "seed", "rung", "seconds", "steps"])


def arm_times(folders: list[str | Path]) -> pd.DataFrame:
    """Per variant of the run cache ``folders`` (an arm, a pre-training, a teacher): its runs and
    rungs, their training seconds in all and in the rungs, and its share of the cache's seconds;
    the costliest first."""
    runs = run_times(folders)
    if runs.empty:
        return pd.DataFrame(columns=["variant", "runs", "rungs", "seconds", "rung_seconds", "share"])
    runs = runs.assign(rung_seconds=runs["seconds"].where(runs["rung"], 0.0))
    out = runs.groupby("variant", sort=False).agg(runs=("rung", lambda x: int((~x).sum())),
                                                  rungs=("rung", "sum"), seconds=("seconds", "sum"),
                                                  rung_seconds=("rung_seconds", "sum")).reset_index()
    out["rungs"] = out["rungs"].astype(int)
    out["share"] = out["seconds"] / max(out["seconds"].sum(), 1e-9)
    return out.sort_values("seconds", ascending=False, kind="stable").reset_index(drop=True)


def print_arm_times(folders: list[str | Path]) -> None:
    """:func:`arm_times` as text, with the cache's total."""
    arms = arm_times(folders)
    print(f"\ntraining seconds per arm in the run cache {', '.join(map(str, folders))} "
          f"({arms['seconds'].sum():.0f} s in all; every grid point, rung and seed):")
    for _, a in arms.iterrows():
        rungs = f", {a['rungs']} rungs {a['rung_seconds']:.0f} s" if a["rungs"] else ""
        print(f"  {a['seconds']:8.0f} s  {100 * a['share']:5.1f}%  {a['variant']} ({a['runs']} runs{rungs})")
