"""ECAT's sample transfer: coarse selection on the user-item graph (personalised PageRank or
k-hop from the target's items), fine selection by a domain classifier on the teacher's hidden
states (importance weights), and :func:`select`, both stages over one period's windows."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...data.batches import SeqData
from ...data.split import Split
from .config import EcatConfig

# ---------------------------------------------------------------------------------------------
# coarse selection on the user-item graph
# ---------------------------------------------------------------------------------------------

def interaction_graph(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int,
                      bridges: np.ndarray | None = None) -> sp.csr_matrix:
    """Symmetric adjacency of the user-item bipartite graph, (U + N + 1) square.

    Node u (0..U-1) is user u, node U + i is item i (1..N; node U is the unused padding item).
    Repeated interactions count once. ``bridges`` (k, 2) adds item-item edges (e.g. the same
    title in two datasets)."""
    users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
    n = n_users + n_items + 1
    rows, cols = [users, n_users + items], [n_users + items, users]
    if bridges is not None and len(bridges):
        b = np.asarray(bridges, dtype=np.int64)
        rows += [n_users + b[:, 0], n_users + b[:, 1]]
        cols += [n_users + b[:, 1], n_users + b[:, 0]]
    r, c = np.concatenate(rows), np.concatenate(cols)
    adj = sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(n, n))
    adj.data[:] = 1.0                                     # duplicates summed -> one edge
    return adj


def ppr(adj: sp.csr_matrix, seeds: np.ndarray, restart: float = 0.15, iters: int = 20) -> np.ndarray:
    """Personalised PageRank from ``seeds`` (node ids), by power iteration.

    ``r <- (1 - restart) * P^T r + restart * r0`` with ``P`` the row-normalised adjacency and
    ``r0`` uniform over the seeds; the mass of nodes without edges returns to ``r0``. Returns
    (n_nodes,) scores summing to 1."""
    seeds = np.unique(np.asarray(seeds, dtype=np.int64))
    if len(seeds) == 0:
        raise ValueError("PPR needs at least one seed node (the target has no items in the graph)")
    n = adj.shape[0]
    deg = np.asarray(adj.sum(1)).ravel()
    inv = np.divide(1.0, deg, out=np.zeros(n), where=deg > 0)
    pt = (sp.diags(inv) @ adj).T.tocsr()                 # P^T: column-stochastic where deg > 0
    r0 = np.zeros(n)
    r0[seeds] = 1.0 / len(seeds)
    r = r0.copy()
    dangling = deg == 0
    for _ in range(iters):
        lost = r[dangling].sum()
        r = (1 - restart) * (pt @ r) + (restart + (1 - restart) * lost) * r0
    return r


def khop(adj: sp.csr_matrix, seeds: np.ndarray, hops: int = 2) -> np.ndarray:
    """1 / (1 + hop distance) from the nearest seed for nodes within ``hops`` hops, else 0."""
    n = adj.shape[0]
    dist = np.full(n, -1, dtype=np.int64)
    frontier = np.zeros(n, dtype=bool)
    frontier[np.asarray(seeds, dtype=np.int64)] = True
    dist[frontier] = 0
    for h in range(1, hops + 1):
        reach = (adj @ frontier.astype(np.float64)) > 0
        frontier = reach & (dist < 0)
        dist[frontier] = h
    return np.divide(1.0, 1.0 + dist, out=np.zeros(n), where=dist >= 0)


def coarse_select(item_scores: np.ndarray, target_items: np.ndarray, top_m: float) -> np.ndarray:
    """(N+1,) bool: the top-M source (non-target) items by score, among those scored above 0.

    ``top_m`` < 1 is a share of the scored source items, >= 1 a count; padding (0) never."""
    scores = np.asarray(item_scores, dtype=np.float64)
    source = ~np.asarray(target_items, dtype=bool)
    source[0] = False
    scored = np.flatnonzero(source & (scores > 0))
    m = int(round(top_m * len(scored))) if top_m < 1 else int(top_m)
    keep = scored[np.argsort(-scores[scored], kind="stable")[:m]]
    out = np.zeros(len(scores), dtype=bool)
    out[keep] = True
    return out


def item_scores(adj: sp.csr_matrix, n_users: int, target_items: np.ndarray, cfg: EcatConfig) -> np.ndarray:
    """(N+1,) graph score of every item from the target's items (seeds = target items that have
    an edge); under ``graph="none"`` every source item scores 1."""
    target_items = np.asarray(target_items, dtype=bool)
    if cfg.graph == "none":
        return np.where(target_items, 0.0, 1.0) * (np.arange(len(target_items)) > 0)
    deg = np.asarray(adj.sum(1)).ravel()[n_users:]
    seeds = n_users + np.flatnonzero(target_items & (deg > 0))
    s = ppr(adj, seeds, cfg.restart, cfg.ppr_iters) if cfg.graph == "ppr" else khop(adj, seeds, cfg.hops)
    return s[n_users:]


# ---------------------------------------------------------------------------------------------
# fine selection by domain adaptation
# ---------------------------------------------------------------------------------------------

def auc(scores_pos: np.ndarray, scores_neg: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half)."""
    from scipy.stats import rankdata
    a, b = np.asarray(scores_pos, dtype=np.float64), np.asarray(scores_neg, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    ranks = rankdata(np.concatenate([a, b]))
    return float((ranks[:len(a)].sum() - len(a) * (len(a) + 1) / 2) / (len(a) * len(b)))


def domain_classifier(x_target: np.ndarray | torch.Tensor, x_cand: np.ndarray | torch.Tensor,
                      steps: int = 300, lr: float = 0.05, max_per_class: int = 20000,
                      holdout: float = 0.2, seed: int = 0) -> tuple[np.ndarray, float]:
    """A class-balanced logistic classifier, target (1) against candidates (0), on standardised
    features; each class's BCE is averaged separately and the two halves weigh 1/2 each.

    Fitted on a seeded ``1 - holdout`` share (at most ``max_per_class`` per class). Returns
    (p for every candidate, (n_c,); AUC on the held-out samples)."""
    xt = torch.as_tensor(np.asarray(x_target), dtype=torch.float32)
    xc = torch.as_tensor(np.asarray(x_cand), dtype=torch.float32)
    if len(xt) < 2 or len(xc) < 2:
        raise ValueError(f"the domain classifier needs at least 2 target and 2 candidate samples, "
                         f"got {len(xt)} and {len(xc)}; widen the selection (top_m) or the target")
    gen = torch.Generator().manual_seed(seed)

    def part(n):
        perm = torch.randperm(n, generator=gen)
        n_hold = int(round(holdout * n)) if holdout > 0 else 0
        return perm[n_hold:][:max_per_class], perm[:n_hold]
    (ft, ht), (fc, hc) = part(len(xt)), part(len(xc))
    both = torch.cat([xt[ft], xc[fc]])
    mu, sd = both.mean(0), both.std(0).clamp(min=1e-6)
    w = torch.zeros(xt.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    zt, zc = (xt[ft] - mu) / sd, (xc[fc] - mu) / sd
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.5 * F.binary_cross_entropy_with_logits(zt @ w + b, torch.ones(len(zt))) + \
            0.5 * F.binary_cross_entropy_with_logits(zc @ w + b, torch.zeros(len(zc)))
        loss.backward()
        opt.step()
    with torch.no_grad():
        prob = lambda x: torch.sigmoid(((x - mu) / sd) @ w + b).numpy()   # noqa: E731
        p = prob(xc)
        score = auc(prob(xt[ht]), p[hc.numpy()]) if len(ht) and len(hc) else float("nan")
    return p.astype(np.float64), score


def importance_weights(p: np.ndarray, n_target: int, p_min: float = 0.2, clip: float = 10.0,
                       count_scale: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Candidates with ``p >= p_min`` and their weights.

    ``w = p / (1 - p) * (|candidates| / |target| if count_scale)``, clipped to at most ``clip``,
    then divided by its mean over the kept candidates (mean 1). Returns ((n_c,) bool kept,
    (n_c,) weights, 0 where dropped)."""
    p = np.asarray(p, dtype=np.float64)
    if n_target < 1:
        raise ValueError("importance weights need at least one target sample")
    keep = p >= p_min
    w = np.zeros_like(p)
    if not keep.any():
        return keep, w
    ratio = p[keep] / np.clip(1.0 - p[keep], 1e-12, None)
    if count_scale:
        ratio = ratio * len(p) / n_target
    ratio = np.minimum(ratio, clip)
    w[keep] = ratio / ratio.mean()
    return keep, w


# ---------------------------------------------------------------------------------------------
# both stages over one period's windows
# ---------------------------------------------------------------------------------------------

def _teacher_features(teacher: nn.Module, inputs: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                      batch: int = 256) -> torch.Tensor:
    """(len(rows), D) frozen teacher hidden states at positions (rows, cols) of ``inputs``."""
    device = next(teacher.parameters()).device
    was = teacher.training
    teacher.eval()
    out = torch.zeros(len(rows), teacher.dim)
    with torch.no_grad():
        for s in range(0, len(inputs), batch):
            sel = (rows >= s) & (rows < s + batch)
            if not sel.any():
                continue
            h = teacher.encode(inputs[s:s + batch].to(device)).float().cpu()      # (b, T, D)
            out[sel] = h[rows[sel] - s, cols[sel]]
    teacher.train(was)
    return out


def select(setting, split: Split, windows: SeqData, teacher: nn.Module | None,
           cfg: EcatConfig, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """Coarse and fine selection over the entire-space training windows of one period.

    Returns ((N, L) weight of every position of ``windows`` -- 0 where not selected or a target
    item, so target samples come from the target's own data) and the statistics: counts per
    stage, AUC, and the values of p and w."""
    tgt_items = torch.as_tensor(setting.target_items)
    targets = windows.train_targets
    real = targets > 0
    is_target = real & tgt_items[targets]
    owner = np.repeat(np.arange(split.n_users), np.diff(split.train_ptr))
    adj = interaction_graph(owner, split.train_items, split.n_users, split.n_items, setting.bridges)
    scores = item_scores(adj, split.n_users, setting.target_items, cfg)
    if cfg.graph == "none":                                   # every source item a candidate
        chosen = torch.as_tensor(~setting.target_items & (np.arange(len(scores)) > 0))
    else:
        chosen = torch.as_tensor(coarse_select(scores, setting.target_items, cfg.top_m))
    cand = real & chosen[targets]
    stats = {"source samples": int((real & ~is_target).sum()), "target samples (entire space)": int(is_target.sum()),
             "graph candidates": int(cand.sum()), "candidate items": int(chosen.sum()),
             "auc": float("nan"), "p": np.zeros(0), "w": np.zeros(0)}
    weights = torch.zeros(targets.shape)
    if cfg.fine == "classifier" and (int(cand.sum()) < 2 or int(is_target.sum()) < 2):
        stats["selected"] = 0                      # nothing to classify (e.g. a period before the
        return weights, stats                      # entire space has data): no transfer this period
    if cfg.fine != "classifier":
        weights[cand] = 1.0
        stats["selected"] = int(cand.sum())
        return weights, stats
    if teacher is None:
        raise ValueError("fine='classifier' needs the teacher's features; pass a teacher")
    rt, ct = torch.nonzero(is_target, as_tuple=True)
    rc, cc = torch.nonzero(cand, as_tuple=True)
    xt = _teacher_features(teacher, windows.train_inputs, rt, ct)
    xc = _teacher_features(teacher, windows.train_inputs, rc, cc)
    p, score = domain_classifier(xt, xc, cfg.clf_steps, cfg.clf_lr, cfg.clf_max, cfg.clf_holdout, seed)
    kept, w = importance_weights(p, len(xt), cfg.p_min, cfg.clip, cfg.count_scale)
    weights[rc, cc] = torch.as_tensor(w, dtype=torch.float32)
    stats.update(auc=score, p=p, w=w[kept], selected=int(kept.sum()))
    return weights, stats
