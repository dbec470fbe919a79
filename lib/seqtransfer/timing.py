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
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pandas as pd

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
