"""A content-based SASRec: items are their features, not ids (ANT's item encoder).

Every item is represented by its modality features (``slot -> (N+1, d_s)`` matrices held as
buffers; row 0 is padding), each slot through its own :class:`MoEAdaptor`, fused as

    v = sum_s z_s + beta * (z_a * z_b)

where ``(a, b)`` is the ``product`` pair (ANT multiplies image and text; MovieLens has no
images, so by default our pair is text and categorical [ours], configurable). The same fused
vectors serve as the input items and the scored items, so the model transfers to a domain with
new items by swapping the feature matrices (:meth:`ContentSASRec.set_items`). Optionally an
item-id embedding is added (transductive mode; it does not transfer to new items).

Encoder [ANT code]: input LayerNorm over item vector + learned position, dropout, then causal
transformer blocks (our pre-LN :class:`~.sasrec.Block`, then a final LayerNorm). Score
[ANT code]: ``cos(h, v) / temperature`` (0.07) against every item. The model follows the
:class:`SequentialRecommender` contract, so the shared training loop and evaluator serve it;
its ``loss`` is the full softmax over all items with these scores (ANT's target loss).

Parameter groups used by the adaptation variants: :meth:`transformer_modules` (blocks and the
final LayerNorm), ``pos_emb``, ``adaptors``, ``input_ln`` and ``item_emb`` (transductive only).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .adaptor import MoEAdaptor
from .base import SequentialRecommender, next_item_ce
from .dropout import Dropout
from .sasrec import Block, init_normal


@dataclass
class ContentConfig:
    dim: int = 64                       # hidden size D (the paper uses 256)
    n_layers: int = 2                   # transformer blocks
    n_heads: int = 2                    # attention heads
    dropout: float = 0.2                # on the input and block outputs
    max_len: int = 50                   # longest input sequence (ANT: 50)
    n_experts: int = 8                  # experts per modality adaptor (ANT: 8)
    expert_dropout: float = 0.2         # dropout on x inside whitening experts (ANT: 0.2)
    fused_experts: bool = True          # whitening experts as one batched product, their dropout masks
                                        # drawn in one call (same function and mask distribution as
                                        # ANT's per-expert layers, other draws; MoEAdaptor)
    linear_slots: tuple[str, ...] = ("numeric",)   # slots with plain linear experts (ANT: price)
    noisy_gate: bool = True             # noisy gate while training (ANT); False: softmax(x G) only
    beta: float = 0.1                   # weight of the fusion product (ANT: 0.1; 0 = plain sum)
    product: tuple[str, str] | None = ("text", "categorical")  # the pair multiplied [ours]
    temperature: float = 0.07           # cosine scores are divided by it (ANT: 0.07)
    transductive: bool = False          # also learn an item-id embedding (does not transfer)


def masked_contrastive_loss(h: torch.Tensor, v: torch.Tensor, targets: torch.Tensor,
                            temperature: float = 0.07) -> torch.Tensor:
    """In-batch sequence -> next-item contrastive loss (ANT / UniSRec pre-training).

    Row i's positive is its own target vector ``v[i]``; the other rows' targets are negatives,
    except rows with the same target item, whose logits are masked out (they are not negatives).
    ``h``: (P, D) sequence states, ``v``: (P, D) target item vectors, ``targets``: (P,) item ids.
    """
    logits = F.normalize(h, dim=-1) @ F.normalize(v, dim=-1).t() / temperature   # (P, P)
    same = targets[:, None] == targets[None, :]
    same.fill_diagonal_(False)
    logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits.float(), torch.arange(len(h), device=h.device))


class ContentSASRec(SequentialRecommender):
    def __init__(self, features: dict[str, torch.Tensor | np.ndarray], cfg: ContentConfig | None = None):
        cfg = cfg or ContentConfig()
        feats = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in features.items()}
        if not feats:
            raise ValueError("a content model needs at least one feature slot")
        n_items = next(iter(feats.values())).shape[0] - 1
        super().__init__(n_items, cfg.dim, "ce")
        self.cfg = cfg
        if not cfg.transductive:
            self.item_emb = None
        self.slots = list(feats)
        self.adaptors = nn.ModuleDict({
            s: MoEAdaptor(f.shape[1], cfg.dim, cfg.n_experts, "linear" if s in cfg.linear_slots else "whiten",
                          cfg.expert_dropout, cfg.noisy_gate, cfg.fused_experts) for s, f in feats.items()})
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.input_ln = nn.LayerNorm(cfg.dim)
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.n_heads, cfg.dropout, 0.0) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.dim)
        for m in [*self.blocks.modules(), self.pos_emb]:
            init_normal(m)
        self.set_items(feats)

    # -- items --------------------------------------------------------------------------------
    def set_items(self, features: dict[str, torch.Tensor | np.ndarray]) -> None:
        """Swap in another domain's items: ``slot -> (N'+1, d_s)``, a subset of the model's slots
        with the same widths; slots not given contribute nothing (e.g. no year on Amazon)."""
        unknown = set(features) - set(self.slots)
        if unknown:
            raise ValueError(f"feature slots {sorted(unknown)} have no adaptor; the model has {self.slots}")
        sizes = {k: np.asarray(v).shape for k, v in features.items()}
        for k, shape in sizes.items():
            if shape[1] != self.adaptors[k].d_in:
                raise ValueError(f"slot {k!r} has width {shape[1]}, the model's adaptor takes {self.adaptors[k].d_in}")
        if len({s[0] for s in sizes.values()}) != 1:
            raise ValueError(f"feature slots disagree on the number of items: {sizes}")
        first = next(iter(features.values()))
        device = self.pos_emb.weight.device
        self.n_items = np.asarray(first).shape[0] - 1 if not torch.is_tensor(first) else first.shape[0] - 1
        self.active = [s for s in self.slots if s in features]
        for s in self.slots:
            x = torch.as_tensor(np.asarray(features[s]) if not torch.is_tensor(features[s]) else features[s],
                                dtype=torch.float32, device=device) if s in features else None
            self.register_buffer(f"feat_{s}", x, persistent=False)   # (N+1, d_s) or None
        if self.item_emb is not None:   # ids do not transfer: a new domain gets a new table
            if self.item_emb.num_embeddings != self.n_items + 1:
                self.item_emb = nn.Embedding(self.n_items + 1, self.dim, padding_idx=0).to(device)
            with torch.no_grad():
                nn.init.normal_(self.item_emb.weight, std=0.02)
                self.item_emb.weight[0].zero_()

    def modality_vectors(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """slot -> (..., D) adaptor output for item ``ids`` (...)."""
        return {s: self.adaptors[s](getattr(self, f"feat_{s}")[ids]) for s in self.active}

    def fuse(self, z: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum of the modality vectors plus ``beta`` times the product pair's elementwise product."""
        v = torch.stack(list(z.values())).sum(0)
        pair = self.cfg.product
        if pair is not None and self.cfg.beta and all(p in z for p in pair):
            v = v + self.cfg.beta * z[pair[0]] * z[pair[1]]
        return v

    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """(...) item ids -> (..., D) fused content vectors (+ id embedding when transductive)."""
        v = self.fuse(self.modality_vectors(ids))
        return v + self.item_emb(ids) if self.item_emb is not None else v

    def item_weights(self) -> torch.Tensor:
        return self.item_vectors(torch.arange(self.n_items + 1, device=self.pos_emb.weight.device))   # (N+1, D)

    @torch.no_grad()
    def gate_weights(self) -> dict[str, np.ndarray]:
        """slot -> (E,) mean gate weight of every expert over the current items (eval gate)."""
        ids = torch.arange(1, self.n_items + 1, device=self.pos_emb.weight.device)
        out = {}
        for s in self.active:
            a = self.adaptors[s]
            g = (getattr(self, f"feat_{s}")[ids] @ a.G).softmax(-1)            # (N, E)
            out[s] = g.mean(0).cpu().numpy()
        return out

    # -- the contract -------------------------------------------------------------------------
    def transformer_modules(self) -> list[nn.Module]:
        return [*self.blocks, self.ln_f]

    def encode(self, seqs: torch.Tensor, users: torch.Tensor | None = None,
               table: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) item ids -> (B, T, D); ``users`` is ignored (the model contract); ``table`` =
        :meth:`item_weights` when already computed (the adaptors then run once per item, not
        once per position)."""
        B, T = seqs.shape
        if T > self.cfg.max_len:
            raise ValueError(f"sequence length {T} exceeds max_len {self.cfg.max_len}")
        table = self.item_weights() if table is None else table                # (N+1, D)
        pos = torch.arange(T, device=seqs.device)
        x = self.drop(self.input_ln(table[seqs] + self.pos_emb(pos)))          # (B, T, D)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)                                                    # (B, T, D)

    def score(self, h: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        w = F.normalize(self.item_weights() if table is None else table, dim=-1)   # (N+1, D)
        logits = F.normalize(h, dim=-1) @ w.t() / self.cfg.temperature         # (..., N+1)
        logits[..., 0] = float("-inf")
        return logits

    def position_losses(self, seqs: torch.Tensor, targets: torch.Tensor,
                        users: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) full-softmax loss per position (0 on padding), the item table computed once:
        input and scored items are the same vectors within a step."""
        table = self.item_weights()                                            # (N+1, D)
        h = self.encode(seqs, table=table)
        mask = targets > 0
        out = torch.zeros(targets.shape, dtype=torch.float32, device=targets.device)
        # the scores of :meth:`score`, cos(h, v) / temperature, as one product of unit vectors
        q = F.normalize(h[mask], dim=-1) / self.cfg.temperature                # (P, D)
        out[mask] = next_item_ce(q, F.normalize(table, dim=-1), targets[mask], self.fused_ce)
        return out
