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
CE_CHUNK = 128   # rows of the (P, N) logits a CPU step holds at once (128 x 3,416 floats: 1.7 MB)


class _ChunkedLinearCE(torch.autograd.Function):
    """Per-row cross-entropy of ``logits = h @ w.T`` against ``y``, computed ``chunk`` rows at a
    time and never holding the (P, N) logits or their gradient whole: the forward pass keeps
    each row's log-sum-exp, the backward pass recomputes a chunk's logits and forms its
    gradient ``g_i (softmax_i - onehot(y_i))`` in place. The same value and gradients as
    ``F.cross_entropy(h @ w.T, y, reduction="none")`` up to float rounding; on a CPU, where that
    pass is bound by memory traffic over the (P, N) matrix, it is 2-2.7x faster (6,400
    positions x 1,683 / 3,416 items, one thread). First-order only: a backward pass that builds a
    graph (create_graph=True) raises instead of dropping the second-order term."""

    @staticmethod
    def forward(ctx, h, w, y, chunk):
        lse = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        loss = torch.empty_like(lse)
        for s in range(0, h.shape[0], chunk):
            logits = (h[s:s + chunk] @ w.t()).float()                             # (C, N)
            lse[s:s + chunk] = torch.logsumexp(logits, 1)
            loss[s:s + chunk] = lse[s:s + chunk] - logits.gather(1, y[s:s + chunk, None])[:, 0]
        ctx.save_for_backward(h, w, y, lse)
        ctx.chunk = chunk
        return loss

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():   # create_graph: a second-order gradient would silently lose a term
            raise RuntimeError("the chunked cross-entropy is first-order only; a second-order gradient "
                               "(create_graph=True) needs next_item_ce(..., fused=False) (model.fused_ce = False)")
        h, w, y, lse = ctx.saved_tensors
        grad = grad.contiguous()
        gh = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        gw = torch.zeros_like(w) if ctx.needs_input_grad[1] else None
        for s in range(0, h.shape[0], ctx.chunk):
            hc = h[s:s + ctx.chunk]
            p = (hc @ w.t()).float().sub_(lse[s:s + ctx.chunk, None]).exp_()        # (C, N) softmax
            p[torch.arange(len(hc), device=p.device), y[s:s + ctx.chunk]] -= 1.0
            p = p.mul_(grad[s:s + ctx.chunk, None]).to(h.dtype)
            if gh is not None:
                gh[s:s + ctx.chunk] = p @ w
            if gw is not None:
                gw.addmm_(p.t(), hc)
        return gh, gw, None, None


def next_item_ce(h: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, fused: bool = True) -> torch.Tensor:
    """(P,) full-softmax cross-entropy of hidden states ``h`` (P, D) over the real items of
    ``table`` (N+1, D; row 0 is padding and never scored) for 1-based ``targets`` (P,).

    On a CPU without autocast (and with ``fused``) through :class:`_ChunkedLinearCE`; elsewhere
    (CUDA, bf16 autocast, a second-order meta-gradient that differentiates the backward pass)
    ``F.cross_entropy`` on the whole logits, whose fused kernels need no chunking."""
    w = table[1:]
    if fused and h.device.type == "cpu" and not torch.is_autocast_enabled("cpu") and h.dtype == w.dtype:
        return _ChunkedLinearCE.apply(h, w, targets - 1, CE_CHUNK)
    return F.cross_entropy((h @ w.t()).float(), targets - 1, reduction="none")


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
        self.fused_ce = True            # the chunked CPU cross-entropy (next_item_ce); False: F.cross_entropy

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
            out[mask] = next_item_ce(hm, w, tm, self.fused_ce)
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

    def loss_and_represent(self, seqs: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor,
                           users: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`loss` and :meth:`represent` of one encoder pass: the (B, D) state at each
        sequence's last real position is the one the loss scores there (one dropout draw for
        both), where calling the two runs the encoder twice. Gradient alignment's adversary
        reads the representation this way. A model that computes its loss its own way
        (overrides ``loss`` or ``position_losses``) must bring its own."""
        cls = type(self)
        if cls.loss is not SequentialRecommender.loss or cls.position_losses is not SequentialRecommender.position_losses:
            raise NotImplementedError(f"{cls.__name__} computes its loss its own way: loss_and_represent "
                                      "would not be its loss; call loss() and represent()")
        h = self.encode(seqs, users)                                  # (B, T, D)
        loss = self.hidden_losses(h, targets).sum() / (targets > 0).sum().clamp(min=1)
        idx = (lengths - 1).clamp(min=0)
        return loss, h[torch.arange(h.size(0), device=h.device), idx]  # (), (B, D)
