"""Cross-domain settings: source domains to pre-train on, one target domain to adapt to.

A :class:`CrossDomain` holds the sources and the target as two :class:`Interactions` with their
own id spaces, so a model that transfers only through content (text, year, genres) can be
pre-trained on one and adapted to the other. Three settings:

* **genre** (``genre_setting``): MovieLens-1M split into disjoint genre domains. Every film gets
  exactly one genre by :func:`genre_domains`' ``rule`` (default ``"rarest"``: of a film's genres
  the one with the fewest films, the most specific label; ``"first"`` takes the first listed).
  The target is one named genre; the sources are the other genres (or a named list). The same
  people rate in several genres, but the items are disjoint.
* **cross-platform** (``dataset_setting``): ML-1M genres as sources, another dataset as the
  target, e.g. Amazon "Industrial and Scientific": different platform, disjoint users and items.
* **sanity** (``dataset_setting`` when most target titles occur among the source titles): ML-1M
  -> ML-100K, the same films under two id spaces. Text-based models see through the ids, so it
  is an easy check, not a cross-domain test; the setting is labelled so.

Per-domain sequences: every source domain keeps its own sequences (a user's items within that
domain, in time order) as separate users ``"<user>|<domain>"``, so a model learns transitions
within a domain and never across two of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from .domains import RULES, genre_domains
from .loaders import DataError, Interactions, sample_users, subset

KINDS = ("genre", "cross-platform", "sanity")
SANITY_OVERLAP = 0.5   # share of target titles found among the sources that makes a sanity check


@dataclass
class CrossDomain:
    """Source domains and a target domain with separate user and item id spaces."""

    name: str                  # e.g. "ml-1m genres -> Film-Noir"
    kind: str                  # one of KINDS
    sources: Interactions      # one user per (user, source domain) sequence; ``domain`` column
    target: Interactions       # the target domain's own users and items
    title_overlap: float       # share of target items whose title occurs among source titles
    note: str = ""             # one sentence on what this setting tests
    meta: dict = field(default_factory=dict)

    def describe(self) -> pd.DataFrame:
        """Users (sequences), items and interactions of every source domain and the target."""
        g = self.sources.inter.groupby("domain")
        src = pd.DataFrame({"role": "source", "sequences": g["user"].nunique(), "items": g["item"].nunique(),
                            "interactions": g.size()})
        tgt = pd.DataFrame({"role": "target", "sequences": [self.target.n_users],
                            "items": [self.target.n_items], "interactions": [len(self.target.inter)]},
                           index=[self.meta.get("target_name", self.target.name)])
        return pd.concat([src.sort_values("interactions", ascending=False), tgt]).rename_axis("domain")

    def sample(self, max_users: int | None, seed: int = 0) -> "CrossDomain":
        """At most ``max_users`` target users and ``max_users`` source sequences per domain
        (the smoke budget); None keeps everything."""
        if max_users is None:
            return self
        keep = []
        rng = np.random.default_rng(seed)
        for _, users in self.sources.inter.groupby("domain")["user"]:
            u = np.unique(users.to_numpy())
            keep.append(rng.choice(u, size=min(max_users, len(u)), replace=False))
        sources = subset(self.sources, users=np.concatenate(keep))
        return CrossDomain(self.name, self.kind, sources, sample_users(self.target, max_users, seed),
                           self.title_overlap, self.note, dict(self.meta, sampled=max_users))

    def sample_sources(self, n_users: int | None, seed: int = 0) -> "CrossDomain":
        """The sources cut to every sequence of a seeded sample of ``n_users`` source users
        (all their domains: the genre mix and sequence lengths stay those of the full data);
        None, or at least as many users as there are, keeps everything. The target is kept."""
        if n_users is None:
            return self
        if isinstance(n_users, bool) or not isinstance(n_users, (int, np.integer)) or n_users < 1:
            raise ValueError(f"source_users must be a whole number >= 1 or None (all), got {n_users!r}")
        owner = np.array([str(u).rsplit("|", 1)[0] for u in self.sources.user_ids], dtype=object)
        people = np.unique(owner)
        if n_users >= len(people):
            return self
        keep = set(np.random.default_rng(seed).choice(people, size=n_users, replace=False))
        sequences = np.flatnonzero([o in keep for o in owner])
        sources = subset(self.sources, users=sequences)
        return CrossDomain(self.name, self.kind, sources, self.target, self.title_overlap, self.note,
                           dict(self.meta, source_users=int(n_users)))


def domain_sequences(ds: Interactions, domains: list[str] | None = None, min_len: int = 5) -> Interactions:
    """One user per (user, domain) pair with at least ``min_len`` interactions in the domain,
    raw id ``"<user>|<domain>"``; items re-indexed 1..n over the kept interactions.

    ``ds`` needs a ``domain`` column (see :func:`genre_domains`); ``domains`` restricts to some."""
    if "domain" not in ds.inter:
        raise DataError(f"{ds.name!r} has no domain column; call genre_domains(...) first.")
    inter = ds.inter if domains is None else ds.inter[ds.inter["domain"].isin(domains)]
    codes, names = pd.factorize(inter["domain"], sort=True)
    key = inter["user"].to_numpy() * len(names) + codes                     # (user, domain) pair
    keep = np.bincount(key)[key] >= min_len
    if not keep.any():
        raise DataError(f"no (user, domain) sequence of {ds.name!r} has {min_len} interactions; lower min_len.")
    inter, key = inter[keep], key[keep]
    pairs, user = np.unique(key, return_inverse=True)
    old_items, item = np.unique(inter["item"].to_numpy(), return_inverse=True)
    out = pd.DataFrame({"user": user.astype(np.int64), "item": item.astype(np.int64) + 1,
                        "timestamp": inter["timestamp"].to_numpy(), "domain": inter["domain"].to_numpy()})
    for col in ("rating",):
        if col in inter:
            out[col] = inter[col].to_numpy()
    out = out.sort_values(["user", "timestamp"], kind="stable").reset_index(drop=True)
    items = ds.items.loc[old_items].copy()
    items.index = pd.RangeIndex(1, len(old_items) + 1, name="item")
    user_ids = np.array([f"{ds.user_ids[k // len(names)]}|{names[k % len(names)]}" for k in pairs], dtype=object)
    n = len(names)
    name = f"{ds.name}:{names[0]}" if n == 1 else f"{ds.name}[{n} domains]"
    return Interactions(name, out, items, user_ids, {**ds.meta, "per_domain_sequences": True, "min_len": min_len})


def _title_overlap(sources: Interactions, target: Interactions) -> float:
    norm = lambda s: s.astype(str).str.lower().str.strip()  # noqa: E731
    src = set(norm(sources.items["title"]))
    return float(norm(target.items["title"]).isin(src).mean()) if target.n_items else 0.0


def _sources(ds: Interactions, rule: str, exclude: str | None, sources: list[str] | None,
             min_len: int) -> tuple[Interactions, list[str]]:
    """The source domains' sequences, and the genres of ``ds`` they leave out (sorted)."""
    dom = genre_domains(ds, rule) if "domain" not in ds.inter else ds
    have = sorted(dom.inter["domain"].unique())
    if sources is not None:
        unknown = sorted(set(sources) - set(have))
        if unknown:
            raise DataError(f"source genre(s) {unknown} are not domains of {ds.name!r} under rule "
                            f"{rule!r}; choose among {have}.")
    chosen = [d for d in (sources or have) if d != exclude]
    if not chosen:
        raise DataError("no source domain is left once the target is removed; name other sources.")
    return domain_sequences(dom, chosen, min_len), [d for d in have if d not in chosen]


def genre_setting(ds: Interactions, target: str, rule: str = "rarest", sources: list[str] | None = None,
                  min_users: int = 100, min_len: int = 5) -> CrossDomain:
    """Disjoint genre domains of ``ds``: ``target`` genre as the target, the others as sources.

    Args:
        ds: a dataset with genres (MovieLens).
        target: the target genre, e.g. ``"Film-Noir"``.
        rule: how a film with several genres gets one (see :func:`genre_domains`).
        sources: source genres (default: every other genre).
        min_users: the target needs at least this many users with ``min_len`` interactions.
        min_len: shortest per-domain sequence kept (target users and source sequences).
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {RULES}")
    dom = genre_domains(ds, rule)
    counts = dom.inter.groupby(["domain", "user"]).size()
    users_per = (counts >= min_len).groupby(level=0).sum().sort_values(ascending=False)
    if target not in users_per.index:
        raise DataError(f"unknown target genre {target!r}; genres of {ds.name!r} (rule {rule!r}) "
                        f"are {sorted(users_per.index)}.")
    if users_per[target] < min_users:
        big = [f"{g} ({n})" for g, n in users_per.items() if n >= min_users]
        raise DataError(f"target genre {target!r} has only {int(users_per[target])} users with at "
                        f"least {min_len} films (rule {rule!r}), fewer than min_users={min_users}; "
                        f"choose a larger genre ({', '.join(big[-6:]) or 'none'}) or lower min_users.")
    tgt = domain_sequences(dom, [target], min_len)
    src, held = _sources(dom, rule, target, sources, min_len)
    return CrossDomain(f"{ds.name} genres -> {target}", "genre", src, tgt, _title_overlap(src, tgt),
                       f"disjoint genre domains of {ds.name} (one genre per film, rule {rule!r}); "
                       f"the target {target} shares users but no films with the sources",
                       {"rule": rule, "target_name": target, "held_out": held})


def dataset_setting(source: Interactions, target: Interactions, rule: str = "rarest",
                    sources: list[str] | None = None, min_len: int = 5) -> CrossDomain:
    """``source``'s genre domains (or the whole dataset when it has no genres) as sources and
    ``target`` as the target, each in its own id space. Labelled ``"sanity"`` when at least half
    of the target titles occur among the source titles (ML-1M -> ML-100K), else
    ``"cross-platform"``."""
    if source.name == target.name:
        raise DataError("source and target must be different datasets")
    held: list[str] = []
    if source.items["genres"].map(len).gt(0).any():
        src, held = _sources(source, rule, None, sources, min_len)
    else:
        src = domain_sequences(replace(source, inter=source.inter.assign(domain=source.name)), None, min_len)
    overlap = _title_overlap(src, target)
    kind = "sanity" if overlap >= SANITY_OVERLAP else "cross-platform"
    note = (f"{overlap:.0%} of {target.name}'s titles also occur in {source.name}: text sees the same "
            "films under new ids, an easy sanity check rather than a cross-domain test"
            if kind == "sanity" else
            f"a different platform: disjoint users and items, {overlap:.0%} of titles shared")
    return CrossDomain(f"{source.name} -> {target.name}", kind, src, target, overlap, note,
                       {"rule": rule, "target_name": target.name, "held_out": held})
