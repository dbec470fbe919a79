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
* **Pre-training** [ours]: joint training on the sources alone (:func:`pretrain`), on the same
  loop as every other model (``train.fit`` with hooks): each step the mean loss of one batch of
  each of ``n_sampled`` sampled sources; it early-stops on the sources' own held-out items (every
  source user's validation item ranked within its domain, NDCG@10 pooled over the sources' users),
  never on the target. It is a run of its own (:func:`runs`): cached, trained once, and shared by
  every arm and target that builds on it.

Variants (:data:`VARIANTS`): ``target-only`` (the target's table and the encoder, target data
only), ``joint`` (sources and target trained together, one loss per domain batch, averaged),
``fine-tune`` (pre-train on the sources, then train everything on the target), ``meta`` (the
method, from the joint pre-training when given one). Switch VQ off with ``model.vq = None``;
:data:`SPECS` names the notebook's arms and :data:`LADDER` the one-switch-at-a-time comparisons
(pre-training, then meta transfer, then the codebook).
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from .. import data as D
from ..data.batches import SeqData, trim_right
from ..evaluate import evaluate, rank_targets
from ..models import MultiDomainConfig, MultiDomainSASRec
from ..results import MethodResult
from ..runspec import Run
from ..train import (Hooks, StepContext, TrainConfig, clip_and_step, fit as train_fit, resolve_device,
                     seed_everything)
from .common import evaluate_both, stage_times, timings  # noqa: F401  (05 reads metarec.stage_times)

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
    pretrain: TrainConfig = field(default_factory=TrainConfig)   # the joint pre-training on the sources
                                       # (metarec.pretrain): its own rate, early stopping on the sources'
                                       # held-out items
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
        return trim_right(d.train_inputs[idx], d.train_targets[idx])

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
        with (vq.frozen() if vq is not None else _null()), kernels, _plain_ce(model, cfg.order == 2):
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


@contextmanager
def _plain_ce(model: torch.nn.Module, on: bool):
    """With ``on``, the model's loss through ``F.cross_entropy`` (a second-order meta-gradient
    differentiates the backward pass, which the chunked CPU cross-entropy does not support)."""
    saved = model.fused_ce
    model.fused_ce = saved and not on
    try:
        yield
    finally:
        model.fused_ce = saved


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


# ---------------------------------------------------------------------------------------------
# a setting's data, the model and the variants
# ---------------------------------------------------------------------------------------------

def largest_domains(ds: D.Interactions, n: int, rule: str = "rarest", exclude: tuple[str, ...] = ()) -> list[str]:
    """The ``n`` genre domains of ``ds`` with the most interactions (one genre per film by ``rule``)."""
    counts = D.genre_domains(ds, rule).inter["domain"].value_counts()
    return [d for d in counts.index if d not in exclude][:n]


def build(domains: dict[str, int], cfg: MetaRecConfig, seed: int, max_len: int) -> MultiDomainSASRec:
    """A fresh seeded model with one table per ``domain -> n_items`` (the target's named
    :data:`TARGET`, made the scoring domain when present)."""
    seed_everything(seed)
    model = MultiDomainSASRec(dict(domains), replace(cfg.model, max_len=max_len))
    if TARGET in domains:
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


def source_metrics(model: MultiDomainSASRec, sources: dict[str, SeqData], split: str = "valid",
                   ks=(10,), batch_size: int = 2048) -> tuple[pd.DataFrame, np.ndarray]:
    """Full-ranking metrics of every source user on ``split``, each ranked among its own domain's
    items: group ``"all"`` pools the users of every domain (what a pre-training early-stops on),
    ``"domain:<d>"`` one domain's. Returns the metrics and the pooled (U,) ranks, domain by domain
    in ``sources``' order. The model's scoring domain is restored afterwards."""
    before = model.domain
    ranks = []
    try:
        for d, s in sources.items():
            model.set_domain(d)
            ranks.append(rank_targets(model, s, split, batch_size=batch_size))
    finally:
        if before is not None:
            model.set_domain(before)
    pooled = np.concatenate(ranks)
    groups, start = {"all": np.ones(len(pooled), dtype=bool)}, 0
    for d, r in zip(sources, ranks):
        groups[f"domain:{d}"] = np.zeros(len(pooled), dtype=bool)
        groups[f"domain:{d}"][start:start + len(r)] = True
        start += len(r)
    return evaluate(model, None, split, groups, ks, ranks=pooled), pooled


def _steps_per_epoch(sources: dict[str, SeqData], batch_size: int, k: int) -> int:
    """Joint steps in one pre-training epoch: each step takes one batch of each of ``k`` sampled
    sources, so an epoch of ceil(windows / (batch x k)) steps draws about as many windows as
    the sources hold."""
    windows = sum(len(s.train_inputs) for s in sources.values())
    return max(1, -(-windows // (batch_size * k)))


def pretrain(data: SeqData, groups, cfg: MetaRecConfig, seed: int = 0, variant: str = "MetaRec pre-train",
             sources: dict[str, SeqData] | None = None) -> MethodResult:
    """Joint pre-training on the source domains alone, on the shared loop (``train.fit`` with
    hooks): each step is the mean loss of one random batch of each of ``cfg.n_sampled`` sampled
    sources (Adam, ``cfg.pretrain``'s schedule); validation after every epoch ranks the held-out
    item of every source user within its own domain, and early stopping reads NDCG@10 of those
    users pooled (:func:`source_metrics`). The target is never seen.

    The engine's fit contract (``Run(pretrain, cfg, data=<a source>, given={"sources": ...},
    tune="pretrain")``): ``data`` only carries the device and the run's identity; every batch and
    every validation comes from ``sources``. Metrics are the sources' validation and test."""
    if not sources:
        raise ValueError("metarec.pretrain needs the source domains (sources={domain: SeqData})")
    if TARGET in sources:
        raise ValueError(f"a source may not be named {TARGET!r} (the target's table)")
    first = next(iter(sources.values()))
    model = build({d: s.n_items for d, s in sources.items()}, cfg, seed, first.max_len)   # scores the first
    tcfg = replace(cfg.pretrain, seed=seed)
    device = resolve_device(tcfg.device)
    on = {d: s.to(device) for d, s in sources.items()}
    names = list(on)
    k = len(names) if not cfg.n_sampled else min(cfg.n_sampled, len(names))
    per_epoch = _steps_per_epoch(on, tcfg.batch_size, k)

    def batches(_, c: TrainConfig, gen: torch.Generator):
        for _ in range(per_epoch):               # the loop's per-epoch generator: a resumed run draws alike
            pick = torch.randperm(len(names), generator=gen)[:k].sort().values.tolist()
            yield [(names[i], torch.randint(0, len(on[names[i]].train_inputs), (c.batch_size,), generator=gen))
                   for i in pick]

    def step(ctx: StepContext) -> float:
        ctx.optimizer.zero_grad(set_to_none=True)
        with ctx.autocast():
            loss = sum(ctx.model.loss(*on[d].window_batch(i.to(device))[:2], domain=d)
                       for d, i in ctx.batch) / len(ctx.batch)
        loss.backward()
        clip_and_step(ctx)
        return loss.item()

    def validate(m: torch.nn.Module) -> pd.DataFrame:
        return source_metrics(m, on, "valid", (10,), tcfg.eval_batch_size)[0]

    result = train_fit(model, data, tcfg, Hooks(batches=batches, step=step, validate=validate))
    frames, ranks = [], {}
    for split in ("valid", "test"):
        m, ranks[split] = source_metrics(result.model, on, split, batch_size=tcfg.eval_batch_size)
        frames.append(m)
    metrics = pd.concat(frames, ignore_index=True).assign(variant=variant, seed=seed)
    history = result.history.assign(variant=variant, stage="pre-train")
    diag = {"codes": snapshot(result.model, -1),
            "stages": pd.DataFrame([{"stage": "pre-train", "stopped": result.stopped, "steps": result.steps,
                                     "steps_per_epoch": per_epoch}])}
    return MethodResult("metarec", variant, seed, metrics, history, result.model, result, diag, ranks)


def _start_model(data: SeqData, cfg: MetaRecConfig, seed: int, sources: dict[str, SeqData] | None,
                 pretrained: MethodResult | None) -> MultiDomainSASRec:
    """The model an arm starts the target from: a fresh target-only model, a fresh model of the
    sources and the target (joint; meta without pre-training), or a copy of the pre-trained
    source model with a fresh target table (``pretrained`` is never changed)."""
    if cfg.variant == "target-only":
        if pretrained is not None:
            raise ValueError("variant 'target-only' trains from scratch; pass pretrained= to fine-tune or meta only")
        return build({TARGET: data.n_items}, cfg, seed, data.max_len)
    if pretrained is None:
        if cfg.variant == "fine-tune":
            raise ValueError("fine-tune needs a pre-trained model: pass pretrained= (the result of metarec.pretrain)")
        return build({**{d: s.n_items for d, s in sources.items()}, TARGET: data.n_items}, cfg, seed, data.max_len)
    if cfg.variant not in ("fine-tune", "meta"):
        raise ValueError(f"variant {cfg.variant!r} trains from scratch; pass pretrained= to fine-tune or meta only")
    pre = pretrained.model
    if TARGET in pre.tables:
        raise ValueError("the pre-trained model already has a target table; pre-train with metarec.pretrain")
    if (pre.quantizer is None) != (cfg.model.vq is None):
        raise ValueError(f"the pre-trained model was trained {'without' if pre.quantizer is None else 'with'} a VQ "
                         f"codebook and this arm {'has' if cfg.model.vq is not None else 'has none'}; pre-train "
                         "with the arm's model config")
    missing = set(sources or ()) - set(pre.tables)
    if missing:
        raise ValueError(f"the pre-trained model has no table for source(s) {sorted(missing)}")
    model = copy.deepcopy(pre).cpu()
    source_names = list(model.tables)
    torch.manual_seed(seed)
    model.add_domain(TARGET, data.n_items)                  # a fresh target table, N(0, 0.02^2)
    if cfg.target_init == "codes" and model.quantizer is not None:
        init_on_codes(model, TARGET, source_names, cfg.init_noise, seed)
    return model


def fit(data: SeqData, groups, cfg: MetaRecConfig, seed: int = 0, variant: str | None = None,
        sources: dict[str, SeqData] | None = None, pretrained: MethodResult | None = None) -> MethodResult:
    """Train ``cfg.variant`` on the target ``data`` and evaluate it on validation and test.

    The engine's fit contract. ``sources``: the source domains (joint and meta train on them);
    ``pretrained``: the result of :func:`pretrain` (fine-tune needs it, meta may start from it; a
    copy is trained). Diagnostics: ``weights`` (per meta iteration and source: alignment,
    weight, meta-gradient cosines), ``codes`` (item codes of every domain at snapshots)."""
    if cfg.variant not in VARIANTS:
        raise ValueError(f"unknown MetaRec variant {cfg.variant!r}; choose one of {VARIANTS}")
    if cfg.weights not in WEIGHTS:
        raise ValueError(f"unknown source weighting {cfg.weights!r}; choose one of {WEIGHTS}")
    if cfg.target_init not in TARGET_INITS:
        raise ValueError(f"unknown target_init {cfg.target_init!r}; choose one of {TARGET_INITS}")
    if cfg.variant in ("joint", "meta") and not sources:
        raise ValueError(f"variant {cfg.variant!r} trains on the source domains: pass sources={{domain: SeqData}}")
    variant = variant or f"MetaRec {cfg.variant}"
    model = _start_model(data, cfg, seed, sources, pretrained)
    model.set_domain(TARGET)
    tcfg = replace(cfg.train, seed=seed)
    device = resolve_device(tcfg.device)
    domain_batches = (DomainBatches({d: s.to(device) for d, s in sources.items()}, tcfg.batch_size, seed)
                      if cfg.variant in ("joint", "meta") else None)
    snaps, weights = [], []

    def meta_step(ctx: StepContext) -> float:
        batch = ctx.data.window_batch(ctx.batch)[:2]
        rows = meta_iteration(ctx.model, ctx.optimizer, batch, domain_batches, cfg, grad_clip=ctx.cfg.grad_clip)
        weights.extend({"step": ctx.step + 1, **r} for r in rows)
        return rows[0]["target_loss"]

    def joint_step(ctx: StepContext) -> float:
        ctx.optimizer.zero_grad(set_to_none=True)
        doms = domain_batches.sample_domains(cfg.n_sampled)
        lt = ctx.model.loss(*ctx.data.window_batch(ctx.batch)[:2], domain=TARGET)
        loss = (lt + sum(ctx.model.loss(*domain_batches(d), domain=d) for d in doms)) / (1 + len(doms))
        loss.backward()
        clip_and_step(ctx)
        return float(lt.detach())

    def after_step(ctx: StepContext) -> None:
        if cfg.snapshot_every and (ctx.step + 1) % cfg.snapshot_every == 0:
            snaps.append(snapshot(ctx.model, ctx.step + 1))

    def state() -> dict:                         # a resumed run continues the same batches and records
        return {"gen": None if domain_batches is None else domain_batches.gen.get_state(),
                "snaps": list(snaps), "weights": list(weights)}

    def load_state(saved: dict) -> None:
        if domain_batches is not None and saved.get("gen") is not None:
            domain_batches.gen.set_state(saved["gen"].cpu())
        snaps[:], weights[:] = saved["snaps"], saved["weights"]

    step = {"meta": meta_step, "joint": joint_step}.get(cfg.variant)
    snaps.append(snapshot(model, 0))
    # the training's own randomness (dropout, sampled sources) from the seed alone, whatever
    # trained before it in this process
    seed_everything(seed)
    result = train_fit(model, data, tcfg, Hooks(step=step, after_step=after_step, state=state, load_state=load_state),
                       groups={"all": groups["all"]})
    snaps.append(snapshot(result.model, result.steps + 1).assign(step=-1))   # -1: the kept (best) weights
    metrics, ranks = evaluate_both(result.model, data, groups, variant, seed)
    diag = {"codes": pd.concat(snaps, ignore_index=True),
            "stages": pd.DataFrame([{"stage": cfg.variant, "stopped": result.stopped, "steps": result.steps}])}
    if weights:
        diag["weights"] = pd.DataFrame(weights)
    history = result.history.assign(variant=variant, stage=cfg.variant)
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
# one switch at a time, each row against the arm without that part: pre-training (no VQ, no
# meta), then meta transfer on it, then the quantiser; and the other order, the quantiser on
# pre-training, then meta transfer on it; so a verdict can name which part mattered
LADDER = (("pre-train + fine-tune, no VQ", "target only", "pre-training"),
          ("MetaRec, no VQ", "pre-train + fine-tune, no VQ", "meta transfer"),
          ("MetaRec", "MetaRec, no VQ", "the VQ codebook"),
          ("pre-train + fine-tune", "pre-train + fine-tune, no VQ", "the VQ codebook without meta transfer"),
          ("MetaRec", "pre-train + fine-tune", "meta transfer with the VQ codebook"))
# the arms the quick budget trains (a CPU: the whole batch in 45 minutes): one order of the
# ladder, pre-training, then the codebook, then meta transfer, each switch once. Left out:
# MetaRec without VQ (the other order; 05's costliest arm at quick after MetaRec, 0.8 s a meta
# step under the 100-step floor: 408 of 05's 1,352 s in the 2d55679 batch), and uniform weights
# (the source weighting's test), joint training and MetaAdapt's sign: at the default inner step
# the sources' meta-gradients are nearly the target's gradient, so the weights stay near uniform
# and "MetaRec against uniform weights" cannot differ there (05, section 8; it was quick's
# costliest arm, 738 of 05's 2,151 s). ``full`` trains every arm.
QUICK_SPECS = ("target only", "pre-train + fine-tune, no VQ", "pre-train + fine-tune", "MetaRec")


def comparison_pairs(arms, baseline: str = "target only") -> list[tuple[str, str]]:
    """Which arm is compared with which, among the spec names ``arms``: every arm against
    ``baseline``, the :data:`LADDER` steps, and MetaRec against each of its ablations."""
    arms = list(arms)
    pairs = [(a, baseline) for a in arms if a != baseline]
    pairs += [(a, b) for a, b, _ in LADDER if a in arms and b in arms]
    pairs += [("MetaRec", b) for b in ("MetaRec, uniform weights", "MetaRec, public sign", "MetaRec, no VQ",
                                       "joint (VQ)") if "MetaRec" in arms and b in arms]
    return list(dict.fromkeys(pairs))


def spec_config(cfg: MetaRecConfig, change: dict) -> MetaRecConfig:
    """``cfg`` with one :data:`SPECS` entry's changes (``vq: False`` drops the quantiser)."""
    change = dict(change)
    model = replace(cfg.model, vq=None) if change.pop("vq", True) is False else cfg.model
    return replace(cfg, model=model, **change)


def pretrain_name(sources: dict[str, SeqData], vq: bool) -> str:
    """The pre-training run's variant: named by its sources and the codebook, not by a target,
    so targets with the same sources share one cached run."""
    return f"MetaRec pre-train on {', '.join(sources)} ({'VQ' if vq else 'no VQ'})"


def pretrain_config(cfg: MetaRecConfig) -> MetaRecConfig:
    """What a pre-training depends on (model, source sampling, its schedule), the rest at the
    defaults: the arms' target-side settings never reach its cache key."""
    return MetaRecConfig(model=cfg.model, n_sampled=cfg.n_sampled, pretrain=cfg.pretrain, snapshot_every=0)


MIN_STEPS_ARMS = ("all", "codebook")


def arm_floor(c: MetaRecConfig, min_steps_arms: str = "all") -> MetaRecConfig:
    """The target-side schedule of one arm: ``c.train.min_steps`` (early stopping counts no
    validation before it) held by every arm (``"all"``) or only by the arms with a codebook
    (``"codebook"``), the others counting from the warm-up's end.

    Why [ours]: on ML-100K the VQ arms' validation sits on a plateau for about 40 steps of its
    4-step epoch (items drawn onto shared codes score alike until they move off them), which a
    patience of 5 validations cut. ``"all"`` (05's default) keeps one stopping rule for every
    compared arm: the arms without a codebook mostly peak by step 20-80, but not always (in the
    2d55679 batch pre-train + fine-tune without VQ, seed 2, went from validation 0.0884 at step
    36 to 0.0981 at step 116; with the floor on the codebook arms only, b4a2a96, it stopped at
    step 56 and lost 0.036 of test NDCG@10), and an arm compared under a shorter rule than its
    baseline would be tuned unlike it."""
    if min_steps_arms not in MIN_STEPS_ARMS:
        raise ValueError(f"unknown min_steps_arms {min_steps_arms!r}; choose one of {MIN_STEPS_ARMS} "
                         "(which arms hold the target's min_steps)")
    if min_steps_arms == "codebook" and c.model.vq is None:
        return replace(c, train=replace(c.train, min_steps=c.train.warmup_steps))
    return c


def runs(prep, cfg: MetaRecConfig, label: str = "", specs: dict[str, dict] | None = None,
         pretrain_seeds: int | None = 1, pretrain_lr_grid: tuple[float, ...] | None = None,
         min_steps_arms: str = "all") -> dict[str, Run]:
    """The runs of one target for ``prep.target.run(...)`` (``prep``: sources and target, e.g.
    :func:`seqtransfer.experiment.prepare_domains`): one pre-training on the sources per model
    config the specs need (with and without VQ; a run of its own, ``pretrain_seeds`` seeds, its
    rate from ``pretrain_lr_grid``, default ``cfg.pretrain.lr``, chosen on the sources'
    validation), then every spec (default :data:`SPECS`), named ``"<label> | <spec>"``: the
    pre-training through the inputs mechanism, the source domains (joint, meta) as constants.
    Every arm's rate comes from the call's grid; every arm trains every seed. ``min_steps_arms``:
    which arms hold ``cfg.train.min_steps`` (:func:`arm_floor`)."""
    prefix = f"{label} | " if label else ""
    carrier = next(iter(prep.sources.values()))
    grid = tuple(pretrain_lr_grid) if pretrain_lr_grid else (cfg.pretrain.lr,)
    out: dict[str, Run] = {}
    arms: dict[str, Run] = {}
    for name, change in (specs or SPECS).items():
        c = arm_floor(spec_config(cfg, change), min_steps_arms)
        inputs = {}
        if c.variant in ("fine-tune", "meta"):
            pre = pretrain_name(prep.sources, c.model.vq is not None)
            if pre not in out:
                out[pre] = Run(pretrain, pretrain_config(c), data=carrier, given={"sources": prep.sources},
                               tune="pretrain", n_seeds=pretrain_seeds, lr_grid=grid)
            inputs = {"pretrained": pre}
        given = {"sources": prep.sources} if c.variant in ("joint", "meta") else {}
        arms[f"{prefix}{name}"] = Run(fit, c, inputs=inputs, given=given)
    return {**out, **arms}


def verdicts(results: list[MethodResult], variants, baseline: str, groups, group: str = "all") -> list[str]:
    """One sentence per variant: does it beat ``baseline`` for ``group``? Negative transfer named
    only when the paired bootstrap's 95% interval over users (``common.compare_pairs``)
    excludes zero."""
    from .common import compare_pairs, transfer_verdict
    table = compare_pairs(results, [(v, baseline) for v in variants], groups)
    return [transfer_verdict(table, v, baseline, group) for v in variants]


def final_codes(result: MethodResult) -> pd.DataFrame:
    """The item codes of the kept weights (the last snapshot) of a run with a quantiser."""
    c = result.diagnostics["codes"]
    return c[c["step"] == c["step"].iloc[-1]]


def title_agreement(result: MethodResult, prep) -> pd.DataFrame:
    """How often a target film found by title among the sources' films lands on the same code
    (:func:`~seqtransfer.diagnostics.title_code_agreement`) under ``result``'s kept weights."""
    from ..diagnostics import title_code_agreement
    c = final_codes(result)
    codes = {d: part.sort_values("item")["code"].to_numpy() for d, part in c.groupby("domain")}
    titles = prep.target.dataset.items["title"]
    return title_code_agreement({d: prep.source_items[d]["title"] for d in prep.source_items},
                                codes, titles, codes[TARGET]).assign(variant=result.variant)
