"""What notebooks visualise and tests check about training itself.

Gradient conflict: the cosine between the loss gradient of a batch of head users and that of
a batch of tail users, per layer (and over all parameters). A cosine near 1 means the two
groups pull the parameters the same way (transfer); near or below 0 means they interfere.
Gradients are taken with dropout off (``model.eval()``) so the cosine reflects the data, not
dropout noise, and through ``torch.autograd.grad``, leaving the optimizer's ``.grad`` untouched.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import torch

from .data.batches import SeqData


def layer_of(param_name: str) -> str:
    """Group parameters by module: ``blocks.0.attn.qkv.weight`` -> ``blocks.0``,
    ``item_emb.weight`` -> ``item_emb``, ``gru.weight_ih_l0`` -> ``gru``."""
    parts = param_name.split(".")
    for i, p in enumerate(parts[:-1]):
        if re.fullmatch(r"\d+", p):
            return ".".join(parts[:i + 1])
    return parts[0] if len(parts) > 1 else param_name


def layer_names(model: torch.nn.Module) -> list[str]:
    seen: dict[str, None] = {}
    for n, p in model.named_parameters():
        if p.requires_grad:
            seen[layer_of(n)] = None
    return list(seen)


def batch_gradient(model: torch.nn.Module, data: SeqData, windows: torch.Tensor,
                   loss_fn=None) -> dict[str, torch.Tensor]:
    """Flattened loss gradient per layer for the given training windows (dropout off)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    loss_fn = loss_fn or (lambda m, x, y: m.loss(x, y))
    loss = loss_fn(model, data.train_inputs[windows], data.train_targets[windows])
    grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
    model.train(was_training)
    out: dict[str, list[torch.Tensor]] = {}
    for (n, p), g in zip(params, grads):
        out.setdefault(layer_of(n), []).append((torch.zeros_like(p) if g is None else g).reshape(-1))
    return {k: torch.cat(v) for k, v in out.items()}


def cosine_by_layer(ga: dict[str, torch.Tensor], gb: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-layer cosine of two gradients, plus ``"all"`` over every parameter."""
    out = {k: float(torch.nn.functional.cosine_similarity(ga[k], gb[k], dim=0)) for k in ga}
    out["all"] = float(torch.nn.functional.cosine_similarity(
        torch.cat(list(ga.values())), torch.cat(list(gb.values())), dim=0))
    return out


def gradient_conflict(model: torch.nn.Module, data: SeqData, windows_a: torch.Tensor,
                      windows_b: torch.Tensor) -> dict[str, float]:
    """Cosine per layer between the gradients of two window batches."""
    return cosine_by_layer(batch_gradient(model, data, windows_a), batch_gradient(model, data, windows_b))


class ConflictProbe:
    """A training hook: every ``every`` steps, draw a head batch and a tail batch of windows
    and record the per-layer gradient cosine between them. Use as ``Hooks.after_step``."""

    def __init__(self, data: SeqData, head_mask: np.ndarray, tail_mask: np.ndarray,
                 every: int = 10, batch: int = 64, seed: int = 0):
        self.head = data.windows_of(head_mask).cpu()
        self.tail = data.windows_of(tail_mask).cpu()
        if len(self.head) == 0 or len(self.tail) == 0:
            raise ValueError("gradient-conflict probe needs training windows of both head and tail users")
        self.every, self.batch = every, batch
        self.gen = torch.Generator().manual_seed(seed)
        self.rows: list[dict] = []

    def _draw(self, pool: torch.Tensor, device) -> torch.Tensor:
        pick = torch.randint(0, len(pool), (min(self.batch, len(pool)),), generator=self.gen)
        return pool[pick].to(device)

    def __call__(self, ctx) -> None:
        if ctx.step % self.every:
            return
        dev = ctx.data.device
        cos = gradient_conflict(ctx.model, ctx.data, self._draw(self.head, dev), self._draw(self.tail, dev))
        self.rows += [{"step": ctx.step, "epoch": ctx.epoch, "layer": k, "cosine": v} for k, v in cos.items()]

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["step", "epoch", "layer", "cosine"])
