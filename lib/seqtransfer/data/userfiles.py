"""A user's own interaction file (CSV, TSV, RecBole atomic, Parquet) as raw interactions.

Columns are found by name (:func:`detect_columns`), times read as Unix seconds, milliseconds or
datetime strings (:func:`parse_times`), rows put in time order with ties in the file's order,
and extra columns kept (``rating``; per-item columns as item side information) or ignored.
:func:`seqtransfer.data.load` then filters and indexes the result like any other dataset.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError

# Column names recognised without arguments, compared after ``_normal`` (lower case, a RecBole
# ``:type`` suffix cut off). Two matches for one role is an error: guessing could silently
# train on the wrong column.
USER_COLUMNS = ("user", "user_id", "userid", "uid", "customer_id", "customerid", "reviewer_id",
                "reviewerid", "visitor_id", "visitorid")
ITEM_COLUMNS = ("item", "item_id", "itemid", "iid", "movie_id", "movieid", "product_id",
                "productid", "asin", "article_id", "sku")
TIME_COLUMNS = ("timestamp", "time", "ts", "datetime", "date", "event_time", "eventtime",
                "unixreviewtime", "created_at")
_ROLES = {"user": ("user_col", USER_COLUMNS), "item": ("item_col", ITEM_COLUMNS),
          "timestamp": ("time_col", TIME_COLUMNS)}

# A numeric time is taken as seconds below 1e11 (the year 5138); larger values are read as
# milliseconds, microseconds or nanoseconds since the epoch (1e11 ms is 1973).
_TIME_UNITS = ((1e11, "seconds", 1), (1e14, "milliseconds", 10**3), (1e17, "microseconds", 10**6),
               (math.inf, "nanoseconds", 10**9))


def _normal(name) -> str:
    """``"userId"`` -> ``"userid"``, ``"user_id:token"`` -> ``"user_id"`` (RecBole atomic)."""
    return str(name).split(":")[0].strip().lower()


def detect_columns(columns, where: str, user_col: str | None = None, item_col: str | None = None,
                   time_col: str | None = None) -> dict[str, str]:
    """The file's column for each role: ``{"user": ..., "item": ..., "timestamp": ...}``.

    A given name matches exactly, else case-insensitively (and without a RecBole ``:type``
    suffix); an empty or None name is detected from ``USER_COLUMNS``, ``ITEM_COLUMNS`` and
    ``TIME_COLUMNS``.

    Raises:
        DataError: a role with no column, or with two candidates (the message names both and
            the parameter that chooses).
    """
    columns = [str(c) for c in columns]
    given = {"user": user_col, "item": item_col, "timestamp": time_col}
    found = {}
    for role, (param, names) in _ROLES.items():
        if given[role]:
            exact = [c for c in columns if c == given[role]]
            hits = exact or [c for c in columns if _normal(c) == _normal(given[role])]
            if not hits:
                raise DataError(f"{where} has no column {given[role]!r} ({param}); its columns are "
                                f"{columns}.")
        else:
            hits = [c for c in columns if _normal(c) in names]
            if not hits:
                raise DataError(
                    f"{where}: no {role} column found among {columns} (recognised names: "
                    f"{', '.join(names)}). Name it with {param}=..., e.g. load(path, {param}={columns[0]!r}).")
        if len(hits) > 1:
            raise DataError(f"{where}: two candidate {role} columns, {hits[0]!r} and {hits[1]!r}; "
                            f"choose one with {param}=..., e.g. {param}={hits[0]!r}.")
        found[role] = hits[0]
    if len(set(found.values())) < len(found):
        raise DataError(f"{where}: one column serves two roles ({found}); set user_col, item_col "
                        "and time_col to different columns.")
    return found


def parse_times(col: pd.Series, where: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Times of a user file as (order key, whole seconds, how they were read).

    Numbers are seconds since the epoch, unless they are too large for that (see
    ``_TIME_UNITS``): then milliseconds (or micro-, nanoseconds), which the returned text says.
    Anything else must be datetime strings pandas can parse (time zones honoured; a string
    without one is read as UTC). The order key keeps sub-second differences that the whole
    seconds lose, so sorting by it first keeps the true order within a second.

    Returns:
        key (N,) float64 or datetime64, seconds (N,) int64, a description of the unit.
    """
    if pd.api.types.is_datetime64_any_dtype(col):
        stamps = pd.to_datetime(col, utc=True)
        how = "datetimes"
    else:
        text = col.astype(str).str.strip()
        empty = (text == "") | col.isna()
        if empty.any():
            raise DataError(f"{where}: {int(empty.sum())} rows have an empty time (first at row "
                            f"{int(np.flatnonzero(empty.to_numpy())[0])}); drop or fill them before loading.")
        num = pd.to_numeric(text, errors="coerce")
        if len(num) == 0:
            return np.zeros(0), np.zeros(0, np.int64), "seconds"
        if num.notna().all():
            top = float(num.abs().max())
            unit, per_second = next((u, d) for limit, u, d in _TIME_UNITS if top < limit)
            num = num.to_numpy(np.float64)
            how = unit if per_second == 1 else \
                f"{unit} since the epoch (largest value {top:.3g}), converted to seconds"
            return num, np.floor(num / per_second).astype(np.int64), how
        stamps = _to_datetime(text, where)
        how = "datetime strings (read as UTC where no time zone is given)"
    seconds = ((stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)
    return stamps.to_numpy(), seconds, how


def _to_datetime(text: pd.Series, where: str) -> pd.Series:
    try:
        stamps = pd.to_datetime(text, utc=True)              # one format, inferred: fast
    except (ValueError, TypeError):
        try:
            stamps = pd.to_datetime(text, utc=True, format="mixed", errors="coerce")
        except (ValueError, TypeError):
            stamps = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns, UTC]")
    bad = stamps.isna()
    if bad.any():
        raise DataError(
            f"{where}: the time column holds values that are neither numbers nor dates (first: "
            f"{text[bad].iloc[0]!r}, {int(bad.sum())} rows). Use Unix seconds or milliseconds, or "
            "dates such as 2024-01-31 12:00:00; or name another column with time_col=...")
    return stamps


def read_table_file(path: Path, user_col: str | None, item_col: str | None, time_col: str | None,
                     domain_col: str | None, sep: str | None) -> tuple[pd.DataFrame, dict]:
    """A user's CSV/TSV/Parquet as raw interactions sorted by time (ties in file order), and
    what was read: ``{"columns": role -> file column, "time": unit, "ignored": [...],
    "item_columns": [...]}``. Extra columns never fail the load: ``rating`` is kept, columns
    with one value per item join the item table (``item_columns``), others are ``ignored``."""
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, sep=sep or _sniff_sep(path), dtype=str, keep_default_na=False,
                             encoding="utf-8", encoding_errors="replace")
    except Exception as exc:  # pandas raises a zoo of parser errors; name the file and the fix
        raise DataError(f"could not parse {path}: {exc}. Expected a CSV/TSV (comma, tab, ';' or "
                        "'|' separated) or Parquet file with a header row.") from exc
    cols = detect_columns(df.columns, path.name, user_col, item_col, time_col)
    if domain_col and domain_col not in df.columns:
        raise DataError(f"{path.name} has no domain column {domain_col!r}; its columns are "
                        f"{list(df.columns)}.")
    key, seconds, how = parse_times(df[cols["timestamp"]], path.name)
    out = pd.DataFrame({"user": df[cols["user"]].astype(str).str.strip(),
                        "item": df[cols["item"]].astype(str).str.strip(), "timestamp": seconds})
    used = set(cols.values()) | {domain_col}
    rating = [c for c in df.columns if c not in used and _normal(c) == "rating"]
    if rating:
        out["rating"] = pd.to_numeric(df[rating[0]], errors="coerce").astype("float32")
        used.add(rating[0])
    if domain_col:
        out["domain"] = df[domain_col].astype(str)
    extra = [c for c in df.columns if c not in used]
    per_item = [c for c in extra if (df.groupby(cols["item"], sort=False)[c].nunique(dropna=False) <= 1).all()]
    out = out.iloc[np.argsort(key, kind="stable")].reset_index(drop=True)   # ties keep file order
    info = {"columns": cols, "time": how, "item_columns": [_normal(c) for c in per_item],
            "ignored": [c for c in extra if c not in per_item]}
    if per_item:
        side = df[[cols["item"], *per_item]].drop_duplicates(cols["item"])
        info["items"] = _item_table(side.rename(columns={c: _normal(c) for c in per_item}), cols["item"])
    return out, info


def _sniff_sep(path: Path) -> str:
    """The separator of a text table from its header line: tab, ';', '|' or ','."""
    with open(path, encoding="utf-8", errors="replace") as f:
        header = f.readline()
    return next((s for s in ("\t", ";", "|") if s in header), ",")


def read_item_file(path: Path, item_col: str) -> pd.DataFrame:
    df = pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else \
        pd.read_csv(path, sep=_sniff_sep(path), dtype=str, keep_default_na=False)
    if item_col not in df.columns:
        raise DataError(f"item file {path.name} lacks the item column {item_col!r}; it has "
                        f"{list(df.columns)}.")
    return _item_table(df, item_col)


def _item_table(df: pd.DataFrame, item_col: str) -> pd.DataFrame:
    """Raw item side information: ``title``, ``year`` and ``genres`` (``|`` or space separated)
    where present, every other column kept as it is."""
    genres = df["genres"].map(lambda g: tuple(x for x in str(g).replace("|", " ").split() if x)) \
        if "genres" in df else [()] * len(df)
    out = pd.DataFrame({
        "raw_id": df[item_col].astype(str).str.strip().to_numpy(),
        "title": (df["title"] if "title" in df else df[item_col]).astype(str).to_numpy(),
        "year": pd.to_numeric(df["year"], errors="coerce").to_numpy() if "year" in df else np.nan,
        "genres": list(genres),
    })
    for c in df.columns:
        if c not in (item_col, "title", "year", "genres", "raw_id"):
            out[c] = df[c].to_numpy()
    return out
