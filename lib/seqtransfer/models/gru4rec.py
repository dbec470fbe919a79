"""GRU4Rec (Hidasi et al., ICLR 2016) in its sequential form: a GRU over item embeddings,
projected back to the item-embedding space and scored against the tied item embeddings.
Right padding keeps the recurrence causal; the padded tail only feeds padded outputs."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .base import SequentialRecommender
from .dropout import Dropout


@dataclass
class GRU4RecConfig:
    dim: int = 64            # item embedding size D
    hidden: int = 128        # GRU hidden size
    n_layers: int = 1        # stacked GRU layers
    dropout: float = 0.2     # on the input embeddings
    max_len: int = 200       # accepted for a uniform interface; a GRU has no length limit
    loss_type: str = "ce"    # "ce" full softmax, "bce" sampled negatives
    n_negatives: int = 1     # negatives per position when loss_type == "bce"


class GRU4Rec(SequentialRecommender):
    def __init__(self, n_items: int, cfg: GRU4RecConfig | None = None):
        cfg = cfg or GRU4RecConfig()
        super().__init__(n_items, cfg.dim, cfg.loss_type, cfg.n_negatives)
        self.cfg = cfg
        self.emb_drop = Dropout(cfg.dropout)
        self.gru = nn.GRU(cfg.dim, cfg.hidden, num_layers=cfg.n_layers, batch_first=True)
        self.proj = nn.Linear(cfg.hidden, cfg.dim)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        self.item_emb.weight.data[0].zero_()

    def encode(self, seqs: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        x = self.emb_drop(self.item_emb(seqs))           # (B, T, D)
        h, _ = self.gru(x)                               # (B, T, H)
        return self.proj(h)                              # (B, T, D)
