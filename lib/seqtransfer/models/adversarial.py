"""Adversarial building blocks: a gradient-reversal layer and a head-vs-tail discriminator.

Yin, Liu, Wang, Sun, Hoi, *Learning Transferrable Parameters for Long-tailed Sequential User
Behavior Modeling*, KDD 2020 (arXiv 2010.11401), train a discriminator to tell head users from
tail users by their sequence representation while the encoder learns to fool it, so that the
representation carries no activeness signal. The min-max game is played in one backward pass
with a gradient-reversal layer (Ganin & Lempitsky, ICML 2015): identity on the way forward, the
gradient multiplied by ``-scale`` on the way back. The discriminator minimises its loss; the
encoder below the reversal receives the negated gradient and so maximises it.

Tensors in, tensors out: no device moves, no training loop.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .dropout import Dropout


class GradReverse(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``-scale``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None  # no gradient for ``scale``


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Gradient reversal: ``y = x`` forward, ``dL/dx = -scale * dL/dy`` backward."""
    return GradReverse.apply(x, scale)


class ActivenessDiscriminator(nn.Module):
    """MLP that predicts a user's activeness class (0 = tail, 1 = head) from a (B, D)
    sequence representation, behind a gradient-reversal layer (Yin et al., KDD 2020).

    The reversal sits on the input, so the discriminator's own parameters receive the ordinary
    gradient of its loss (it learns to discriminate) while everything upstream receives that
    gradient times ``-scale`` (the encoder learns to hide activeness). ``scale = 0`` turns the
    discriminator into a pure probe that measures the signal without acting on the encoder.
    """

    def __init__(self, dim: int, hidden: int = 64, n_classes: int = 2, dropout: float = 0.1,
                 scale: float = 1.0):
        super().__init__()
        if hidden < 1 or n_classes < 2:
            raise ValueError(f"hidden must be >= 1 and n_classes >= 2, got hidden={hidden}, "
                             f"n_classes={n_classes}")
        self.scale = scale      # reversal strength seen by the encoder
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), Dropout(dropout),
                                 nn.Linear(hidden, n_classes))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(grad_reverse(h, self.scale))     # (B, D) -> (B, n_classes) logits
