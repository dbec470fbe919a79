"""Plugin prediction networks on a shared backbone, routed per user.

After Lv et al., *Personalizing Intervened Network for Long-tailed Sequential User Behavior
Modeling* (arXiv 2208.09130): a backbone learns what all users share, and separate small
"plugin" networks (one for head users, one for tail users, or one per activeness stratum)
personalise its hidden state before scoring.

* :class:`PluginHead` is a residual map ``h -> h + f(h)`` whose last layer starts at zero, so a
  freshly built plugin is exactly the identity and the routed model starts as its backbone.
* :class:`RoutedRecommender` wraps a backbone and follows the
  :class:`~seqtransfer.models.base.SequentialRecommender` contract; the ``users`` (B,)
  argument every model takes (the owner of every sequence) is required here: sequence ``b``
  goes through plugin ``route[users[b]]`` at every position.

Tensors in, tensors out: no device moves, no data loading, no training loop.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .dropout import Dropout

PLUGIN_KINDS = ("mlp", "linear")


class PluginHead(nn.Module):
    """Residual plugin ``h + f(h)`` on (..., D) hidden states; the identity at initialisation.

    ``kind="mlp"``: f = Linear(D, hidden) -> GELU -> Dropout -> Linear(hidden, D);
    ``kind="linear"``: f = Dropout -> Linear(D, D). The last Linear (weight and bias) is zero at
    initialisation; the first keeps PyTorch's default init so that gradients reach it as soon as
    the last layer moves away from zero.
    """

    def __init__(self, dim: int, hidden: int | None = None, kind: str = "mlp", dropout: float = 0.0):
        super().__init__()
        if kind not in PLUGIN_KINDS:
            raise ValueError(f"unknown plugin kind {kind!r}; choose one of {PLUGIN_KINDS}")
        hidden = hidden or dim
        if kind == "mlp":
            last = nn.Linear(hidden, dim)
            self.f = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), Dropout(dropout), last)
        else:
            last = nn.Linear(dim, dim)
            self.f = nn.Sequential(Dropout(dropout), last)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.kind = kind

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.f(h)                                          # (..., D)


class RoutedRecommender(nn.Module):
    """A backbone plus ``n_routes`` plugins; user ``u``'s sequences use plugin ``route[u]``.

    Args:
        backbone: a :class:`SequentialRecommender`; its item embeddings score the output.
        n_routes: number of plugins.
        route: (U,) long, plugin index of every user (registered as a buffer, so it moves with
            the module and is saved in its state dict).
        kind, hidden, dropout: passed to every :class:`PluginHead`.
        freeze_backbone: when True the backbone's parameters stop requiring gradients, it is
            run without autograd and kept in eval mode (dropout off) even while the plugins
            train, so the plugins learn on the same features they will see at evaluation.
            The flags are set on ``backbone`` itself.
    """

    def __init__(self, backbone: nn.Module, n_routes: int, route: torch.Tensor, kind: str = "mlp",
                 hidden: int | None = None, dropout: float = 0.0, freeze_backbone: bool = True):
        super().__init__()
        route = torch.as_tensor(route, dtype=torch.long)
        if n_routes < 1:
            raise ValueError(f"n_routes must be >= 1, got {n_routes}")
        if route.dim() != 1:
            raise ValueError(f"route must be a (U,) tensor of plugin indices, got shape {tuple(route.shape)}")
        if len(route) and (int(route.min()) < 0 or int(route.max()) >= n_routes):
            raise ValueError(f"route holds indices outside [0, {n_routes}): "
                             f"min {int(route.min())}, max {int(route.max())}")
        self.backbone = backbone
        self.n_routes = n_routes
        self.n_items = backbone.n_items
        self.dim = backbone.dim
        self.register_buffer("route", route)
        self.plugins = nn.ModuleList(PluginHead(backbone.dim, hidden, kind, dropout) for _ in range(n_routes))
        self.freeze_backbone = freeze_backbone
        for p in backbone.parameters():
            p.requires_grad_(not freeze_backbone)
        if freeze_backbone:
            backbone.eval()

    def train(self, mode: bool = True) -> "RoutedRecommender":
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.train(False)
        return self

    def _backbone_grad(self):
        return torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone)

    def apply_plugins(self, h: torch.Tensor, users: torch.Tensor | None) -> torch.Tensor:
        """(B, ..., D) backbone states -> (B, ..., D), row b through plugin ``route[users[b]]``."""
        if users is None:
            raise ValueError("a routed model needs users (B,), the owner of every sequence; "
                             "pass users=... (the trainer and evaluator always do)")
        r = self.route[users]                                         # (B,)
        out = torch.zeros_like(h)
        for k, plugin in enumerate(self.plugins):
            sel = r == k                                              # (B,)
            out[sel] = plugin(h[sel]).to(out.dtype)
        return out

    def encode(self, seqs: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        with self._backbone_grad():
            h = self.backbone.encode(seqs)                            # (B, T, D)
        return self.apply_plugins(h, users)                           # (B, T, D)

    def represent(self, seqs: torch.Tensor, lengths: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        # plugins act position-wise, so routing the last state alone equals routing all of them
        with self._backbone_grad():
            h = self.backbone.represent(seqs, lengths)                # (B, D)
        return self.apply_plugins(h, users)                           # (B, D)

    def item_weights(self) -> torch.Tensor:
        return self.backbone.item_weights()                           # (N+1, D)

    def score(self, h: torch.Tensor) -> torch.Tensor:
        return self.backbone.score(h)                                 # (..., N+1)

    def position_losses(self, seqs: torch.Tensor, targets: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) next-item loss per position (0 on padding), the backbone's loss type.

        The backbone's ``hidden_losses`` on the routed hidden states.
        """
        return self.backbone.hidden_losses(self.encode(seqs, users), targets)

    def sequence_losses(self, seqs: torch.Tensor, targets: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) mean loss over each sequence's real positions."""
        pl = self.position_losses(seqs, targets, users)
        return pl.sum(1) / (targets > 0).sum(1).clamp(min=1)

    def loss(self, seqs: torch.Tensor, targets: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """Mean next-item loss over the batch's real positions."""
        pl = self.position_losses(seqs, targets, users)
        return pl.sum() / (targets > 0).sum().clamp(min=1)
