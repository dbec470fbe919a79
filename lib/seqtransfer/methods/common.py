"""What every method returns, and the steps every method shares."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..data.batches import SeqData
from ..data.split import UserGroups
from ..diagnostics import ConflictProbe
from ..evaluate import evaluate, rank_targets
from ..models import BACKBONES, SequentialRecommender, make_backbone
from ..train import TrainResult, seed_everything


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

    def ndcg10(self, group: str = "all", split: str = "test") -> float:
        m = self.metrics
        sel = (m["split"] == split) & (m["group"] == group) & (m["metric"] == "ndcg") & (m["k"] == 10)
        return float(m.loc[sel, "value"].iloc[0])


def seeded_backbone(cfg, data: SeqData, seed: int) -> SequentialRecommender:
    """``cfg.backbone`` with ``cfg.backbone_kwargs``, built right after seeding: every method
    that does this first starts from the baseline's initial weights for the same seed."""
    seed_everything(seed)
    return make_backbone(cfg.backbone, data.n_items, **{"max_len": data.max_len, **cfg.backbone_kwargs})


def conflict_probe(cfg, data: SeqData, groups: UserGroups | dict, seed: int) -> ConflictProbe | None:
    """The head-vs-tail gradient probe a config asks for (``cfg.conflict_every`` steps apart,
    ``cfg.conflict_batch`` windows per group), or ``None`` when it asks for none."""
    if not cfg.conflict_every:
        return None
    return ConflictProbe(data, groups["head"], groups["tail"], every=cfg.conflict_every,
                         batch=cfg.conflict_batch, seed=seed)


def evaluate_both(model: torch.nn.Module, data: SeqData, groups: UserGroups | dict,
                  variant: str, seed: int) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Full-ranking metrics on validation and test for every group, labelled by variant/seed."""
    masks = groups.masks if isinstance(groups, UserGroups) else groups
    frames, ranks = [], {}
    for split in ("valid", "test"):
        ranks[split] = rank_targets(model, data, split)
        frames.append(evaluate(model, data, split, masks, ranks=ranks[split]))
    metrics = pd.concat(frames, ignore_index=True).assign(variant=variant, seed=seed)
    return metrics, ranks


def backbone_name(model: torch.nn.Module) -> str:
    """The backbone key ("sasrec", "gru4rec") of a model, looking through wrappers that keep
    their backbone in a ``backbone`` attribute."""
    while isinstance(getattr(model, "backbone", None), torch.nn.Module):
        model = model.backbone
    for key, (cls, _) in BACKBONES.items():
        if isinstance(model, cls):
            return key
    return type(model).__name__.lower()


def combine_results(results: list[MethodResult]) -> pd.DataFrame:
    """All metrics of several runs in one tidy frame, with ``method`` (the run's, e.g.
    ``"baseline"`` for the base model inside a method notebook) and ``backbone`` columns."""
    return pd.concat([r.metrics.assign(method=r.method, backbone=backbone_name(r.model)) for r in results],
                     ignore_index=True)


def histories(results: list[MethodResult]) -> pd.DataFrame:
    """Training curves of several runs in one frame (``variant`` and ``seed`` columns)."""
    return pd.concat([r.history.assign(variant=r.variant, seed=r.seed) for r in results],
                     ignore_index=True)


def diagnostics(results: list[MethodResult], key: str) -> pd.DataFrame:
    """One diagnostic frame (e.g. ``"conflict"``) of every run that has it, with ``variant``
    and ``seed`` columns; an error names the keys that exist when none has it."""
    frames = [r.diagnostics[key].assign(variant=r.variant, seed=r.seed)
              for r in results if key in r.diagnostics]
    if not frames:
        have = sorted({k for r in results for k in r.diagnostics})
        raise KeyError(f"no run recorded diagnostic {key!r}; available: {have or 'none'}")
    return pd.concat(frames, ignore_index=True)


def summarize(metrics: pd.DataFrame, split: str = "test", ks=(10,), metrics_=("ndcg", "hr")) -> pd.DataFrame:
    """Mean over seeds with a 95% t-interval half-width, per variant x group x metric@k."""
    m = metrics[(metrics["split"] == split) & metrics["k"].isin(ks) & metrics["metric"].isin(metrics_)]
    g = m.groupby(["variant", "group", "metric", "k"], sort=False)["value"]
    out = g.agg(["mean", "std", "count"]).reset_index()
    out["ci95"] = [_t95(n) * s / np.sqrt(n) if n > 1 else np.nan for s, n in zip(out["std"], out["count"])]
    return out.rename(columns={"count": "n_seeds"})


def _t95(n: int) -> float:
    """Two-sided 95% Student-t quantile for n samples (n-1 degrees of freedom)."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
             9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}
    df = n - 1
    if df > 30:
        return 1.96
    return table[min(table, key=lambda d: (abs(d - df), -d))]


def summary_row(table: pd.DataFrame, variant: str, group: str, metric: str = "ndcg", k: int = 10) -> pd.Series | None:
    """The row of ``summarize`` output for one variant, group and metric@k (None when absent)."""
    rows = table[(table["variant"] == variant) & (table["group"] == group) &
                 (table["metric"] == metric) & (table["k"] == k)]
    return None if rows.empty else rows.iloc[0]


def gap_sentence(table: pd.DataFrame, variant: str, metric: str = "ndcg", k: int = 10) -> str:
    """One sentence on how far tail (and cold-start) users trail head users under ``variant``."""
    def value(group):
        row = summary_row(table, variant, group, metric, k)
        return float("nan") if row is None else float(row["mean"])
    head, tail, cold = value("head"), value("tail"), value("cold")
    label = f"{metric.upper()}@{k}"
    out = f"{variant}: head {label} {head:.4f}, tail {tail:.4f}"
    if head > 0:
        out += f" (tail/head = {tail / head:.2f})"
    if not np.isnan(cold):
        out += f", cold-start {cold:.4f}"
    return out + "."


def relative_change(a: float, b: float) -> str:
    """``a`` against ``b`` in percent, with enough digits that a non-zero change never reads
    as 0.0% (``+1.3%``, ``-0.004%``)."""
    rel = (a - b) / b * 100
    return f"{rel:+.1f}%" if rel == 0 or abs(rel) >= 0.05 else f"{rel:+.1g}%"


def transfer_verdict(table: pd.DataFrame, method: str, baseline: str, group: str = "tail",
                     metric: str = "ndcg", k: int = 10) -> str:
    """One sentence: did ``method`` beat ``baseline`` for ``group``? Negative transfer named."""
    a, b = summary_row(table, method, group, metric, k), summary_row(table, baseline, group, metric, k)
    if a is None or b is None:
        return f"{method} or {baseline} has no {group} {metric}@{k} to compare."
    a, b = float(a["mean"]), float(b["mean"])
    rel = f" ({relative_change(a, b)})" if b else ""
    numbers = f"{metric.upper()}@{k} {a:.4f} vs {b:.4f}{rel}"
    if a > b:
        return f"{method} beats {baseline} for {group} users: {numbers}."
    return (f"{method} does NOT beat {baseline} for {group} users: {numbers}"
            + (" -- negative transfer." if a < b else " (a tie)."))


def stopped_by_cap(result: MethodResult) -> list[str]:
    """The stopping reasons of ``result``'s training stages that were a cap (epochs, max_steps,
    max_minutes) rather than early stopping on validation; empty when every stage converged."""
    stages = result.diagnostics.get("stages")
    if stages is not None and "stopped" in stages:
        reasons = list(stages["stopped"])
    elif result.train is not None:
        reasons = [result.train.stopped]
    else:
        reasons = []
    return [r for r in reasons if not str(r).startswith("early stop")]


def still_improving(results: list[MethodResult]) -> list[str]:
    """Variants with a training stage ended by a cap (epochs, steps or minutes) rather than by
    early stopping: such a model may still have been getting better."""
    return list(dict.fromkeys(r.variant for r in results if stopped_by_cap(r)))


def convergence_sentence(results: list[MethodResult]) -> str:
    """One sentence on whether the compared models were trained to convergence (early stopping)
    or cut off by a cap, in which case a comparison partly measures how fast each variant learns
    rather than where it ends up."""
    capped = still_improving(results)
    if not capped:
        return "Every model stopped early on validation NDCG@10: the comparison is between converged models."
    n = len({r.variant for r in results})
    share = ("The model was" if n == 1 else f"All {n} models were" if len(capped) == n
             else f"{len(capped)} of {n} models were")
    reasons = sorted({why for r in results for why in stopped_by_cap(r)})
    return (f"{share} stopped by a cap ({'; '.join(reasons)}), not by early stopping: "
            f"{', '.join(capped)}. Where a capped model is compared, the comparison is between models that may "
            "still have been improving and partly measures how fast each variant learns.")
