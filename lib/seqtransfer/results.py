"""What every run returns: :class:`MethodResult`.

Its own module, importing nothing of the engine or the methods, so that both
:mod:`seqtransfer.experiment` (which trains and caches runs) and every method module (which
builds them) import it without an import circle.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .train import TrainResult


@dataclass
class MethodResult:
    """Metrics per split and group, training curves and method diagnostics of one run."""

    method: str                      # e.g. "baseline"
    variant: str                     # e.g. "sasrec joint", "sasrec tail-only"
    seed: int
    metrics: pd.DataFrame            # split, protocol, group, metric, k, value, n_users, variant, seed
    history: pd.DataFrame            # epoch, step, loss, valid_ndcg10, seconds
    model: torch.nn.Module
    train: TrainResult | None = None
    diagnostics: dict[str, pd.DataFrame] = field(default_factory=dict)
    ranks: dict[str, np.ndarray] = field(default_factory=dict)   # split -> (U,) target ranks
    lr: float | None = None          # the learning rate it trained with (chosen on validation
                                     # by Experiment.run when a grid is searched)
    tuning: pd.DataFrame | None = None   # that search: lr, valid_ndcg10, chosen
    ran_on: dict | None = None       # where it trained: executor, node, host, pid (Experiment.run)

    def ndcg10(self, group: str = "all", split: str = "test") -> float:
        m = self.metrics
        sel = (m["split"] == split) & (m["group"] == group) & (m["metric"] == "ndcg") & (m["k"] == 10)
        return float(m.loc[sel, "value"].iloc[0])
