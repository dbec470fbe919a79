"""ANT: multi-modality meets re-learning (Peng, Parthasarathy, Ning, arXiv 2309.10195).

The question: a sequential recommender pre-trained on rich source domains and adapted to a small
target domain, does it help or hurt against training on the target alone (negative transfer)?
ANT's answer: items as modality features through mixture-of-experts adaptors, and *re-learning*
on the target (freeze the transformer, re-initialise adaptors and positions).

What follows ANT's code (``ninglab/ANT``, ``models/ANT.py``, ``finetune.py``):

* the item encoder of :class:`~seqtransfer.models.ContentSASRec`: one MoE adaptor per modality
  (8 whitening experts, numeric experts linear, noisy gate on the raw feature), fusion with
  ``beta`` = 0.1, cosine / 0.07 scores, a 2-layer 2-head transformer over max 50 items;
* pre-training: in-batch sequence -> next-item contrastive loss, logits of other rows with the
  same target masked, plus 1e-3 x an item-level cross-modal contrastive term;
* adaptation variants: **re-learn** (transformer frozen; positions and every adaptor expert
  re-initialised, gates zero; the input LayerNorm keeps its value and trains), **fine-tune**
  (everything from its pre-trained value), **scratch** (same architecture, random init, target
  only), and UniSRec's **adaptor-tune** (transformer and positions frozen, adaptors tuned from
  their pre-trained values); target loss: full softmax over all target items.

Ours, where MovieLens and Amazon Scientific differ from ANT's data [ours]: no images or prices
exist, so the slots are ``text`` (MiniLM of the title / item text), ``numeric`` (release year
code, in the place of price) and ``categorical`` (genre multi-hot); the fusion product and the
cross-modal term use the (text, categorical) pair instead of (image, text). A slot missing on
the target (no year or genre on Amazon) simply contributes nothing there. Pre-training batches
are windows of per-domain sequences; every real position is a prefix, and a step uses at most
``max_positions`` of them (in-batch logits are P x P). Our transformer blocks are pre-LN with a
final LayerNorm, which counts as part of the frozen transformer.

Functions on a model (each testable alone): :func:`relearn`, :func:`fine_tune`,
:func:`adaptor_tune`, :func:`scratch`. :func:`pretrain` trains on the sources, :func:`fit` adapts
one variant to the target, :func:`prepare` builds the data of a :class:`~seqtransfer.data.CrossDomain`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from .. import data as D
from ..data.batches import SeqData
from ..data.split import UserGroups
from ..models import ContentConfig, ContentSASRec, masked_contrastive_loss
from ..results import MethodResult
from ..runspec import Run
from ..train import Hooks, StepContext, TrainConfig, clip_and_step, fit as train_fit, seed_everything
from .common import evaluate_both, stage_times, timings  # noqa: F401  (04 reads ant.stage_times)

if TYPE_CHECKING:
    from ..experiment import Transfer

VARIANTS = ("scratch", "fine-tune", "adaptor-tune", "re-learn")
# 04 at quick trains ANT's own three arms; UniSRec's adaptor-tune (not a variant of ANT's paper)
# only at smoke and full, or when named in the notebook's ``variants``
VARIANTS_QUICK = ("scratch", "fine-tune", "re-learn")


def check_variants(variants) -> list[str]:
    """``variants`` as a list of ANT arms: known names, no repeats, ``scratch`` among them (every
    adapted arm is compared with it); a clear error otherwise."""
    if isinstance(variants, str):
        variants = [variants]
    variants = list(variants)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"unknown ANT variant(s) {unknown or variants!r}; choose from {VARIANTS}")
    if len(set(variants)) != len(variants):
        raise ValueError(f"ANT variants repeat: {variants}")
    if "scratch" not in variants:
        raise ValueError(f"variants {variants} leave out 'scratch', which every adapted arm is compared with; add it")
    return variants


@dataclass
class AntConfig:
    model: ContentConfig = field(default_factory=ContentConfig)
    slots: tuple[str, ...] = ("text", "numeric", "categorical")   # feature slots the model reads
    variant: str = "re-learn"              # one of VARIANTS
    pretrain: TrainConfig = field(default_factory=TrainConfig)    # on the source domains
    train: TrainConfig = field(default_factory=TrainConfig)       # adaptation on the target
    cross_modal_weight: float = 1e-3       # item-level cross-modal term (ANT: 1e-3); 0 = off
    cross_modal_pair: tuple[str, str] | None = ("text", "categorical")   # [ours]; ANT: image -> text
    max_positions: int = 512               # prefixes per in-batch contrastive step


# ---------------------------------------------------------------------------------------------
# adaptation variants: functions on a model, in place
# ---------------------------------------------------------------------------------------------

def _trainable(modules, flag: bool) -> None:
    for m in modules:
        for p in (m.parameters() if isinstance(m, nn.Module) else [m]):
            p.requires_grad_(flag)


def relearn(model: ContentSASRec, seed: int) -> ContentSASRec:
    """ANT's re-learning: transformer frozen; positions and every adaptor re-initialised (gates
    zero) from a generator seeded by ``seed``; the input LayerNorm keeps its value and trains.
    The new values depend on ``seed`` only, not on the pre-trained adaptors."""
    gen = torch.Generator(device=model.pos_emb.weight.device).manual_seed(seed)
    _trainable(model.parameters(), True)
    _trainable(model.transformer_modules(), False)
    with torch.no_grad():
        nn.init.normal_(model.pos_emb.weight, std=0.02, generator=gen)
        for s in model.slots:
            model.adaptors[s].reset(gen)
        if model.item_emb is not None:
            nn.init.normal_(model.item_emb.weight, std=0.02, generator=gen)
    return model


def fine_tune(model: ContentSASRec) -> ContentSASRec:
    """Every parameter trainable from its pre-trained value."""
    _trainable(model.parameters(), True)
    return model


def adaptor_tune(model: ContentSASRec) -> ContentSASRec:
    """UniSRec's adaptation: transformer and positions frozen; adaptors (and the input LayerNorm)
    tuned from their pre-trained values."""
    _trainable(model.parameters(), True)
    _trainable([*model.transformer_modules(), model.pos_emb], False)
    return model


def scratch(model: ContentSASRec, seed: int) -> ContentSASRec:
    """A new model of the same architecture on the same items, randomly initialised under ``seed``
    (only the slots the items have get an adaptor)."""
    feats = {s: getattr(model, f"feat_{s}").cpu() for s in model.active}
    seed_everything(seed)
    return ContentSASRec(feats, model.cfg)


# ---------------------------------------------------------------------------------------------
# pre-training and adaptation
# ---------------------------------------------------------------------------------------------

def build(features: D.ItemFeatures, cfg: AntConfig, seed: int) -> ContentSASRec:
    """A fresh content model over ``cfg.slots`` of ``features``, seeded."""
    seed_everything(seed)
    return ContentSASRec(features.select(list(cfg.slots)).matrices, cfg.model)


def contrastive_step(cfg: AntConfig):
    """A step hook: masked in-batch contrastive loss over (at most ``max_positions``) prefixes
    of the batch, plus the cross-modal term on their target items."""
    def step(ctx: StepContext) -> float:
        model = ctx.model
        seqs, tgt, _ = ctx.data.window_batch(ctx.batch)
        ctx.optimizer.zero_grad(set_to_none=True)
        with ctx.autocast():
            # the adaptors run once per item of this batch (inputs and targets), not per position
            ids = torch.unique(torch.cat([seqs.flatten(), tgt.flatten()]))   # (M,) sorted, holds 0
            z = model.modality_vectors(ids)                                   # slot -> (M, D)
            table = model.fuse(z)
            if model.item_emb is not None:
                table = table + model.item_emb(ids)
            h = model.encode(torch.searchsorted(ids, seqs), table=table)            # (B, T, D)
            mask = tgt > 0
            hm, tm = h[mask], tgt[mask]                                       # (P, D), (P,)
            if len(tm) > cfg.max_positions:
                pick = torch.randperm(len(tm), device=tm.device)[:cfg.max_positions]
                hm, tm = hm[pick], tm[pick]
            loss = masked_contrastive_loss(hm, table[torch.searchsorted(ids, tm)], tm, model.cfg.temperature)
            pair = cfg.cross_modal_pair
            if cfg.cross_modal_weight and pair is not None and all(p in z for p in pair):
                items = torch.searchsorted(ids, torch.unique(tm))             # each item once
                loss = loss + cfg.cross_modal_weight * masked_contrastive_loss(
                    z[pair[0]][items], z[pair[1]][items], ids[items], model.cfg.temperature)
        loss.backward()
        clip_and_step(ctx)
        return loss.item()
    return step


def gate_frame(model: ContentSASRec, variant: str) -> pd.DataFrame:
    """Mean gate weight of every expert per modality (eval gate, over the model's current items)."""
    return pd.DataFrame([{"slot": s, "expert": e, "weight": float(w), "variant": variant}
                         for s, g in model.gate_weights().items() for e, w in enumerate(g)])


def pretrain(data: SeqData, groups: UserGroups | dict | None, cfg: AntConfig, seed: int = 0,
             variant: str = "ANT pre-train", features: D.ItemFeatures | None = None) -> MethodResult:
    """Pre-train on the source domains ``data`` with ``cfg.pretrain`` (early stopping on the
    sources' own held-out items); metrics are the sources' validation/test (all users).

    The engine's fit contract (``Run(pretrain, cfg, data=source, given={"features": ...},
    tune="pretrain")``): the run sees the source tensors and features only, never the target's.
    """
    if features is None:
        raise ValueError("ant.pretrain needs the sources' item features (features=...)")
    model = build(features, cfg, seed)
    result = train_fit(model, data, replace(cfg.pretrain, seed=seed), Hooks(step=contrastive_step(cfg)))
    every = {"all": np.ones(data.n_users, dtype=bool)}
    metrics, ranks = evaluate_both(result.model, data, every, variant, seed)
    history = result.history.assign(variant=variant, stage="pre-train")
    return MethodResult("ant", variant, seed, metrics, history, result.model, result,
                        {"gates": gate_frame(result.model, variant)}, ranks)


def adapted_model(pretrained: ContentSASRec | None, features: D.ItemFeatures, cfg: AntConfig,
                  seed: int) -> ContentSASRec:
    """The model ``cfg.variant`` starts the target from: a copy of ``pretrained`` on the target's
    items, prepared by the variant's function (``scratch`` needs no pre-trained model)."""
    if cfg.variant not in VARIANTS:
        raise ValueError(f"unknown ANT variant {cfg.variant!r}; choose one of {VARIANTS}")
    slots = [s for s in cfg.slots if s in features.matrices]
    if "text" in cfg.slots and "text" not in slots:
        raise ValueError("the target has no text slot; every ANT setting needs item text")
    target = {s: features.matrices[s] for s in slots}
    if cfg.variant == "scratch":
        seed_everything(seed)
        return ContentSASRec(target, cfg.model)
    if pretrained is None:
        raise ValueError(f"variant {cfg.variant!r} adapts a pre-trained model; pass pretrained=...")
    model = copy.deepcopy(pretrained).cpu()
    model.set_items(target)
    if cfg.variant == "re-learn":
        return relearn(model, seed)
    return fine_tune(model) if cfg.variant == "fine-tune" else adaptor_tune(model)


def fit(data: SeqData, groups: UserGroups, cfg: AntConfig, seed: int = 0, variant: str | None = None,
        pretrained: MethodResult | None = None, features: D.ItemFeatures | None = None) -> MethodResult:
    """Adapt to the target ``data`` with ``cfg.variant`` and evaluate on validation and test.

    ``features``: the target's item features (required); ``pretrained``: the result of
    :func:`pretrain` (required except for ``scratch``). Frozen parameters get no gradient, so the
    shared loop's optimiser leaves them bit-identical.
    """
    if features is None:
        raise ValueError("ant.fit needs the target's item features (features=...)")
    variant = variant or f"ANT {cfg.variant}"
    model = adapted_model(None if pretrained is None else pretrained.model, features, cfg, seed)
    # the training's own randomness (dropout, the gates' noise) from the seed alone: without
    # this, an arm's result depended on which arm trained before it in the same process
    seed_everything(seed)
    result = train_fit(model, data, replace(cfg.train, seed=seed), Hooks(), groups={"all": groups["all"]})
    metrics, ranks = evaluate_both(result.model, data, groups, variant, seed)
    history = result.history.assign(variant=variant, stage="adapt")
    n_train = sum(p.numel() for p in result.model.parameters() if p.requires_grad)
    return MethodResult("ant", variant, seed, metrics, history, result.model, result,
                        {"gates": gate_frame(result.model, variant),
                         "trainable": pd.DataFrame([{"variant": variant, "trainable_parameters": n_train}])},
                        ranks)


def cutoff_table(results: list[MethodResult], ks: tuple[int, ...] = (10, 50), split: str = "test") -> pd.DataFrame:
    """NDCG and HR of all users at ``ks`` (e.g. @50 for published Scientific figures), one row
    per variant, from the runs' stored full-ranking target ranks."""
    from ..evaluate import metrics_from_ranks
    rows = []
    for r in results:
        m = metrics_from_ranks(r.ranks[split], ks)
        rows.append({"variant": r.variant, "seed": r.seed,
                     **{f"{name.upper()}@{k}": m[name, k] for k in ks for name in ("ndcg", "hr")}})
    return pd.DataFrame(rows).set_index(["variant", "seed"])


def negative_transfer(table: pd.DataFrame, label: str, baseline: str, group: str = "all",
                      transfer: tuple[str, ...] = ("fine-tune", "adaptor-tune", "re-learn")) -> list[str]:
    """One sentence per transfer variant of setting ``label``: does it beat ``baseline``
    (a variant name, e.g. ``"<label> | ANT scratch"``)? Negative transfer named."""
    from .common import transfer_verdict
    prefix = f"{label} | " if label else ""
    return [transfer_verdict(table, f"{prefix}ANT {v}", baseline, group) for v in transfer]


def pretrain_name(setting: D.CrossDomain) -> str:
    """The pre-training run's variant: named by its sources (and the genres they leave out,
    ``meta["held_out"]``), not by the setting, so settings with the same sources (ML-1M ->
    Scientific and -> ML-100K; at ``quick``, ML-1M without Film-Noir for Film-Noir and for
    Scientific) share one cached run."""
    src = setting.sources
    genres = sorted(src.inter["domain"].unique()) if "domain" in src.inter else []
    held = ", ".join(setting.meta.get("held_out", ()))
    return f"ANT pre-train on {src.name.split('[')[0]}, {len(genres)} genres" + (f" (no {held})" if held else "")


def runs(prep: Transfer, cfg: AntConfig, variants: tuple[str, ...] = VARIANTS, label: str = "",
         pretrain_seeds: int | None = 1,
         pretrain_lr_grid: tuple[float, ...] | None = None) -> dict[str, Run]:
    """The runs of one setting for ``prep.target.run(...)``: the pre-training on the sources
    (a run of its own on the source tensors, ``pretrain_seeds`` seeds, its learning rate from
    ``pretrain_lr_grid``, default ``cfg.pretrain.lr`` alone, chosen on the sources' validation),
    then every adaptation variant built on it. Every target arm's rate comes from the call's
    grid (the budget's); every target arm trains every seed. Variant names: ``"<label> | ANT
    <v>"``. The notebook adds the ID-only SASRec on the target (``methods.baseline``) to the
    same call, so it is tuned and seeded alike."""
    prefix = f"{label} | " if label else ""
    out: dict[str, Run] = {}
    pre = pretrain_name(prep.setting)
    if any(v != "scratch" for v in variants):
        # the pre-training reads cfg.pretrain and cfg.model, never the target's schedule: keyed
        # without it, so settings with the same sources share one run whatever their targets' fits
        out[pre] = Run(pretrain, replace(cfg, train=cfg.pretrain), data=prep.source,
                       given={"features": prep.source_features}, tune="pretrain", n_seeds=pretrain_seeds,
                       lr_grid=tuple(pretrain_lr_grid) if pretrain_lr_grid else (cfg.pretrain.lr,))
    for v in variants:
        out[f"{prefix}ANT {v}"] = Run(fit, replace(cfg, variant=v), given={"features": prep.target_features},
                                      inputs={} if v == "scratch" else {"pretrained": pre})
    return out


ABLATIONS = {                                        # name -> AntConfig / ContentConfig changes
    "text": {"slots": ("text",)},
    "text+numeric": {"slots": ("text", "numeric")},
    "text+numeric+categorical": {},
    "all, no fusion product": {"beta": 0.0},
}


def ablation_runs(prep: Transfer, cfg: AntConfig, label: str = "", specs: dict[str, dict] | None = None,
                  variant: str = "re-learn", pretrain_seeds: int | None = 1) -> dict[str, Run]:
    """Modality ablation as runs for ``prep.target.run(...)``: for every spec a pre-training
    (to early stopping, as the main one) and the ``variant`` adaptation built on it. Spec keys
    are :class:`AntConfig` fields or, for ``beta``, :class:`ContentConfig` fields. Names:
    ``"<label> | ANT pre-train [<spec>]"`` and ``"<label> | ANT <variant> [<spec>]"``."""
    prefix = f"{label} | " if label else ""
    out: dict[str, Run] = {}
    for name, change in (specs or ABLATIONS).items():
        model_change = {k: v for k, v in change.items() if k in ContentConfig.__dataclass_fields__}
        c = replace(cfg, **{k: v for k, v in change.items() if k not in model_change},
                    model=replace(cfg.model, **model_change), variant=variant)
        pre = f"{prefix}ANT pre-train [{name}]"
        out[pre] = Run(pretrain, c, data=prep.source, given={"features": prep.source_features},
                       tune="pretrain", n_seeds=pretrain_seeds, lr_grid=(c.pretrain.lr,))
        out[f"{prefix}ANT {variant} [{name}]"] = Run(fit, c, given={"features": prep.target_features},
                                                     inputs={"pretrained": pre})
    return out
