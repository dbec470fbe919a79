"""ECAT over chronological periods: the entire-space teachers (a chain of runs, each continuing
from the previous period's), the continual student, and the runs of a setting for the engine."""
from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from ... import data as D
from ...data.batches import SeqData
from ...data.split import Split
from ...models import make_backbone
from ...results import MethodResult
from ...runspec import Run
from ...train import TrainConfig, fit as train_fit, seed_everything
from ..common import evaluate_both
from .config import VARIANTS, EcatConfig, check
from .selection import select
from .student import TargetScored, _pool, student_hooks

def truncate(split: Split, times: np.ndarray, cut: float) -> Split:
    """``split`` with only the training items at or before ``cut`` (validation/test kept)."""
    keep = np.asarray(times) <= cut
    owner = np.repeat(np.arange(split.n_users), np.diff(split.train_ptr))
    ptr = np.zeros(split.n_users + 1, dtype=np.int64)
    ptr[1:] = np.cumsum(np.bincount(owner[keep], minlength=split.n_users))
    return replace(split, train_ptr=ptr, train_items=split.train_items[keep])


def period_cuts(times: np.ndarray, n_periods: int) -> np.ndarray:
    """End timestamp of every period: chronological quantiles, the last one the latest time."""
    q = np.quantile(np.asarray(times, dtype=np.float64), np.linspace(0, 1, n_periods + 1)[1:])
    q[-1] = np.inf
    return q


def period_train(tcfg: TrainConfig, n_periods: int, split: bool = True) -> TrainConfig:
    """One period's share of ``tcfg``: ceil(epochs / n) epochs, ceil(max_steps / n) steps (at
    least 1 each) and max_minutes / n when ``split``, else ``tcfg`` unchanged."""
    if not split or n_periods == 1:
        return tcfg
    steps = None if tcfg.max_steps is None else max(1, -(-tcfg.max_steps // n_periods))
    minutes = None if tcfg.max_minutes is None else tcfg.max_minutes / n_periods
    return replace(tcfg, epochs=max(1, -(-tcfg.epochs // n_periods)), max_steps=steps, max_minutes=minutes)


def _backbone(cfg: EcatConfig, n_items: int, max_len: int, seed: int) -> nn.Module:
    seed_everything(seed)
    return make_backbone(cfg.backbone, n_items, **{"max_len": max_len, **cfg.backbone_kwargs})


def needs_teacher(cfg: EcatConfig) -> bool:
    """Whether a variant reads a teacher: the classifier's features, distillation, or its start."""
    return (cfg.use_source and cfg.fine == "classifier") or cfg.distill != "none" or cfg.init == "teacher"


def teacher_data(setting, n_periods: int, max_users: int | None = 2000, seed: int = 0) -> list[SeqData]:
    """The entire space up to the end of every period (``n_periods`` chronological cuts), as
    training tensors; each validates on a seeded sample of ``max_users`` sequences (None: all).
    Kept on the setting: the teacher runs of a chain are built from it once."""
    memo = setting.__dict__.setdefault("_teacher_data", {})
    key = (n_periods, max_users, seed)
    if key not in memo:
        cuts = period_cuts(setting.times, n_periods)
        memo[key] = [D.eval_sample(D.build_sequences(truncate(setting.split, setting.times, cut),
                                                     setting.target.data.max_len), max_users, seed) for cut in cuts]
    return memo[key]


def teacher_config(cfg: EcatConfig) -> EcatConfig:
    """What a teacher depends on (backbone, its schedule), the rest at the defaults: the
    students' settings never reach a teacher run's cache key."""
    return EcatConfig(backbone=cfg.backbone, backbone_kwargs=dict(cfg.backbone_kwargs),
                      teacher_train=cfg.teacher_train or cfg.train, train=cfg.teacher_train or cfg.train)


def teacher(data: SeqData, groups, cfg: EcatConfig, seed: int = 0, variant: str = "ECAT teacher",
            previous: MethodResult | None = None, period: int = 0, periods: int = 1) -> MethodResult:
    """Period ``period`` (of a chain of ``periods``)'s entire-space teacher: a copy of the
    ``previous`` period's (none: a fresh seeded backbone) trained on ``data``, the entire space
    up to this period's end (:func:`teacher_data`), with ``cfg.teacher_train``'s schedule to
    early stopping on that data's validation. ``previous`` is never changed. The engine's fit
    contract (``Run(teacher, cfg, data=..., inputs={"previous": ...}, tune="teacher_train")``);
    its ``"stages"`` diagnostics name the period and the chain."""
    if not 0 <= period < periods:
        raise ValueError(f"period must be in [0, periods), got period {period} of {periods}")
    tcfg = replace(cfg.teacher_train or cfg.train, seed=seed + 1000 * period)
    model = copy.deepcopy(previous.model).cpu() if previous is not None else _backbone(cfg, data.n_items, data.max_len, seed)
    for p in model.parameters():
        p.requires_grad_(True)
    seed_everything(seed + 1000 * period)
    res = train_fit(model, data, tcfg)
    every = {"all": np.ones(data.n_users, dtype=bool)}
    metrics, ranks = evaluate_both(res.model, data, every, variant, seed)
    history = res.history.assign(variant=variant, period=period, stage="teacher", stopped=res.stopped)
    stages = pd.DataFrame([{"period": period, "periods": periods, "stage": f"teacher, period {period}", "steps": res.steps,
                            "seconds": res.seconds, "stopped": res.stopped}])
    return MethodResult("ecat", variant, seed, metrics, history, res.model, res, {"stages": stages}, ranks)


def train_teachers(setting, cfg: EcatConfig, seed: int = 0, n_periods: int | None = None,
                   observe=None) -> tuple[list[nn.Module], pd.DataFrame]:
    """The chain of teachers in this process (what :func:`runs` trains as runs of the engine):
    period t's continues from period t-1's. Returns (the models, their histories)."""
    n = cfg.n_periods if n_periods is None else n_periods
    out, hist, prev = [], [], None
    for t, data in enumerate(teacher_data(setting, n, cfg.max_teacher_users, seed)):
        if observe:
            observe(t, "teacher start", prev.model if prev is not None else None)
        prev = teacher(data, None, cfg, seed, f"teacher {t + 1}/{n}", previous=prev, period=t, periods=n)
        if observe:
            observe(t, "teacher end", prev.model)
        out.append(prev.model)
        hist.append(prev.history)
    return out, pd.concat(hist, ignore_index=True)


_SELECTIONS: dict = {}   # (setting, teachers) -> that pair's selections, while they live


def _shared_selections(setting, teachers: list[nn.Module]) -> dict:
    """The process-wide selection cache of ``setting`` with these teacher objects (identity, held
    so that an id is never reused while its entry lives)."""
    key = (id(setting), tuple(id(m) for m in teachers))
    held = _SELECTIONS.get(key)
    if held is None or held[0] is not setting or any(a is not b for a, b in zip(held[1], teachers)):
        held = _SELECTIONS[key] = (setting, list(teachers), {})
    return held[2]


def selection_key(cfg: EcatConfig, period: int, seed: int) -> tuple:
    """What a period's selection depends on (besides the setting and the teachers): runs with
    the same key and the same teachers select the same samples."""
    return (period, cfg.n_periods, seed, cfg.graph, cfg.restart, cfg.ppr_iters, cfg.hops, cfg.top_m,
            cfg.fine, cfg.p_min, cfg.clip, cfg.count_scale, cfg.clf_steps, cfg.clf_lr, cfg.clf_max,
            cfg.clf_holdout)


def continual(setting, cfg: EcatConfig, seed: int = 0, teachers: list[nn.Module] | None = None,
              observe=None, cache: dict | None = None) -> tuple[nn.Module, dict]:
    """Train the student over ``cfg.n_periods`` chronological periods.

    Period t: teacher t (given, or trained here continuing from t-1); selection re-run on the
    graph of the entire space up to the period's end; the student continues from where period
    t-1 ended (best validation weights) on the target's and the selected samples up to then.
    ``observe(period, stage, model)`` sees the student at the start and end of every period;
    ``cache`` (a dict shared by runs with the same teachers) keeps each period's selection; by
    default a process-wide one keyed by the setting and the teacher objects, so the arms of one
    notebook that build on the same teacher runs select once. The teachers are copied before
    use: an arm never changes the models another arm starts from. With a checkpoint folder
    (``cfg.train.checkpoint_dir``, the engine's) every period checkpoints in its own subfolder,
    so a killed run replays its finished periods from their checkpoints and resumes the one it
    was in. A rung (``cfg.train.rung``, successive halving's short run) trains the first period
    only, to that many validations: the first part of the whole run, which continues from its
    checkpoint. Returns the student and the diagnostics (counts, p, w, alpha, per-period metrics,
    history)."""
    check(cfg)
    exp = setting.target
    need_teacher = cfg.use_source and cfg.fine == "classifier" or cfg.distill != "none" or cfg.init == "teacher"
    if teachers is None and need_teacher:
        teachers, _ = train_teachers(setting, cfg, seed)
    if teachers is not None and len(teachers) != cfg.n_periods:
        raise ValueError(f"got {len(teachers)} teachers for {cfg.n_periods} periods; train them with "
                         f"the same n_periods")
    if cache is None and teachers is not None:
        cache = _shared_selections(setting, teachers)
    if teachers is not None:
        teachers = [copy.deepcopy(m).cpu() for m in teachers]      # never the caller's (shared) models
    cuts = period_cuts(setting.times, cfg.n_periods)
    tcfg = period_train(replace(cfg.train, seed=seed), cfg.n_periods, cfg.split_budget)
    device = torch.device(tcfg.device if tcfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if cfg.init == "teacher":
        backbone = copy.deepcopy(teachers[-1] if cfg.n_periods == 1 else teachers[0])
        for p in backbone.parameters():               # teachers are frozen once used as teachers
            p.requires_grad_(True)
    else:
        backbone = _backbone(cfg, setting.split.n_items, exp.data.max_len, seed)
    student = TargetScored(backbone, setting.target_items, gate=cfg.distill == "gate",
                           domain_head=cfg.fine == "grl")
    counts, ps, ws, alphas_all, periods, hist, stages = [], [], [], [], [], [], []
    for t, cut in enumerate(cuts):
        teacher = None
        if teachers is not None:
            teacher = teachers[t].to(device).eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        tdata = D.build_sequences(truncate(exp.split, setting.target_times, cut), exp.data.max_len)
        source = weights = domain = None
        stats = {}
        if cfg.use_source:
            esplit = truncate(setting.split, setting.times, cut)
            source = D.build_sequences(esplit, exp.data.max_len)
            key = selection_key(cfg, t, seed)
            if cache is not None and key in cache:
                weights, stats = cache[key]
            else:
                weights, stats = select(setting, esplit, source, teacher, cfg, seed + t)
                if cache is not None:
                    cache[key] = weights, stats
        x, y, w = _pool(tdata, source, weights)
        if cfg.fine == "grl":
            domain = torch.zeros(w.shape)
            domain[:len(tdata.train_inputs)] = 1.0
        alphas: list = []
        hooks = student_hooks(x, y, w, teacher if cfg.distill != "none" else None, cfg, alphas, domain)
        hooks.state = lambda a=alphas: {"alphas": list(a)}                 # a resumed period keeps them
        hooks.load_state = lambda saved, a=alphas: a.__setitem__(slice(None), saved["alphas"])
        if observe:
            observe(t, "start", student)
        pcfg = replace(tcfg, seed=seed + 1000 * t)
        if tcfg.checkpoint_dir:
            pcfg = replace(pcfg, checkpoint_dir=str(Path(tcfg.checkpoint_dir) / f"period-{t}"))
        if cfg.period_minutes == "remaining" and cfg.train.max_minutes is not None:
            used = sum(st["seconds"] for st in stages)                 # student training so far
            pcfg = replace(pcfg, max_minutes=max(cfg.train.max_minutes - used / 60, 0.01))
        res = train_fit(student, exp.data, pcfg, hooks, groups={"all": exp.groups["all"]})
        student = res.model
        stages.append({"period": t, "stage": f"student, period {t}", "steps": res.steps,
                       "seconds": res.seconds, "stopped": res.stopped})
        if observe:
            observe(t, "end", student)
        metrics, _ = evaluate_both(student, exp.data, exp.groups, "", seed)
        m = metrics[(metrics["metric"] == "ndcg") & (metrics["k"] == 10)]
        periods += [{"period": t, "split": r.split, "group": r.group, "ndcg10": r.value} for r in m.itertuples()]
        counts.append({"period": t, "target samples": int((tdata.train_targets > 0).sum()),
                       **{k: v for k, v in stats.items() if k not in ("p", "w")}})
        if len(stats.get("p", [])):
            ps.append(pd.DataFrame({"period": t, "p": stats["p"]}))
            ws.append(pd.DataFrame({"period": t, "w": stats["w"]}))
        if alphas:
            alphas_all.append(pd.DataFrame({"period": t, "alpha": np.concatenate(alphas)}))
        h = res.history
        done = (int(hist[-1]["epoch"].max()) + 1, int(hist[-1]["step"].max())) if hist else (0, 0)
        hist.append(h.assign(period=t, stage="student", epoch=h["epoch"] + done[0], step=h["step"] + done[1]))
        if teacher is not None:
            teachers[t].cpu()
        last = res
        if cfg.train.rung is not None:
            break   # a rung (successive halving) is the first period's first validations: the
                    # whole run resumes that period from its checkpoint and trains the rest
    diag = {"counts": pd.DataFrame(counts), "periods": pd.DataFrame(periods),
            "p": pd.concat(ps, ignore_index=True) if ps else pd.DataFrame(columns=["period", "p"]),
            "w": pd.concat(ws, ignore_index=True) if ws else pd.DataFrame(columns=["period", "w"]),
            "alpha": pd.concat(alphas_all, ignore_index=True) if alphas_all else pd.DataFrame(columns=["period", "alpha"]),
            "stages": pd.DataFrame(stages), "history": pd.concat(hist, ignore_index=True), "train": last}
    return student, diag


def fit(data: SeqData, groups, cfg: EcatConfig, seed: int = 0, variant: str = "ECAT", setting=None,
        **teachers: MethodResult) -> MethodResult:
    """One ECAT variant: continual training on ``setting`` (an
    :class:`~seqtransfer.entire.EcatSetting`; ``data``/``groups`` are its target's), then
    validation and test metrics of the target's users (all/head/tail/cold). ``teacher_0``,
    ``teacher_1``, ...: the results of the teacher runs of every period (the engine's inputs),
    none when the variant reads no teacher. The engine's fit contract."""
    if setting is None:
        raise ValueError("ecat.fit needs the setting (setting=EcatSetting, e.g. from seqtransfer.entire.genre_space)")
    chain = [teachers[f"teacher_{t}"].model for t in range(len(teachers))] if teachers else None
    if teachers and set(teachers) != {f"teacher_{t}" for t in range(len(teachers))}:
        raise ValueError(f"teachers must be teacher_0 ... teacher_{len(teachers) - 1}, got {sorted(teachers)}")
    student, diag = continual(setting, cfg, seed, chain)
    exp = setting.target
    metrics, ranks = evaluate_both(student, exp.data, exp.groups, variant, seed)
    history = diag.pop("history").assign(variant=variant)
    train = diag.pop("train")
    diag = {k: v.assign(variant=variant) for k, v in diag.items()}
    return MethodResult("ecat", variant, seed, metrics, history, student, train, diag, ranks)


def teacher_name(label: str, period: int, n_periods: int) -> str:
    prefix = f"{label} | " if label else ""
    return f"{prefix}teacher {period + 1}/{n_periods}"


def runs(setting, cfg: EcatConfig, variants: dict[str, dict] | None = None, label: str = "",
         teacher_seeds: int | None = 1) -> dict[str, Run]:
    """The runs of one setting for ``setting.target.run(...)``: the chain of teachers of
    ``cfg.n_periods`` periods (each a run on the entire space up to its period's end, built on
    the previous period's through the inputs mechanism, ``teacher_seeds`` seeds, its own
    one-value grid ``cfg.teacher_train.lr``), a one-period teacher of its own where a variant
    needs one and ``one_period_teacher="own"`` (by default a one-period variant borrows the
    chain's last teacher, trained on everything), then every variant (default
    :data:`VARIANTS`), named ``"<label> | <variant>"``, with the setting as a constant. Every
    variant's rate comes from the call's grid; every variant trains every seed."""
    prefix = f"{label} | " if label else ""
    tcfg = teacher_config(cfg)
    out: dict[str, Run] = {}

    def chain(n: int) -> list[str]:
        names = [teacher_name(label, t, n) for t in range(n)]
        for t, (name, data) in enumerate(zip(names, teacher_data(setting, n, cfg.max_teacher_users,
                                                                  setting.target.seed))):
            if name not in out:
                out[name] = Run(teacher, tcfg, data=data, given={"period": t, "periods": n},
                                inputs={"previous": names[t - 1]} if t else {}, tune="teacher_train",
                                n_seeds=teacher_seeds, lr_grid=(tcfg.teacher_train.lr,))
        return names

    arms: dict[str, Run] = {}
    for name, change in (variants or VARIANTS).items():
        c = replace(cfg, **change)
        check(c)
        inputs = {}
        if needs_teacher(c):
            if c.n_periods == 1 and cfg.n_periods > 1 and c.one_period_teacher == "continual":
                names = chain(cfg.n_periods)[-1:]                      # the chain's last: it has seen everything
            else:
                names = chain(c.n_periods)
            inputs = {f"teacher_{t}": n for t, n in enumerate(names)}
        arms[f"{prefix}{name}"] = Run(fit, c, inputs=inputs, given={"setting": setting})
    return {**out, **arms}
