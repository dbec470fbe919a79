"""A vector quantiser (VQ-VAE, van den Oord et al. 2017) shared by several domains' item tables.

Given vectors ``e`` (..., D) and a codebook ``C`` (K, D):

* ``codes = argmin_k ||e - C_k||^2`` (nearest code by L2);
* forward output ``q = C[codes]``, passed on with the **straight-through estimator**
  ``sg(q) + (e - sg(e))``: the forward value is exactly the code, the gradient goes to ``e``
  unchanged (and none to the codebook);
* the VQ loss ``||sg(e) - q||^2 + commitment * ||e - sg(q)||^2`` (summed over D, mean over the
  vectors): the first term moves the codes towards the vectors (the codebook gets gradient
  only from here), the second keeps the vectors near their codes (commitment 0.25, VQ-VAE);
* options: **EMA** codebook updates instead of the codebook term (each code moves to an
  exponential moving average of the vectors assigned to it, ``sum / count`` with both running
  averages started at the code itself, i.e. one vector at its initial value; decay 0 puts it at
  the mean of its batch's vectors);
  **dead-code re-seeding** (a code whose moving-average use falls below ``dead_below`` is moved
  onto a random vector of the current batch); a **residual** output ``e + q`` (an ablation: the
  item keeps its own vector and the shared code is added).

``code_usage`` and ``perplexity`` say how many codes a set of vectors uses and how evenly
(perplexity = exp of the entropy of the code frequencies: uniform use of m codes gives m).
The quantiser holds no domain state, so one object serves any number of domains.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn

MODES = ("quantise", "residual")


@dataclass
class VQConfig:
    n_codes: int = 256            # codebook size K (MetaRec [ours]: 256 quick, 512 full)
    commitment: float = 0.25      # weight of ||e - sg(q)||^2 (VQ-VAE: 0.25)
    mode: str = "quantise"        # "quantise": output q (straight-through); "residual": e + q
    ema: bool = False             # EMA codebook updates instead of the codebook loss term
    decay: float = 0.99           # EMA decay (0: a code jumps to the mean of its vectors)
    reseed_dead: bool = False     # re-seed codes whose moving-average use falls below dead_below
    dead_below: float = 1e-3      # moving-average assignments per step under which a code is dead
    usage_decay: float = 0.99     # decay of the per-code use average that re-seeding reads
    init_std: float = 0.02        # codebook init N(0, init_std^2), the scale of the item tables


class VQOutput(NamedTuple):
    out: torch.Tensor     # (..., D) what the next layer sees (code, straight-through; or e + q)
    codes: torch.Tensor   # (...) long, nearest code of every vector
    loss: torch.Tensor    # () VQ loss (codebook + commitment terms; commitment only under EMA)


class VectorQuantizer(nn.Module):
    def __init__(self, dim: int, cfg: VQConfig | None = None):
        super().__init__()
        cfg = cfg or VQConfig()
        if cfg.mode not in MODES:
            raise ValueError(f"unknown VQ mode {cfg.mode!r}; choose one of {MODES}")
        if cfg.n_codes < 1:
            raise ValueError(f"n_codes must be >= 1, got {cfg.n_codes}")
        if not 0.0 <= cfg.decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {cfg.decay}")
        self.cfg, self.dim = cfg, dim
        init = torch.randn(cfg.n_codes, dim) * cfg.init_std
        # under EMA the codebook is a buffer the updates write; otherwise a parameter the loss trains
        if cfg.ema:
            self.register_buffer("codebook", init)                       # (K, D)
            # running sums and counts start consistently: each code counts as one vector at its
            # initial value, so sum / count is the code itself from the first update on (a zero
            # count under a non-zero sum divides the first update by 1 - decay: the used codes
            # shoot out by a factor of ~1/(1 - decay) / n and the codebook collapses onto a few)
            self.register_buffer("ema_count", torch.ones(cfg.n_codes))   # (K,)
            self.register_buffer("ema_sum", init.clone())                # (K, D)
        else:
            self.codebook = nn.Parameter(init)                           # (K, D)
        self.register_buffer("usage", torch.full((cfg.n_codes,), 1.0))   # (K,) moving-average use
        self.updates = True   # EMA and re-seeding happen only while training and this is True

    @contextmanager
    def frozen(self):
        """No EMA update or re-seeding inside (meta-learning inner loops: the shared state must
        not move while a source adapts a copy of the weights)."""
        old, self.updates = self.updates, False
        try:
            yield self
        finally:
            self.updates = old

    def nearest(self, e: torch.Tensor, codebook: torch.Tensor | None = None) -> torch.Tensor:
        """(..., D) -> (...) index of the nearest code by L2 (ties: the lowest index)."""
        c = self.codebook if codebook is None else codebook
        flat = e.reshape(-1, e.shape[-1]).detach()                               # (M, D)
        d = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ c.detach().t()
             + c.detach().pow(2).sum(1)[None, :])                                # (M, K)
        return d.argmin(1).reshape(e.shape[:-1])

    def forward(self, e: torch.Tensor) -> VQOutput:
        if e.shape[-1] != self.dim:
            raise ValueError(f"the quantiser takes vectors of width {self.dim}, got {tuple(e.shape)}")
        codes = self.nearest(e)                                                  # (...)
        if self.training and self.updates:
            self._update(e.reshape(-1, self.dim).detach(), codes.reshape(-1))
        q = self.codebook[codes]                                                 # (..., D)
        commit = (e - q.detach()).pow(2).sum(-1).mean()
        loss = self.cfg.commitment * commit
        if not self.cfg.ema:
            loss = loss + (e.detach() - q).pow(2).sum(-1).mean()
        if self.cfg.mode == "residual":
            out = e + q
        else:
            out = q.detach() + (e - e.detach())   # straight-through: exactly q forward, identity backward
        return VQOutput(out, codes, loss)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        """EMA codebook update and dead-code re-seeding from one batch (M, D) with codes (M,)."""
        K = self.cfg.n_codes
        onehot = torch.zeros(len(codes), K, device=flat.device)
        onehot[torch.arange(len(codes), device=flat.device), codes] = 1.0        # (M, K)
        count = onehot.sum(0)                                                    # (K,)
        u = self.cfg.usage_decay
        self.usage.mul_(u).add_((1 - u) * count)
        if self.cfg.ema:
            d = self.cfg.decay
            self.ema_count.mul_(d).add_((1 - d) * count)
            self.ema_sum.mul_(d).add_((1 - d) * (onehot.t() @ flat))
            seen = self.ema_count > 1e-8                  # decay 0: a code with no vector keeps its value
            self.codebook[seen] = self.ema_sum[seen] / self.ema_count[seen, None]
        if self.cfg.reseed_dead:
            dead = torch.nonzero(self.usage < self.cfg.dead_below).squeeze(1)
            if len(dead):
                pick = torch.randint(0, len(flat), (len(dead),), device=flat.device)
                self.codebook[dead] = flat[pick]
                self.usage[dead] = 1.0
                if self.cfg.ema:
                    self.ema_sum[dead] = flat[pick]
                    self.ema_count[dead] = 1.0


def code_usage(codes: torch.Tensor | np.ndarray, n_codes: int) -> np.ndarray:
    """(K,) how many of ``codes`` fall on each code."""
    c = np.asarray(codes.cpu() if torch.is_tensor(codes) else codes).reshape(-1)
    if len(c) and (c.min() < 0 or c.max() >= n_codes):
        raise ValueError(f"codes must lie in [0, {n_codes}); got {c.min()}..{c.max()}")
    return np.bincount(c, minlength=n_codes)


def perplexity(counts: np.ndarray) -> float:
    """exp(entropy) of the code frequencies ``counts`` (K,): uniform use of m codes gives m;
    NaN when nothing was counted."""
    c = np.asarray(counts, dtype=np.float64)
    if c.sum() <= 0:
        return float("nan")
    p = c[c > 0] / c.sum()
    return float(np.exp(-(p * np.log(p)).sum()))
