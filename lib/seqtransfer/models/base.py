"""The contract every backbone follows (RecBole-style: one trainer and one evaluator serve all).

* ``encode(seqs)``: (B, T) right-padded item ids -> (B, T, D) hidden state per position.
* ``represent(seqs, lengths)``: (B, D), the hidden state at each sequence's last real item.
* ``score(h)``: (..., D) -> (..., n_items + 1) dot-product scores against the (tied) item
  embeddings; column 0 (padding) is -inf.
* ``position_losses(seqs, targets)``: (B, T) next-item loss at every position (0 on padding).
* ``loss(seqs, targets)``: the mean over real positions.

Tensors in, tensors out: no device moves, no data loading, no training loop.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

LOSS_TYPES = ("ce", "bce")


class SequentialRecommender(nn.Module):
    def __init__(self, n_items: int, dim: int, loss_type: str = "ce", n_negatives: int = 1):
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {LOSS_TYPES}")
        self.n_items = n_items
        self.dim = dim
        self.loss_type = loss_type      # "ce": full softmax over all items; "bce": sampled negatives
        self.n_negatives = n_negatives  # negatives per position for "bce"
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=0)

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def represent(self, seqs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h = self.encode(seqs)                                         # (B, T, D)
        idx = (lengths - 1).clamp(min=0)
        return h[torch.arange(h.size(0), device=h.device), idx]      # (B, D)

    def item_weights(self) -> torch.Tensor:
        return self.item_emb.weight                                   # (N+1, D)

    def score(self, h: torch.Tensor) -> torch.Tensor:
        logits = h @ self.item_weights().t()                          # (..., N+1)
        logits[..., 0] = float("-inf")
        return logits

    def position_losses(self, seqs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B, T) loss per position; zero where ``targets == 0``."""
        return self.hidden_losses(self.encode(seqs), targets)

    def hidden_losses(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B, T) next-item loss of hidden states ``h`` (B, T, D); zero where ``targets == 0``.

        Wrappers that transform the hidden states (e.g. routed plugins) score through here."""
        mask = targets > 0
        out = torch.zeros(targets.shape, dtype=torch.float32, device=targets.device)
        hm = h[mask]                                                  # (P, D) real positions only
        tm = targets[mask]                                            # (P,)
        if self.loss_type == "ce":
            logits = self.score(hm).float()                           # (P, N+1)
            out[mask] = F.cross_entropy(logits, tm, reduction="none")
        else:
            w = self.item_weights()
            pos = (hm * w[tm]).sum(-1).float()                        # (P,)
            neg_ids = torch.randint(1, self.n_items + 1, (tm.size(0), self.n_negatives),
                                    device=tm.device)                 # (P, n_neg)
            neg = torch.einsum("pd,pkd->pk", hm, w[neg_ids]).float()  # (P, n_neg)
            out[mask] = F.softplus(-pos) + F.softplus(neg).sum(-1)
        return out

    def sequence_losses(self, seqs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B,) mean loss over each sequence's real positions (per-user weighting builds on it)."""
        pl = self.position_losses(seqs, targets)
        return pl.sum(1) / (targets > 0).sum(1).clamp(min=1)

    def loss(self, seqs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        pl = self.position_losses(seqs, targets)
        return pl.sum() / (targets > 0).sum().clamp(min=1)
