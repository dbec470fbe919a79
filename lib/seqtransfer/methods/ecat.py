"""ECAT: entire-space continual and adaptive transfer (Taobao, arXiv 2407.02542, SIGIR 2024).

The question: a small target domain (a "mini-app") lives inside an entire space that shares its
users and items. Which entire-space samples should the target model learn from, how much should
it copy from a model trained on everything, and does that keep helping as new data arrives?

What comes from the paper (its abstract; no code is public): sample transfer in two stages,
coarse to fine (a graph-guided selection, then a selection by domain adaptation), adaptive
knowledge distillation from an entire-space model, and continual retraining. **Every formula
below is ours** [ours], each kept configurable in :class:`EcatConfig`:

* **Coarse selection** (:func:`interaction_graph`, :func:`ppr`, :func:`khop`,
  :func:`coarse_select`): a user-item bipartite graph of the entire space's training
  interactions (plus item-item *bridge* edges between items of two datasets with the same title,
  when given); personalised PageRank from the target's items (restart 0.15, 20 power
  iterations, scipy sparse), or k-hop reachability; candidates = entire-space samples (a prefix
  and its next item) whose next item is among the top-M scored source items.
* **Fine selection** (:func:`domain_classifier`, :func:`importance_weights`): a class-balanced
  logistic domain classifier (target samples = 1, candidates = 0) on the frozen entire-space
  teacher's hidden state at each sample (its context in the entire space); candidates with
  ``p >= p_min`` (0.2) are kept with weight ``w = p / (1 - p)``, clipped at ``clip`` (10) and
  then normalised to mean 1. **The positive class** is the entire-space positions whose next
  item is a target item (the target's behaviour as the entire space records it), not the
  student's own target windows: the classifier reads the teacher's hidden state over an
  entire-space context, and a target-only window (the mini-app's subsequence) is a different
  kind of context, so a classifier trained on those would separate contexts by how they were
  cut, not by domain, and score nearly every candidate p ~ 0. With the entire-space positive
  class both classes are contexts of the same kind and differ only in the domain of the item
  that follows. METHODS.md also scales by ``|candidates| / |target|``; that is the
  ``count_scale`` option, off by default because class balancing already makes ``p / (1 - p)``
  the density ratio, and the extra factor (tens on ML-1M) sends most weights to the clip.
  Option: a gradient-reversal domain head on the student instead (``fine="grl"``).
* **Adaptive distillation** (:func:`adaptive_alpha`, :func:`ecat_loss`): per sample
  ``alpha = sg(p_t(y) / (p_t(y) + p_s(y)))`` with p the softmax probability of the true next
  item under the teacher (t) and the student (s); loss per sample
  ``w * CE + lambda * alpha * ||P h_s - h_t||^2 / D`` averaged over the samples of a batch (P a
  learned linear map, identity at start; the distance per dimension, so lambda does not depend
  on the hidden size D). Options: constant alpha, or a learned gate that
  predicts from (h_s, h_t) whether the teacher is the better one (trained by its own BCE term,
  used under stop-gradient).
* **Continual** (:func:`continual`): ``n_periods`` chronological periods (quantiles of the
  entire space's training timestamps); in period t the teacher and the student continue from
  where period t-1 ended, trained on everything up to the period's end, and the selection is
  re-run on the graph so far.

Data layout [ours]: teacher and student share the entire space's item ids; the student's
target data are the target users' target-domain subsequences (the issue's mini-app), and it
ranks only target items (:class:`TargetScored` masks the other columns at evaluation). No
leakage: every interaction of a target user at or after their target validation item is
removed from the entire space before anything (graph, teacher, candidates) is built.

Baselines and ablations are presets of the same :func:`fit` (:data:`VARIANTS`): target-only,
joint (target + every source sample, unweighted), pre-train on the entire space then fine-tune,
and ECAT without graph, without domain adaptation, without distillation, with constant alpha,
in one period.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import data as D
from ..budget import Budget, get_budget
from ..data.batches import SeqData
from ..data.split import Split, UserGroups
from ..models import make_backbone
from ..train import Hooks, StepContext, TrainConfig, clip_and_step, fit as train_fit, seed_everything
from .common import MethodResult, evaluate_both

if TYPE_CHECKING:
    from ..experiment import Experiment

GRAPHS = ("ppr", "khop", "none")
FINES = ("classifier", "grl", "none")
DISTILLS = ("adaptive", "constant", "gate", "none")
INITS = ("scratch", "teacher")
ONE_PERIOD_TEACHERS = ("continual", "own")
PERIOD_MINUTES = ("remaining", "split")


@dataclass
class EcatConfig:
    backbone: str = "sasrec"               # teacher and student backbone (same architecture)
    backbone_kwargs: dict = field(default_factory=dict)   # overrides of the backbone's config
    train: TrainConfig = field(default_factory=TrainConfig)          # student, per period
    teacher_train: TrainConfig | None = None   # teacher, per period (None: same as ``train``)
    use_source: bool = True                # False: the student sees target samples only
    init: str = "scratch"                  # "scratch" | "teacher" (pre-train then fine-tune)
    # coarse selection [ours]
    graph: str = "ppr"                     # "ppr" | "khop" | "none" (every source item a candidate)
    restart: float = 0.15                  # PPR restart probability
    ppr_iters: int = 20                    # PPR power iterations
    hops: int = 2                          # k-hop: item -> user -> item is 2 hops
    top_m: float = 0.2                     # < 1: share of scored source items kept; >= 1: count
    # fine selection [ours]
    fine: str = "classifier"               # "classifier" | "grl" | "none" (weight 1 for all)
    p_min: float = 0.2                     # keep candidates with p >= p_min
    clip: float = 10.0                     # importance weights clipped here before normalising
    count_scale: bool = False              # also scale p/(1-p) by |candidates| / |target|: off,
                                           # since the class-balanced p/(1-p) already estimates the
                                           # density ratio and the scale would push most weights
                                           # onto the clip (all equal after normalising)
    clf_steps: int = 300                   # full-batch Adam steps of the logistic classifier
    clf_lr: float = 0.05
    clf_max: int = 20000                   # samples per class the classifier is fitted on
    clf_holdout: float = 0.2               # share held out for the reported AUC
    grl_weight: float = 0.1                # weight of the reversed domain loss (fine="grl")
    # distillation [ours]
    distill: str = "adaptive"              # "adaptive" | "constant" | "gate" | "none"
    lam: float = 1.0                       # lambda of the representation term
    alpha_const: float = 0.5               # alpha when distill="constant"
    # continual [ours]
    n_periods: int = 4                     # chronological periods (1: train once on everything)
    split_budget: bool = True              # each period gets 1/n_periods of the epochs and step
                                           # cap, so n periods cost what one does
    period_minutes: str = "remaining"      # a student's wall-clock cap in period t: "remaining", what
                                           # the periods before it left of train.max_minutes (period 0
                                           # trains from scratch and needs the most; later ones start
                                           # warm and stop early sooner), or "split", max_minutes / n
                                           # each (as the teachers, which rarely stop early, always get)
    max_teacher_users: int | None = 2000   # teacher validation on a seeded sample of sequences
    one_period_teacher: str = "continual"  # teacher of the one-period variants (joint, pre-train +
                                           # fine-tune, "one period") in run_variants: "continual",
                                           # the last teacher of the n_periods chain (trained on
                                           # everything, period after period: the entire-space model
                                           # an app keeps anyway), or "own", one trained in one go


VARIANTS = {                                   # name -> EcatConfig changes
    "ECAT": {},
    "target-only": {"use_source": False, "distill": "none", "n_periods": 1},
    "joint (unweighted)": {"graph": "none", "fine": "none", "distill": "none", "n_periods": 1},
    "pre-train + fine-tune": {"use_source": False, "init": "teacher", "distill": "none", "n_periods": 1},
    "ECAT w/o graph": {"graph": "none"},
    "ECAT w/o domain adaptation": {"fine": "none"},
    "ECAT w/o distillation": {"distill": "none"},
    "ECAT constant alpha": {"distill": "constant"},
    "ECAT one period": {"n_periods": 1},
}


def check(cfg: EcatConfig) -> None:
    """Raise a clear error for an unknown option."""
    for name, value, allowed in (("graph", cfg.graph, GRAPHS), ("fine", cfg.fine, FINES),
                                 ("distill", cfg.distill, DISTILLS), ("init", cfg.init, INITS),
                                 ("one_period_teacher", cfg.one_period_teacher, ONE_PERIOD_TEACHERS),
                                 ("period_minutes", cfg.period_minutes, PERIOD_MINUTES)):
        if value not in allowed:
            raise ValueError(f"unknown ECAT {name} {value!r}; choose one of {allowed}")
    if cfg.n_periods < 1:
        raise ValueError(f"n_periods must be >= 1, got {cfg.n_periods}")
    if not 0.0 < cfg.restart < 1.0:
        raise ValueError(f"restart must be in (0, 1), got {cfg.restart}")
    if cfg.clip <= 0:
        raise ValueError(f"clip must be > 0, got {cfg.clip}")


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


class _Reverse(torch.autograd.Function):
    """Identity forward; gradient times -1 backward (domain-adversarial training)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


def grad_reverse(x: torch.Tensor) -> torch.Tensor:
    return _Reverse.apply(x)


# ---------------------------------------------------------------------------------------------
# adaptive distillation
# ---------------------------------------------------------------------------------------------

def true_prob(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(P,) softmax probability of the true next item from (P, N+1) logits."""
    return torch.softmax(logits.float(), -1).gather(1, targets[:, None]).squeeze(1)


def adaptive_alpha(p_teacher: torch.Tensor, p_student: torch.Tensor) -> torch.Tensor:
    """``sg(p_t / (p_t + p_s))``: near 1 where the teacher predicts the true item far better,
    near 0 where it is wrong and the student is right. Carries no gradient."""
    p_teacher, p_student = p_teacher.detach(), p_student.detach()
    return p_teacher / (p_teacher + p_student).clamp(min=1e-12)


def ecat_loss(ce: torch.Tensor, w: torch.Tensor, h_student: torch.Tensor | None = None,
              h_teacher: torch.Tensor | None = None, alpha: torch.Tensor | None = None,
              lam: float = 0.0) -> torch.Tensor:
    """Mean over samples of ``w * ce + lam * alpha * ||h_student - h_teacher||^2 / D``.

    The squared distance is divided by the hidden size D [ours], so ``lam`` means the same at
    any D (summed, it is about 2D(1 - cos) for layer-normed states and swamps the CE).

    ``ce``, ``w``, ``alpha``: (P,); ``h_student`` (already through P) and ``h_teacher``: (P, D).
    Without a teacher (or ``lam`` 0) it is the weighted CE alone."""
    per = w * ce
    if h_teacher is not None and lam:
        per = per + lam * alpha * ((h_student.float() - h_teacher.float()) ** 2).mean(-1)
    return per.mean()


class TargetScored(nn.Module):
    """A backbone (``.backbone``) that, in eval mode, scores only the target's items (the others
    and padding get the lowest finite score, below every real one), plus ECAT's trainable extras: the projection ``P`` (identity at start), the optional
    distillation gate and the optional gradient-reversal domain head."""

    def __init__(self, backbone: nn.Module, target_items: np.ndarray, gate: bool = False,
                 domain_head: bool = False):
        super().__init__()
        self.backbone = backbone
        d = backbone.dim
        self.register_buffer("allowed", torch.as_tensor(np.asarray(target_items, dtype=bool)))
        self.proj = nn.Linear(d, d)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(d))
            self.proj.bias.zero_()
        self.gate = nn.Linear(2 * d, 1) if gate else None
        self.domain_head = nn.Linear(d, 1) if domain_head else None

    @property
    def dim(self) -> int:
        return self.backbone.dim

    def encode(self, seqs, users=None):
        return self.backbone.encode(seqs)

    def represent(self, seqs, lengths, users=None):
        return self.backbone.represent(seqs, lengths)

    def score(self, h):
        s = self.backbone.score(h)
        # the lowest finite value, not -inf: evaluators may reject non-finite scores as divergence
        return s if self.training else s.masked_fill(~self.allowed, torch.finfo(s.dtype).min)

    def position_losses(self, seqs, targets, users=None):
        return self.backbone.position_losses(seqs, targets)

    def loss(self, seqs, targets, users=None):
        return self.backbone.loss(seqs, targets)


# ---------------------------------------------------------------------------------------------
# the setting: an entire space and a target domain inside it
# ---------------------------------------------------------------------------------------------

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
    seconds: dict = field(default_factory=dict)

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


def truncate(split: Split, times: np.ndarray, cut: float) -> Split:
    """``split`` with only the training items at or before ``cut`` (validation/test kept)."""
    keep = np.asarray(times) <= cut
    owner = np.repeat(np.arange(split.n_users), np.diff(split.train_ptr))
    ptr = np.zeros(split.n_users + 1, dtype=np.int64)
    ptr[1:] = np.cumsum(np.bincount(owner[keep], minlength=split.n_users))
    return replace(split, train_ptr=ptr, train_items=split.train_items[keep])


def period_cuts(times: np.ndarray, n_periods: int) -> np.ndarray:
    """End timestamp of every period: chronological quantiles, the last one the latest time."""
    q = np.quantile(np.asarray(times, dtype=np.float64), np.linspace(0, 1, n_periods + 1)[1:])
    q[-1] = np.inf
    return q


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


def make_setting(entire: D.Interactions, target_domain: str, budget: str | Budget = "quick",
                 seed: int = 0, device: str = "auto", min_len: int = 5, bridges: np.ndarray | None = None,
                 kind: str = "genre", note: str = "", head_frac: float = 0.2, cold_max: int = 5,
                 progress: bool = True, entire_users: int | None = None) -> EcatSetting:
    """Split an entire space (with a ``domain`` column) into the target domain's subsequences
    (users with at least ``min_len`` target interactions) and the entire space's training data.

    The target keeps the entire space's item ids. Every interaction of a target user at or after
    the time of their target validation item leaves the entire space (no leakage into the graph,
    the teacher or the candidates). ``entire`` is used as given (sample it first for smoke), except
    that ``entire_users`` (None: all) keeps every target user and a seeded sample of the others,
    that many users in all: the CPU-sized entire space of the quick budget [ours]."""
    from ..experiment import prepare as prepare_experiment
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
    ent = _reindex_users(entire, entire.inter[keep])
    split = D.leave_one_out(ent)
    exp = prepare_experiment(target_ds, replace(b, max_users=None), seed, device, head_frac=head_frac,
                             cold_max=cold_max, progress=progress)
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


# ---------------------------------------------------------------------------------------------
# one period: teacher, selection, student
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


def select(setting: EcatSetting, split: Split, windows: SeqData, teacher: nn.Module | None,
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


def _pool(target: SeqData, source: SeqData | None, weights: torch.Tensor | None):
    """Training windows of the student: the target's (weight 1 on real positions) then the
    entire space's windows that hold at least one selected position. (inputs, targets, weights)."""
    ins, tg = [target.train_inputs], [target.train_targets]
    ws = [(target.train_targets > 0).float()]
    if source is not None and weights is not None:
        rows = (weights > 0).any(1)
        ins.append(source.train_inputs[rows])
        tg.append(source.train_targets[rows])
        ws.append(weights[rows])
    return torch.cat(ins), torch.cat(tg), torch.cat(ws)


def student_hooks(inputs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                  teacher: nn.Module | None, cfg: EcatConfig, alphas: list, domain: torch.Tensor | None = None) -> Hooks:
    """Batches over the student's pool and the ECAT step (weighted CE + distillation, plus the
    reversed domain loss under ``fine="grl"``). ``alphas`` collects a sample of alpha values."""
    dev_cache: dict = {}

    def on(device):
        if "d" not in dev_cache:
            dev_cache["d"] = (inputs.to(device), targets.to(device), weights.to(device),
                              None if domain is None else domain.to(device))
        return dev_cache["d"]

    def batches(data, tcfg, gen):
        perm = torch.randperm(len(inputs), generator=gen)
        for s in range(0, len(perm), tcfg.batch_size):
            yield perm[s:s + tcfg.batch_size].to(data.device)

    def step(ctx: StepContext) -> float:
        model = ctx.model
        x, y, w, dom = on(ctx.data.device)
        seqs, tgt, ww = x[ctx.batch], y[ctx.batch], w[ctx.batch]
        ctx.optimizer.zero_grad(set_to_none=True)
        with ctx.autocast():
            h = model.backbone.encode(seqs)                                   # (B, T, D)
            mask = ww > 0
            hs, ys, wv = h[mask], tgt[mask], ww[mask]                           # (P, D), (P,), (P,)
            logits = model.backbone.score(hs).float()                         # (P, N+1)
            ce = F.cross_entropy(logits, ys, reduction="none")
            ht = alpha = None
            extra = 0.0
            if teacher is not None and cfg.distill != "none" and cfg.lam:
                with torch.no_grad():
                    ht = teacher.encode(seqs)[mask].float()                   # (P, D)
                    pt = true_prob(teacher.score(ht), ys)
                ps = true_prob(logits.detach(), ys)
                if cfg.distill == "adaptive":
                    alpha = adaptive_alpha(pt, ps)
                elif cfg.distill == "constant":
                    alpha = torch.full_like(pt, cfg.alpha_const)
                else:                                                         # learned gate
                    g = torch.sigmoid(model.gate(torch.cat([hs.detach().float(), ht], -1))).squeeze(-1)
                    extra = F.binary_cross_entropy(g, (pt > ps).float())
                    alpha = g.detach()
                if len(alphas) < 20000:
                    alphas.append(alpha[:256].cpu().numpy())
            loss = ecat_loss(ce, wv, model.proj(hs.float()) if ht is not None else None, ht, alpha, cfg.lam)
            loss = loss + extra
            if cfg.fine == "grl" and dom is not None and model.domain_head is not None:
                d = dom[ctx.batch][mask]
                logit = model.domain_head(grad_reverse(hs.float())).squeeze(-1)
                loss = loss + cfg.grl_weight * F.binary_cross_entropy_with_logits(logit, d)
        loss.backward()
        clip_and_step(ctx)
        return loss.item()

    return Hooks(batches=batches, step=step)


def period_train(tcfg: TrainConfig, n_periods: int, split: bool = True) -> TrainConfig:
    """One period's share of ``tcfg``: ceil(epochs / n) epochs, ceil(max_steps / n) steps (at
    least 1 each) and max_minutes / n when ``split``, else ``tcfg`` unchanged."""
    if not split or n_periods == 1:
        return tcfg
    steps = None if tcfg.max_steps is None else max(1, -(-tcfg.max_steps // n_periods))
    minutes = None if tcfg.max_minutes is None else tcfg.max_minutes / n_periods
    return replace(tcfg, epochs=max(1, -(-tcfg.epochs // n_periods)), max_steps=steps, max_minutes=minutes)


def _backbone(cfg: EcatConfig, n_items: int, max_len: int, seed: int) -> nn.Module:
    seed_everything(seed)
    return make_backbone(cfg.backbone, n_items, **{"max_len": max_len, **cfg.backbone_kwargs})


def train_teachers(setting: EcatSetting, cfg: EcatConfig, seed: int = 0, n_periods: int | None = None,
                   observe=None) -> tuple[list[nn.Module], pd.DataFrame]:
    """The entire-space teacher of every period, each continuing from the previous one and
    trained on everything up to its period's end. Returns (a copy per period, history)."""
    n = cfg.n_periods if n_periods is None else n_periods
    cuts = period_cuts(setting.times, n)
    model = _backbone(cfg, setting.split.n_items, setting.target.data.max_len, seed)
    tcfg = period_train(replace(cfg.teacher_train or cfg.train, seed=seed), n, cfg.split_budget)
    out, hist = [], []
    for t, cut in enumerate(cuts):
        data = D.eval_sample(D.build_sequences(truncate(setting.split, setting.times, cut),
                                             setting.target.data.max_len), cfg.max_teacher_users, seed)
        if observe:
            observe(t, "teacher start", model)
        res = train_fit(model, data, replace(tcfg, seed=seed + 1000 * t))
        model = res.model
        if observe:
            observe(t, "teacher end", model)
        out.append(copy.deepcopy(model).cpu())
        hist.append(res.history.assign(period=t, stage="teacher", stopped=res.stopped))
    return out, pd.concat(hist, ignore_index=True)


def selection_key(cfg: EcatConfig, period: int, seed: int) -> tuple:
    """What a period's selection depends on (besides the setting and the teachers): runs with
    the same key and the same teachers select the same samples."""
    return (period, cfg.n_periods, seed, cfg.graph, cfg.restart, cfg.ppr_iters, cfg.hops, cfg.top_m,
            cfg.fine, cfg.p_min, cfg.clip, cfg.count_scale, cfg.clf_steps, cfg.clf_lr, cfg.clf_max,
            cfg.clf_holdout)


def continual(setting: EcatSetting, cfg: EcatConfig, seed: int = 0, teachers: list[nn.Module] | None = None,
              observe=None, cache: dict | None = None) -> tuple[nn.Module, dict]:
    """Train the student over ``cfg.n_periods`` chronological periods.

    Period t: teacher t (given, or trained here continuing from t-1); selection re-run on the
    graph of the entire space up to the period's end; the student continues from where period
    t-1 ended (best validation weights) on the target's and the selected samples up to then.
    ``observe(period, stage, model)`` sees the student at the start and end of every period;
    ``cache`` (a dict shared by runs with the same teachers) keeps each period's selection.
    Returns the student and the diagnostics (counts, p, w, alpha, per-period metrics, history)."""
    check(cfg)
    exp = setting.target
    need_teacher = cfg.use_source and cfg.fine == "classifier" or cfg.distill != "none" or cfg.init == "teacher"
    if teachers is None and need_teacher:
        teachers, _ = train_teachers(setting, cfg, seed)
    if teachers is not None and len(teachers) != cfg.n_periods:
        raise ValueError(f"got {len(teachers)} teachers for {cfg.n_periods} periods; train them with "
                         f"the same n_periods")
    cuts = period_cuts(setting.times, cfg.n_periods)
    tcfg = period_train(replace(cfg.train, seed=seed), cfg.n_periods, cfg.split_budget)
    device = torch.device(tcfg.device if tcfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if cfg.init == "teacher":
        backbone = copy.deepcopy(teachers[-1] if cfg.n_periods == 1 else teachers[0])
        for p in backbone.parameters():               # teachers are frozen once used as teachers
            p.requires_grad_(True)
    else:
        backbone = _backbone(cfg, setting.split.n_items, exp.data.max_len, seed)
    student = TargetScored(backbone, setting.target_items, gate=cfg.distill == "gate",
                           domain_head=cfg.fine == "grl")
    counts, ps, ws, alphas_all, periods, hist, stages = [], [], [], [], [], [], []
    for t, cut in enumerate(cuts):
        teacher = None
        if teachers is not None:
            teacher = teachers[t].to(device).eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        tdata = D.build_sequences(truncate(exp.split, setting.target_times, cut), exp.data.max_len)
        source = weights = domain = None
        stats = {}
        if cfg.use_source:
            esplit = truncate(setting.split, setting.times, cut)
            source = D.build_sequences(esplit, exp.data.max_len)
            key = selection_key(cfg, t, seed)
            if cache is not None and key in cache:
                weights, stats = cache[key]
            else:
                weights, stats = select(setting, esplit, source, teacher, cfg, seed + t)
                if cache is not None:
                    cache[key] = weights, stats
        x, y, w = _pool(tdata, source, weights)
        if cfg.fine == "grl":
            domain = torch.zeros(w.shape)
            domain[:len(tdata.train_inputs)] = 1.0
        alphas: list = []
        hooks = student_hooks(x, y, w, teacher if cfg.distill != "none" else None, cfg, alphas, domain)
        if observe:
            observe(t, "start", student)
        pcfg = replace(tcfg, seed=seed + 1000 * t)
        if cfg.period_minutes == "remaining" and cfg.train.max_minutes is not None:
            used = sum(st["seconds"] for st in stages)                 # student training so far
            pcfg = replace(pcfg, max_minutes=max(cfg.train.max_minutes - used / 60, 0.01))
        res = train_fit(student, exp.data, pcfg, hooks, groups={"all": exp.groups["all"]})
        student = res.model
        stages.append({"period": t, "stage": f"student, period {t}", "steps": res.steps,
                       "seconds": res.seconds, "stopped": res.stopped})
        if observe:
            observe(t, "end", student)
        metrics, _ = evaluate_both(student, exp.data, exp.groups, "", seed)
        m = metrics[(metrics["metric"] == "ndcg") & (metrics["k"] == 10)]
        periods += [{"period": t, "split": r.split, "group": r.group, "ndcg10": r.value} for r in m.itertuples()]
        counts.append({"period": t, "target samples": int((tdata.train_targets > 0).sum()),
                       **{k: v for k, v in stats.items() if k not in ("p", "w")}})
        if len(stats.get("p", [])):
            ps.append(pd.DataFrame({"period": t, "p": stats["p"]}))
            ws.append(pd.DataFrame({"period": t, "w": stats["w"]}))
        if alphas:
            alphas_all.append(pd.DataFrame({"period": t, "alpha": np.concatenate(alphas)}))
        h = res.history
        done = (int(hist[-1]["epoch"].max()) + 1, int(hist[-1]["step"].max())) if hist else (0, 0)
        hist.append(h.assign(period=t, stage="student", epoch=h["epoch"] + done[0], step=h["step"] + done[1]))
        if teacher is not None:
            teachers[t].cpu()
        last = res
    diag = {"counts": pd.DataFrame(counts), "periods": pd.DataFrame(periods),
            "p": pd.concat(ps, ignore_index=True) if ps else pd.DataFrame(columns=["period", "p"]),
            "w": pd.concat(ws, ignore_index=True) if ws else pd.DataFrame(columns=["period", "w"]),
            "alpha": pd.concat(alphas_all, ignore_index=True) if alphas_all else pd.DataFrame(columns=["period", "alpha"]),
            "stages": pd.DataFrame(stages), "history": pd.concat(hist, ignore_index=True), "train": last}
    return student, diag


def fit(setting: EcatSetting, cfg: EcatConfig, seed: int = 0, variant: str = "ECAT",
        teachers: list[nn.Module] | None = None, cache: dict | None = None) -> MethodResult:
    """One ECAT variant on ``setting``: continual training, then validation and test metrics of
    the target's users (all/head/tail/cold)."""
    student, diag = continual(setting, cfg, seed, teachers, cache=cache)
    exp = setting.target
    metrics, ranks = evaluate_both(student, exp.data, exp.groups, variant, seed)
    history = diag.pop("history").assign(variant=variant)
    train = diag.pop("train")
    diag = {k: v.assign(variant=variant) for k, v in diag.items()}
    return MethodResult("ecat", variant, seed, metrics, history, student, train, diag, ranks)


def run_variants(setting: EcatSetting, cfg: EcatConfig, variants: dict[str, dict] | None = None,
                 seed: int = 0, label: str = "") -> tuple[list[MethodResult], dict]:
    """Every variant (name -> config changes, default :data:`VARIANTS`) on ``setting``; teachers
    are trained once per number of periods and shared. Returns the runs (named
    ``"<label> | <variant>"``) and the teacher histories per number of periods."""
    prefix = f"{label} | " if label else ""
    teachers: dict[int, list] = {}
    caches: dict[int, dict] = {}                     # selections, per set of teachers
    t_hist: dict[int, pd.DataFrame] = {}
    out = []
    for name, change in (variants or VARIANTS).items():
        c = replace(cfg, **change)
        check(c)
        need = (c.use_source and c.fine == "classifier") or c.distill != "none" or c.init == "teacher"
        chain = cfg.n_periods
        if need and c.n_periods == 1 and chain > 1 and c.one_period_teacher == "continual" and 1 not in teachers:
            if chain not in teachers:                 # the chain's last teacher has seen everything
                t0 = time.perf_counter()
                teachers[chain], t_hist[chain] = train_teachers(setting, replace(c, n_periods=chain), seed)
                setting.seconds[f"teachers ({chain} periods)"] = time.perf_counter() - t0
            teachers[1] = teachers[chain][-1:]
        if need and c.n_periods not in teachers:
            t0 = time.perf_counter()
            teachers[c.n_periods], t_hist[c.n_periods] = train_teachers(setting, c, seed)
            setting.seconds[f"teachers ({c.n_periods} period{'s' if c.n_periods > 1 else ''})"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        r = fit(setting, c, seed, f"{prefix}{name}", teachers.get(c.n_periods) if need else None,
                cache=caches.setdefault(c.n_periods, {}) if need else None)
        setting.seconds[f"{prefix}{name}"] = time.perf_counter() - t0
        out.append(r)
    return out, t_hist


ABLATIONS = ("ECAT w/o graph", "ECAT w/o domain adaptation", "ECAT w/o distillation", "ECAT constant alpha",
             "ECAT one period")
BASELINES = ("target-only", "joint (unweighted)", "pre-train + fine-tune")


def verdict_table(results: list[MethodResult], label: str, groups: UserGroups | dict,
                  baseline: str = "target-only") -> pd.DataFrame:
    """What the verdicts of setting ``label`` read: every variant against ``baseline`` by the
    paired bootstrap over users (``common.compare``; differences with 95% intervals)."""
    from .common import compare
    prefix = f"{label} | " if label else ""
    mine = [r for r in results if r.variant.startswith(prefix)]
    names = [r.variant for r in mine if r.variant != f"{prefix}{baseline}"]
    return pd.concat([compare(mine, v, f"{prefix}{baseline}", groups) for v in dict.fromkeys(names)],
                     ignore_index=True)


def negative_transfer(table: pd.DataFrame, label: str, baseline: str = "target-only", group: str = "all",
                      variants: tuple[str, ...] | None = None) -> list[str]:
    """One sentence per variant of setting ``label`` present in ``table`` (a ``summarize`` or
    ``compare`` table): does it beat ``baseline`` for ``group``? Negative transfer named."""
    from .common import transfer_verdict
    prefix = f"{label} | " if label else ""
    names = [v for v in (variants or VARIANTS) if v != baseline and f"{prefix}{v}" in set(table["variant"])]
    return [transfer_verdict(table, f"{prefix}{v}", f"{prefix}{baseline}", group) for v in names]


def ecat_against(table: pd.DataFrame, label: str, group: str = "all", method: str = "ECAT") -> list[str]:
    """One sentence per variant of setting ``label`` in ``table`` (a :func:`verdict_table` with
    ``baseline=method``, so each row is variant minus ``method``), read from ``method``'s side:
    is it better than that baseline or ablation, worse, or within the noise (95% paired
    bootstrap over users)? Target-only is left out: section 4's verdicts cover it."""
    prefix = f"{label} | " if label else ""
    rows = table[(table["baseline"] == f"{prefix}{method}") & (table["group"] == group)
                 & (table["variant"] != f"{prefix}target-only")]
    out = []
    for r in rows.itertuples():
        d, lo, hi = -r.diff, -r.hi, -r.lo                                   # method minus variant
        word = ("better" if lo > 0 else "worse" if hi < 0 else "no detectable difference")
        head = f"{method} vs {r.variant.split(' | ', 1)[-1]} for {group} users: {r.metric.upper()}@{r.k} {r.b:.4f} vs {r.a:.4f}"
        out.append(f"{head}, difference {d:+.4f}, 95% CI [{lo:+.4f}, {hi:+.4f}] -- "
                   + (f"{method} is {word}." if word != "no detectable difference" else f"{word}."))
    return out


def stage_times(settings: dict[str, EcatSetting]) -> pd.DataFrame:
    """Seconds per stage of every setting: data preparation, teachers (once per number of
    periods, shared by the variants) and every variant's selection and student training."""
    return pd.DataFrame([{"setting": label, "stage": stage, "seconds": sec}
                         for label, s in settings.items() for stage, sec in s.seconds.items()])


def teacher_stops(teacher_curves: dict[str, dict[int, pd.DataFrame]]) -> pd.DataFrame:
    """Per setting, chain (number of periods) and period: the teacher's steps, best validation
    NDCG@10 (on its user sample) and why it stopped; ``teacher_curves`` as the notebook
    collects them: label -> :func:`run_variants`' teacher histories."""
    rows = []
    for label, chains in teacher_curves.items():
        for n, h in chains.items():
            for t, part in h.groupby("period"):
                rows.append({"setting": label, "teachers": f"{n} period{'s' if n > 1 else ''}", "period": int(t),
                             "steps": int(part["step"].max()), "best valid NDCG@10": float(part["valid_ndcg10"].max()),
                             "stopped": part["stopped"].iloc[0]})
    return pd.DataFrame(rows, columns=["setting", "teachers", "period", "steps", "best valid NDCG@10", "stopped"])


def teacher_sentence(stops: pd.DataFrame) -> str:
    """Whether every teacher reached early stopping (a capped teacher may still have been improving,
    which weakens what the student can borrow from it, not the fairness of the comparison)."""
    if stops.empty:
        return "No teacher was trained."
    capped = stops[~stops["stopped"].astype(str).str.startswith("early stop")]
    if capped.empty:
        return f"Every teacher ({len(stops)} trainings) stopped early on its validation NDCG@10."
    which = ", ".join(f"{r.setting} ({r.teachers}) period {r.period}" for r in capped.itertuples())
    return (f"{len(capped)} of {len(stops)} teacher trainings ended at a cap ({'; '.join(sorted(set(capped['stopped'])))}), "
            f"not by early stopping: {which}. Their students learned from teachers that may still have been improving.")


def selection_values(results: list[MethodResult], variant: str) -> dict[str, np.ndarray]:
    """p, w and alpha of one run (every period pooled), for :func:`plots.selection_histograms`."""
    r = next((r for r in results if r.variant == variant), None)
    if r is None:
        raise KeyError(f"no run named {variant!r}; runs: {[x.variant for x in results]}")
    return {k: r.diagnostics[k][k].to_numpy(dtype=float) for k in ("p", "w", "alpha")}
