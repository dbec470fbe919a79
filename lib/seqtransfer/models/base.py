"""The contract every model follows (RecBole-style: one trainer and one evaluator serve all).

Every method takes an optional ``users`` (B,) tensor, the owner of each sequence. Plain
backbones ignore it; a model that personalises by user (the routed plugins of the intervened
network) requires it. The trainer, the evaluator and the diagnostics always pass it, so none of
them asks which kind of model it holds.

* ``encode(seqs, users=None)``: (B, T) right-padded item ids -> (B, T, D) hidden state per
  position.
* ``represent(seqs, lengths, users=None)``: (B, D), the hidden state at each sequence's last
  real item (what evaluation scores).
* ``score(h)``: (..., D) -> (..., n_items + 1) dot-product scores against the (tied) item
  embeddings; column 0 (padding) is -inf.
* ``position_losses(seqs, targets, users=None)``: (B, T) next-item loss at every position
  (0 on padding); ``sequence_losses`` the (B,) mean per sequence; ``loss`` the mean over real
  positions.

Losses (``loss_type``):

* ``"ce"`` (default): full softmax over all items, the most accurate and on ML-1M-sized
  catalogues still affordable on a CPU.
* ``"sampled"``: sampled softmax over ``n_negatives`` items drawn uniformly once per batch and
  shared by every position, plus the positive. Uniform sampling makes the log-Q correction a
  constant, which cancels in the softmax; a sampled item equal to the position's target is
  masked (an "accidental hit"). Cheaper when the catalogue is large.
* ``"bce"``: binary cross-entropy against ``n_negatives`` uniform negatives per position (the
  original SASRec loss).

Tensors in, tensors out: no device moves, no data loading, no training loop.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

LOSS_TYPES = ("ce", "sampled", "bce")


class SequentialRecommender(nn.Module):
    def __init__(self, n_items: int, dim: int, loss_type: str = "ce", n_negatives: int = 1):
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {LOSS_TYPES}")
        if n_negatives < 1:
            raise ValueError(f"n_negatives must be >= 1, got {n_negatives}")
        self.n_items = n_items
        self.dim = dim
        self.loss_type = loss_type      # see the module docstring
        self.n_negatives = n_negatives  # negatives per position ("bce") or per batch ("sampled")
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=0)

    def encode(self, seqs: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def represent(self, seqs: torch.Tensor, lengths: torch.Tensor,
                  users: torch.Tensor | None = None) -> torch.Tensor:
        h = self.encode(seqs)                                         # (B, T, D)
        idx = (lengths - 1).clamp(min=0)
        return h[torch.arange(h.size(0), device=h.device), idx]      # (B, D)

    def item_weights(self) -> torch.Tensor:
        return self.item_emb.weight                                   # (N+1, D)

    def score(self, h: torch.Tensor) -> torch.Tensor:
        logits = h @ self.item_weights().t()                          # (..., N+1)
        logits[..., 0] = float("-inf")
        return logits

    def position_losses(self, seqs: torch.Tensor, targets: torch.Tensor,
                        users: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) loss per position; zero where ``targets == 0``."""
        return self.hidden_losses(self.encode(seqs), targets)

    def hidden_losses(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B, T) next-item loss of hidden states ``h`` (B, T, D); zero where ``targets == 0``.

        Wrappers that transform the hidden states (e.g. routed plugins) score through here."""
        mask = targets > 0
        out = torch.zeros(targets.shape, dtype=torch.float32, device=targets.device)
        hm = h[mask]                                                  # (P, D) real positions only
        tm = targets[mask]                                            # (P,)
        w = self.item_weights()
        if self.loss_type == "ce":
            # real items only (column 0 is padding): no -inf column to write or to back-propagate
            logits = (hm @ w[1:].t()).float()                         # (P, N)
            out[mask] = F.cross_entropy(logits, tm - 1, reduction="none")
        elif self.loss_type == "sampled":
            neg_ids = torch.randint(1, self.n_items + 1, (self.n_negatives,), device=tm.device)  # (S,)
            pos = (hm * w[tm]).sum(-1, keepdim=True)                  # (P, 1)
            neg = hm @ w[neg_ids].t()                                 # (P, S), shared negatives
            neg = neg.masked_fill(neg_ids[None, :] == tm[:, None], float("-inf"))
            logits = torch.cat([pos, neg], 1).float()                 # (P, 1 + S); the positive is column 0
            out[mask] = F.cross_entropy(logits, torch.zeros_like(tm), reduction="none")
        else:
            pos = (hm * w[tm]).sum(-1).float()                        # (P,)
            neg_ids = torch.randint(1, self.n_items + 1, (tm.size(0), self.n_negatives),
                                    device=tm.device)                 # (P, n_neg)
            neg = torch.einsum("pd,pkd->pk", hm, w[neg_ids]).float()  # (P, n_neg)
            out[mask] = F.softplus(-pos) + F.softplus(neg).sum(-1)
        return out

    def sequence_losses(self, seqs: torch.Tensor, targets: torch.Tensor,
                        users: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) mean loss over each sequence's real positions (per-user weighting builds on it)."""
        pl = self.position_losses(seqs, targets, users)
        return pl.sum(1) / (targets > 0).sum(1).clamp(min=1)

    def loss(self, seqs: torch.Tensor, targets: torch.Tensor,
             users: torch.Tensor | None = None) -> torch.Tensor:
        pl = self.position_losses(seqs, targets, users)
        return pl.sum() / (targets > 0).sum().clamp(min=1)
