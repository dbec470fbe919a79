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
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from .. import data as D
from ..budget import Budget, get_budget
from ..data.batches import SeqData
from ..data.split import UserGroups
from ..models import ContentConfig, ContentSASRec, masked_contrastive_loss
from ..train import Hooks, StepContext, TrainConfig, clip_and_step, fit as train_fit, seed_everything
from .common import MethodResult, evaluate_both

if TYPE_CHECKING:
    from ..experiment import Experiment

VARIANTS = ("scratch", "fine-tune", "adaptor-tune", "re-learn")


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
        seqs, tgt = ctx.data.train_inputs[ctx.batch], ctx.data.train_targets[ctx.batch]
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


def pretrain(source: SeqData, features: D.ItemFeatures, cfg: AntConfig, seed: int = 0,
             variant: str = "ANT pre-train") -> MethodResult:
    """Pre-train on the source domains; metrics are the sources' own validation/test (all users)."""
    model = build(features, cfg, seed)
    result = train_fit(model, source, replace(cfg.pretrain, seed=seed), Hooks(step=contrastive_step(cfg)))
    groups = {"all": np.ones(source.n_users, dtype=bool)}
    metrics, ranks = evaluate_both(result.model, source, groups, variant, seed)
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
    result = train_fit(model, data, replace(cfg.train, seed=seed), Hooks(), groups={"all": groups["all"]})
    metrics, ranks = evaluate_both(result.model, data, groups, variant, seed)
    history = result.history.assign(variant=variant, stage="adapt")
    n_train = sum(p.numel() for p in result.model.parameters() if p.requires_grad)
    return MethodResult("ant", variant, seed, metrics, history, result.model, result,
                        {"gates": gate_frame(result.model, variant),
                         "trainable": pd.DataFrame([{"variant": variant, "trainable_parameters": n_train}])},
                        ranks)


# ---------------------------------------------------------------------------------------------
# a setting's data
# ---------------------------------------------------------------------------------------------

@dataclass
class Prepared:
    """Everything one cross-domain setting needs: source tensors and features, the target as an
    :class:`~seqtransfer.experiment.Experiment` (groups, budget, runs) and its features."""

    setting: D.CrossDomain
    source: SeqData
    source_features: D.ItemFeatures
    target: Experiment               # the target's split, groups, tensors, budget and runs
    target_features: D.ItemFeatures
    seconds: dict[str, float]        # stage -> seconds spent preparing


def prepare(setting: D.CrossDomain, budget: str | Budget = "quick", seed: int = 0, device: str = "auto",
            max_len: int = 50, slots: dict[str, str] | None = None, data_dir: str | None = None,
            progress: bool = True, head_frac: float = 0.2, cold_max: int = 5,
            cache: bool | str = False, source_eval_users: int | None = 2000) -> Prepared:
    """Sample (smoke budget), split and tensorise the sources and the target of ``setting``, and
    build both item feature sets (text embeddings cached). Sequences are cut to ``max_len``;
    ``cache`` keeps the target experiment's finished runs (see :func:`experiment.prepare`).
    Pre-training validates (early stopping) and reports on a seeded sample of
    ``source_eval_users`` source sequences (None: all); it trains on every sequence."""
    from ..experiment import prepare as prepare_experiment
    b = replace(budget if isinstance(budget, Budget) else get_budget(budget), max_len=max_len)
    t0 = time.perf_counter()
    setting = setting.sample(b.max_users, seed)
    source = eval_sample(D.build_sequences(D.leave_one_out(setting.sources), max_len), source_eval_users, seed)
    exp = prepare_experiment(setting.target, b, seed, device, head_frac=head_frac, cold_max=cold_max,
                             progress=progress, data_dir=data_dir, cache=cache)
    # a group no target user falls in (no cold-start users among ML genre targets) is left out
    exp.groups.masks = {k: m for k, m in exp.groups.masks.items() if m.any()}
    t1 = time.perf_counter()
    src_f = D.item_features(setting.sources, slots, data_dir, progress)
    tgt_f = D.item_features(exp.dataset, slots, data_dir, progress, genre_vocab=src_f.genre_vocab)
    t2 = time.perf_counter()
    return Prepared(setting, source, src_f, exp, tgt_f, {"data": t1 - t0, "features": t2 - t1})


def eval_sample(data: SeqData, n_users: int | None, seed: int = 0) -> SeqData:
    """``data`` with its validation and test parts cut to a seeded sample of ``n_users`` users
    (training windows unchanged): ranking tens of thousands of source sequences at every
    evaluation would cost more than the pre-training steps between evaluations."""
    if n_users is None or n_users >= data.n_users:
        return data
    keep = np.sort(np.random.default_rng(seed).choice(data.n_users, n_users, replace=False))
    idx = torch.from_numpy(keep)
    ptr, items = {}, {}
    for split in ("valid", "test"):
        p = data.history_ptr[split]
        parts = [data.history_items[split][p[u]:p[u + 1]] for u in keep]
        lens = torch.tensor([len(x) for x in parts], dtype=torch.long)
        ptr[split] = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
        items[split] = torch.cat(parts)
    return replace(data, n_users=n_users,
                   eval_inputs={k: v[idx] for k, v in data.eval_inputs.items()},
                   eval_lengths={k: v[idx] for k, v in data.eval_lengths.items()},
                   eval_targets={k: v[idx] for k, v in data.eval_targets.items()},
                   history_ptr=ptr, history_items=items, activeness=data.activeness[keep])


def cap_steps(cfg: TrainConfig, max_steps: int | None) -> TrainConfig:
    """``cfg`` with at most ``max_steps`` steps, never more than its own cap (None: unchanged)."""
    if max_steps is None:
        return cfg
    return replace(cfg, max_steps=max_steps if cfg.max_steps is None else min(max_steps, cfg.max_steps))


def timings(results: list[MethodResult]) -> pd.DataFrame:
    """Training seconds, steps and best epoch of every run and stage."""
    return pd.DataFrame([{"variant": r.variant, "stage": r.history["stage"].iloc[0] if "stage" in r.history else "target-only",
                          "seconds": r.train.seconds if r.train else np.nan,
                          "steps": r.train.steps if r.train else np.nan,
                          "stopped": r.train.stopped if r.train else ""} for r in results])


def compare(prep: Prepared, cfg: AntConfig, variants: tuple[str, ...] = VARIANTS, seed: int = 0,
            label: str = "", pretrained: MethodResult | None = None) -> list[MethodResult]:
    """Pre-train on ``prep``'s sources (unless ``pretrained`` is given: a model pre-trained on the
    same sources) and adapt every variant to its target. Returns the pre-training run first,
    then one run per variant, named ``"<label> | ANT <variant>"``."""
    prefix = f"{label} | " if label else ""
    pre = pretrained
    if pre is None and any(v != "scratch" for v in variants):
        pre = pretrain(prep.source, prep.source_features, cfg, seed, variant=f"{prefix}ANT pre-train")
    out = [pre] if pre is not None else []
    for v in variants:
        out.append(fit(prep.target.data, prep.target.groups, replace(cfg, variant=v), seed,
                       variant=f"{prefix}ANT {v}", pretrained=pre, features=prep.target_features))
    return out


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


def _digest(data: SeqData) -> str:
    import hashlib
    h = hashlib.sha256()
    for t in (data.train_inputs, data.eval_targets["test"]):
        h.update(t.cpu().numpy().tobytes())
    return h.hexdigest()


def run_settings(preps: dict[str, Prepared], cfg: AntConfig, variants: tuple[str, ...] = VARIANTS,
                 seed: int = 0, id_baseline: bool = True) -> dict[str, list[MethodResult]]:
    """:func:`compare` on every setting (label -> prepared data), plus the ID-only SASRec trained
    on each target (``methods.baseline``, the workbench's target-only model, through the target
    experiment's runs and cache). Settings whose source tensors are identical share one
    pre-trained model. Each list starts with its pre-training run (possibly shared)."""
    from . import baseline
    pretrained: dict[str, MethodResult] = {}
    out = {}
    for label, p in preps.items():
        key = _digest(p.source)
        res = compare(p, cfg, variants, seed, label, pretrained=pretrained.get(key))
        if res and key not in pretrained and res[0].history["stage"].iloc[0] == "pre-train":
            pretrained[key] = res[0]
        if id_baseline:
            exp = p.target
            # the ANT variants train at one learning rate (cfg.train.lr), so the ID model does
            # too: arms tuned alike, not one of them searched over the budget's grid
            ident = exp.config(baseline.BaselineConfig, backbone="sasrec")
            res += exp.run({f"{label} | SASRec ID (target only)": (
                baseline.fit, replace(ident, train=replace(ident.train, lr=cfg.train.lr)))},
                seeds=[seed], lr_grid=(cfg.train.lr,))
        out[label] = res
    return out


ABLATIONS = {                                        # name -> AntConfig / ContentConfig changes
    "text": {"slots": ("text",)},
    "text+numeric": {"slots": ("text", "numeric")},
    "text+numeric+categorical": {},
    "all, no fusion product": {"beta": 0.0},
}


def ablation(prep: Prepared, cfg: AntConfig, seed: int = 0, label: str = "",
             specs: dict[str, dict] | None = None, max_steps: int | None = None,
             variant: str = "re-learn") -> list[MethodResult]:
    """Modality ablation: for every spec, pre-train (at most ``max_steps`` steps when given) and
    adapt with ``variant``. Spec keys are :class:`AntConfig` fields or, for ``beta``,
    :class:`ContentConfig` fields. Returns the adapted runs, named ``"<label> | ANT <variant>
    [<spec>]"``; pre-training runs are in each run's ``diagnostics["pretrain"]``."""
    prefix = f"{label} | " if label else ""
    out = []
    for name, change in (specs or ABLATIONS).items():
        model_change = {k: v for k, v in change.items() if k in ContentConfig.__dataclass_fields__}
        c = replace(cfg, **{k: v for k, v in change.items() if k not in model_change},
                    model=replace(cfg.model, **model_change), variant=variant)
        c = replace(c, pretrain=cap_steps(c.pretrain, max_steps))   # never above the budget's cap
        pre = pretrain(prep.source, prep.source_features, c, seed, variant=f"{prefix}ANT pre-train [{name}]")
        r = fit(prep.target.data, prep.target.groups, c, seed, variant=f"{prefix}ANT {variant} [{name}]",
                pretrained=pre, features=prep.target_features)
        r.diagnostics["pretrain"] = pre.history
        out.append(r)
    return out


def stage_times(results: list[MethodResult], preps: dict[str, Prepared] | None = None) -> pd.DataFrame:
    """Seconds per stage: data and feature preparation of every setting, then every training run
    (a shared pre-training counted once)."""
    rows = []
    for label, p in (preps or {}).items():
        rows += [{"variant": f"{label} | {stage}", "stage": stage, "seconds": s, "steps": np.nan, "stopped": ""}
                 for stage, s in p.seconds.items()]
    seen = set()
    unique = [r for r in results if not (id(r) in seen or seen.add(id(r)))]
    return pd.concat([pd.DataFrame(rows), timings(unique)], ignore_index=True)
