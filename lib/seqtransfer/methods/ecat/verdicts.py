"""What 06 reads off the runs: verdict tables and sentences, the teachers' stops, the selection
values of one run."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ...data.split import UserGroups
from ...results import MethodResult
from .config import VARIANTS

def verdict_table(results: list[MethodResult], label: str, groups: UserGroups | dict,
                  baseline: str = "target-only") -> pd.DataFrame:
    """What the verdicts of setting ``label`` read: every variant against ``baseline`` by the
    paired bootstrap over users (``common.compare``; differences with 95% intervals)."""
    from ..common import compare
    prefix = f"{label} | " if label else ""
    mine = [r for r in results if r.variant.startswith(prefix)]
    names = [r.variant for r in mine if r.variant != f"{prefix}{baseline}"]
    return pd.concat([compare(mine, v, f"{prefix}{baseline}", groups) for v in dict.fromkeys(names)],
                     ignore_index=True)


def negative_transfer(table: pd.DataFrame, label: str, baseline: str = "target-only", group: str = "all",
                      variants: tuple[str, ...] | None = None) -> list[str]:
    """One sentence per variant of setting ``label`` present in ``table`` (a ``summarize`` or
    ``compare`` table): does it beat ``baseline`` for ``group``? Negative transfer named."""
    from ..common import transfer_verdict
    prefix = f"{label} | " if label else ""
    names = [v for v in (variants or VARIANTS) if v != baseline and f"{prefix}{v}" in set(table["variant"])]
    return [transfer_verdict(table, f"{prefix}{v}", f"{prefix}{baseline}", group) for v in names]


def ecat_against(table: pd.DataFrame, label: str, group: str = "all", method: str = "ECAT") -> list[str]:
    """One sentence per variant of setting ``label`` in ``table`` (a :func:`verdict_table` with
    ``baseline=method``, so each row is variant minus ``method``), read from ``method``'s side:
    is it better than that baseline or ablation, worse, or within the noise? The rule of every
    verdict (``stats.interval_verdict``): the 95% paired-bootstrap interval over users and, with
    several seeds (columns ``seed_lo``/``seed_hi``), the t-interval over seeds must both exclude
    zero. Target-only is left out: section 4's verdicts cover it."""
    from ...stats import interval_verdict
    prefix = f"{label} | " if label else ""
    rows = table[(table["baseline"] == f"{prefix}{method}") & (table["group"] == group)
                 & (table["variant"] != f"{prefix}target-only")]
    out = []
    for r in rows.itertuples():
        d, lo, hi = -r.diff, -r.hi, -r.lo                                   # method minus variant
        s_lo, s_hi = (-getattr(r, "seed_hi", np.nan), -getattr(r, "seed_lo", np.nan))
        seeds = bool(np.isfinite(s_lo) and np.isfinite(s_hi))
        word = {"positive": "better", "negative": "worse"}.get(
            interval_verdict(lo, hi, s_lo, s_hi) if seeds else interval_verdict(lo, hi), "no detectable difference")
        head = f"{method} vs {r.variant.split(' | ', 1)[-1]} for {group} users: {r.metric.upper()}@{r.k} {r.b:.4f} vs {r.a:.4f}"
        ci = f"95% CI [{lo:+.4f}, {hi:+.4f}]" + (f", over seeds [{s_lo:+.4f}, {s_hi:+.4f}]" if seeds else "")
        out.append(f"{head}, difference {d:+.4f}, {ci} -- "
                   + (f"{method} is {word}." if word != "no detectable difference" else f"{word}."))
    return out


def teacher_stops(teachers: dict[str, list[MethodResult]]) -> pd.DataFrame:
    """Per setting, chain (number of periods) and period: each teacher run's steps, best
    validation NDCG@10 (on its user sample) and why it stopped. ``teachers`` maps each setting's
    label to its teacher runs (:func:`~seqtransfer.methods.ecat.teacher`, whose ``"stages"``
    diagnostics give the period and the chain's length)."""
    rows = []
    for label, results in teachers.items():
        for r in results:
            stage = r.diagnostics["stages"].iloc[0]
            n = int(stage["periods"])
            rows.append({"setting": label, "teachers": f"{n} period{'s' if n > 1 else ''}",
                         "period": int(stage["period"]), "seed": r.seed, "steps": r.train.steps,
                         "best valid NDCG@10": float(r.history["valid_ndcg10"].max()), "stopped": r.train.stopped})
    return pd.DataFrame(rows, columns=["setting", "teachers", "period", "seed", "steps", "best valid NDCG@10", "stopped"])


def teacher_sentence(stops: pd.DataFrame) -> str:
    """Whether every teacher reached early stopping (a capped teacher may still have been improving,
    which weakens what the student can borrow from it, not the fairness of the comparison)."""
    if stops.empty:
        return "No teacher was trained."
    capped = stops[~stops["stopped"].astype(str).str.startswith("early stop")]
    if capped.empty:
        return f"Every teacher ({len(stops)} trainings) stopped early on its validation NDCG@10."
    which = ", ".join(f"{r.setting} ({r.teachers}) period {r.period}" for r in capped.itertuples())
    return (f"{len(capped)} of {len(stops)} teacher trainings ended at a cap ({'; '.join(sorted(set(capped['stopped'])))}), "
            f"not by early stopping: {which}. Their students learned from teachers that may still have been improving.")


def selection_values(results: list[MethodResult], variant: str) -> dict[str, np.ndarray]:
    """p, w and alpha of one run (every period pooled), for :func:`plots.selection_histograms`."""
    r = next((r for r in results if r.variant == variant), None)
    if r is None:
        raise KeyError(f"no run named {variant!r}; runs: {[x.variant for x in results]}")
    return {k: r.diagnostics[k][k].to_numpy(dtype=float) for k in ("p", "w", "alpha")}
