"""Baselines every comparison needs: the backbone trained jointly on all users (the *base
model*), or on one group only (tail-only, head-only), evaluated on everyone.

Training on a group keeps the item vocabulary of the whole dataset and drops the other users'
training windows; validation and test still rank every user, so a tail-only model's head
numbers show what it lacks.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace


from ..data.batches import SeqData
from ..data.split import UserGroups
from ..train import Hooks, TrainConfig, fit as train_fit, shuffled_batches
from .common import MethodResult, conflict_probe, evaluate_both, seeded_backbone

TRAIN_USERS = ("all", "head", "tail")


@dataclass
class BaselineConfig:
    backbone: str = "sasrec"           # "sasrec" | "gru4rec"
    train_users: str = "all"           # "all" (joint base model) | "head" | "tail" (group only)
    backbone_kwargs: dict = field(default_factory=dict)   # overrides of the backbone's config
    train: TrainConfig = field(default_factory=TrainConfig)
    conflict_every: int = 0            # probe head-vs-tail gradient conflict every N steps (0: off)
    conflict_batch: int = 64           # windows per group in each probe


def fit(data: SeqData, groups: UserGroups, cfg: BaselineConfig, seed: int = 0,
        variant: str | None = None) -> MethodResult:
    """Train one baseline and evaluate it on validation and test, all groups."""
    if cfg.train_users not in TRAIN_USERS:
        raise ValueError(f"train_users must be one of {TRAIN_USERS}, got {cfg.train_users!r}")
    variant = variant or f"{cfg.backbone} " + ("joint" if cfg.train_users == "all" else f"{cfg.train_users}-only")
    model = seeded_backbone(cfg, data, seed)
    tcfg = replace(cfg.train, seed=seed)
    hooks = Hooks()
    if cfg.train_users != "all":
        windows = data.windows_of(groups[cfg.train_users])
        hooks.batches = lambda d, c, g: shuffled_batches(d, c, g, windows)
    probe = conflict_probe(cfg, data, groups, seed)
    hooks.after_step = probe
    result = train_fit(model, data, tcfg, hooks, groups={"all": groups["all"]})
    metrics, ranks = evaluate_both(result.model, data, groups, variant, seed)
    diagnostics = {"conflict": probe.frame().assign(variant=variant)} if probe else {}
    return MethodResult("baseline", variant, seed, metrics, result.history.assign(variant=variant),
                        result.model, result, diagnostics, ranks)
