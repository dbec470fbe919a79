"""The record a notebook's last cell writes, and reading it back.

``record`` is called in the last cell of every notebook. It turns the notebook's tidy metrics
into result rows and publishes them as one display output: a structural summary as
``text/plain`` (what nbval compares) and the payload in the output's metadata (which nbval
skips), so the regression check sees structure and the values still travel with the notebook.
The payload also carries the notebook's verdict sentences and, per row, the variant it is
compared against (its baseline), which the batch index reads. ``read_records`` and
``read_payloads`` read them back from an executed ``.ipynb``.

This module runs in every notebook kernel: it imports nothing heavy (no papermill, nbconvert
or plotly).
"""
from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
from IPython import get_ipython
from IPython.display import display

RECORD_KEY = "seqtransfer.record"
ROW_COLUMNS = ("notebook", "method", "dataset", "backbone", "seed", "group", "metric", "k", "value")
# n_users: users in the group; baseline: the method label of the row this row is compared with
# (same dataset, backbone and seed), empty for a baseline itself and for rows without one
RESULT_COLUMNS = ROW_COLUMNS + ("n_users", "baseline")
REQUIRED_METRIC_COLUMNS = ("group", "metric", "k", "value")


class Record(dict):
    """The payload ``record`` returns: a plain dict, except that IPython does not echo it.

    ``record`` displays the record itself. Echoed as the value of a cell's last expression,
    the payload would add an output with every value as ``text/plain``, which nbval compares.
    """

    def _ipython_display_(self) -> None:
        """Show nothing: the record output is already there."""


def record(metrics: pd.DataFrame, *, notebook: str, method: str, dataset: str, backbone: str,
           seed: int, extra: dict | None = None, baseline: str | Mapping[str, str] | None = None,
           verdicts: Sequence[str] | None = None, comparisons: pd.DataFrame | None = None) -> dict:
    """Record a notebook's test metrics; call once, in the notebook's last cell.

    Args:
        metrics: tidy frame, one row per (group, metric, k), with columns ``group``
            (all/head/tail/cold/...), ``metric`` (hr/ndcg/mrr), ``k`` and ``value``. Optional
            columns and how they are used:
            ``split``: only rows with ``split == "test"`` are kept (selection is on validation);
            ``variant``: a sub-method label; a row's method becomes ``f"{method}:{variant}"``
            (``method`` alone where the variant is empty or missing);
            ``protocol``: rows not ranked by the default full protocol get the protocol in the
            metric name, ``f"{metric}_{protocol}"`` (e.g. ``ndcg_sampled``), so sampled-ranking
            numbers stay labelled and never enter the full-ranking leaderboard;
            ``seed``: a row's own seed (several seeds in one notebook) instead of ``seed``;
            ``n_users``: how many users the group holds, kept beside each value;
            ``backbone``: a row's own backbone (several backbones in one notebook);
            ``method``: a row's own method (a method notebook's base-model rows stay
            ``baseline:...``, the same label as in notebook 01, so the leaderboard counts them
            once).
        notebook, method, dataset, backbone, seed: what produced the numbers.
        extra: optional JSON-able dict stored with the record (e.g. the method's config).
        baseline: what each row is compared with in the index's change table: a variant name,
            where ``{backbone}`` stands for the row's backbone (``"{backbone} joint"`` in 01-03,
            ``"{backbone} from scratch"`` for a cross-domain notebook), or a mapping variant ->
            baseline variant. The named variant must be among the recorded ones; its own rows
            and rows whose baseline is not among them get none. ``None``: the index derives
            one (see ``seqtransfer.index.default_baseline``).
        verdicts: the notebook's conclusions in plain sentences (e.g. a ``Verdicts`` list), shown
            under the notebook's line in the index.
        comparisons: ``methods.compare`` output (method minus baseline on the same users, with
            a 95% paired-bootstrap interval); the index shows these intervals in its change
            table and colours a change only when its interval excludes zero.

    Returns:
        The payload (a ``Record``, i.e. a dict): the arguments above (``verdicts`` a list) plus
        ``"rows"``, a list of dicts with the columns ``RESULT_COLUMNS`` (``n_users`` where
        known, ``baseline`` a method label or None). Inside
        IPython it is also displayed as one output whose only data is a ``text/plain``
        summary without any values (``record_summary``), with the payload in the output's
        metadata under ``"seqtransfer.record"``.
    """
    _check_meta(notebook=notebook, method=method, dataset=dataset, backbone=backbone, seed=seed)
    extra = {} if extra is None else extra
    _check_jsonable(extra)
    seed = int(seed)  # a numpy integer is welcome, but JSON wants a plain int
    verdicts = _check_verdicts(verdicts)
    rows = _record_rows(metrics, notebook, method, dataset, backbone, seed)
    _add_baselines(rows, baseline)
    for row in rows:
        row.pop("_variant")
    payload = Record(notebook=notebook, method=method, dataset=dataset, backbone=backbone,
                     seed=seed, extra=extra, verdicts=verdicts, rows=rows,
                     comparisons=_comparison_rows(comparisons))
    if get_ipython() is not None:  # plain Python has nowhere to display; the return suffices
        display({"text/plain": record_summary(payload)}, raw=True,
                metadata={RECORD_KEY: dict(payload)})
    return payload


COMPARISON_COLUMNS = ("variant", "baseline", "group", "metric", "k", "a", "b", "diff", "lo", "hi", "verdict")
SEED_COLUMNS = ("n_seeds", "seeds", "seed_diffs", "seed_lo", "seed_hi")   # kept where the table has them


def _comparison_rows(comparisons: pd.DataFrame | None) -> list[dict]:
    """``methods.compare`` rows as JSON-able dicts (NaN as None)."""
    if comparisons is None or len(comparisons) == 0:
        return []
    missing = [c for c in COMPARISON_COLUMNS if c not in comparisons.columns]
    if missing:
        raise ValueError(f"record(): comparisons lacks columns {missing}; pass methods.compare output")
    columns = list(COMPARISON_COLUMNS) + [c for c in SEED_COLUMNS if c in comparisons.columns]
    out = []
    for r in comparisons[columns].to_dict("records"):
        out.append({k: _json_value(k, v) for k, v in r.items()})
    return out


def _json_value(column: str, v):
    """One comparison cell as JSON: NaN as None, counts as int, numbers as float, the per-seed
    tuples as lists, labels as text."""
    if isinstance(v, (tuple, list, np.ndarray)):
        return [int(x) if column == "seeds" else None if math.isnan(float(x)) else float(x) for x in v]
    if isinstance(v, float) and math.isnan(v):
        return None
    if column in ("k", "n_seeds"):
        return int(v)
    if column in ("a", "b", "diff", "lo", "hi", "seed_lo", "seed_hi"):
        return float(v)
    return str(v)


def _check_meta(**meta) -> None:
    for name, value in meta.items():
        if name == "seed":
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"record(): seed must be an int, got {value!r}")
        elif not isinstance(value, str) or not value:
            raise TypeError(f"record(): {name} must be a non-empty string, got {value!r}")


def _check_jsonable(extra: dict) -> None:
    if not isinstance(extra, dict):
        raise TypeError(f"record(): extra must be a dict, got {type(extra).__name__}")
    try:
        json.dumps(extra, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"record(): extra must be JSON-able (plain str/int/float/list/dict, "
                         f"finite numbers): {err}") from None


def _record_rows(metrics: pd.DataFrame, notebook: str, method: str, dataset: str,
                 backbone: str, seed: int) -> list[dict]:
    """The validated result rows of ``record`` as JSON-able dicts (non-finite values -> None)."""
    if not isinstance(metrics, pd.DataFrame):
        raise TypeError("record(): metrics must be a pandas DataFrame, "
                        f"got {type(metrics).__name__}")
    missing = [c for c in REQUIRED_METRIC_COLUMNS if c not in metrics.columns]
    if missing:
        raise ValueError(
            f"record(): metrics lacks column(s) {', '.join(missing)}; it has "
            f"{', '.join(map(str, metrics.columns))}. Pass the tidy frame from evaluation: one row "
            "per (group, metric, k) with columns group, metric, k, value.")
    df = metrics
    if "split" in df.columns:
        df = df[df["split"] == "test"]
    if df.empty:
        raise ValueError("record(): no rows to record" + (
            " with split == 'test' (record stores test metrics; select models on validation)"
            if "split" in metrics.columns else ""))
    k = _numeric(df["k"], "k")
    if not (k == k.round()).all():
        raise ValueError("record(): column k must hold whole numbers (the cut-off K of HR@K)")
    value = _numeric(df["value"], "value")

    methods = _method_labels(df, method)
    variants = ([str(v) if _present(v) else "" for v in df["variant"]] if "variant" in df.columns
                else [""] * len(df))
    metric_names = _metric_labels(df)
    seeds = _numeric(df["seed"], "seed").fillna(seed) if "seed" in df.columns else None
    n_users = _numeric(df["n_users"], "n_users") if "n_users" in df.columns else None
    backbones = ([str(b) if _present(b) else backbone for b in df["backbone"]]
                 if "backbone" in df.columns else [backbone] * len(df))

    rows = []
    for i in range(len(df)):
        row = {"notebook": notebook, "method": methods[i], "dataset": dataset,
               "backbone": backbones[i], "seed": seed if seeds is None else int(seeds.iloc[i]),
               "group": str(df["group"].iloc[i]), "metric": metric_names[i],
               "k": int(k.iloc[i]), "value": _finite_or_none(value.iloc[i])}
        if n_users is not None:
            row["n_users"] = None if pd.isna(n_users.iloc[i]) else int(n_users.iloc[i])
        row["baseline"] = None
        row["_variant"] = variants[i]
        rows.append(row)
    _check_unique(rows)
    return rows


def _check_verdicts(verdicts) -> list[str]:
    if verdicts is None:
        return []
    if isinstance(verdicts, str) or not all(isinstance(v, str) for v in verdicts):
        raise TypeError("record(): verdicts must be a list of sentences (str), "
                        f"got {verdicts!r:.80}")
    return [v.strip() for v in verdicts if v.strip()]


def _add_baselines(rows: list[dict], baseline: str | Mapping[str, str] | None) -> None:
    """Set each row's ``baseline`` to the method label of its baseline variant's rows."""
    if baseline is None:
        return
    if not isinstance(baseline, (str, Mapping)):
        raise TypeError(f"record(): baseline must be a variant name or a mapping, got {baseline!r}")
    labels: dict[str, set[str]] = {}
    for row in rows:
        labels.setdefault(row["_variant"], set()).add(row["method"])
    for row in rows:
        variant = row["_variant"]
        if isinstance(baseline, str):
            base = baseline.format(backbone=row["backbone"])
        else:
            base = baseline.get(variant)
        if not variant or base is None or base == variant:
            continue
        if base not in labels:
            if isinstance(baseline, str) and "{backbone}" in baseline:
                continue  # this backbone has no such variant; the row stays without one
            raise ValueError(f"record(): baseline {base!r} of variant {variant!r} is not a recorded "
                             f"variant; recorded: {', '.join(sorted(v for v in labels if v))}")
        if len(labels[base]) > 1:
            raise ValueError(f"record(): baseline variant {base!r} is recorded under several methods "
                             f"({', '.join(sorted(labels[base]))}); name it by a unique variant")
        row["baseline"] = next(iter(labels[base]))


class Verdicts(list):
    """A notebook's verdict sentences: ``say = Verdicts()``, then ``say("...")`` prints a
    sentence (like ``print``) and keeps it, and ``record(..., verdicts=say)`` stores them."""

    def __call__(self, *parts, end: str = "\n") -> None:
        text = " ".join(str(p) for p in parts)
        print(text, end=end)
        if text.strip():
            self.append(text.strip())


def _numeric(column: pd.Series, name: str) -> pd.Series:
    try:
        return pd.to_numeric(column).astype(float)
    except (TypeError, ValueError):
        raise ValueError(f"record(): column {name} must be numeric") from None


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None  # NaN is not valid JSON


def _present(label) -> bool:
    """Whether an optional label (variant, protocol) is given: not None, NaN or ''."""
    return not (pd.isna(label) or str(label) == "")


def _method_labels(df: pd.DataFrame, method: str) -> list[str]:
    """The row's ``method`` (else ``method``), as ``f"{method}:{variant}"`` where the row names
    a variant."""
    own = [str(m) if _present(m) else method for m in df["method"]] if "method" in df.columns \
        else [method] * len(df)
    if "variant" not in df.columns:
        return own
    return [f"{m}:{v}" if _present(v) else m for m, v in zip(own, df["variant"])]


def _metric_labels(df: pd.DataFrame) -> list[str]:
    """Metric names, suffixed with the ranking protocol where it is not the default ``full``."""
    metric = [str(m) for m in df["metric"]]
    if "protocol" not in df.columns:
        return metric
    return [f"{m}_{p}" if _present(p) and p != "full" else m
            for m, p in zip(metric, df["protocol"])]


def _check_unique(rows: list[dict]) -> None:
    seen = set()
    for row in rows:
        key = (row["method"], row["backbone"], row["seed"], row["group"], row["metric"], row["k"])
        if key in seen:
            raise ValueError(
                f"record(): two rows for method={key[0]} backbone={key[1]} seed={key[2]} "
                f"group={key[3]} {key[4]}@{key[5]}; give rows of different runs their own 'variant' or 'seed'")
        seen.add(key)


def record_summary(payload: dict) -> str:
    """The deterministic one-line summary of a record: structure only, no values or timings.

    It is the record output's ``text/plain``, so nbval fails when a notebook records
    different groups, metrics, cut-offs or variants, or values stop being finite in [0, 1],
    but not when a number moves.
    """
    rows = payload["rows"]
    head = " ".join(f"{f}={payload[f]}"
                    for f in ("notebook", "method", "dataset", "backbone", "seed"))
    parts = [f"seqtransfer record: {head}", f"{len(rows)} values"]
    methods = sorted({r["method"] for r in rows})
    if methods != [payload["method"]]:
        parts.append("methods=" + ",".join(methods))
    backbones = sorted({r["backbone"] for r in rows})
    if backbones != [payload["backbone"]]:
        parts.append("backbones=" + ",".join(backbones))
    seeds = sorted({r["seed"] for r in rows})
    if seeds != [payload["seed"]]:
        parts.append("seeds=" + ",".join(map(str, seeds)))
    parts.append("groups=" + ",".join(sorted({r["group"] for r in rows})))
    parts.append("metrics=" + ",".join(sorted({r["metric"] for r in rows})))
    parts.append("k=" + ",".join(map(str, sorted({r["k"] for r in rows}))))
    in_range = all(r["value"] is not None and 0.0 <= r["value"] <= 1.0 for r in rows)
    parts.append(f"all finite in [0, 1]: {in_range}")
    return "; ".join(parts)


def read_records(nb_path: str | Path) -> pd.DataFrame:
    """All rows recorded by ``record`` in an executed notebook.

    Args:
        nb_path: path of an executed ``.ipynb``.

    Returns:
        One row per recorded value with columns ``RESULT_COLUMNS`` (``n_users`` is NaN where
        unknown); an empty frame with those columns when the notebook recorded nothing.
    """
    rows = [row for payload in read_payloads(nb_path) for row in payload["rows"]]
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def read_payloads(nb_path: str | Path) -> list[dict]:
    """Every record payload (``record``'s return value, as stored) in an executed notebook, in
    cell order; rows of older records gain ``baseline: None``."""
    nb = nbformat.read(str(nb_path), as_version=4)
    payloads = [dict(output["metadata"][RECORD_KEY])
                for cell in nb.cells if cell.cell_type == "code"
                for output in cell.get("outputs", [])
                if RECORD_KEY in output.get("metadata", {})]
    for p in payloads:
        p.setdefault("verdicts", [])
        p.setdefault("comparisons", [])
        p["rows"] = [{"baseline": None, **r} for r in p.get("rows", [])]
    return payloads
