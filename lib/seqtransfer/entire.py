"""An entire space and a small target domain inside it: the data of notebook 06 (ECAT).

A target domain (a "mini-app") lives inside an entire space that shares its users and items.
:func:`make_setting` splits an entire space into the target domain's subsequences (an
:class:`~seqtransfer.experiment.Experiment`: split, groups, tensors, budget, runs) and the
entire space's training data, with no leakage: every interaction of a target user at or after
their target validation item leaves the entire space before anything (graph, teacher,
candidates) is built. :func:`genre_space` (an ML-1M genre as the target) and
:func:`bridge_space` (a second dataset joined by title bridges) build the two settings.

Engine level, beside :mod:`seqtransfer.experiment`: the method module
(:mod:`seqtransfer.methods.ecat`) reads an :class:`EcatSetting` and imports neither.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from . import data as D
from .budget import Budget, get_budget
from .data.split import Split
from .experiment import UNDIGESTED, Experiment, prepare as prepare_experiment


@dataclass
class EcatSetting:
    """An entire space and a target domain sharing its item ids (see the module docstring)."""

    name: str                      # e.g. "ml-1m -> Horror"
    kind: str                      # "genre" | "bridge"
    entire: D.Interactions         # entire space after removing target users' held-out future
    split: Split                   # entire-space leave-one-out split (the teacher's)
    times: np.ndarray              # (len(split.train_items),) timestamp of every training item
    target: Experiment             # the target subsequences: split, groups, tensors (same item ids)
    target_times: np.ndarray       # timestamps of the target's training items
    target_items: np.ndarray       # (N+1,) bool, items of the target domain
    bridges: np.ndarray            # (k, 2) item-item bridge edges (empty when none)
    note: str = ""
    seconds: dict = field(default_factory=dict, metadata=UNDIGESTED)   # stage -> seconds (not digested)

    def describe(self) -> pd.DataFrame:
        t = self.target.split
        return pd.DataFrame([
            {"part": "entire space", "users": self.split.n_users, "items": self.split.n_items,
             "training interactions": len(self.split.train_items)},
            {"part": "target", "users": t.n_users, "items": int(self.target_items.sum()),
             "training interactions": len(t.train_items)},
            {"part": "bridge edges", "users": 0, "items": len(self.bridges), "training interactions": 0},
        ]).set_index("part")


def train_timestamps(ds: D.Interactions) -> np.ndarray:
    """Timestamps aligned with ``leave_one_out(ds).train_items`` (same order, same drops)."""
    inter = ds.inter
    order = np.lexsort((np.arange(len(inter)), inter["timestamp"].to_numpy(), inter["user"].to_numpy()))
    users = inter["user"].to_numpy()[order]
    ts = inter["timestamp"].to_numpy()[order]
    ends = np.cumsum(np.bincount(users, minlength=ds.n_users))
    keep = np.ones(len(ts), dtype=bool)
    keep[ends - 1] = False
    keep[ends - 2] = False
    return ts[keep]


def _reindex_users(ds: D.Interactions, inter: pd.DataFrame, min_len: int = 3) -> D.Interactions:
    """``inter`` of ``ds`` with users of fewer than ``min_len`` rows dropped and user ids made
    contiguous; item ids and the item table are kept (shared with the target)."""
    counts = inter.groupby("user").size()
    users = np.sort(counts.index[counts >= min_len].to_numpy())
    inter = inter[inter["user"].isin(users)]
    umap = pd.Series(np.arange(len(users)), index=users)
    inter = inter.assign(user=umap.loc[inter["user"].to_numpy()].to_numpy()).reset_index(drop=True)
    return replace(ds, inter=inter, user_ids=ds.user_ids[users])


def entire_sample(users: np.ndarray, target_users: np.ndarray, n: int | None, seed: int = 0) -> np.ndarray:
    """Sorted ids of an entire space of ``n`` users (None: all of ``users``): every target user
    and a seeded sample of the others. ``n`` below the number of target users is an error."""
    users = np.unique(users)
    if n is None or n >= len(users):
        return users
    target_users = np.intersect1d(users, target_users)
    if n < len(target_users):
        raise ValueError(f"entire_users={n} is below the target's {len(target_users)} users, who all stay in "
                         f"the entire space; raise it to at least {len(target_users)} or pass None (every user)")
    others = np.setdiff1d(users, target_users)
    pick = np.random.default_rng(seed).choice(others, size=n - len(target_users), replace=False)
    return np.sort(np.concatenate([target_users, pick]))


def recent_history(inter: pd.DataFrame, n: int | None) -> np.ndarray:
    """Boolean mask over the rows of ``inter`` (``user``, ``timestamp``): each user's ``n`` most
    recent interactions (equal times: the later rows are the more recent); None keeps all."""
    if n is None:
        return np.ones(len(inter), dtype=bool)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"entire_history must be a whole number >= 1 (the most recent interactions kept per "
                         f"user) or None (all), got {n!r}")
    users = inter["user"].to_numpy()
    order = np.lexsort((np.arange(len(inter)), inter["timestamp"].to_numpy(), users))   # by user, then time
    from_end = pd.Series(users[order]).groupby(users[order]).cumcount(ascending=False).to_numpy()
    mask = np.zeros(len(inter), dtype=bool)
    mask[order] = from_end < n
    return mask


def make_setting(entire: D.Interactions, target_domain: str, budget: str | Budget = "quick",
                 seed: int = 0, device: str = "auto", min_len: int = 5, bridges: np.ndarray | None = None,
                 kind: str = "genre", note: str = "", head_frac: float = 0.2, cold_max: int = 5,
                 progress: bool = True, entire_users: int | None = None, entire_history: int | None = None,
                 cache: bool | str = False, data_dir: str | None = None, executor: str = "local",
                 ray_address: str = "", n_seeds: int = 0) -> EcatSetting:
    """Split an entire space (with a ``domain`` column) into the target domain's subsequences
    (users with at least ``min_len`` target interactions) and the entire space's training data.

    The target keeps the entire space's item ids. Every interaction of a target user at or after
    the time of their target validation item leaves the entire space (no leakage into the graph,
    the teacher or the candidates). ``entire`` is used as given (sample it first for smoke), except
    that ``entire_users`` (None: all) keeps every target user and a seeded sample of the others,
    that many users in all, and ``entire_history`` (None: all) keeps each of those users' most
    recent that many entire-space interactions (after the cut above; the target's own
    subsequences are untouched): the CPU-sized entire space of the quick budget [ours]. ``cache``,
    ``data_dir``, ``executor``, ``ray_address``, ``n_seeds``: the target experiment's, which trains
    the runs (:func:`seqtransfer.experiment.prepare`)."""
    if "domain" not in entire.inter:
        raise D.DataError(f"{entire.name!r} has no domain column; call genre_domains(...) or combine(...) first.")
    have = sorted(entire.inter["domain"].unique())
    if target_domain not in have:
        raise D.DataError(f"unknown target domain {target_domain!r}; domains of {entire.name!r} are {have}")
    b = budget if isinstance(budget, Budget) else get_budget(budget)
    t0 = time.perf_counter()
    tin = entire.inter[entire.inter["domain"] == target_domain]
    counts = tin.groupby("user").size()
    tusers = np.sort(counts.index[counts >= min_len].to_numpy())
    if len(tusers) < 3:
        raise D.DataError(f"target {target_domain!r} has {len(tusers)} users with {min_len} interactions "
                          f"in {entire.name!r}; choose a larger domain or lower min_len")
    tin = tin[tin["user"].isin(tusers)]
    target_ds = _reindex_users(entire, tin, min_len)
    target_ds = replace(target_ds, name=f"{entire.name}:{target_domain}")
    # the time of each target user's validation item (second-last target interaction)
    srt = tin.sort_values(["user", "timestamp"], kind="stable")
    cut = srt.groupby("user")["timestamp"].agg(lambda s: s.iloc[-2])     # user -> valid time
    limit = cut.reindex(entire.inter["user"].to_numpy()).to_numpy()
    keep = np.isnan(limit) | (entire.inter["timestamp"].to_numpy() < limit)
    keep &= entire.inter["user"].isin(entire_sample(entire.inter["user"].unique(), tusers, entire_users, seed)).to_numpy()
    kept = entire.inter[keep]
    ent = _reindex_users(entire, kept[recent_history(kept, entire_history)])
    split = D.leave_one_out(ent)
    exp = prepare_experiment(target_ds, replace(b, max_users=None), seed, device, head_frac=head_frac,
                             cold_max=cold_max, progress=progress, cache=cache, data_dir=data_dir,
                             executor=executor, ray_address=ray_address, n_seeds=n_seeds)
    exp.groups.masks = {k: m for k, m in exp.groups.masks.items() if m.any()}
    target_items = np.zeros(entire.n_items + 1, dtype=bool)
    target_items[entire.items.index[entire.items["domain"] == target_domain].to_numpy()
                 if "domain" in entire.items else np.unique(tin["item"].to_numpy())] = True
    return EcatSetting(f"{entire.name} -> {target_domain}", kind, ent, split, train_timestamps(ent), exp,
                       train_timestamps(target_ds), target_items,
                       np.zeros((0, 2), dtype=np.int64) if bridges is None else np.asarray(bridges),
                       note, {"data": time.perf_counter() - t0})


def genre_space(ds: D.Interactions, target: str, budget: str | Budget = "quick", seed: int = 0,
                rule: str = "rarest", **kw) -> EcatSetting:
    """Entire space = ``ds`` (sampled to the budget's users), one genre per film by ``rule``;
    target = the users' ``target``-genre subsequences."""
    b = budget if isinstance(budget, Budget) else get_budget(budget)
    dom = D.genre_domains(D.sample_users(ds, b.max_users, seed), rule)
    note = (f"entire space {ds.name} (one genre per film, rule {rule!r}); the target model trains on "
            f"its users' {target} subsequences and ranks {target} films only")
    return make_setting(dom, target, b, seed, note=note, kind="genre", **kw)


def title_bridges(items: pd.DataFrame, a: str, b: str) -> np.ndarray:
    """(k, 2) item pairs (domain a item, domain b item) with the same normalised title [ours]."""
    norm = items["title"].astype(str).str.lower().str.strip()
    left = pd.Series(items.index[items["domain"] == a], index=norm[items["domain"] == a].to_numpy())
    right = norm[items["domain"] == b]
    left = left[~left.index.duplicated()]
    hit = right[right.isin(left.index)]
    return np.stack([left.loc[hit.to_numpy()].to_numpy(), hit.index.to_numpy()], 1).astype(np.int64) \
        if len(hit) else np.zeros((0, 2), dtype=np.int64)


def bridge_space(source: D.Interactions, target: D.Interactions, budget: str | Budget = "quick",
                 seed: int = 0, bridge: bool = True, **kw) -> EcatSetting:
    """Entire space = ``source`` and ``target`` stacked (separate ids, :func:`data.combine`),
    joined in the graph by item-item edges between equal titles (our bridge, labelled); target =
    ``target``'s users. Both sampled to the budget's users."""
    b = budget if isinstance(budget, Budget) else get_budget(budget)
    both = D.combine(D.sample_users(source, b.max_users, seed), D.sample_users(target, b.max_users, seed))
    bridges = title_bridges(both.items, source.name, target.name) if bridge else None
    note = (f"entire space {source.name} + {target.name} (separate users and item ids), joined in the "
            f"graph by {0 if bridges is None else len(bridges)} title bridge edges [ours]; the target "
            f"model ranks {target.name} items only")
    return make_setting(both, target.name, b, seed, bridges=bridges, kind="bridge", note=note, **kw)
