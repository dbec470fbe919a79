"""ECAT's student: adaptive distillation (alpha from the teacher's and the student's probability of
the true next item), the weighted loss, the model that ranks target items only
(:class:`TargetScored`), the frozen teacher's outputs over a period's pool
(:func:`teacher_outputs`), and the hooks of its training step."""
from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...data.batches import SeqData, trim_right
from ...models.adversarial import grad_reverse
from ...models.base import next_item_ce
from ...train import Hooks, StepContext, clip_and_step
from .config import EcatConfig

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
# the student's training step
# ---------------------------------------------------------------------------------------------

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


@torch.no_grad()
def teacher_outputs(teacher: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                    chunk: int = 512, autocast=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The frozen ``teacher``'s hidden state and true-item probability at every weighted position
    of the pool, computed once: ``(index, h, p)`` with ``index`` (rows, T) the flat position of
    each ``weights > 0`` cell (-1 elsewhere; row-major, the order ``tensor[mask]`` reads), ``h``
    (P, D) and ``p`` (P,). The teacher is in eval mode and its output at a real position does not
    depend on the other rows of a batch nor on the padding after it, so this is what the step
    would compute batch by batch (equal up to float rounding), for one forward pass over the
    pool instead of one per step and epoch."""
    mask = weights > 0
    index = torch.full(mask.shape, -1, dtype=torch.long, device=inputs.device)
    index[mask] = torch.arange(int(mask.sum()), device=inputs.device)
    hs, ps = [], []
    for s in range(0, len(inputs), chunk):
        seqs, tgt, m = trim_right(inputs[s:s + chunk], targets[s:s + chunk], mask[s:s + chunk])
        with (autocast() if autocast is not None else nullcontext()):
            h = teacher.encode(seqs)[m].float()
            hs.append(h)
            ps.append(true_prob(teacher.score(h), tgt[m]))
    d = getattr(teacher, "dim", hs[0].shape[-1] if hs else 0)
    return (index, torch.cat(hs) if hs else torch.zeros(0, d, device=inputs.device),
            torch.cat(ps) if ps else torch.zeros(0, device=inputs.device))


def student_hooks(inputs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                  teacher: nn.Module | None, cfg: EcatConfig, alphas: list, domain: torch.Tensor | None = None) -> Hooks:
    """Batches over the student's pool and the ECAT step (weighted CE + distillation, plus the
    reversed domain loss under ``fine="grl"``). ``alphas`` collects a sample of alpha values.
    The teacher's outputs come from :func:`teacher_outputs`, once for the whole pool, under
    ``cfg.teacher_outputs="period"`` (the default), or from a teacher forward pass in every step
    (``"step"``)."""
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
        seqs, tgt, ww, *dd = trim_right(x[ctx.batch], y[ctx.batch], w[ctx.batch],
                                        *(() if dom is None else (dom[ctx.batch],)))   # (B, T') each
        ctx.optimizer.zero_grad(set_to_none=True)
        with ctx.autocast():
            h = model.backbone.encode(seqs)                                   # (B, T, D)
            mask = ww > 0
            hs, ys, wv = h[mask], tgt[mask], ww[mask]                           # (P, D), (P,), (P,)
            # full softmax over every item (chunked on a CPU: models.base.next_item_ce)
            ce = next_item_ce(hs, model.backbone.item_weights(), ys, model.backbone.fused_ce)   # (P,)
            ht = alpha = None
            extra = 0.0
            if teacher is not None and cfg.distill != "none" and cfg.lam:
                if cfg.teacher_outputs == "period":
                    if "t" not in dev_cache:
                        dev_cache["t"] = teacher_outputs(teacher, x, y, w, autocast=ctx.autocast)
                    index, h_all, p_all = dev_cache["t"]
                    at = index[ctx.batch][:, :seqs.shape[1]][mask]
                    ht, pt = h_all[at], p_all[at]                             # (P, D), (P,)
                else:
                    with torch.no_grad():
                        ht = teacher.encode(seqs)[mask].float()               # (P, D)
                        pt = true_prob(teacher.score(ht), ys)
                ps = torch.exp(-ce.detach())                                  # the true item's probability
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
                d = dd[0][mask]
                logit = model.domain_head(grad_reverse(hs.float())).squeeze(-1)
                loss = loss + cfg.grl_weight * F.binary_cross_entropy_with_logits(logit, d)
        loss.backward()
        clip_and_step(ctx)
        return loss.item()

    return Hooks(batches=batches, step=step)
