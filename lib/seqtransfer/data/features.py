"""Per-item feature matrices for content-based models, built in one place.

Every matrix has one row per item id, row 0 (padding) zero, so a model can index it with the
same ids as the interaction tensors. Slots and what they hold by default:

* ``text``: the item's title (MovieLens) or text line (Amazon) through all-MiniLM-L6-v2
  (:mod:`.minilm`), 384-d unit vectors. Embeddings are cached under ``data/features/`` keyed by
  the model and a hash of each text: a text seen before is never embedded again, a changed
  text gets a new key and is embedded anew (so a stale vector is never used).
* ``numeric``: the release year as a fixed sinusoidal encoding (``year_dim`` = 16: sine and
  cosine at 8 periods from 4 to 400 years, so near years get near codes and the long periods
  order the decades); a missing year is the zero vector. It stands in for ANT's price feature.
* ``categorical``: the genres as a multi-hot vector over a fixed vocabulary (the 18 MovieLens
  genres by default, so source and target share the columns; genres outside it are ignored).
* any slot can instead read a user's own file: Parquet with an ``item`` column (the raw item
  id) and numeric columns (or one list column), ``.npz`` with arrays ``item`` and ``vector``,
  or ``.npy`` holding a structured array with fields ``item`` and ``vector``. Every item of the
  dataset needs a row (extra rows are ignored); a missing id is an error naming examples.

A slot whose information no item has (no year or genre in Amazon Scientific) is left out and
listed in ``ItemFeatures.missing``.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .fetch import default_data_dir
from .loaders import ML_GENRES, DataError, Interactions

DEFAULT_SLOTS = {"text": "title", "numeric": "year", "categorical": "genres"}
YEAR_PERIODS = np.geomspace(4.0, 400.0, 8)     # years; 8 periods -> 16 dims


@dataclass
class ItemFeatures:
    """Feature matrices by slot, each (n_items + 1, d) float32 with row 0 zero."""

    matrices: dict[str, np.ndarray]
    sources: dict[str, str]                      # slot -> what it holds, in words
    missing: dict[str, str] = field(default_factory=dict)   # slot -> why it was left out
    genre_vocab: tuple[str, ...] = ML_GENRES     # columns of the categorical slot

    @property
    def n_items(self) -> int:
        return next(iter(self.matrices.values())).shape[0] - 1

    def dims(self) -> dict[str, int]:
        return {k: v.shape[1] for k, v in self.matrices.items()}

    def select(self, slots: list[str] | tuple[str, ...]) -> "ItemFeatures":
        """Only the named slots (an error names the slots there are)."""
        unknown = [s for s in slots if s not in self.matrices]
        if unknown:
            raise KeyError(f"no feature slot {unknown}; this dataset has {list(self.matrices)}"
                           + (f" ({'; '.join(f'{k}: {v}' for k, v in self.missing.items())})" if self.missing else ""))
        return ItemFeatures({s: self.matrices[s] for s in slots}, {s: self.sources[s] for s in slots},
                            dict(self.missing), self.genre_vocab)

    def table(self) -> pd.DataFrame:
        rows = [{"slot": s, "dim": m.shape[1], "holds": self.sources[s]} for s, m in self.matrices.items()]
        rows += [{"slot": s, "dim": 0, "holds": f"nothing: {why}"} for s, why in self.missing.items()]
        return pd.DataFrame(rows).set_index("slot")


def _with_padding(x: np.ndarray) -> np.ndarray:
    return np.vstack([np.zeros((1, x.shape[1]), dtype=np.float32), x.astype(np.float32)])


def year_features(years: np.ndarray) -> np.ndarray:
    """(n,) years (NaN when unknown) -> (n, 16) sine/cosine codes; unknown -> zeros."""
    y = np.asarray(years, dtype=np.float64)
    angle = 2 * np.pi * y[:, None] / YEAR_PERIODS[None, :]                    # (n, 8)
    out = np.concatenate([np.sin(angle), np.cos(angle)], axis=1)              # (n, 16)
    out[np.isnan(y)] = 0.0
    return out.astype(np.float32)


def genre_features(genres: list[tuple[str, ...]], vocab: tuple[str, ...] = ML_GENRES) -> np.ndarray:
    """(n,) genre tuples -> (n, len(vocab)) multi-hot; genres outside ``vocab`` are ignored."""
    col = {g: j for j, g in enumerate(vocab)}
    out = np.zeros((len(genres), len(vocab)), dtype=np.float32)
    for i, gs in enumerate(genres):
        for g in gs:
            if g in col:
                out[i, col[g]] = 1.0
    return out


def text_key(text: str, model_id: str) -> str:
    return hashlib.sha1(f"{model_id}\n{text}".encode()).hexdigest()


def text_features(texts: list[str], cache_dir: str | Path | None = None, progress: bool = True,
                  encoder: Callable[[list[str]], np.ndarray] | None = None,
                  model_id: str | None = None) -> np.ndarray:
    """(n, d) embeddings of ``texts``, embedding only texts not in the cache.

    ``encoder`` maps a list of texts to an (m, d) array (default: all-MiniLM-L6-v2 with a
    progress bar); ``model_id`` names it in the cache keys. The cache is one ``.npz`` per model
    under ``cache_dir`` (default ``data/features``) mapping a hash of each text to its vector.
    """
    from . import minilm
    if encoder is None:
        model = None

        def encoder(batch):
            nonlocal model
            model = model or minilm.MiniLM()
            return model.encode(batch, progress=progress)
        model_id = minilm.MODEL_ID
    elif model_id is None:
        raise ValueError("a custom encoder needs a model_id to key its cache")
    folder = Path(cache_dir) if cache_dir is not None else default_data_dir() / "features"
    path = folder / f"text-{hashlib.sha1(model_id.encode()).hexdigest()[:12]}.npz"
    cache: dict[str, np.ndarray] = {}
    if path.exists():
        with np.load(path) as z:
            cache = dict(zip(z["keys"].tolist(), z["vectors"]))
    keys = [text_key(t, model_id) for t in texts]
    todo = list(dict.fromkeys(k for k in keys if k not in cache))
    if todo:
        first = {k: t for k, t in zip(keys, texts)}
        new = np.asarray(encoder([first[k] for k in todo]), dtype=np.float32)
        if new.shape[0] != len(todo):
            raise ValueError(f"the text encoder returned {new.shape[0]} vectors for {len(todo)} texts")
        cache.update(zip(todo, new))
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, keys=np.array(list(cache)), vectors=np.stack(list(cache.values())))
        os.replace(tmp, path)
    return np.stack([cache[k] for k in keys]) if keys else np.zeros((0, 0), dtype=np.float32)


def file_features(path: str | Path, item_ids: np.ndarray) -> np.ndarray:
    """(n, d) rows of a user's per-item feature file, in the order of ``item_ids`` (raw ids)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"feature file {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        df = pd.read_parquet(path)
        if "item" not in df.columns:
            raise DataError(f"{path.name} needs an 'item' column with the raw item ids; it has {list(df.columns)}.")
        rest = df.drop(columns="item")
        if rest.shape[1] == 1 and rest.iloc[:, 0].map(lambda v: hasattr(v, "__len__")).all():
            vecs = np.stack(rest.iloc[:, 0].map(np.asarray).to_list())
        else:
            vecs = rest.to_numpy(dtype=np.float32)
        ids = df["item"].astype(str).to_numpy()
    elif suffix in (".npz", ".npy"):
        z = np.load(path, allow_pickle=False)
        names = z.files if suffix == ".npz" else (z.dtype.names or ())
        if "item" not in names or "vector" not in names:
            raise DataError(f"{path.name} must hold 'item' (raw ids) and 'vector' (one row per item): "
                            ".npz arrays or .npy structured fields; it has {list(names)}.")
        ids, vecs = np.asarray(z["item"]).astype(str), np.asarray(z["vector"], dtype=np.float32)
    else:
        raise DataError(f"feature file {path.name}: use Parquet, .npz or a structured .npy.")
    if vecs.ndim != 2 or len(vecs) != len(ids):
        raise DataError(f"{path.name}: expected one vector per item id, got {vecs.shape} for {len(ids)} ids.")
    index = pd.Series(np.arange(len(ids)), index=ids)
    if index.index.duplicated().any():
        raise DataError(f"{path.name}: item id {index.index[index.index.duplicated()][0]!r} appears twice.")
    wanted = np.asarray(item_ids).astype(str)
    missing = ~np.isin(wanted, ids)
    if missing.any():
        raise DataError(f"{path.name} has no row for {int(missing.sum())} of the {len(wanted)} items "
                        f"(e.g. {list(wanted[missing][:3])}; its ids look like {list(ids[:3])}). Key the "
                        "file by the dataset's raw item ids (Interactions.item_ids) and give every item a row.")
    return vecs[index.loc[wanted].to_numpy()].astype(np.float32)


def item_features(ds: Interactions, slots: dict[str, str] | None = None, data_dir: str | Path | None = None,
                  progress: bool = True, genre_vocab: tuple[str, ...] = ML_GENRES,
                  text_encoder: Callable[[list[str]], np.ndarray] | None = None,
                  text_model_id: str | None = None) -> ItemFeatures:
    """The feature matrices of ``ds``'s items.

    Args:
        slots: slot name -> ``"title"`` (text embedding), ``"year"`` (numeric code), ``"genres"``
            (multi-hot) or a path to a per-item feature file. Default: text, numeric, categorical.
        data_dir: the cache lives in ``data_dir/features`` (default: the project's ``data/``).
        genre_vocab: columns of the multi-hot genre slot (shared by source and target).
        text_encoder, text_model_id: another text encoder (tests, other models).
    """
    slots = dict(DEFAULT_SLOTS if slots is None else slots)
    items = ds.items
    mats, sources, missing = {}, {}, {}
    for slot, what in slots.items():
        if what == "title":
            texts = items["title"].astype(str).tolist()
            x = text_features(texts, Path(data_dir or default_data_dir()) / "features", progress,
                              text_encoder, text_model_id)
            sources[slot] = f"item text ({'title' if items['year'].notna().any() else 'text line'}) "\
                            f"through {text_model_id or 'all-MiniLM-L6-v2'}"
        elif what == "year":
            if items["year"].isna().all():
                missing[slot] = f"{ds.name} has no release years"
                continue
            x = year_features(items["year"].to_numpy())
            sources[slot] = "release year, sinusoidal code (16-d)"
        elif what == "genres":
            if items["genres"].map(len).eq(0).all():
                missing[slot] = f"{ds.name} has no genres"
                continue
            x = genre_features(items["genres"].tolist(), genre_vocab)
            sources[slot] = f"genres, multi-hot over {len(genre_vocab)} genres"
        else:
            x = file_features(what, ds.item_ids)
            sources[slot] = f"user file {Path(what).name}"
        mats[slot] = _with_padding(x)
    if not mats:
        raise DataError(f"no feature slot could be built for {ds.name!r} ({missing}); give a text "
                        "slot or a feature file.")
    return ItemFeatures(mats, sources, missing, tuple(genre_vocab))
