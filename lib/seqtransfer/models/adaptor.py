"""Modality adaptors of ANT (Peng, Parthasarathy, Ning, arXiv 2309.10195; code ninglab/ANT).

* :class:`WhiteningExpert`: parametric whitening ``W (dropout(x) - b)``, ``b`` = 0 and ``W``
  xavier-normal at initialisation (text and image experts in ANT).
* :class:`MoEAdaptor`: a mixture of ``E`` experts (whitening, or plain linear layers for numeric
  features) weighted by a noisy softmax gate computed from the RAW feature x:
  ``softmax(x G + eps * (softplus(x N) + 0.01))`` while training, ``softmax(x G)`` in eval,
  with ``G = N = 0`` at initialisation, so every expert starts with weight 1/E.

Tensors in, tensors out: ``(..., d_in) -> (..., d_out)``.

*Batched experts* (``fused=True``, the default): the whitening experts of one adaptor run as one
batched product, ``bmm(drop_e(x), W_e^T) - W_e b_e`` for every expert ``e`` at once, each expert
with its own inverted-dropout mask, all drawn in one call of
:func:`seqtransfer.models.dropout.keep_mask` (on a CPU from 16-bit uniforms, the rate rounded to a
multiple of 2**-16). That is the same function and mask distribution as one dropout layer and
``nn.Linear`` per expert (ANT's code; ``fused=False``), but other random draws: a content model's
step on Amazon Scientific's 1,586-item table spent a third of its time in the eight per-expert
Bernoulli draws (``seqtransfer bench --experts`` times both side by side).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .dropout import Dropout, keep_mask

EXPERTS = ("whiten", "linear")


class WhiteningExpert(nn.Module):
    """``W (dropout(x) - b)``: a learned centre ``b`` then a projection."""

    def __init__(self, d_in: int, d_out: int, dropout: float = 0.2):
        super().__init__()
        self.b = nn.Parameter(torch.zeros(d_in))
        self.W = nn.Linear(d_in, d_out, bias=False)
        self.drop = Dropout(dropout)
        self.reset(None)

    def reset(self, gen: torch.Generator | None) -> None:
        with torch.no_grad():
            self.b.zero_()
            nn.init.xavier_normal_(self.W.weight, generator=gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # W (drop(x) - b) written as W drop(x) - W b: the same value, but the backward pass no
        # longer forms the (..., d_in) gradient of the centred input (x is a fixed feature), which
        # was a third of a content model's step on a 1,586-item table
        return self.W(self.drop(x)) - self.W(self.b)                           # (..., d_out)


class LinearExpert(nn.Module):
    """A plain linear layer (ANT's numeric experts); xavier-normal weight, zero bias."""

    def __init__(self, d_in: int, d_out: int, dropout: float = 0.0):
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)
        self.reset(None)

    def reset(self, gen: torch.Generator | None) -> None:
        with torch.no_grad():
            nn.init.xavier_normal_(self.lin.weight, generator=gen)
            self.lin.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


class MoEAdaptor(nn.Module):
    """Mixture of ``n_experts`` experts with a noisy gate on the raw feature."""

    def __init__(self, d_in: int, d_out: int, n_experts: int = 8, expert: str = "whiten",
                 dropout: float = 0.2, noisy: bool = True, fused: bool = True):
        super().__init__()
        if expert not in EXPERTS:
            raise ValueError(f"unknown expert {expert!r}; choose one of {EXPERTS}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"expert dropout must be in [0, 1), got {dropout}")
        cls = WhiteningExpert if expert == "whiten" else LinearExpert
        self.experts = nn.ModuleList(cls(d_in, d_out, dropout) for _ in range(n_experts))
        self.G = nn.Parameter(torch.zeros(d_in, n_experts))    # gate weights
        self.N = nn.Parameter(torch.zeros(d_in, n_experts))    # noise scale weights
        self.noisy = noisy
        self.fused = fused and expert == "whiten"    # whitening experts batched (module docstring)
        self.d_in, self.d_out = d_in, d_out

    def reset(self, gen: torch.Generator | None = None) -> None:
        """Re-initialise every expert and set the gate back to zero (uniform)."""
        for e in self.experts:
            e.reset(gen)
        with torch.no_grad():
            self.G.zero_()
            self.N.zero_()

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d_in) raw features -> (..., E) expert weights."""
        logits = x @ self.G                                                    # (..., E)
        if self.training and self.noisy:
            logits = logits + torch.randn_like(logits) * (F.softplus(x @ self.N) + 0.01)
        return logits.softmax(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gate(x)                                                       # (..., E)
        if self.fused:
            z = self.whiten_all(x)                                             # (..., E, d_out)
        else:
            z = torch.stack([e(x) for e in self.experts], dim=-2)              # (..., E, d_out)
        return (g.unsqueeze(-1) * z).sum(-2)                                   # (..., d_out)

    def whiten_all(self, x: torch.Tensor) -> torch.Tensor:
        """Every whitening expert at once: ``(..., d_in) -> (..., E, d_out)``, expert ``e`` giving
        ``W_e drop_e(x) - W_e b_e`` with a dropout mask of its own (while training)."""
        W = torch.stack([e.W.weight for e in self.experts])                    # (E, d_out, d_in)
        b = torch.stack([e.b for e in self.experts])                           # (E, d_in)
        flat = x.reshape(1, -1, self.d_in)                                     # (1, M, d_in)
        p = self.experts[0].drop.p                                             # the experts' own rate
        if self.training and p > 0:
            keep = keep_mask((len(self.experts), flat.shape[1], self.d_in), p, x.dtype, x.device)
            flat = keep * flat                                                 # (E, M, d_in)
        z = torch.matmul(flat, W.transpose(1, 2))                              # (E, M, d_out)
        z = z - torch.bmm(W, b.unsqueeze(-1)).transpose(1, 2)                  # minus W_e b_e
        return z.transpose(0, 1).reshape(*x.shape[:-1], len(self.experts), self.d_out)
