"""Personalizing Intervened Network (Lv, Wang, Zhang, Kuang, Yang, Wu, arXiv 2208.09130).

The paper's argument: after joint training, tail users (the many with few interactions) get
worse recommendations than head users; training on tail users alone is worse still, for lack
of data. Its answer has two parts, trained one after the other.

1. **Gradient Aggregation.** A backbone learns what all users share. User activeness is a
   confounder: in the plain mean over interactions, head users contribute most of the terms,
   so they dominate the gradient. Backdoor adjustment on activeness replaces that mean with
   ``sum_z P(z) * (mean gradient within activeness stratum z)``.
2. **Plugins.** Separate plugin prediction networks for head and for tail users sit on top of
   the shared backbone (frozen); each user is routed by activeness.

The claim to check: tail users improve markedly, head users do at least as well as with the
base model (``methods.baseline`` with ``train_users="all"``).

What follows the paper: the two stages, the stratification by activeness (the number of
training interactions), the per-stratum mean gradient weighted by the confounder's prior
P(z), a frozen shared backbone, and head/tail plugins routed by activeness.

Our reading, where the paper leaves details open (every choice is a config field):

* Strata: ``n_strata`` equal-population activeness quantiles (``data.split.strata``), default 5
  so the top stratum is about the Pareto head group; or explicit ``boundaries``.
* Prior: ``"users"`` (default), P(z) = share of users in stratum z, the population distribution
  of the confounder. ``"uniform"`` gives every non-empty stratum the same weight.
  ``"interactions"`` weights a stratum by its share of training positions, which gives back
  the plain mean in expectation: a sanity check that should match the base model.
* Mini-batches: the adjusted loss of a batch is ``sum_z P(z) L_z / sum_z P(z)`` over the
  strata present in the batch, where ``L_z`` is the mean per-position loss over stratum z's
  real positions in the batch (see :func:`adjusted_loss`). One backward pass then gives
  exactly the prior-weighted sum of per-stratum mean gradients, by linearity. Batches are the
  usual shuffled windows; we do not sample per stratum.
* Plugins: residual heads ``h + f(h)`` on the backbone's hidden state, before the tied item
  embeddings score it (``models.plugins.PluginHead``: a small MLP or a linear map, zero at
  initialisation, so stage 2 starts from the backbone's exact predictions). Routes: two
  plugins by the head/tail groups (route 0 = tail, 1 = head), or one per stratum.
* Stage 2 trains the plugins (and the backbone when ``freeze_backbone=False``) with the same
  loss rule as stage 1: backdoor-adjusted when ``use_aggregation``, else the plain mean. A
  frozen backbone runs in eval mode (no dropout), so plugins learn on the features they see
  at test time. Stage 2 is seeded afresh, so it depends only on the stage-1 backbone. Model
  selection in both stages: validation NDCG@10 of all users; in stage 2 the backbone alone is
  a candidate too, so plugins that never beat it on validation are not kept (the run then
  reports the backbone, and ``diagnostics["stages"]`` says so: :func:`stage2_sentence`).

With ``use_aggregation=False`` and ``use_plugins=False`` a run is the base model, bit for bit
(same seed and ``TrainConfig`` as ``methods.baseline.fit``). The paper puts its plugins on an
already trained backbone; ``fit(..., stage1=run)`` does that with a finished run (the base
model for ``use_aggregation=False``, an aggregation-only run for ``True``) instead of training
stage 1 again, which gives the same model as retraining it (for the CE loss; the BCE loss draws
its negatives from the global random stream, which a probe-free retrain consumes differently).

Variant names: ``"<backbone> intervened (aggregation)"``, ``"(plugins)"``,
``"(aggregation+plugins)"``; "GA" stays the name of gradient *alignment* (notebook 02).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from ..data.batches import SeqData
from ..data.split import UserGroups, activeness_groups, strata
from ..diagnostics import stratum_gradients
from ..evaluate import evaluate, metrics_from_ranks, rank_targets
from ..stats import verdict_interval
from ..models.plugins import PLUGIN_KINDS, RoutedRecommender
from ..train import (Hooks, StepContext, TrainConfig, clip_and_step, fit as train_fit,
                     resolve_device, seed_everything)
from .common import (ONE_SEED, MethodResult, backbone_name, conflict_probe, difference_row, evaluate_both,
                     relative_change, seeded_backbone)

PRIORS = ("users", "uniform", "interactions")
ROUTES = ("head_tail", "strata")


@dataclass
class IntervenedConfig:
    backbone: str = "sasrec"           # "sasrec" | "gru4rec"
    backbone_kwargs: dict = field(default_factory=dict)   # overrides of the backbone's config
    train: TrainConfig = field(default_factory=TrainConfig)  # stage 1 (backbone)
    plugin_train: TrainConfig | None = None  # stage 2 (plugins); None: stage 1's settings, with
                                             # checkpoints under <train.checkpoint_dir>/plugins
    use_aggregation: bool = True       # stage 1 with backdoor-adjusted gradients (False: plain mean)
    n_strata: int = 5                  # activeness strata, equal-population quantiles
    boundaries: list[float] | None = None  # explicit increasing activeness boundaries; stratum z
                                           # holds b[z-1] < a <= b[z]; overrides n_strata
    prior: str = "users"               # P(z): "users" (share of users) | "uniform" | "interactions"
    use_plugins: bool = True           # stage 2: routed plugin networks on the backbone
    plugin_kind: str = "mlp"           # "mlp" | "linear" residual head
    plugin_hidden: int | None = None   # MLP hidden size (None: the backbone's dim)
    plugin_dropout: float = 0.1        # dropout inside each plugin
    freeze_backbone: bool = True       # stage 2 trains the plugins only
    routes: str = "head_tail"          # "head_tail": 2 plugins by groups["head"] | "strata": one per stratum
    conflict_every: int = 0            # probe head-vs-tail gradient conflict every N stage-1 steps (0: off)
    conflict_batch: int = 64           # windows per group in each probe

    def __post_init__(self):
        self.check()

    @property
    def restarts(self) -> bool:
        """Whether a run trains in two stages (plugins on the backbone): its history is not one
        training, so successive halving searches its grid whole (``experiment.halves``)."""
        return self.use_plugins

    def check(self) -> None:
        """Raise ValueError naming the field and its choices on an invalid setting."""
        if self.boundaries is None and self.n_strata < 1:
            raise ValueError(f"n_strata must be >= 1, got {self.n_strata}")
        if self.boundaries is not None and np.any(np.diff(np.asarray(self.boundaries, dtype=float)) <= 0):
            raise ValueError(f"boundaries must be strictly increasing, got {list(self.boundaries)}")
        if self.prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {self.prior!r}")
        if self.routes not in ROUTES:
            raise ValueError(f"routes must be one of {ROUTES}, got {self.routes!r}")
        if self.plugin_kind not in PLUGIN_KINDS:
            raise ValueError(f"plugin_kind must be one of {PLUGIN_KINDS}, got {self.plugin_kind!r}")

    @property
    def n_strata_used(self) -> int:
        """Number of strata: ``len(boundaries) + 1`` when boundaries are given, else ``n_strata``."""
        return len(self.boundaries) + 1 if self.boundaries is not None else self.n_strata


def adjusted_loss(position_losses: torch.Tensor, targets: torch.Tensor,
                  window_strata: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """Backdoor-adjusted batch loss ``sum_z P(z) L_z / sum_z P(z)`` over strata present.

    Args:
        position_losses: (B, T) loss per position (0 on padding), e.g. ``model.position_losses``.
        targets: (B, T) next-item targets; positions with ``targets > 0`` are real.
        window_strata: (B,) long, stratum of each window's user.
        prior: (Z,) P(z).

    ``L_z`` is the mean loss over stratum z's real positions in the batch. The prior is
    renormalised over the strata with at least one real position in the batch, so the weights
    of a batch always sum to one. The gradient of the result is the prior-weighted sum of the
    per-stratum mean gradients. A batch without real positions gives 0.
    """
    if position_losses.shape != targets.shape:
        raise ValueError(f"position_losses {tuple(position_losses.shape)} and targets "
                         f"{tuple(targets.shape)} must have the same shape")
    if window_strata.shape != targets.shape[:1]:
        raise ValueError(f"window_strata must have shape ({targets.shape[0]},), "
                         f"got {tuple(window_strata.shape)}")
    real = (targets > 0).to(position_losses.dtype)                          # (B, T)
    zeros = position_losses.new_zeros(prior.numel())                        # (Z,)
    sums = zeros.index_add(0, window_strata, (position_losses * real).sum(1))   # (Z,) loss per stratum
    counts = zeros.index_add(0, window_strata, real.sum(1))                 # (Z,) real positions
    w = prior.to(sums) * (counts > 0)                                       # (Z,) prior of present strata
    w = w / w.sum().clamp(min=torch.finfo(w.dtype).tiny)
    return (w * sums / counts.clamp(min=1)).sum()


def user_strata(activeness: np.ndarray, cfg: IntervenedConfig) -> np.ndarray:
    """(U,) stratum per user (0 = least active), from ``cfg.n_strata`` or ``cfg.boundaries``."""
    return strata(activeness, cfg.n_strata, cfg.boundaries)


def user_positions(data: SeqData) -> np.ndarray:
    """(U,) training positions (next-item targets) per user over all its windows."""
    per_window = (data.train_targets > 0).sum(1).cpu().numpy()
    return np.bincount(data.train_users.cpu().numpy(), weights=per_window, minlength=data.n_users)


def stratum_prior(kind: str, stratum: np.ndarray, n_strata: int,
                  positions: np.ndarray | None = None) -> np.ndarray:
    """(Z,) P(z) over strata.

    ``"users"``: share of users in z; ``"uniform"``: 1/(non-empty strata) for each non-empty
    stratum; ``"interactions"``: share of training positions in z (``positions`` (U,) per user
    is then required).
    """
    if kind not in PRIORS:
        raise ValueError(f"prior must be one of {PRIORS}, got {kind!r}")
    users = np.bincount(stratum, minlength=n_strata).astype(float)          # (Z,)
    if kind == "users":
        p = users
    elif kind == "uniform":
        p = (users > 0).astype(float)
    else:
        if positions is None:
            raise ValueError("prior='interactions' needs the training positions per user")
        p = np.bincount(stratum, weights=positions, minlength=n_strata)
    return p / p.sum()


def strata_table(activeness: np.ndarray, stratum: np.ndarray, positions: np.ndarray,
                 prior: np.ndarray, head: np.ndarray) -> pd.DataFrame:
    """Per stratum: users, their activeness range, interactions, positions, head users, P(z)."""
    rows = []
    for z in range(len(prior)):
        m = stratum == z
        a = activeness[m]
        rows.append({"stratum": z, "users": int(m.sum()), "share of users": m.mean(),
                     "min activeness": a.min() if len(a) else np.nan,
                     "max activeness": a.max() if len(a) else np.nan,
                     "interactions": int(a.sum()),
                     "share of interactions": a.sum() / max(1, activeness.sum()),
                     "positions": int(positions[m].sum()), "head users": int(head[m].sum()),
                     "prior": float(prior[z])})
    return pd.DataFrame(rows)


def _step_fn(window_strata: torch.Tensor | None, prior: torch.Tensor | None):
    """A ``Hooks.step``: adjusted loss when ``window_strata`` is given, else the plain mean."""
    def step(ctx: StepContext) -> float:
        x, y, users = ctx.data.window_batch(ctx.batch)                               # (B, T'), (B, T'), (B,)
        ctx.optimizer.zero_grad(set_to_none=True)
        with ctx.autocast():
            if window_strata is None:
                loss = ctx.model.loss(x, y, users)
            else:
                pl = ctx.model.position_losses(x, y, users)                          # (B, T)
                loss = adjusted_loss(pl, y, window_strata[ctx.batch], prior)
        loss.backward()
        clip_and_step(ctx)
        return loss.item()
    return step


def _on_device(stratum: np.ndarray, prior: np.ndarray, data: SeqData,
               tcfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) stratum of every training window and (Z,) prior, on the device training will use."""
    dev = resolve_device(tcfg.device)
    window_strata = torch.as_tensor(stratum, device=dev)[data.train_users.to(dev)]   # (N,)
    return window_strata, torch.as_tensor(prior, dtype=torch.float32, device=dev)


def _plugin_train_cfg(cfg: IntervenedConfig, seed: int) -> TrainConfig:
    if cfg.plugin_train is None:
        ckpt = str(Path(cfg.train.checkpoint_dir) / "plugins") if cfg.train.checkpoint_dir else None
        return replace(cfg.train, seed=seed, checkpoint_dir=ckpt)
    a, b = cfg.train.checkpoint_dir, cfg.plugin_train.checkpoint_dir
    if a and b and Path(a).resolve() == Path(b).resolve():
        raise ValueError("plugin_train.checkpoint_dir must differ from train.checkpoint_dir: the two "
                         "stages train different models")
    return replace(cfg.plugin_train, seed=seed)


def _variant(cfg: IntervenedConfig) -> str:
    parts = (["aggregation"] if cfg.use_aggregation else []) + (["plugins"] if cfg.use_plugins else [])
    return f"{cfg.backbone} intervened ({'+'.join(parts) or 'plain'})"


def _stage_row(stage: str, r) -> dict:
    return {"stage": stage, "best_epoch": r.best_epoch, "best_valid_ndcg10": r.best_valid,
            "stopped": r.stopped, "steps": r.steps, "seconds": r.seconds, "device": r.device}


def _plugin_stage(backbone: torch.nn.Module, data: SeqData, groups: UserGroups, cfg: IntervenedConfig,
                  seed: int, variant: str, stratum: np.ndarray, prior: np.ndarray):
    """Stage 2: routed plugins on the trained ``backbone`` (frozen in place when
    ``cfg.freeze_backbone``). Seeded on its own, so that it depends only on the backbone, the
    groups, ``cfg`` and ``seed``.

    The backbone alone is the first candidate: it is scored on validation (NDCG@10, all users,
    exactly as the training loop scores the plugins) before the plugins train, and the plugins
    are kept only when their best validation score is strictly higher. Otherwise the returned
    model is the backbone as it came in, bit for bit (an untouched copy, so this holds even with
    ``freeze_backbone=False``).

    Returns the ``TrainResult`` to report (the plugins', or, when they were not kept, the same
    with the backbone as ``model`` and its score as ``best_valid``), the plugins' own
    ``TrainResult``, the backbone's validation NDCG@10, and the diagnostics ``"backbone_metrics"`` (the backbone alone) and
    ``"routes"``."""
    head = np.asarray(groups["head"], dtype=bool)
    Z = len(prior)
    backbone_metrics, _ = evaluate_both(backbone, data, groups, variant, seed)
    if cfg.routes == "head_tail":
        route, n_routes, names = head.astype(np.int64), 2, ["tail", "head"]
    else:
        route, n_routes, names = stratum.astype(np.int64), Z, [f"stratum {z}" for z in range(Z)]
    pcfg = _plugin_train_cfg(cfg, seed)
    candidate = copy.deepcopy(backbone)              # the backbone as it came in, returned if plugins lose
    device = resolve_device(pcfg.device)
    backbone_valid = float(evaluate(candidate.to(device), data.to(device), "valid", {"all": groups["all"]},
                                    ks=(10,), batch_size=pcfg.eval_batch_size).query("metric == 'ndcg'")["value"].iloc[0])
    seed_everything(seed)
    model = RoutedRecommender(backbone, n_routes, torch.as_tensor(route), kind=cfg.plugin_kind,
                              hidden=cfg.plugin_hidden, dropout=cfg.plugin_dropout,
                              freeze_backbone=cfg.freeze_backbone)
    hooks = Hooks()
    strata_and_prior = _on_device(stratum, prior, data, pcfg) if cfg.use_aggregation else (None, None)
    hooks.step = _step_fn(*strata_and_prior)
    plugins = train_fit(model, data, pcfg, hooks, groups={"all": groups["all"]})
    if plugins.best_valid > backbone_valid:
        result = plugins
    else:                                           # the copy predates freezing: flags as they came in
        result = replace(plugins, model=candidate, best_valid=backbone_valid)
    routes = pd.DataFrame({"route": range(n_routes), "name": names,
                           "users": np.bincount(route, minlength=n_routes),
                           "head users": np.bincount(route, weights=head, minlength=n_routes).astype(int)})
    return result, plugins, backbone_valid, {"backbone_metrics": backbone_metrics.assign(stage="backbone"), "routes": routes}


def plugins_kept(result: MethodResult) -> bool | None:
    """Whether stage 2 kept the plugins of an intervened run (``None``: the run had no stage 2)."""
    stages = result.diagnostics.get("stages")
    if stages is None or "kept" not in stages or not (stages["stage"] == "plugins").any():
        return None
    return bool(stages.loc[stages["stage"] == "plugins", "kept"].iloc[0])


def stage2_sentence(result: MethodResult) -> str:
    """One sentence for the notebook: did the plugins beat the backbone alone on validation?"""
    kept = plugins_kept(result)
    if kept is None:
        return f"{result.variant}: no plugin stage."
    row = result.diagnostics["stages"].set_index("stage").loc["plugins"]
    b, p = row["backbone_valid_ndcg10"], row["best_valid_ndcg10"]
    if kept:
        return f"{result.variant}: plugins kept (validation NDCG@10 {p:.4f} vs the backbone alone {b:.4f})."
    return (f"{result.variant}: plugins NOT kept -- they never beat the backbone alone on validation "
            f"(best {p:.4f} vs {b:.4f}), so this run reports the backbone.")


def fit(data: SeqData, groups: UserGroups, cfg: IntervenedConfig, seed: int = 0,
        variant: str | None = None, stage1: MethodResult | None = None) -> MethodResult:
    """Stage 1: train the backbone (backdoor-adjusted when ``cfg.use_aggregation``); stage 2
    (when ``cfg.use_plugins``): train routed plugins on it. Evaluate on validation and test,
    all groups.

    ``stage1``: a finished run whose model is the backbone stage 1 would train (the base model,
    ``methods.baseline`` on all users, when ``use_aggregation`` is off; a run of this ``fit``
    with ``use_plugins=False`` when it is on), with the same ``seed``. Its model is copied, not
    changed, and stage 1 is not trained again; its history, stage row and conflict probe stand
    for stage 1's.

    Returns ``MethodResult("intervened", variant, ...)``: ``history`` holds both stages (column
    ``stage``: "backbone" | "plugins"; epochs and steps restart in each stage), ``train`` is the
    last stage's ``TrainResult``, ``diagnostics`` holds ``"strata"`` (per-stratum users,
    interactions, positions, prior), ``"stages"`` (with plugins: ``kept``, whether they beat
    the backbone alone on validation, and ``backbone_valid_ndcg10``), ``"conflict"`` when probed (stage 1), and
    with plugins ``"routes"`` and ``"backbone_metrics"`` (the stage-1 model alone, same layout
    as ``metrics`` plus ``stage="backbone"``: what the plugins add within one run). Stage 2 is
    seeded afresh with ``seed``, so it depends only on the stage-1 backbone, not on how many
    random numbers stage 1 drew.
    """
    cfg.check()
    variant = variant or _variant(cfg)
    stratum, positions, prior = _strata_and_prior(data, cfg)                # (U,), (U,), (Z,)
    head = np.asarray(groups["head"], dtype=bool)
    diagnostics = {"strata": strata_table(data.activeness, stratum, positions, prior, head)}

    if stage1 is None:
        model = seeded_backbone(cfg, data, seed)
        tcfg = replace(cfg.train, seed=seed)
        hooks = Hooks()
        if cfg.use_aggregation:
            hooks.step = _step_fn(*_on_device(stratum, prior, data, tcfg))
        probe = conflict_probe(cfg, data, groups, seed)
        hooks.after_step = probe
        result = train_fit(model, data, tcfg, hooks, groups={"all": groups["all"]})
        history = [result.history.assign(stage="backbone")]
        if probe:
            diagnostics["conflict"] = probe.frame()
    else:
        _check_stage1(stage1, cfg, seed, prior)
        result = replace(stage1.train, model=copy.deepcopy(stage1.model))
        history = [stage1.history.drop(columns=["variant", "stage"], errors="ignore").assign(stage="backbone")]
        if "conflict" in stage1.diagnostics:
            diagnostics["conflict"] = stage1.diagnostics["conflict"].drop(columns="variant", errors="ignore")
    # trained: False where the backbone is stage1's (an input run's seconds, not this run's)
    stages = [{**_stage_row("backbone", result), "trained": stage1 is None}]

    if cfg.use_plugins:
        result, plugins, backbone_valid, extra = _plugin_stage(result.model, data, groups, cfg, seed,
                                                               variant, stratum, prior)
        history.append(plugins.history.assign(stage="plugins"))
        stages.append({**_stage_row("plugins", plugins), "trained": True, "kept": result is plugins,
                       "backbone_valid_ndcg10": backbone_valid})
        diagnostics.update(extra)

    metrics, ranks = evaluate_both(result.model, data, groups, variant, seed)
    diagnostics["stages"] = pd.DataFrame(stages)
    diagnostics = {k: v.assign(variant=variant) for k, v in diagnostics.items()}
    return MethodResult("intervened", variant, seed, metrics,
                        pd.concat(history, ignore_index=True).assign(variant=variant),
                        result.model, result, diagnostics, ranks)


def _check_stage1(stage1: MethodResult, cfg: IntervenedConfig, seed: int, prior: np.ndarray) -> None:
    """Raise ValueError when ``stage1`` cannot be the backbone ``cfg``'s stage 1 would train."""
    if not cfg.use_plugins:
        raise ValueError("stage1 is only used under plugins: with use_plugins=False the run would be "
                         "stage1 itself; use that run instead")
    if stage1.seed != seed:
        raise ValueError(f"stage1 was trained with seed {stage1.seed}, this run uses seed {seed}")
    want = "intervened" if cfg.use_aggregation else "baseline"
    if stage1.method != want or isinstance(stage1.model, RoutedRecommender) or stage1.train is None:
        raise ValueError(f"stage1 must be a finished {want!r} run without plugins (use_aggregation="
                         f"{cfg.use_aggregation}), got {stage1.method!r} run {stage1.variant!r}")
    if backbone_name(stage1.model) != cfg.backbone:
        raise ValueError(f"stage1 trained a {backbone_name(stage1.model)} backbone, cfg.backbone is "
                         f"{cfg.backbone!r}")
    used = stage1.diagnostics.get("strata")
    if cfg.use_aggregation and used is not None and (
            len(used) != len(prior) or not np.allclose(used["prior"].to_numpy(), prior)):
        raise ValueError(f"stage1 aggregated over the prior {np.round(used['prior'].to_numpy(), 3).tolist()}, "
                         f"cfg gives {np.round(prior, 3).tolist()}: train stage1 with the same strata and prior")


# Views and sweeps for the notebook (notebooks/03_intervened_network.ipynb): the strata before
# training, the per-stratum gradients of trained models, the sensitivity to the two settings the
# paper leaves to the reader, and the paper's claim in one sentence.

def _strata_and_prior(data: SeqData, cfg: IntervenedConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U,) stratum, (U,) training positions and (Z,) prior of ``cfg``, as ``fit`` builds them."""
    stratum = user_strata(data.activeness, cfg)
    positions = user_positions(data)
    return stratum, positions, stratum_prior(cfg.prior, stratum, cfg.n_strata_used, positions)


def describe_strata(data: SeqData, groups: UserGroups, cfg: IntervenedConfig) -> pd.DataFrame:
    """The strata table that ``fit`` records as ``diagnostics["strata"]``, before any training."""
    stratum, positions, prior = _strata_and_prior(data, cfg)
    return strata_table(data.activeness, stratum, positions, prior, np.asarray(groups["head"], dtype=bool))


def gradient_view(models: dict[str, torch.nn.Module], data: SeqData, cfg: IntervenedConfig,
                  batch: int = 128, seed: int = 0) -> pd.DataFrame:
    """Each model's per-stratum mean gradients against the plain and the adjusted aggregate.

    ``diagnostics.stratum_gradients`` with the strata and prior of ``cfg``, for every
    ``name -> model`` (e.g. the base model and the aggregation backbone); ``batch`` windows per stratum.
    The data follow each model's device. For a routed model with a frozen backbone only the
    plugins have gradients. Returns the frames stacked, with a ``variant`` column (the name).
    """
    stratum, _, prior = _strata_and_prior(data, cfg)
    frames = []
    for name, model in models.items():
        device = next(model.parameters()).device
        d = data if data.device == device else data.to(device)
        window_strata = torch.as_tensor(stratum)[d.train_users.cpu()]              # (N,)
        frames.append(stratum_gradients(model, d, window_strata, prior, batch, seed).assign(variant=name))
    return pd.concat(frames, ignore_index=True)


def _point_cfg(cfg: IntervenedConfig, tag: str, **changes) -> IntervenedConfig:
    """``cfg`` with ``changes``; checkpoints, if any, go to a sub-folder per sweep point so that a
    point never resumes from another run's checkpoint."""
    out = replace(cfg, **changes)
    if cfg.train.checkpoint_dir:
        out.train = replace(cfg.train, checkpoint_dir=str(Path(cfg.train.checkpoint_dir) / tag))
    if cfg.plugin_train is not None and cfg.plugin_train.checkpoint_dir:
        out.plugin_train = replace(cfg.plugin_train,
                                   checkpoint_dir=str(Path(cfg.plugin_train.checkpoint_dir) / tag))
    return out


def sensitivity(data: SeqData, groups: UserGroups, cfg: IntervenedConfig, base: MethodResult,
                n_strata_grid=(), head_frac_grid=(), seed: int = 0,
                reference: MethodResult | None = None, metric: str = "ndcg", k: int = 10,
                run_calls: Callable | None = None) -> pd.DataFrame:
    """How the method's test metric, and its change against the base model, move with the number
    of strata and with the head/tail boundary: two one-at-a-time sweeps around ``cfg``.

    * ``n_strata`` over ``n_strata_grid`` (equal-population quantiles, replacing any
      ``boundaries``), head/tail groups fixed at ``groups``: both stages are trained again.
    * the head share over ``head_frac_grid``: groups rebuilt by
      ``data.activeness_groups(activeness, head_frac, cold_max=groups.cold_max)``, ``cfg`` fixed.
      This moves the plugins' routes and the groups every number is reported for. Stage 1 does
      not depend on the groups, so with a ``reference`` only stage 2 is trained again (on a copy
      of the reference's backbone, frozen), or nothing at all without plugins.

    ``base`` is the base model (trained on all users, so independent of both settings),
    re-scored from its test ranks under each point's groups. ``reference``, the run of ``cfg`` on
    ``groups`` with this ``seed``, is reused for the points identical to it. Without a reference
    every point is a full ``fit(data, point_groups, point_cfg, seed)``. The trainings are
    independent; ``run_calls`` (a list of ``(function, args)`` -> their results in order, e.g.
    ``Experiment.map_calls``, which may hand them to Ray) runs them; default: one by one here.

    Returns one row per point and group: sweep ("n_strata" | "head_frac"), setting, variant,
    head_share, group, n_users, base, method (test ``metric@k``), change (method / base - 1),
    trained ("reused" | "plugins" | "both stages").
    """
    if reference is not None and reference.seed != seed:
        raise ValueError(f"reference was trained with seed {reference.seed}, the sweep uses seed {seed}")
    activeness = np.asarray(data.activeness)
    points = []                                       # (sweep, setting, cfg, groups, same groups)
    for n in n_strata_grid:
        same = cfg.boundaries is None and int(n) == cfg.n_strata
        points.append(("n_strata", int(n), _point_cfg(cfg, f"n_strata-{n}", n_strata=int(n), boundaries=None),
                       groups, same, same))
    for h in head_frac_grid:
        g = activeness_groups(activeness, head_frac=float(h), cold_max=groups.cold_max)
        points.append(("head_frac", float(h), _point_cfg(cfg, f"head_frac-{h}"), g,
                       np.array_equal(g["head"], groups["head"]), True))
    trained, calls = [], []                           # what each point needs; the trainings
    for sweep, setting, point_cfg, g, same, same_stage1 in points:
        variant = f"{_variant(point_cfg)} [{sweep} {setting}]"
        if reference is not None and (same or (same_stage1 and not cfg.use_plugins)):
            trained.append("reused")
        elif reference is not None and same_stage1 and cfg.freeze_backbone:
            backbone = getattr(reference.model, "backbone", reference.model)
            trained.append("plugins")
            calls.append((_plugins_point_ranks, (backbone, data, g, point_cfg, seed, variant)))
        else:
            trained.append("both stages")
            calls.append((_fit_point_ranks, (data, g, point_cfg, seed, variant)))
    # the trainings are independent: run_calls may run them in parallel (Experiment.map_calls)
    ranked = iter((run_calls or _run_here)(calls))
    rows = []
    for (sweep, setting, point_cfg, g, same, same_stage1), how in zip(points, trained):
        variant = f"{_variant(point_cfg)} [{sweep} {setting}]"
        ranks = reference.ranks["test"] if how == "reused" else next(ranked)
        for name, mask in g.masks.items():
            mask = np.asarray(mask, dtype=bool)
            b = metrics_from_ranks(base.ranks["test"][mask], (k,))[(metric, k)]
            m = metrics_from_ranks(ranks[mask], (k,))[(metric, k)]
            rows.append({"sweep": sweep, "setting": setting, "variant": variant,
                         "head_share": float(g["head"].mean()), "group": name, "n_users": int(mask.sum()),
                         "base": b, "method": m, "change": m / b - 1 if b > 0 else np.nan,
                         "trained": how})
    out = pd.DataFrame(rows)
    out["setting"] = pd.Series([r["setting"] for r in rows], dtype=object)   # 2 stays 2, 0.1 stays 0.1
    return out


def _run_here(calls: list) -> list:
    return [fn(*args) for fn, args in calls]


def _fit_point_ranks(data: SeqData, groups: UserGroups, cfg: IntervenedConfig, seed: int, variant: str) -> np.ndarray:
    """Test ranks of a full two-stage fit (a sensitivity point whose stage 1 changes)."""
    return fit(data, groups, cfg, seed, variant).ranks["test"]


def _plugins_point_ranks(backbone, data: SeqData, groups: UserGroups, cfg: IntervenedConfig, seed: int,
                         variant: str) -> np.ndarray:
    """Test ranks of stage 2 alone on a copy of a trained, frozen backbone (a sensitivity point
    that moves only the groups)."""
    stratum, _, prior = _strata_and_prior(data, cfg)
    result, *_ = _plugin_stage(copy.deepcopy(backbone), data, groups, cfg, seed, variant, stratum, prior)
    return rank_targets(result.model, data, "test")


def claim_verdict(table: pd.DataFrame, method: str, baseline: str, metric: str = "ndcg", k: int = 10) -> str:
    """The paper's claim in one sentence: tail users improve markedly over the base model and
    head users do at least as well.

    ``table`` is ``methods.compare`` output for both groups (the intervals over users and over
    seeds), or ``methods.summarize`` output (seed t-intervals; none with one seed), read through
    ``methods.difference_row``. The interval read is the union of the users' and the seeds'
    (``stats.verdict_interval``): the tail gain counts only when it lies above zero; head users
    fall below the base model only when it lies below zero. Without an interval the sentence
    says the claim cannot be told from noise; with one seed it says seed noise was not measured.
    """
    label = f"{metric.upper()}@{k}"
    rows = {g: difference_row(table, method, baseline, g, metric, k) for g in ("tail", "head")}
    missing = [g for g, r in rows.items() if r is None]
    if missing:
        return f"No {label} of {method} against {baseline} for {', '.join(missing)}: cannot check the claim."
    parts, failures, no_interval = [], [], False
    for group, r in rows.items():
        a, b = float(r["a"]), float(r["b"])
        lo, hi = verdict_interval(float(r["lo"]), float(r["hi"]), float(r.get("seed_lo", np.nan)),
                                  float(r.get("seed_hi", np.nan)))
        rel = f" ({relative_change(a, b)})" if b else ""
        if np.isnan(lo) or np.isnan(hi):
            no_interval = True
            parts.append(f"{group} {label} {a:.4f} vs {b:.4f}{rel}")
            continue
        over = "users and seeds" if int(r.get("n_seeds", 1) or 1) > 1 else "users"
        parts.append(f"{group} {label} {a:.4f} vs {b:.4f}{rel}, difference 95% CI over {over} "
                     f"[{lo:+.4f}, {hi:+.4f}]")
        if group == "tail" and lo <= 0:
            failures.append("tail users get worse" if hi < 0 else "the tail difference is within the noise")
        if group == "head" and hi < 0:
            failures.append("head users fall below the base model")
    out = f"{method} vs {baseline}: {'; '.join(parts)}. "
    if no_interval:
        return out + "No interval (one seed and no per-user ranks): the claim cannot be told from noise."
    one = f" ({ONE_SEED})" if all(int(r.get("n_seeds", 1) or 1) == 1 for r in rows.values()) else ""
    return out + ("The paper's claim holds" if not failures
                  else f"The paper's claim does NOT hold: {' and '.join(failures)}") + f"{one}."
