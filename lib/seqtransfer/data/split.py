"""Time-ordered leave-one-out split and user activeness groups.

Protocol: each user's interactions are sorted by time (ties keep file order); the last item is
the test target, the second-last the validation target, the rest is training. A user's
*activeness* is the number of training interactions. Head users are the most active
``head_frac`` of users (Pareto: 20%) or those above ``head_threshold``; tail users are the rest;
cold-start users have at most ``cold_max`` training interactions.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from .loaders import DataError, Interactions


@dataclass
class Split:
    """Leave-one-out split. Training sequences are stored CSR-style (ptr, items)."""

    name: str
    n_users: int
    n_items: int
    train_ptr: np.ndarray     # (U+1,) offsets into train_items
    train_items: np.ndarray   # (sum of lengths,) item ids in time order
    valid: np.ndarray         # (U,) validation target
    test: np.ndarray          # (U,) test target
    item_domain: np.ndarray | None = None   # (n_items+1,) domain label per item, or None

    @property
    def activeness(self) -> np.ndarray:
        """(U,) number of training interactions per user."""
        return np.diff(self.train_ptr)

    def train_seq(self, u: int) -> np.ndarray:
        return self.train_items[self.train_ptr[u]:self.train_ptr[u + 1]]


def leave_one_out(ds: Interactions) -> Split:
    """Split ``ds`` per user in time order: last -> test, second-last -> validation."""
    inter = ds.inter
    order = np.lexsort((np.arange(len(inter)), inter["timestamp"].to_numpy(), inter["user"].to_numpy()))
    users = inter["user"].to_numpy()[order]
    items = inter["item"].to_numpy()[order]
    counts = np.bincount(users, minlength=ds.n_users)
    if (counts < 3).any():
        short = int((counts < 3).sum())
        raise DataError(f"{short} users of {ds.name!r} have fewer than 3 interactions, too few "
                        "for a train/validation/test split; load with min_user >= 3.")
    ends = np.cumsum(counts)
    test = items[ends - 1]
    valid = items[ends - 2]
    keep = np.ones(len(items), dtype=bool)
    keep[ends - 1] = False
    keep[ends - 2] = False
    train_items = items[keep]
    ptr = np.zeros(ds.n_users + 1, dtype=np.int64)
    ptr[1:] = np.cumsum(counts - 2)
    item_domain = None
    if "domain" in ds.items:
        item_domain = np.concatenate([[None], ds.items["domain"].to_numpy(dtype=object)])
    return Split(ds.name, ds.n_users, ds.n_items, ptr, train_items.astype(np.int64),
                 valid.astype(np.int64), test.astype(np.int64), item_domain)


def truncate_histories(split: Split, frac: float, keep: int, seed: int = 0) -> tuple[Split, np.ndarray]:
    """Simulate cold-start users: for a random ``frac`` of users keep only their ``keep`` most
    recent training interactions (their validation and test targets are unchanged).

    MovieLens users all rated at least 20 films, so ML-1M has no natural cold-start users; this
    is the usual way to make some. Returns the new split and the (U,) mask of truncated users.
    """
    if not 0.0 <= frac < 1.0:
        raise ValueError(f"frac must be in [0, 1), got {frac}")
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    rng = np.random.default_rng(seed)
    chosen = np.zeros(split.n_users, dtype=bool)
    chosen[rng.choice(split.n_users, size=int(round(frac * split.n_users)), replace=False)] = True
    seqs = [split.train_seq(u) for u in range(split.n_users)]
    seqs = [s[-keep:] if c else s for s, c in zip(seqs, chosen)]
    lengths = np.array([len(s) for s in seqs])
    ptr = np.zeros(split.n_users + 1, dtype=np.int64)
    ptr[1:] = np.cumsum(lengths)
    return replace(split, train_ptr=ptr, train_items=np.concatenate(seqs)), chosen


@dataclass
class UserGroups:
    """Boolean masks over users, by name. ``all`` is always present."""

    masks: dict[str, np.ndarray]
    head_threshold: float      # head = activeness > head_threshold
    cold_max: int

    def __getitem__(self, name: str) -> np.ndarray:
        return self.masks[name]

    def names(self) -> list[str]:
        return list(self.masks)

    def of_user(self) -> np.ndarray:
        """(U,) 'head' or 'tail' for every user."""
        return np.where(self.masks["head"], "head", "tail")

    def summary(self, activeness: np.ndarray) -> pd.DataFrame:
        rows = []
        total = activeness.sum()
        for name, m in self.masks.items():
            a = activeness[m]
            rows.append({"group": name, "users": int(m.sum()), "share of users": m.mean(),
                         "share of interactions": a.sum() / max(1, total),
                         "min": a.min() if len(a) else np.nan,
                         "median": np.median(a) if len(a) else np.nan,
                         "max": a.max() if len(a) else np.nan})
        return pd.DataFrame(rows).set_index("group")


def activeness_groups(activeness: np.ndarray, head_frac: float = 0.2,
                      head_threshold: float | None = None, cold_max: int = 5,
                      extra: dict[str, np.ndarray] | None = None) -> UserGroups:
    """Head/tail/cold-start masks from per-user activeness.

    Head users are those with activeness strictly above the (1 - head_frac) quantile, so tied
    users always land in the same group (the head share can be a little under ``head_frac``);
    or strictly above ``head_threshold`` when that is given.
    """
    activeness = np.asarray(activeness)
    if head_threshold is None:
        if not 0.0 < head_frac < 1.0:
            raise ValueError(f"head_frac must be in (0, 1), got {head_frac}")
        head_threshold = float(np.quantile(activeness, 1.0 - head_frac))
    head = activeness > head_threshold
    masks = {"all": np.ones(len(activeness), dtype=bool), "head": head, "tail": ~head,
             "cold": activeness <= cold_max}
    masks.update(extra or {})
    return UserGroups(masks, float(head_threshold), cold_max)


def strata(activeness: np.ndarray, n_strata: int = 2, boundaries: list[float] | None = None) -> np.ndarray:
    """(U,) stratum index per user by activeness: equal-population quantile bins, or explicit
    boundaries (stratum z holds boundaries[z-1] < activeness <= boundaries[z])."""
    activeness = np.asarray(activeness)
    if boundaries is None:
        if n_strata < 1:
            raise ValueError(f"n_strata must be >= 1, got {n_strata}")
        boundaries = list(np.quantile(activeness, np.linspace(0, 1, n_strata + 1)[1:-1]))
    return np.searchsorted(np.asarray(boundaries, dtype=float), activeness, side="left")


def lorenz(activeness: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Lorenz curve of activeness (users sorted ascending) and the Gini coefficient.

    Returns x (cumulative share of users), y (cumulative share of interactions), gini.
    """
    a = np.sort(np.asarray(activeness, dtype=float))
    y = np.concatenate([[0.0], np.cumsum(a) / a.sum()])
    x = np.linspace(0.0, 1.0, len(a) + 1)
    gini = 1.0 - 2.0 * np.trapezoid(y, x)
    return x, y, float(gini)
