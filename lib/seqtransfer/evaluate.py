"""One evaluation function for validation and test.

Protocol (full ranking, the default): for every user the model scores *all* items; items in
the user's history before the target (training items, plus the validation item when testing)
are masked, except the target itself if it repeats an earlier item. The target's 0-based rank
counts the items scored at least as high as it (ties count against the model, so a model that
scores every item alike gets no credit). From the rank r:

* HR@K   = 1[r < K]
* NDCG@K = 1[r < K] / log2(r + 2)    (one relevant item, so IDCG = 1)
* MRR@K  = 1[r < K] / (r + 1)

``protocol="sampled"`` ranks the target against ``n_negatives`` (100) items drawn uniformly
from those the user has not interacted with, the protocol of older papers; it inflates every
number and is labelled as such in the output. Metrics are reported for every user group
(all/head/tail/cold and any extra mask, e.g. per domain). Model selection uses ``split="valid"``
only.

Guards: a NaN or infinite score of any real item raises FloatingPointError naming the model and
the split (a NaN target would otherwise rank first and look perfect), and every rank is checked
to lie in [0, n_items) (full) or [0, n_negatives] (sampled).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
import torch

from .data.batches import SeqData, trim_right

KS = (5, 10, 20)
METRICS = ("hr", "ndcg", "mrr")


def per_user_metric(ranks: np.ndarray, metric: str, k: int) -> np.ndarray:
    """(U,) one user's HR@k, NDCG@k or MRR@k from its 0-based rank (the formulas above)."""
    r = np.asarray(ranks, dtype=np.float64)
    if not (r >= 0).all():                              # also catches NaN
        raise ValueError(f"ranks must be 0-based and finite, got {r[~(r >= 0)][:5].tolist()}")
    hit = r < k
    if metric == "hr":
        return hit.astype(np.float64)
    if metric == "ndcg":
        return np.where(hit, 1.0 / np.log2(r + 2), 0.0)
    if metric == "mrr":
        return np.where(hit, 1.0 / (r + 1), 0.0)
    raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")


def metrics_from_ranks(ranks: np.ndarray, ks=KS) -> dict[tuple[str, int], float]:
    """Mean HR/NDCG/MRR at each K from 0-based ranks (an empty array gives NaN)."""
    r = np.asarray(ranks, dtype=np.float64)
    return {(metric, k): per_user_metric(r, metric, k).mean() if len(r) else np.nan
            for k in ks for metric in METRICS}


def _history_mask(ptr: torch.Tensor, items: torch.Tensor, users: torch.Tensor,
                  n_cols: int) -> torch.Tensor:
    """(B, n_cols) bool mask of the history items of ``users`` (B,), in that order (CSR rows)."""
    starts, counts = ptr[users], ptr[users + 1] - ptr[users]                    # (B,), (B,)
    rows = torch.repeat_interleave(torch.arange(len(users), device=ptr.device), counts)
    first = torch.repeat_interleave(starts - (torch.cumsum(counts, 0) - counts), counts)
    cols = items[first + torch.arange(len(rows), device=ptr.device)]          # each user's slice
    mask = torch.zeros(len(users), n_cols, dtype=torch.bool, device=ptr.device)
    mask[rows, cols] = True
    return mask


SORTED_BATCH = 512   # users per batch when the full protocol groups users by history length


@torch.no_grad()
def rank_targets(model: torch.nn.Module, data: SeqData, split: str = "valid",
                 protocol: str = "full", n_negatives: int = 100, batch_size: int = 2048,
                 seed: int = 0, by_length: bool = True) -> np.ndarray:
    """(U,) 0-based rank of every user's target under ``protocol``.

    ``data`` may live on any device; batches are moved to the model's device. With
    ``by_length`` (full protocol) the users are batched in order of their input's length, at
    most ``SORTED_BATCH`` a batch, so that each batch's right padding is cut to its own longest
    input (``trim_right``): a user's scores do not depend on the other users of its batch
    (eval mode, causal models over right-padded inputs), so the ranks are those of user order
    up to float rounding (a batch's shape can move a score's last bit, and a near-tie can swap:
    1 user of 2,928 on Amazon Scientific with an untrained SASRec), for a fraction of the padded
    positions where histories are short and unequal (Amazon Scientific: median 4 items; a
    validation pass of the content model 0.70 -> 0.25 s). The sampled protocol keeps user order,
    so its negatives are drawn as before.
    """
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    if protocol not in ("full", "sampled"):
        raise ValueError(f"protocol must be 'full' or 'sampled', got {protocol!r}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    inputs, lengths = data.eval_inputs[split], data.eval_lengths[split]
    targets, ptr, hist = data.eval_targets[split], data.history_ptr[split], data.history_items[split]
    gen = torch.Generator(device=device).manual_seed(seed)
    n_cols = data.n_items + 1
    sort = by_length and protocol == "full"
    # user rows on the CPU (they index the CPU ranks; data on CUDA is indexed by them too)
    order = torch.argsort(lengths.cpu(), stable=True) if sort else torch.arange(data.n_users)
    step = min(batch_size, SORTED_BATCH) if sort else batch_size
    ptr, hist = ptr.to(device), hist.to(device)
    ranks = torch.empty(data.n_users, dtype=torch.long)
    for start in range(0, data.n_users, step):
        idx = order[start:start + step]                                      # (B,) user rows
        seq, = trim_right(inputs[idx].to(device))                            # (B, T') to the longest
        users = idx.to(device)
        tgt = targets[idx].to(device)
        h = model.represent(seq, lengths[idx].to(device), users)             # (B, D)
        scores = model.score(h).float()                                      # (B, N+1)
        _check_scores(scores, model, split, idx)                             # guard: NaN/inf raise
        rows = torch.arange(len(idx), device=device)
        t_score = scores[rows, tgt]                                          # (B,)
        seen = _history_mask(ptr, hist, users, n_cols)
        seen[:, 0] = True
        if protocol == "full":
            scores = scores.masked_fill(seen, float("-inf"))
            scores[rows, tgt] = t_score
            r = (scores >= t_score[:, None]).sum(1) - 1                      # (B,)
        else:
            seen[rows, tgt] = True
            neg = _sample_unseen(seen, n_negatives, gen)                     # (B, n_neg)
            r = (scores.gather(1, neg) >= t_score[:, None]).sum(1)
        ranks[idx] = r.cpu()
    model.train(was_training)
    return _checked_ranks(ranks.numpy(), model, split, protocol,             # guard: rank range
                          data.n_items if protocol == "full" else n_negatives + 1)


def _check_scores(scores: torch.Tensor, model: torch.nn.Module, split: str, users: torch.Tensor) -> None:
    """Raise FloatingPointError when any real item's score (columns 1..N) is NaN or infinite.

    A NaN score compares false with everything, so without this check the target of a NaN
    model would rank first and the model would look perfect."""
    bad = ~torch.isfinite(scores[:, 1:]).all(1)                              # (B,)
    if bad.any():
        user = int(users[int(torch.nonzero(bad)[0, 0])])
        raise FloatingPointError(
            f"{type(model).__name__} gave non-finite scores on the {split!r} split ({int(bad.sum())} "
            f"users of this batch, first user {user}); the model has diverged: lower the learning "
            "rate or set grad_clip, and do not report or keep these weights.")


def _checked_ranks(ranks: np.ndarray, model: torch.nn.Module, split: str, protocol: str,
                   n_candidates: int) -> np.ndarray:
    """``ranks`` after checking they lie in [0, n_candidates): every item but the target
    (full ranking) or every negative (sampled) can rank above it, no more."""
    bad = (ranks < 0) | (ranks >= n_candidates)
    if bad.any():
        raise RuntimeError(f"{type(model).__name__} on the {split!r} split ({protocol} ranking): "
                           f"{int(bad.sum())} ranks outside [0, {n_candidates}), e.g. "
                           f"{ranks[bad][:5].tolist()}: an evaluator bug, please report it.")
    return ranks


def _sample_unseen(seen: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """(B, n) item ids drawn uniformly (with replacement) among the unmasked columns."""
    B, n_cols = seen.shape
    out = torch.randint(1, n_cols, (B, n), device=seen.device, generator=gen)
    for _ in range(100):
        bad = seen.gather(1, out)
        if not bad.any():
            return out
        out[bad] = torch.randint(1, n_cols, (int(bad.sum()),), device=seen.device, generator=gen)
    raise RuntimeError("could not sample unseen negatives: some users have seen almost every item")


def evaluate(model: torch.nn.Module, data: SeqData, split: str = "valid",
             groups: Mapping[str, np.ndarray] | None = None, ks=KS, protocol: str = "full",
             n_negatives: int = 100, batch_size: int = 2048, seed: int = 0,
             ranks: np.ndarray | None = None) -> pd.DataFrame:
    """Rank every user's target and aggregate per group.

    Args:
        groups: name -> (U,) bool mask; ``{"all": everyone}`` when None. A ``UserGroups`` works
            too (pass ``groups.masks``).
        ranks: precomputed ranks (skip the model pass).

    Returns a tidy frame: split, protocol, group, metric, k, value, n_users.
    """
    if ranks is None:
        ranks = rank_targets(model, data, split, protocol, n_negatives, batch_size, seed)
    if groups is None:
        groups = {"all": np.ones(data.n_users, dtype=bool)}
    rows = []
    for g, mask in groups.items():
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != ranks.shape:
            raise ValueError(f"group {g!r} mask has shape {mask.shape}, expected {ranks.shape}")
        for (metric, k), v in metrics_from_ranks(ranks[mask], ks).items():
            rows.append((split, protocol, g, metric, k, v, int(mask.sum())))
    return pd.DataFrame(rows, columns=["split", "protocol", "group", "metric", "k", "value", "n_users"])


def domain_groups(data_item_domain: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """Per-domain user masks: user u is in domain d when its target item belongs to d."""
    dom = np.asarray(data_item_domain, dtype=object)[np.asarray(targets)]
    return {f"domain:{d}": dom == d for d in sorted({x for x in dom if x is not None})}


def pivot(metrics: pd.DataFrame, metric: str = "ndcg", k: int = 10) -> pd.DataFrame:
    """One metric as a table: rows = everything but group/value, columns = groups."""
    m = metrics[(metrics["metric"] == metric) & (metrics["k"] == k)]
    index = [c for c in m.columns if c not in ("group", "value", "n_users", "metric", "k")]
    return m.pivot_table(index=index, columns="group", values="value", sort=False)
