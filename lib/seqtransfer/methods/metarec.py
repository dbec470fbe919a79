"""MetaRec: a shared VQ codebook and similarity-rescaled meta transfer (Yue et al., arXiv 2411.01785).

The question: several source domains share no users, items or text with a small target; can a
shared, vector-quantised item space plus meta-learning carry knowledge into the target, and
which sources help?

What the abstract says: every domain's item embeddings are vector-quantised into one shared
space; meta transfer lets the limited target data guide what is transferred; each source's
meta-gradient is rescaled by its similarity to the target. Everything below it is ours:

* **VQ** [ours, after VQ-VAE]: one ID table per domain, one shared codebook (nearest code by L2,
  straight-through, codebook + 0.25 x commitment loss; EMA updates, dead-code re-seeding and a
  residual ``e + q`` mode as options), one shared encoder and positions
  (:class:`~seqtransfer.models.MultiDomainSASRec`).
* **Meta transfer** [ours, after the first author's public MetaAdapt code]: per iteration,
  sample ``n_sampled`` source domains; for each, adapt a copy of the shared weights (and the
  source's own table) with ``inner_steps`` SGD steps of ``inner_lr`` on that source's batches
  (functional fast weights through ``torch.func.functional_call``; the model's weights never
  change in place); the source's meta-gradient is the gradient of the target batch's loss at the
  adapted weights (first order by default; ``order=2`` differentiates through the inner steps).
  Each source is weighted by ``softmax(sim / tau)``, where ``sim`` is the mean over shared
  parameter tensors of the cosine between the source's update ``phi - theta`` and the target's
  descent direction ``-grad L_target(theta)`` (**descent alignment**, the default: a source whose
  update lowers the target loss gets more weight). The weighted sum of the meta-gradients is
  the gradient of one optimiser step on the shared weights and the target table.
* **The sign.** MetaAdapt's code uses ``cos(phi - theta, +grad L_target)``, which is high when a
  source's update *raises* the target loss; ``weights="public"`` builds it as an ablation. On a
  quadratic toy with one helpful and one harmful source that rule weights the harmful one
  (tests/test_metarec.py); ``weights="uniform"`` drops the rescaling.
* The adapted source tables are written back after every inner loop (each source's table is its
  own, so this is plain training of that source); EMA and re-seeding of the codebook happen only
  in the pass at the real weights, never inside a fast-weight copy.
* Model selection: validation NDCG@10 of the target (the shared training loop iterates over the
  target's training windows; every step is one meta iteration on one target batch).

Variants (:data:`VARIANTS`): ``target-only`` (the target's table and the encoder, target data
only), ``joint`` (sources and target trained together, one loss per domain batch, averaged),
``fine-tune`` (pre-train on the sources, then train everything on the target), ``meta`` (the
method; after an optional joint pre-training on the sources,
which stops when its training loss levels off: :func:`pretrain`, our rule). Switch VQ off with
``model.vq = None``.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from .. import data as D
from ..budget import Budget, get_budget
from ..data.batches import SeqData
from ..models import MultiDomainConfig, MultiDomainSASRec
from ..train import Hooks, StepContext, TrainConfig, clip_and_step, fit as train_fit, seed_everything
from .common import MethodResult, evaluate_both

if TYPE_CHECKING:
    from ..experiment import Experiment

VARIANTS = ("target-only", "joint", "fine-tune", "meta")
WEIGHTS = ("descent", "public", "uniform")
TARGET_INITS = ("codes", "normal")
TARGET = "target"      # the target domain's table name inside the model


@dataclass
class MetaRecConfig:
    model: MultiDomainConfig = field(default_factory=MultiDomainConfig)   # tables, VQ, encoder
    variant: str = "meta"              # one of VARIANTS
    weights: str = "descent"           # source weights: "descent" | "public" (MetaAdapt's sign) | "uniform"
    tau: float = 0.1                   # temperature of softmax(sim / tau)
    order: int = 1                     # 1: first-order meta-gradient; 2: through the inner steps
    inner_steps: int = 1               # k SGD steps on a source per meta iteration
    inner_lr: float = 0.01             # SGD step size of the inner loop
    n_sampled: int = 3                 # source domains sampled per meta iteration (None/0: all)
    pretrain_steps: int = 0            # joint pre-training steps on the sources, at most (0: none)
    pretrain_lr: float = 1e-3          # Adam learning rate of the pre-training
    pretrain_block: int = 50           # the pre-training stops once its training loss levels off:
    pretrain_tol: float = 0.005        # `pretrain_patience` blocks of `pretrain_block` steps in a row
    pretrain_patience: int = 2         # whose mean loss is not `pretrain_tol` (relative) below the best
                                       # block so far (no validation: the target is not seen); block 0: a
                                       # fixed schedule of `pretrain_steps`
    target_init: str = "codes"         # a pre-trained model's new target table [ours]: "codes" puts each
                                       # target item on a code the sources use (drawn by their usage,
                                       # plus noise of init_noise); "normal": N(0, 0.02^2), which lands
                                       # on codes no source uses (trained vectors outgrow the init scale)
    init_noise: float = 0.002          # std of the noise added to the drawn codes ("codes")
    train: TrainConfig = field(default_factory=TrainConfig)   # the target-side loop (meta lr = train.lr)
    snapshot_every: int = 10           # steps between codebook snapshots (0: none)


# ---------------------------------------------------------------------------------------------
# the meta-learning pieces, on dictionaries of tensors (testable on toy losses)
# ---------------------------------------------------------------------------------------------

Params = dict[str, torch.Tensor]


def adapt(loss_fn: Callable[[Params], torch.Tensor], params: Params, steps: int, lr: float,
          second_order: bool = False) -> Params:
    """``steps`` SGD steps of ``lr`` on ``loss_fn`` from ``params`` (functional fast weights;
    ``params`` are not changed). With ``second_order`` the steps stay differentiable in
    ``params``; otherwise every step starts from detached values."""
    fast = dict(params) if second_order else {k: v.detach().requires_grad_() for k, v in params.items()}
    for _ in range(steps):
        loss = loss_fn(fast)
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=second_order, allow_unused=True)
        fast = {k: (v if g is None else v - lr * g) for (k, v), g in zip(fast.items(), grads)}
        if not second_order:
            fast = {k: v.detach().requires_grad_() for k, v in fast.items()}
    return fast


def meta_gradient(source_loss: Callable[[Params], torch.Tensor], target_loss: Callable[[Params], torch.Tensor],
                  params: Params, steps: int, lr: float, order: int = 1) -> tuple[Params, Params, float]:
    """One source's meta-gradient: adapt ``params`` on ``source_loss``, then the gradient of
    ``target_loss`` at the adapted weights, taken with respect to the adapted weights
    (``order=1``, first-order MAML) or to ``params`` through the inner steps (``order=2``).
    Returns (meta-gradient per name, adapted weights detached, target loss at them)."""
    if order not in (1, 2):
        raise ValueError(f"order must be 1 (first order) or 2 (second order), got {order}")
    if order == 2:
        leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        fast = adapt(source_loss, leaves, steps, lr, second_order=True)
        loss = target_loss(fast)
        wrt = leaves
    else:
        fast = adapt(source_loss, params, steps, lr, second_order=False)
        loss = target_loss(fast)
        wrt = fast
    grads = torch.autograd.grad(loss, list(wrt.values()), allow_unused=True)
    g = {k: (torch.zeros_like(v) if gk is None else gk.detach()) for (k, v), gk in zip(wrt.items(), grads)}
    return g, {k: v.detach() for k, v in fast.items()}, float(loss.detach())


def similarity(a: Params, b: Params, names: list[str] | None = None) -> float:
    """Mean over parameter tensors (``names``, default all of ``a``) of cos(a[n], b[n])."""
    names = list(a) if names is None else names
    if not names:
        raise ValueError("similarity needs at least one parameter tensor")
    return float(np.mean([float(F.cosine_similarity(a[n].reshape(-1), b[n].reshape(-1), dim=0)) for n in names]))


def source_weights(alignment: torch.Tensor | np.ndarray, tau: float, rule: str = "descent") -> torch.Tensor:
    """(S,) weights from each source's descent alignment ``cos(phi - theta, -grad L_target)``.

    ``"descent"``: ``softmax(alignment / tau)``; ``"public"`` (MetaAdapt's sign):
    ``softmax(cos(phi - theta, +grad L_target) / tau) = softmax(-alignment / tau)``;
    ``"uniform"``: 1 / S."""
    a = torch.as_tensor(np.asarray(alignment, dtype=np.float64))
    if rule not in WEIGHTS:
        raise ValueError(f"unknown source weighting {rule!r}; choose one of {WEIGHTS}")
    if rule == "uniform":
        return torch.full_like(a, 1.0 / len(a))
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    return torch.softmax((a if rule == "descent" else -a) / tau, 0)


# ---------------------------------------------------------------------------------------------
# meta transfer on the multi-domain model
# ---------------------------------------------------------------------------------------------

class DomainBatches:
    """Seeded random batches of training windows of every source domain."""

    def __init__(self, sources: dict[str, SeqData], batch_size: int, seed: int):
        self.sources, self.batch_size = sources, batch_size
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, domain: str) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.sources[domain]
        idx = torch.randint(0, len(d.train_inputs), (self.batch_size,), generator=self.gen).to(d.device)
        return d.train_inputs[idx], d.train_targets[idx]

    def sample_domains(self, n: int | None) -> list[str]:
        names = list(self.sources)
        if not n or n >= len(names):
            return names
        pick = torch.randperm(len(names), generator=self.gen)[:n].sort().values
        return [names[i] for i in pick]


def meta_iteration(model: MultiDomainSASRec, optimizer: torch.optim.Optimizer, target_batch,
                   batches: DomainBatches, cfg: MetaRecConfig, domains: list[str] | None = None,
                   grad_clip: float | None = None) -> list[dict]:
    """One meta iteration on one target batch (the shared weights move only through
    ``optimizer``). Returns one row per sampled source: alignment (descent sign), weight,
    meta-gradient cosine with the target gradient at the shared weights (``grad_cosine``), its
    mean cosine with the other sampled sources' meta-gradients (``pair_cosine``), the spread of
    the iteration's weights (``weight_spread``), target loss after adaptation."""
    xt, yt = target_batch
    domains = domains if domains is not None else batches.sample_domains(cfg.n_sampled)
    shared = model.shared_names()
    named = dict(model.named_parameters())
    tgt_table = model.table_name(TARGET)
    outer = [n for n in shared if named[n].requires_grad] + [tgt_table]
    # the target's gradient at the real weights (EMA / re-seeding may update the codebook here)
    loss0 = model.loss(xt, yt, domain=TARGET)
    g0 = torch.autograd.grad(loss0, [named[n] for n in outer], allow_unused=True)
    g_target = {n: (torch.zeros_like(named[n]) if g is None else g) for n, g in zip(outer, g0)}
    descent = {n: -g for n, g in g_target.items()}
    vq = model.quantizer
    rows, grads = [], []
    for d in domains:
        src_table = model.table_name(d)
        params = {n: named[n] for n in outer + [src_table]}
        src_batches = [batches(d) for _ in range(max(1, cfg.inner_steps))]
        it = iter(src_batches)

        def source_loss(p, dom=d):
            x, y = next(it)
            return functional_call(model, p, (x, y), {"domain": dom})

        def target_loss(p):
            return functional_call(model, p, (xt, yt), {"domain": TARGET})

        # second order differentiates through attention twice: only the math kernel supports it
        kernels = sdpa_kernel([SDPBackend.MATH]) if cfg.order == 2 else _null()
        with (vq.frozen() if vq is not None else _null()), kernels:
            g, fast, lt = meta_gradient(source_loss, target_loss, params, cfg.inner_steps, cfg.inner_lr, cfg.order)
        with torch.no_grad():                       # the source's own table keeps its adaptation
            named[src_table].copy_(fast[src_table])
        update = {n: fast[n] - named[n].detach() for n in shared if n in fast}
        rows.append({"source": d, "alignment": similarity(update, descent, list(update)),
                     "grad_cosine": similarity({n: g[n] for n in update}, g_target, list(update)),
                     "target_loss_after": lt, "target_loss": float(loss0.detach())})
        grads.append(g)
    w = source_weights([r["alignment"] for r in rows], cfg.tau, cfg.weights).float()
    optimizer.zero_grad(set_to_none=True)
    for n in outer:
        named[n].grad = sum(wi * g[n] for wi, g in zip(w, grads))
    if grad_clip:
        torch.nn.utils.clip_grad_norm_([named[n] for n in outer], grad_clip)
    optimizer.step()
    names = [n for n in shared if n in grads[0]] if grads else []
    spread = float(w.max() - w.min()) if len(w) else 0.0
    for i, (r, wi) in enumerate(zip(rows, w.tolist())):
        r["weight"] = wi
        r["weight_spread"] = spread          # max - min of this iteration's weights
        # mean cosine of this source's meta-gradient with every other sampled source's, at the
        # shared weights: near 1 means the sources' signals are alike and weighting moves nothing
        others = [similarity(grads[i], grads[j], names) for j in range(len(grads)) if j != i]
        r["pair_cosine"] = float(np.mean(others)) if others else float("nan")
    return rows


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


# ---------------------------------------------------------------------------------------------
# a setting's data, the model and the variants
# ---------------------------------------------------------------------------------------------

@dataclass
class Prepared:
    """Per-domain source tensors, the target as an Experiment, and item titles per domain."""

    setting: D.CrossDomain
    sources: dict[str, SeqData]          # domain -> its own sequences and item ids
    source_items: dict[str, pd.DataFrame]  # domain -> items (index = that domain's ids; title ...)
    target: Experiment
    seconds: dict[str, float]


def largest_domains(ds: D.Interactions, n: int, rule: str = "rarest", exclude: tuple[str, ...] = ()) -> list[str]:
    """The ``n`` genre domains of ``ds`` with the most interactions (one genre per film by ``rule``)."""
    counts = D.genre_domains(ds, rule).inter["domain"].value_counts()
    return [d for d in counts.index if d not in exclude][:n]


def recent_share(ds: D.Interactions, frac: float, min_len: int = 3) -> D.Interactions:
    """Every user's most recent ``ceil(frac * n)`` interactions (at least ``min_len``, so that
    leave-one-out keeps a training item; fewer only when the user has fewer): the target with
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
    return D.subset(cut, items=items, name=ds.name)


def prepare(setting: D.CrossDomain, budget: str | Budget = "quick", seed: int = 0, device: str = "auto",
            max_len: int = 50, target_user_frac: float = 1.0, target_history_frac: float = 1.0,
            progress: bool = True, head_frac: float = 0.2, cold_max: int = 5, cache: bool | str = False,
            data_dir: str | None = None) -> Prepared:
    """Sample (smoke budget), split and tensorise every source domain on its own and the target.
    The limited-data target keeps a seeded ``target_user_frac`` of its users and, of every kept
    user, the most recent ``target_history_frac`` of the history (:func:`recent_share`)."""
    from ..experiment import prepare as prepare_experiment
    if not 0.0 < target_user_frac <= 1.0:
        raise ValueError(f"target_user_frac must be in (0, 1], got {target_user_frac}")
    b = replace(budget if isinstance(budget, Budget) else get_budget(budget), max_len=max_len)
    t0 = time.perf_counter()
    setting = setting.sample(b.max_users, seed)
    sources, items = {}, {}
    for d in sorted(setting.sources.inter["domain"].unique()):
        ds = D.domain_sequences(setting.sources, [d], min_len=3)
        sources[d] = D.build_sequences(D.leave_one_out(ds), max_len)
        items[d] = ds.items
    target = setting.target
    if target_user_frac < 1.0:
        target = D.sample_users(target, max(1, round(target_user_frac * target.n_users)), seed)
    target = recent_share(target, target_history_frac)
    exp = prepare_experiment(target, b, seed, device, head_frac=head_frac, cold_max=cold_max,
                             progress=progress, data_dir=data_dir, cache=cache)
    exp.groups.masks = {k: m for k, m in exp.groups.masks.items() if m.any()}
    return Prepared(setting, sources, items, exp, {"data": time.perf_counter() - t0})


def build(prep: Prepared, cfg: MetaRecConfig, seed: int, with_sources: bool = True,
          with_target: bool = True) -> MultiDomainSASRec:
    """A fresh seeded model with a table for every source (``with_sources``) and the target."""
    seed_everything(seed)
    domains = {d: s.n_items for d, s in prep.sources.items()} if with_sources else {}
    if with_target:
        domains[TARGET] = prep.target.data.n_items
    model = MultiDomainSASRec(domains, replace(cfg.model, max_len=prep.target.data.max_len))
    if with_target:
        model.set_domain(TARGET)
    return model


def init_on_codes(model: MultiDomainSASRec, domain: str, sources: list[str], noise: float = 0.002,
                  seed: int = 0) -> torch.Tensor:
    """Put every item of ``domain`` on a code the ``sources`` use [ours]: code k drawn with
    probability (source items on k) / (source items), seeded, plus N(0, noise^2) so items that
    share a code differ. Returns the (N,) drawn codes.

    Why: items of a pre-trained source table grow to norms of about 0.4 while codes no source uses
    stay near their N(0, 0.02^2) start; a fresh target table at that scale snaps onto those unused
    codes (3 of 58 shared with the sources after 300 pre-training steps on ML-1M -> ML-100K), so
    the target would share no input vocabulary with the sources: the shared space would carry nothing."""
    if model.quantizer is None:
        raise ValueError("init_on_codes needs a quantiser (cfg.vq is not None)")
    cb = model.quantizer.codebook.detach()
    counts = torch.zeros(len(cb))
    for d in sources:
        counts += torch.bincount(model.item_codes(d).cpu(), minlength=len(cb)).float()
    if counts.sum() == 0:
        raise ValueError(f"the sources {sources} have no items to draw codes from")
    gen = torch.Generator().manual_seed(seed)
    table = model.item_weights(domain)
    codes = torch.multinomial(counts, table.shape[0] - 1, replacement=True, generator=gen)
    with torch.no_grad():
        table[1:] = cb.cpu()[codes].to(table) + noise * torch.randn(len(codes), cb.shape[1], generator=gen).to(table)
    return codes


def plateau_step(losses: list[float] | np.ndarray, block: int, tol: float, patience: int) -> int | None:
    """The step (1-based, a block's end) where a training loss levels off, or None if it never does.

    The losses are cut into blocks of ``block`` steps; a block whose mean is not ``tol`` (relative)
    below the best earlier block mean is a bad block, and ``patience`` bad blocks in a row end the
    run at the end of the last of them. ``block <= 0`` never stops."""
    if block <= 0:
        return None
    if patience < 1 or tol < 0:
        raise ValueError(f"plateau needs patience >= 1 and tol >= 0, got patience={patience}, tol={tol}")
    best, bad = float("inf"), 0
    for k in range(len(losses) // block):
        m = float(np.mean(losses[k * block:(k + 1) * block]))
        if not np.isfinite(best) or m < best * (1 - tol):
            best, bad = m, 0
        else:
            bad += 1
            if bad >= patience:
                return (k + 1) * block
    return None


def pretrain(model: MultiDomainSASRec, prep: Prepared, cfg: MetaRecConfig, seed: int) -> pd.DataFrame:
    """Joint pre-training on the sources: Adam steps, each the mean loss of one batch of every
    sampled source, until the training loss levels off (:func:`plateau_step` with
    ``cfg.pretrain_block`` / ``pretrain_tol`` / ``pretrain_patience``) or ``cfg.pretrain_steps``
    steps. No validation (the target is not seen); returns the loss curve, with
    ``attrs["stopped"]`` = ``"plateau"``, ``"cap"`` or (``pretrain_block`` 0) ``"schedule"``."""
    device = next(model.parameters()).device
    batches = DomainBatches({d: s.to(device) for d, s in prep.sources.items()}, cfg.train.batch_size, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_lr)
    model.train()
    rows, losses, t0, stopped = [], [], time.perf_counter(), "cap"
    for step in range(cfg.pretrain_steps):
        doms = batches.sample_domains(cfg.n_sampled)
        opt.zero_grad(set_to_none=True)
        loss = sum(model.loss(*batches(d), domain=d) for d in doms) / len(doms)
        loss.backward()
        if cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        rows.append({"epoch": 0, "step": step + 1, "loss": losses[-1], "seconds": time.perf_counter() - t0})
        if (cfg.pretrain_block > 0 and (step + 1) % cfg.pretrain_block == 0 and step + 1 < cfg.pretrain_steps
                and plateau_step(losses, cfg.pretrain_block, cfg.pretrain_tol, cfg.pretrain_patience)):
            stopped = "plateau"
            break
    if cfg.pretrain_block <= 0:
        stopped = "schedule"               # a fixed schedule: nothing was checked
    elif stopped == "cap" and plateau_step(losses, cfg.pretrain_block, cfg.pretrain_tol, cfg.pretrain_patience):
        stopped = "plateau"                # levelled off exactly at the cap
    out = pd.DataFrame(rows, columns=["epoch", "step", "loss", "seconds"]).assign(stage="pre-train")
    out.attrs.update(stopped=stopped, cap=cfg.pretrain_steps, vq=cfg.model.vq is not None,
                     block=cfg.pretrain_block if cfg.pretrain_block > 0 else 50)
    return out


def pretrain_sentence(pretrained: dict[str, tuple[MultiDomainSASRec, pd.DataFrame]], block: int | None = None) -> str:
    """One line per shared pre-training (the ``pretrained`` dict of :func:`run_setting`): how
    many steps it ran and whether its training loss had levelled off or the cap stopped it; the
    closing loss is averaged over ``block`` steps (None: the run's own ``pretrain_block``)."""
    lines = []
    for _, hist in pretrained.values():
        b = block or hist.attrs.get("block", 50)
        name = "with VQ" if hist.attrs.get("vq") else "without VQ"
        n, cap = len(hist), hist.attrs.get("cap", len(hist))
        tail = hist["loss"].to_numpy()
        last = f"mean loss of its last {min(b, n)} steps {tail[-b:].mean():.3f}" if n else "no steps"
        if hist.attrs.get("stopped") == "schedule":
            lines.append(f"The joint pre-training {name} ran a fixed schedule of {n} steps, unchecked for "
                         f"levelling off ({last}).")
        elif hist.attrs.get("stopped") == "plateau":
            lines.append(f"The joint pre-training {name} ran {n} steps of at most {cap}; its training loss "
                         f"had levelled off ({last}).")
        else:
            lines.append(f"The joint pre-training {name} ran all {n} steps of its cap without its training loss "
                         f"levelling off ({last}): it may have been cut off while still improving, and a longer "
                         "one could change the transfer variants that start from it.")
    return "\n".join(lines)


def snapshot(model: MultiDomainSASRec, step: int) -> pd.DataFrame:
    """The codebook and every domain's items at ``step``: columns step, domain, item, code, x, y
    (:func:`~seqtransfer.diagnostics.codebook_projection`; empty without a quantiser)."""
    from ..diagnostics import codebook_projection
    if model.quantizer is None:
        return pd.DataFrame(columns=["step", "domain", "item", "code", "x", "y"])
    with torch.no_grad():
        items = {d: model.item_weights(d)[1:] for d in model.tables}
        codes = {d: model.item_codes(d) for d in model.tables}
        return codebook_projection(model.quantizer.codebook, items, codes).assign(step=step)


def pretrained_model(prep: Prepared, cfg: MetaRecConfig, seed: int) -> tuple[MultiDomainSASRec, pd.DataFrame]:
    """A fresh seeded model of the source domains (no target table: :func:`fit` adds one), jointly
    pre-trained (:func:`pretrain`: until its training loss levels off, at most
    ``cfg.pretrain_steps`` steps), and its loss curve. What fine-tune and meta
    start from; share it across variants and across targets with the same sources."""
    model = build(prep, cfg, seed, with_target=False).to(prep.target.device)
    return model, pretrain(model, prep, cfg, seed)


def fit(prep: Prepared, cfg: MetaRecConfig, seed: int = 0, variant: str | None = None,
        pretrained: tuple[MultiDomainSASRec, pd.DataFrame] | None = None) -> MethodResult:
    """Train ``cfg.variant`` for ``prep``'s target and evaluate it on validation and test.

    ``pretrained``: ``(model, history)`` from :func:`pretrained_model` to start from (fine-tune
    and meta; a copy is trained); without it they pre-train for ``cfg.pretrain_steps`` steps
    themselves (fine-tune needs at least one).
    Diagnostics: ``weights`` (per meta iteration and source: alignment, weight, meta-gradient
    cosine), ``codes`` (item codes of every domain at snapshots), ``codebook`` (the final codes)."""
    if cfg.variant not in VARIANTS:
        raise ValueError(f"unknown MetaRec variant {cfg.variant!r}; choose one of {VARIANTS}")
    if cfg.weights not in WEIGHTS:
        raise ValueError(f"unknown source weighting {cfg.weights!r}; choose one of {WEIGHTS}")
    if cfg.target_init not in TARGET_INITS:
        raise ValueError(f"unknown target_init {cfg.target_init!r}; choose one of {TARGET_INITS}")
    variant = variant or f"MetaRec {cfg.variant}"
    exp, data = prep.target, prep.target.data
    pre_hist = pd.DataFrame()
    if cfg.variant == "target-only":
        model = build(prep, cfg, seed, with_sources=False)
    elif pretrained is not None or (cfg.variant in ("fine-tune", "meta") and cfg.pretrain_steps):
        if cfg.variant not in ("fine-tune", "meta"):
            raise ValueError(f"variant {cfg.variant!r} trains from scratch; pass pretrained= to fine-tune or meta only")
        pre, pre_hist = pretrained if pretrained is not None else pretrained_model(prep, cfg, seed)
        model = copy.deepcopy(pre)
        if TARGET in model.tables:
            raise ValueError("the pre-trained model already has a target table; pre-train with pretrained_model()")
        missing = set(prep.sources) - set(model.tables)
        if missing:
            raise ValueError(f"the pre-trained model has no table for source(s) {sorted(missing)}")
        torch.manual_seed(seed)
        model.add_domain(TARGET, data.n_items)                  # a fresh target table, N(0, 0.02^2)
        if cfg.target_init == "codes" and model.quantizer is not None:
            init_on_codes(model, TARGET, list(prep.sources), cfg.init_noise, seed)
    else:
        if cfg.variant == "fine-tune":
            raise ValueError("fine-tune needs pre-training: set pretrain_steps >= 1 or pass pretrained=...")
        model = build(prep, cfg, seed)
    model.set_domain(TARGET)
    t0 = time.perf_counter()
    snaps, weights = [], []
    state = {"batches": None}

    def batches_for(ctx: StepContext) -> DomainBatches:
        if state["batches"] is None:
            state["batches"] = DomainBatches({d: s.to(ctx.data.device) for d, s in prep.sources.items()},
                                             ctx.cfg.batch_size, seed)
        return state["batches"]

    def meta_step(ctx: StepContext) -> float:
        batch = (ctx.data.train_inputs[ctx.batch], ctx.data.train_targets[ctx.batch])
        rows = meta_iteration(ctx.model, ctx.optimizer, batch, batches_for(ctx), cfg, grad_clip=ctx.cfg.grad_clip)
        weights.extend({"step": ctx.step + 1, **r} for r in rows)
        return rows[0]["target_loss"]

    def joint_step(ctx: StepContext) -> float:
        b = batches_for(ctx)
        ctx.optimizer.zero_grad(set_to_none=True)
        doms = b.sample_domains(cfg.n_sampled)
        lt = ctx.model.loss(ctx.data.train_inputs[ctx.batch], ctx.data.train_targets[ctx.batch], domain=TARGET)
        loss = (lt + sum(ctx.model.loss(*b(d), domain=d) for d in doms)) / (1 + len(doms))
        loss.backward()
        clip_and_step(ctx)
        return float(lt.detach())

    def after_step(ctx: StepContext) -> None:
        if cfg.snapshot_every and (ctx.step + 1) % cfg.snapshot_every == 0:
            snaps.append(snapshot(ctx.model, ctx.step + 1))

    step = {"meta": meta_step, "joint": joint_step}.get(cfg.variant)
    train_cfg = replace(cfg.train, seed=seed)
    snaps.append(snapshot(model, 0))
    result = train_fit(model, data, train_cfg, Hooks(step=step, after_step=after_step),
                       groups={"all": exp.groups["all"]})
    snaps.append(snapshot(result.model, result.steps + 1).assign(step=-1))   # -1: the kept (best) weights
    metrics, ranks = evaluate_both(result.model, data, exp.groups, variant, seed)
    history = pd.concat([pre_hist, result.history.assign(stage=cfg.variant)], ignore_index=True)
    diag = {"codes": pd.concat(snaps, ignore_index=True),
            "times": pd.DataFrame([{"stage": "pre-train", "seconds": pre_hist["seconds"].max() if len(pre_hist) else 0.0,
                                    "steps": len(pre_hist)},
                                   {"stage": cfg.variant, "seconds": time.perf_counter() - t0, "steps": result.steps}])}
    if weights:
        diag["weights"] = pd.DataFrame(weights)
    return MethodResult("metarec", variant, seed, metrics, history, result.model, result, diag, ranks)


# ---------------------------------------------------------------------------------------------
# the notebook's comparison
# ---------------------------------------------------------------------------------------------

SPECS = {                                   # name -> MetaRecConfig changes ("vq": False = no quantiser)
    "target only": {"variant": "target-only", "vq": False},
    "joint (VQ)": {"variant": "joint"},
    "joint (no VQ)": {"variant": "joint", "vq": False},
    "pre-train + fine-tune": {"variant": "fine-tune"},
    "pre-train + fine-tune, no VQ": {"variant": "fine-tune", "vq": False},
    "MetaRec": {"variant": "meta", "weights": "descent"},
    "MetaRec, public sign": {"variant": "meta", "weights": "public"},
    "MetaRec, uniform weights": {"variant": "meta", "weights": "uniform"},
    "MetaRec, no VQ": {"variant": "meta", "vq": False},
}
TRANSFER = tuple(k for k in SPECS if k != "target only")
# one switch at a time, each row against the one before it: pre-training (no VQ, no meta), then
# meta transfer on it, then the quantiser; so a verdict can name which of the three mattered
LADDER = (("pre-train + fine-tune, no VQ", "target only", "pre-training"),
          ("MetaRec, no VQ", "pre-train + fine-tune, no VQ", "meta transfer"),
          ("MetaRec", "MetaRec, no VQ", "the VQ codebook"),
          ("pre-train + fine-tune", "pre-train + fine-tune, no VQ", "the VQ codebook without meta transfer"))


def spec_config(cfg: MetaRecConfig, change: dict) -> MetaRecConfig:
    """``cfg`` with one :data:`SPECS` entry's changes (``vq: False`` drops the quantiser)."""
    change = dict(change)
    model = replace(cfg.model, vq=None) if change.pop("vq", True) is False else cfg.model
    return replace(cfg, model=model, **change)


def _source_digest(prep: Prepared) -> str:
    import hashlib
    h = hashlib.sha256()
    for d, s in sorted(prep.sources.items()):
        h.update(d.encode())
        h.update(s.train_inputs.cpu().numpy().tobytes())
    return h.hexdigest()


def run_setting(prep: Prepared, cfg: MetaRecConfig, seed: int = 0, label: str = "",
                specs: dict[str, dict] | None = None,
                pretrained: dict[str, tuple[MultiDomainSASRec, pd.DataFrame]] | None = None) -> list[MethodResult]:
    """Every spec (default :data:`SPECS`) on ``prep``'s target, named ``"<label> | <spec>"``.
    Specs that pre-train share one pre-trained model per model config (with and without VQ);
    pass the same ``pretrained`` dict to several calls to share it across targets whose source
    tensors are identical (it is keyed by the model config and a digest of the sources)."""
    prefix = f"{label} | " if label else ""
    shared = {} if pretrained is None else pretrained
    out = []
    for name, change in (specs or SPECS).items():
        c = spec_config(cfg, change)
        pre = None
        if c.variant in ("fine-tune", "meta") and c.pretrain_steps:
            key = (f"{c.model!r} {c.pretrain_steps} {c.pretrain_lr} {c.pretrain_block} {c.pretrain_tol} "
                   f"{c.pretrain_patience} {c.n_sampled} {seed} {_source_digest(prep)}")
            if key not in shared:
                shared[key] = pretrained_model(prep, c, seed)
            pre = shared[key]
        out.append(fit(prep, c, seed, f"{prefix}{name}", pretrained=pre))
    return out


def verdicts(results: list[MethodResult], variants, baseline: str, groups, group: str = "all") -> list[str]:
    """One sentence per variant: does it beat ``baseline`` for ``group``? Negative transfer named
    only when the paired bootstrap's 95% interval over users (``common.compare_pairs``)
    excludes zero."""
    from .common import compare_pairs, transfer_verdict
    table = compare_pairs(results, [(v, baseline) for v in variants], groups)
    return [transfer_verdict(table, v, baseline, group) for v in variants]


def stage_times(results: list[MethodResult], preps: dict[str, Prepared] | None = None) -> pd.DataFrame:
    """Seconds and steps per stage: data preparation of every setting, then each run's
    pre-training (a shared one appears under each run that started from it) and target stage."""
    rows = [{"variant": label, "stage": stage, "seconds": sec, "steps": np.nan}
            for label, p in (preps or {}).items() for stage, sec in p.seconds.items()]
    for r in results:
        t = r.diagnostics.get("times")
        if t is not None:
            rows += [{"variant": r.variant, **row} for row in t.to_dict("records") if row["steps"]]
    return pd.DataFrame(rows, columns=["variant", "stage", "seconds", "steps"])


def final_codes(result: MethodResult) -> pd.DataFrame:
    """The item codes of the kept weights (the last snapshot) of a run with a quantiser."""
    c = result.diagnostics["codes"]
    return c[c["step"] == c["step"].iloc[-1]]


def title_agreement(result: MethodResult, prep: Prepared) -> pd.DataFrame:
    """How often a target film found by title among the sources' films lands on the same code
    (:func:`~seqtransfer.diagnostics.title_code_agreement`) under ``result``'s kept weights."""
    from ..diagnostics import title_code_agreement
    c = final_codes(result)
    codes = {d: part.sort_values("item")["code"].to_numpy() for d, part in c.groupby("domain")}
    titles = prep.target.dataset.items["title"]
    return title_code_agreement({d: prep.source_items[d]["title"] for d in prep.source_items},
                                codes, titles, codes[TARGET]).assign(variant=result.variant)
