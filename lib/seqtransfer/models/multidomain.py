"""Per-domain item tables feeding one shared encoder, through one shared VQ codebook (MetaRec).

Domains share no items, so each keeps its own ID table (``tables[domain]``, row 0 padding).
The encoder (positions, causal transformer blocks, final LayerNorm: SASRec's, see
:mod:`.sasrec`) and the codebook of one :class:`~.vq.VectorQuantizer` are shared by all
domains. An item enters the encoder as its nearest code (straight-through, or ``e + q`` in the
quantiser's residual mode), so every domain speaks the same K-word input vocabulary; without a
quantiser (``cfg.vq = None``) the raw vectors enter, the "no VQ" ablation.

Scores [ours]: the encoder's output is scored by dot product against the current domain's own
(unquantised) table, so two items that share a code stay distinguishable in the ranking; the
commitment term keeps each item near its code.

The model follows the :class:`~.base.SequentialRecommender` contract for its current domain
(:meth:`set_domain`), so the shared training loop and evaluator serve it; every method also
takes ``domain=`` to act on another domain without switching. ``loss`` = mean next-item cross
entropy + ``vq_weight`` x the VQ loss of the batch's items (each item once);
``position_losses`` is the cross entropy alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .base import SequentialRecommender, next_item_ce
from .dropout import Dropout
from .sasrec import Block, init_normal
from .vq import VectorQuantizer, VQConfig


@dataclass
class MultiDomainConfig:
    dim: int = 64                 # hidden size D (item vectors, codes, encoder)
    n_layers: int = 2             # transformer blocks
    n_heads: int = 2              # attention heads
    dropout: float = 0.2          # on the input and block outputs
    max_len: int = 50             # longest input sequence
    vq: VQConfig | None = field(default_factory=VQConfig)   # the shared quantiser; None: no VQ
    vq_weight: float = 1.0        # weight of the VQ loss in ``loss``


class MultiDomainSASRec(SequentialRecommender):
    def __init__(self, domains: dict[str, int], cfg: MultiDomainConfig | None = None):
        """``domains``: name -> number of items (ids 1..n); the first is the current domain."""
        cfg = cfg or MultiDomainConfig()
        if not domains:
            raise ValueError("a multi-domain model needs at least one domain: {name: n_items}")
        super().__init__(next(iter(domains.values())), cfg.dim, "ce")
        self.cfg = cfg
        self.item_emb = None                       # one table per domain instead
        self.tables = nn.ModuleDict()
        self.quantizer = VectorQuantizer(cfg.dim, cfg.vq) if cfg.vq is not None else None
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.emb_drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.n_heads, cfg.dropout, 0.0) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.dim)
        for m in [*self.blocks.modules(), self.pos_emb]:
            init_normal(m)
        for name, n in domains.items():
            self.add_domain(name, n)
        self.set_domain(next(iter(domains)))

    # -- domains ------------------------------------------------------------------------------
    def add_domain(self, name: str, n_items: int) -> None:
        """A new ID table for ``name`` (N(0, 0.02^2), padding row zero); the encoder is kept."""
        if not name or "." in name:
            raise ValueError(f"domain name {name!r} must be non-empty and contain no '.'")
        if name in self.tables:
            raise ValueError(f"domain {name!r} already has a table; domains: {list(self.tables)}")
        emb = nn.Embedding(n_items + 1, self.dim, padding_idx=0).to(self.pos_emb.weight.device)
        with torch.no_grad():
            nn.init.normal_(emb.weight, std=0.02)
            emb.weight[0].zero_()
        self.tables[name] = emb

    def set_domain(self, name: str) -> None:
        if name not in self.tables:
            raise ValueError(f"unknown domain {name!r}; the model has {list(self.tables)}")
        self.domain = name
        self.n_items = self.tables[name].num_embeddings - 1

    def shared_names(self) -> list[str]:
        """Names of the parameters every domain shares (encoder, positions, codebook)."""
        return [n for n, _ in self.named_parameters() if not n.startswith("tables.")]

    def table_name(self, domain: str) -> str:
        return f"tables.{domain}.weight"

    # -- items --------------------------------------------------------------------------------
    def item_weights(self, domain: str | None = None) -> torch.Tensor:
        return self.tables[domain or self.domain].weight                       # (N+1, D)

    @torch.no_grad()
    def item_codes(self, domain: str | None = None) -> torch.Tensor:
        """(N,) nearest code of items 1..N of ``domain`` (needs a quantiser)."""
        if self.quantizer is None:
            raise ValueError("this model has no quantiser (cfg.vq is None): items have no codes")
        return self.quantizer.nearest(self.item_weights(domain)[1:])

    def _inputs(self, seqs: torch.Tensor, domain: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) ids -> (B, T, D) input vectors (codes when quantised; 0 on padding) and the
        VQ loss of the batch's items, each item once."""
        table = self.item_weights(domain)
        if self.quantizer is None:
            return table[seqs], table.new_zeros(())
        ids = torch.unique(seqs)                                                # (M,) sorted
        ids = ids[ids > 0]
        vq = self.quantizer(table[ids])                                         # (M, D)
        lookup = torch.cat([table.new_zeros(1, self.dim), vq.out])              # (M+1, D)
        pos = torch.searchsorted(ids, seqs.contiguous()) + 1                                # (B, T)
        pos = torch.where(seqs > 0, pos, torch.zeros_like(pos))
        return lookup[pos], vq.loss

    # -- the contract -------------------------------------------------------------------------
    def encode_with_vq(self, seqs: torch.Tensor, domain: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) ids -> (B, T, D) hidden states and the batch's VQ loss ()."""
        B, T = seqs.shape
        if T > self.cfg.max_len:
            raise ValueError(f"sequence length {T} exceeds max_len {self.cfg.max_len}")
        x, vq_loss = self._inputs(seqs, domain)
        x = self.emb_drop(x * math.sqrt(self.dim) + self.pos_emb(torch.arange(T, device=seqs.device)))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x), vq_loss

    def encode(self, seqs: torch.Tensor, users: torch.Tensor | None = None,
               domain: str | None = None) -> torch.Tensor:
        return self.encode_with_vq(seqs, domain)[0]

    def represent(self, seqs: torch.Tensor, lengths: torch.Tensor, users: torch.Tensor | None = None,
                  domain: str | None = None) -> torch.Tensor:
        h = self.encode(seqs, domain=domain)                                   # (B, T, D)
        return h[torch.arange(h.size(0), device=h.device), (lengths - 1).clamp(min=0)]

    def score(self, h: torch.Tensor, domain: str | None = None) -> torch.Tensor:
        logits = h @ self.item_weights(domain).t()                             # (..., N+1)
        logits[..., 0] = float("-inf")
        return logits

    def _ce(self, h: torch.Tensor, targets: torch.Tensor, domain: str | None) -> torch.Tensor:
        mask = targets > 0
        out = torch.zeros(targets.shape, dtype=torch.float32, device=targets.device)
        out[mask] = next_item_ce(h[mask], self.item_weights(domain), targets[mask], self.fused_ce)
        return out                                                             # (B, T)

    def position_losses(self, seqs: torch.Tensor, targets: torch.Tensor, users: torch.Tensor | None = None,
                        domain: str | None = None) -> torch.Tensor:
        return self._ce(self.encode(seqs, domain=domain), targets, domain)

    def loss(self, seqs: torch.Tensor, targets: torch.Tensor, users: torch.Tensor | None = None,
             domain: str | None = None) -> torch.Tensor:
        h, vq_loss = self.encode_with_vq(seqs, domain)
        ce = self._ce(h, targets, domain)
        return ce.sum() / (targets > 0).sum().clamp(min=1) + self.cfg.vq_weight * vq_loss

    def forward(self, seqs: torch.Tensor, targets: torch.Tensor, domain: str | None = None) -> torch.Tensor:
        """The training loss of a batch of ``domain`` (what ``torch.func.functional_call`` calls)."""
        return self.loss(seqs, targets, domain=domain)
