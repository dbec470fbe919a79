"""Domains: MovieLens genres as domains, and source/target datasets with separate item spaces.

A domain is a set of items. Two settings are supported:

* **genre domains** inside one dataset. A film can carry several genres; ``rule`` picks one:
  ``"rarest"`` (default: the genre with the fewest films, the most specific label),
  ``"first"`` (the first genre listed in the file, alphabetical in MovieLens) or
  ``"most_common"``. :func:`genre_subset` instead keeps every film that has *any* of the given
  genres (multi-membership), for building a single-genre target domain.
* **cross-dataset**: :func:`combine` stacks two datasets (e.g. ML-1M source, ML-100K target)
  with disjoint user and item id spaces, labelling every item and interaction by its dataset.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pandas as pd

from .loaders import DataError, Interactions, subset

RULES = ("rarest", "first", "most_common")


def genre_domains(ds: Interactions, rule: str = "rarest") -> Interactions:
    """Label every item (and interaction) with one genre as its domain, chosen by ``rule``."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {RULES}")
    genres = ds.items["genres"]
    if genres.map(len).eq(0).all():
        raise DataError(f"{ds.name!r} has no genre information, so it cannot be split into genre "
                        "domains; load a dataset with item genres or pass items_path=...")
    freq = Counter(g for gs in genres for g in gs)

    def pick(gs: tuple) -> str:
        if not gs:
            return "unknown"
        if rule == "first":
            return gs[0]
        key = (lambda g: (freq[g], g)) if rule == "rarest" else (lambda g: (-freq[g], g))
        return min(gs, key=key)

    items = ds.items.assign(domain=genres.map(pick))
    inter = ds.inter.assign(domain=items["domain"].reindex(ds.inter["item"]).to_numpy())
    return replace(ds, items=items, inter=inter, meta={**ds.meta, "domain_rule": rule})


def genre_subset(ds: Interactions, genres: list[str] | tuple[str, ...], name: str | None = None) -> Interactions:
    """Keep only films with any of ``genres`` (and the interactions with them)."""
    wanted = set(genres)
    unknown = wanted - {g for gs in ds.items["genres"] for g in gs}
    if unknown:
        raise ValueError(f"genres {sorted(unknown)} do not occur in {ds.name!r}")
    keep = ds.items.index[ds.items["genres"].map(lambda gs: bool(wanted & set(gs)))].to_numpy()
    return subset(ds, items=keep, name=name or f"{ds.name}[{'|'.join(sorted(wanted))}]")


def combine(source: Interactions, target: Interactions) -> Interactions:
    """Stack two datasets with separate id spaces; ``domain`` names the dataset of each row.

    Source items get ids 1..n_s and target items n_s+1..n_s+n_t; users likewise stack, source
    first. Identical raw ids in the two datasets stay distinct items and users.
    """
    if source.name == target.name:
        raise ValueError("source and target must be different datasets")
    n_su, n_si = source.n_users, source.n_items
    inter = pd.concat([
        source.inter.assign(domain=source.name),
        target.inter.assign(user=target.inter["user"] + n_su, item=target.inter["item"] + n_si,
                            domain=target.name),
    ], ignore_index=True)
    t_items = target.items.copy()
    t_items.index = t_items.index + n_si
    items = pd.concat([source.items.assign(domain=source.name), t_items.assign(domain=target.name)])
    items.index.name = "item"
    users = np.concatenate([np.array([f"{source.name}:{u}" for u in source.user_ids], dtype=object),
                            np.array([f"{target.name}:{u}" for u in target.user_ids], dtype=object)])
    return Interactions(name=f"{source.name}->{target.name}", inter=inter, items=items,
                        user_ids=users, meta={"source": source.name, "target": target.name,
                                              "n_source_items": n_si, "n_source_users": n_su})


def domain_table(ds: Interactions) -> pd.DataFrame:
    """Per domain: items, interactions, users."""
    if "domain" not in ds.inter:
        raise DataError(f"{ds.name!r} has no domain column; call genre_domains(...) or combine(...) first.")
    g = ds.inter.groupby("domain")
    return pd.DataFrame({"items": g["item"].nunique(), "interactions": g.size(),
                         "users": g["user"].nunique()}).sort_values("interactions", ascending=False)
