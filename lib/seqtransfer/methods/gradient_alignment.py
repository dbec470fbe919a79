"""Gradient alignment with an adversarial activeness discriminator, after Yin, Liu, Wang, Sun,
Hoi, *Learning Transferrable Parameters for Long-tailed Sequential User Behavior Modeling*,
KDD 2020 (arXiv 2010.11401; no public code).

**What follows the paper.** Every user is a task. A first-order meta optimizer in the
Reptile / meta-experience-replay (MER, Riemer et al., ICLR 2019) family trains the backbone so
that the gradients of different users agree ("maximise transfer, minimise interference"), which
lets the many tail users borrow what the head users teach. An adversarial discriminator tries
to tell head users from tail users by their sequence representation and is trained against the
encoder through a gradient-reversal layer, so the representation carries no activeness signal.
Both parts wrap any backbone (SASRec, GRU4Rec).

**Our reading (the paper is vague; every choice is a config field).**

* *Meta update.* From the start weights theta0 take ``inner_steps`` (k) steps on consecutive
  inner mini-batches, then move to ``theta0 + outer_lr * (theta_k - theta0)`` (Reptile,
  Nichol et al. 2018). To second order in the inner step size a, the expected update is
  ``-outer_lr * a * [sum_i g_i - (a/2) sum_{i<j} grad(g_i . g_j)]``: a descent step on the loss
  plus an ascent step on the inner products between gradients of *different* inner batches,
  which is the alignment objective. ``outer_lr = 1`` is plain sequential training on the same
  batches; at equal progress on the loss, ``outer_lr < 1`` weights the alignment term
  ``1 / outer_lr`` times more than plain training does.
* *Tasks in a batch.* An inner batch holds training windows (a window is a stretch of one
  user's history), not one user: one user per step would be far too slow. With
  ``grouping="alternate"`` inner batches alternate head users and tail users, so the aligned
  pairs (i, j) are head-tail pairs, the reading closest to the long-tail motivation;
  ``"random"`` draws inner batches of random users.
* *Inner optimizer.* ``"adam"`` (default) reuses the shared AdamW of the training loop for the
  inner steps, as Reptile's own experiments did: plain SGD trains sparse item embeddings of a
  transformer far more slowly than Adam, and the comparison with the Adam-trained baseline
  would then measure the optimizer, not the method. Adam rescales gradients per coordinate, so
  the expansion above holds only loosely. ``"sgd"`` takes plain SGD steps of ``inner_lr`` (the
  setting the expansion describes exactly) and leaves the shared optimizer unused.
* *Budget.* One step of the training loop is one outer update over k inner batches, so
  ``conflict_every`` and the logged steps count outer updates. An epoch passes as many inner
  batches as the baseline has steps, so epochs cost about the same. A step cap
  (``TrainConfig.max_steps``) counts batches by default (``max_steps_in_batches``): an
  alignment run then stops after ``max_steps // inner_steps`` outer updates and sees as many
  batches as the base model under the same cap. The warm-up, ``min_steps`` (before which no
  validation counts toward patience) and a successive-halving rung (validations past the
  warm-up) count inner batches too (``TrainConfig.step_batches = k``), as the inner steps' lr
  schedule does: a rung of alignment ends at the same batch as the baseline's, not k times later.
* *Discriminator.* It reads the representation at each window's last real position, the same
  vector ``represent`` scores at evaluation (each prefix of a head user is not itself "head"),
  taken from the training loss's own encoder pass (``loss_and_represent``: one dropout draw;
  ``adv_pass="separate"`` gives it a ``represent`` pass of its own, the recipe before).
  Its input is behind a constant gradient reversal of strength ``adv_scale`` (no DANN warm-up
  schedule); its loss joins the recommendation loss with weight ``adv_weight``. It has its own
  Adam optimizer and is not part of the meta interpolation: it is the adversary, not the
  learner. Head windows are a minority under random batching, so its cross-entropy is
  class-balanced by default; alternating batches are balanced by construction. In SASRec the
  representation also sees the window's length through the position embeddings: length is
  part of the activeness signal the encoder is asked to hide.
* *Cost.* The adversarial part adds the discriminator's small MLP per inner batch; it reads the
  loss's encoder pass, where a separate ``represent`` call cost a second one (an outer step of
  4 inner batches took about 0.75 s against 0.55 without the adversary, commit 064d24f).

With both switches off the run is exactly :func:`seqtransfer.methods.baseline.fit` (same seed,
same batches, same final weights).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..data.batches import SeqData
from ..data.split import UserGroups
from ..diagnostics import ConflictProbe
from ..models import BACKBONES
from ..models.adversarial import ActivenessDiscriminator
from ..train import (Hooks, StepContext, TrainConfig, fit as train_fit, lr_at, resolve_device,
                     shuffled_batches)
from .common import MethodResult, conflict_probe, evaluate_both, seeded_backbone

GROUPINGS = ("alternate", "random")
INNER_OPTIMIZERS = ("adam", "sgd")
ADV_PASSES = ("shared", "separate")   # where the discriminator reads the representation (GradientAlignmentConfig.adv_pass)


@dataclass
class GradientAlignmentConfig:
    backbone: str = "sasrec"           # "sasrec" | "gru4rec"
    backbone_kwargs: dict = field(default_factory=dict)   # overrides of the backbone's config
    train: TrainConfig = field(default_factory=TrainConfig)
    # gradient alignment: first-order meta update (Reptile / MER)
    use_alignment: bool = True         # False: one plain step per batch (no meta update)
    inner_steps: int = 4               # k inner mini-batches per outer update
    inner_optimizer: str = "adam"      # "adam": shared AdamW at train.lr | "sgd": plain SGD at inner_lr
    inner_lr: float = 0.1              # plain-SGD inner step size (inner_optimizer="sgd" only)
    outer_lr: float = 0.5              # theta0 + outer_lr * (theta_k - theta0); 1 = sequential training
    max_steps_in_batches: bool = True  # train.max_steps counts inner batches (a cap of max_steps //
                                       # inner_steps outer updates); False: it counts outer updates
    grouping: str = "alternate"        # "alternate": inner batches alternate head / tail users | "random"
    # adversarial activeness discriminator (gradient reversal)
    use_adversarial: bool = True       # train a head-vs-tail discriminator against the encoder
    adv_weight: float = 0.1            # weight of the discriminator loss in the encoder's objective
    adv_scale: float = 1.0             # gradient-reversal strength (0: the discriminator only observes)
    adv_hidden: int = 64               # discriminator MLP hidden size
    disc_lr: float = 1e-3              # discriminator Adam learning rate
    balanced: bool = True              # class-balanced discriminator loss (head windows are fewer)
    disc_log_every: int = 1            # log discriminator accuracy and loss every N steps
    adv_pass: str = "shared"           # "shared": the discriminator reads the state the loss's own
                                       # encoder pass computed (one pass, one dropout draw) | "separate":
                                       # a represent() pass of its own (the recipe before b4a2a96; about
                                       # 0.2 s more an outer step of 4 inner batches; bench --adversary)
    # diagnostics
    conflict_every: int = 0            # probe head-vs-tail gradient conflict every N steps (0: off)
    conflict_batch: int = 64           # windows per group in each probe


def check_config(cfg: GradientAlignmentConfig) -> None:
    """Raise ValueError naming the first invalid field and what it accepts."""
    choices = {"backbone": tuple(sorted(BACKBONES)), "grouping": GROUPINGS,
               "inner_optimizer": INNER_OPTIMIZERS, "adv_pass": ADV_PASSES}
    for name, valid in choices.items():
        if getattr(cfg, name) not in valid:
            raise ValueError(f"{name} must be one of {valid}, got {getattr(cfg, name)!r}")
    limits = [("inner_steps", cfg.inner_steps >= 1 and int(cfg.inner_steps) == cfg.inner_steps,
               "an integer >= 1"),
              ("inner_lr", cfg.inner_lr > 0, "> 0"),
              ("outer_lr", 0 < cfg.outer_lr <= 1, "in (0, 1]"),
              ("adv_weight", cfg.adv_weight >= 0, ">= 0"),
              ("adv_scale", cfg.adv_scale >= 0, ">= 0"),
              ("adv_hidden", cfg.adv_hidden >= 1, ">= 1"),
              ("disc_lr", cfg.disc_lr > 0, "> 0"),
              ("disc_log_every", cfg.disc_log_every >= 1, ">= 1"),
              ("conflict_every", cfg.conflict_every >= 0, ">= 0 (0: off)"),
              ("conflict_batch", cfg.conflict_batch >= 1, ">= 1")]
    for name, ok, valid in limits:
        if not ok:
            raise ValueError(f"{name} must be {valid}, got {getattr(cfg, name)!r}")


def variant_name(cfg: GradientAlignmentConfig) -> str:
    """``"sasrec GA"`` with both parts, ``"sasrec +align"`` / ``"sasrec +adv"`` with one."""
    if cfg.use_alignment and cfg.use_adversarial:
        return f"{cfg.backbone} GA"
    if cfg.use_alignment or cfg.use_adversarial:
        return f"{cfg.backbone} +" + ("align" if cfg.use_alignment else "adv")
    return f"{cfg.backbone} GA off"


def reptile_step(params: Sequence[torch.Tensor], inner_steps: Sequence[Callable[[], object]],
                 outer_lr: float) -> list:
    """Run the inner steps (each updates ``params`` in place), then set every parameter to
    ``theta0 + outer_lr * (theta_k - theta0)``. Returns what the inner steps returned."""
    theta0 = [p.detach().clone() for p in params]
    out = [step() for step in inner_steps]
    with torch.no_grad():
        for p, p0 in zip(params, theta0):
            p.lerp_(p0, 1.0 - outer_lr)   # p + (1 - a)(p0 - p) = p0 + a (p - p0); exact at a = 1
    return out


class _Cycle:
    """Endless stream of a pool's items, reshuffled (with ``gen``) at every pass."""

    def __init__(self, pool: torch.Tensor, gen: torch.Generator):
        self.pool, self.gen = pool, gen
        self.order, self.pos = pool[:0], 0

    def take(self, n: int) -> torch.Tensor:
        parts = []
        while n > 0:
            if self.pos == len(self.order):
                self.order, self.pos = self.pool[torch.randperm(len(self.pool), generator=self.gen)], 0
            part = self.order[self.pos:self.pos + n]
            parts.append(part)
            self.pos += len(part)
            n -= len(part)
        return torch.cat(parts)


def alternating_batches(head: torch.Tensor, tail: torch.Tensor, n_windows: int, batch_size: int,
                        inner_steps: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """One epoch of meta-batches: each is ``inner_steps`` inner batches of ``batch_size``
    windows laid end to end, inner batches alternating head (even) and tail (odd) windows.

    An epoch has ``ceil(n_windows / batch_size)`` inner batches, as many as the baseline's
    steps; each group's windows are drawn without replacement and reshuffled when used up.
    """
    streams = (_Cycle(head, gen), _Cycle(tail, gen))
    n_inner = math.ceil(n_windows / batch_size)
    for start in range(0, n_inner, inner_steps):
        yield torch.cat([streams[j % 2].take(batch_size)
                         for j in range(start, min(start + inner_steps, n_inner))])


def balanced_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean per-class recall over the classes present in ``labels`` (chance = 1 / n_classes)."""
    pred = logits.argmax(-1)
    recalls = [(pred[labels == c] == c).float().mean() for c in labels.unique()]
    return float(torch.stack(recalls).mean()) if recalls else float("nan")


class AlignmentStep:
    """The training-loop step hook: one outer update over the meta-batch's inner batches (or
    one plain step without alignment), each inner step also training the discriminator."""

    def __init__(self, cfg: GradientAlignmentConfig, model: torch.nn.Module,
                 labels: torch.Tensor, disc: ActivenessDiscriminator | None):
        self.cfg, self.model, self.disc = cfg, model, disc
        self.labels = labels                       # (N,) 1 = window of a head user, 0 = tail
        self.sgd = (torch.optim.SGD(model.parameters(), lr=cfg.inner_lr)
                    if cfg.use_alignment and cfg.inner_optimizer == "sgd" else None)
        self.disc_opt = torch.optim.Adam(disc.parameters(), lr=cfg.disc_lr) if disc is not None else None
        self.class_weight = None
        if disc is not None and cfg.balanced:
            counts = torch.bincount(labels, minlength=2).float()
            self.class_weight = counts.sum() / (2 * counts)       # (2,) inverse frequency
        self.rows: list[dict] = []
        self.batches = 0                           # inner batches stepped so far (the lr schedule's clock)

    def __call__(self, ctx: StepContext) -> float:
        if self.labels.device != ctx.batch.device:
            self.labels = self.labels.to(ctx.batch.device)
            self.class_weight = None if self.class_weight is None else self.class_weight.to(ctx.batch.device)
        if self.cfg.use_alignment:
            params = [p for p in ctx.model.parameters() if p.requires_grad]
            inner = [lambda idx=idx: self._inner(ctx, idx, scheduled=True)
                     for idx in ctx.batch.split(ctx.cfg.batch_size)]
            stats = reptile_step(params, inner, self.cfg.outer_lr)
        else:
            stats = [self._inner(ctx, ctx.batch)]
        loss = float(np.mean([s["loss"] for s in stats]))
        if self.disc is None:
            return loss
        d_loss = float(np.mean([s["d_loss"] for s in stats]))
        if ctx.step % self.cfg.disc_log_every == 0:
            acc = balanced_accuracy(torch.cat([s["logits"] for s in stats]),
                                    torch.cat([s["labels"] for s in stats]))
            self.rows.append({"step": ctx.step, "epoch": ctx.epoch, "accuracy": acc, "loss": d_loss})
        return loss if math.isfinite(d_loss) else d_loss   # a diverging adversary stops the run too

    def _inner(self, ctx: StepContext, idx: torch.Tensor, scheduled: bool = False) -> dict:
        """One gradient step on the windows ``idx``: recommendation loss, plus the reversed
        discriminator loss when adversarial; the discriminator steps on the same backward.

        ``scheduled``: an inner step of an outer update sets the shared optimizer's learning
        rate from the loop's schedule counted in inner batches, so warm-up and decay follow the
        batches seen exactly as in the baseline (the loop sets it once per outer update)."""
        opt = self.sgd or ctx.optimizer
        if scheduled and self.sgd is None:
            for group in opt.param_groups:
                group["lr"] = lr_at(ctx.cfg, self.batches, ctx.lr_scale)
        self.batches += 1
        opt.zero_grad(set_to_none=True)
        x, y, users = ctx.data.window_batch(idx)                             # (b, L'), (b, L'), (b,)
        out = {}
        with ctx.autocast():
            if self.disc is None or self.cfg.adv_pass == "separate":
                loss = ctx.model.loss(x, y, users)
            else:   # one encoder pass: the adversary reads the state the loss scores last
                loss, h = ctx.model.loss_and_represent(x, y, (x > 0).sum(1), users)   # (), (b, D)
            total = loss
            if self.disc is not None:
                self.disc_opt.zero_grad(set_to_none=True)
                if self.cfg.adv_pass == "separate":
                    h = ctx.model.represent(x, (x > 0).sum(1), users)            # (b, D) last real position
                logits = self.disc(h).float()                                # (b, 2)
                labels = self.labels[idx]                                    # (b,)
                d_loss = F.cross_entropy(logits, labels, weight=self.class_weight)
                total = loss + self.cfg.adv_weight * d_loss
                out.update(d_loss=d_loss.item(), logits=logits.detach(), labels=labels)
        total.backward()
        if ctx.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), ctx.cfg.grad_clip)
        opt.step()
        if self.disc is not None:
            self.disc_opt.step()
        out["loss"] = loss.item()
        return out

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["step", "epoch", "accuracy", "loss"])


def fit(data: SeqData, groups: UserGroups, cfg: GradientAlignmentConfig, seed: int = 0,
        variant: str | None = None) -> MethodResult:
    """Train the backbone with gradient alignment and/or the adversarial discriminator and
    evaluate it on validation and test, all groups (same contract as ``baseline.fit``).

    Diagnostics: ``"conflict"`` (head-vs-tail gradient cosine, when ``conflict_every``) and
    ``"discriminator"`` (step, epoch, balanced training accuracy, loss; when adversarial).
    """
    check_config(cfg)
    variant = variant or variant_name(cfg)
    head_windows = data.windows_of(groups["head"]).cpu()
    tail_windows = data.windows_of(groups["tail"]).cpu()
    needs_both = cfg.use_adversarial or (cfg.use_alignment and cfg.grouping == "alternate")
    if needs_both and (len(head_windows) == 0 or len(tail_windows) == 0):
        raise ValueError("the adversarial discriminator and grouping='alternate' need training "
                         f"windows of both head ({len(head_windows)}) and tail ({len(tail_windows)}) users")
    model = seeded_backbone(cfg, data, seed)
    tcfg = replace(cfg.train, seed=seed)
    if cfg.use_alignment and cfg.max_steps_in_batches and tcfg.max_steps is not None:
        tcfg = replace(tcfg, max_steps=max(1, tcfg.max_steps // cfg.inner_steps))
    if cfg.use_alignment:   # warm-up, min_steps and a rung count inner batches, as the schedule does
        tcfg = replace(tcfg, step_batches=cfg.inner_steps)
    disc = None
    if cfg.use_adversarial:   # built after the backbone, so the backbone's init matches baseline's
        disc = ActivenessDiscriminator(model.dim, cfg.adv_hidden, scale=cfg.adv_scale)
        disc.to(resolve_device(tcfg.device))
    labels = torch.as_tensor(np.asarray(groups["head"]), dtype=torch.long)[data.train_users.cpu()]
    step = AlignmentStep(cfg, model, labels, disc)

    hooks = Hooks()
    if cfg.use_alignment or cfg.use_adversarial:
        hooks.step = step
    if cfg.use_alignment and cfg.grouping == "alternate":
        hooks.batches = lambda d, c, g: alternating_batches(head_windows, tail_windows, len(d.train_inputs),
                                                            c.batch_size, cfg.inner_steps, g)
    elif cfg.use_alignment:   # the baseline's shuffle, k batches at a time: same inner batches
        hooks.batches = lambda d, c, g: shuffled_batches(
            d, replace(c, batch_size=c.batch_size * cfg.inner_steps), g)
    probe = conflict_probe(cfg, data, groups, seed)
    hooks.after_step = probe
    hooks.state = lambda: _hook_state(step)   # the probe's own state goes with after_step's
    hooks.load_state = lambda saved: _load_hook_state(saved, step, probe)

    result = train_fit(model, data, tcfg, hooks, groups={"all": groups["all"]})
    metrics, ranks = evaluate_both(result.model, data, groups, variant, seed)
    diagnostics = {}
    if probe is not None:
        diagnostics["conflict"] = probe.frame().assign(variant=variant)
    if disc is not None:
        diagnostics["discriminator"] = step.frame().assign(variant=variant)
    return MethodResult("gradient_alignment", variant, seed, metrics, result.history.assign(variant=variant),
                        result.model, result, diagnostics, ranks)


def _hook_state(step: AlignmentStep) -> dict:
    """Discriminator, its optimizer and its log, for the loop's checkpoints."""
    state = {"batches": step.batches}
    if step.disc is not None:
        state.update(disc=step.disc.state_dict(), disc_opt=step.disc_opt.state_dict(),
                     disc_rows=list(step.rows))
    return state


def _load_hook_state(saved: dict, step: AlignmentStep, probe: ConflictProbe | None) -> None:
    step.batches = saved.get("batches", 0)
    if step.disc is not None and "disc" in saved:
        step.disc.load_state_dict(saved["disc"])
        step.disc_opt.load_state_dict(saved["disc_opt"])
        step.rows = list(saved["disc_rows"])
    if probe is not None and "probe_rows" in saved:   # a checkpoint from before ConflictProbe.state
        probe.rows = list(saved["probe_rows"])
        probe.gen.set_state(saved["probe_gen"].cpu())
