"""From a notebook's parameters to everything a comparison needs, in one call.

Every notebook does the same first steps: load a real dataset, cut it to the budget, split it
leave-one-out by time, optionally simulate cold-start users, form the activeness groups and
build the padded tensors. :func:`prepare` does them once, in this order, and returns an
:class:`Experiment` that also turns the budget into training settings and runs method
configurations over the budget's seeds. Notebooks stay narration plus calls.

Cold start. No MovieLens user has fewer than 20 ratings, so the natural cold-start group is
empty. With ``cold_start_frac > 0`` a random share of users keeps only its ``cold_max`` most
recent training interactions (validation and test targets unchanged); those users form the
``cold`` group, and every model in the experiment trains on the truncated data.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from . import data as D
from . import executor as X
from .budget import Budget, get_budget
from .halving import best_rungs, restarts
from .results import MethodResult
from .runspec import Run, as_run, check_grid, input_unit  # noqa: F401  (the engine's entry types)
from .train import TrainConfig, resolve_device


# metadata of a dataclass field that describes a run's circumstances, not what it trains on
# (seconds spent preparing): digest() leaves it out, so a cache key never changes with it
UNDIGESTED = {"digest": False}


@dataclass
class Experiment:
    """One prepared dataset under one budget: what every method in a notebook shares."""

    dataset: D.Interactions       # the tidy interactions after k-core and user sampling
    split: D.Split                # leave-one-out split (after cold-start truncation)
    groups: D.UserGroups          # all / head / tail / cold masks over users
    data: D.SeqData               # padded tensors on the CPU (the loop moves them)
    budget: Budget
    device: torch.device = field(metadata=UNDIGESTED)   # where, not what: left out of cache keys (so are
                                  # the fields below: progress bars, cache folder, executor, Ray)
    seed: int                     # data seed; model seeds are ``seeds``
    cold_users: np.ndarray        # (U,) users whose histories were truncated
    progress: bool = field(default=True, metadata=UNDIGESTED)
    cache_dir: Path | None = field(default=None, metadata=UNDIGESTED)   # finished runs are kept here (None: no cache)
    executor: str = field(default="local", metadata=UNDIGESTED)   # where run() trains: "local" | "ray"
    ray: X.RayOptions = field(default_factory=X.RayOptions, metadata=UNDIGESTED)   # address, CPUs a run, retries
    _data_digest: str | None = field(default=None, repr=False, metadata=UNDIGESTED)   # of ``data``, for cache keys

    @property
    def seeds(self) -> list[int]:
        """The model seeds of this budget: ``seed, seed + 1, ...`` (``budget.n_seeds`` of them)."""
        return [self.seed + i for i in range(self.budget.n_seeds)]

    def train_config(self, **overrides) -> TrainConfig:
        """Training settings from the budget (epochs, steps, patience, batch) and the device."""
        b = self.budget
        cfg = TrainConfig(epochs=b.epochs, max_steps=b.max_steps, patience=b.patience,
                          eval_every=b.eval_every, batch_size=b.batch_size, lr=b.lr,
                          warmup_steps=b.warmup_steps, max_minutes=b.max_minutes,
                          device=str(self.device), progress=self.progress)
        return replace(cfg, **overrides)

    @property
    def steps_per_epoch(self) -> int:
        """Optimisation steps in one pass over this experiment's training windows."""
        return -(-len(self.data.train_inputs) // self.budget.batch_size)

    def fitted_train_config(self, **overrides) -> TrainConfig:
        """:meth:`train_config` with its warm-up fitted to this data (:func:`train.fit_warmup`:
        at most two epochs, early stopping counted from its end). A small target, a few steps an
        epoch, would otherwise reach its best validation inside the budget's 100-step warm-up."""
        from .train import fit_warmup
        return fit_warmup(self.train_config(**overrides), self.steps_per_epoch)

    def config(self, cls, **values):
        """A method config (any dataclass with ``backbone_kwargs`` and ``train`` fields) with
        the budget's hidden size, loss and training settings filled in; ``values`` override."""
        names = {f.name for f in fields(cls)}
        base = {}
        if "backbone_kwargs" in names:
            b = self.budget
            base["backbone_kwargs"] = {"dim": b.dim, "loss_type": b.loss_type, "n_negatives": b.n_negatives,
                                       **values.pop("backbone_kwargs", {})}
        if "train" in names and "train" not in values:
            base["train"] = self.train_config()
        return cls(**base, **values)

    def run(self, runs: dict[str, tuple | Run], seeds: list[int] | None = None,
            lr_grid: tuple[float, ...] | None = None) -> list[MethodResult]:
        """Fit every ``variant -> (fit, config)`` for every seed; results in that order.

        ``fit`` is a method module's ``fit(data, groups, cfg, seed, variant)``. A run that
        builds on an earlier one is ``variant -> (fit, config, {argument: earlier variant})``:
        ``fit`` then also gets, as that keyword argument, the earlier variant's result for the
        same seed (e.g. ``{"stage1": "sasrec joint"}`` puts plugins on the trained base model).
        The earlier variant must come before it in ``runs``. A :class:`Run` says more: data of
        its own (a pre-training on the source domains), constant keyword arguments (item
        features), a grid and tuned field of its own, and fewer seeds (an upstream model
        trained once that every seed of the arms builds on).

        Fair arms: every variant's learning rate (``config.train.lr``) is chosen on validation
        NDCG@10 from the same grid, ``lr_grid`` (default: the budget's). The grid is searched
        with the first seed; the other seeds reuse the chosen value. An explicit one-value
        ``lr_grid=(lr,)`` trains every arm with a ``train`` field at ``lr``. Each result carries its
        ``lr`` and the ``tuning`` table (lr, best validation NDCG@10, chosen). A run built on
        an earlier one gets the earlier variant's chosen run.

        Successive halving (``budget.rung`` set): on the first seed every grid point trains only
        ``rung`` validations past its warm-up, the best ``budget.keep`` of them on validation
        continue from their checkpoints to early stopping, the best of those on validation is
        chosen, and the others stop at their rung (:mod:`seqtransfer.halving` reads what that
        would choose off a full grid's cache). A continued run is the run a full grid would have
        trained at that rate, bit for bit (a run whose history restarts, stages or periods, is
        trained again from its start instead, and so is every run without a ``cache_dir``, which
        keeps no checkpoint; a run whose config says it ``restarts`` searches its grid whole; ECAT's
        period-by-period student takes its rung in its first period and continues from there). Its
        ``tuning`` table has every rate's validation: the whole run's for the rates that
        continued (``continued``), the rung's for the others.

        With a ``cache_dir``, a finished run is saved there and loaded instead of re-trained when
        the same fit, config, variant, seed, data, constants, library code and inputs come again
        (a notebook re-run after a crash, or the base model shared by several notebooks). A run
        that another process is training (notebooks of one batch in parallel) is waited for,
        not trained twice. A run killed mid-training resumes from its last validation
        checkpoint (kept under ``cache_dir/checkpoints/`` until the run is stored).

        Where the runs train is ``executor``: ``"local"``, one after another in this process, or
        ``"ray"``, as Ray tasks in parallel (:mod:`seqtransfer.executor`); both give the same
        results for the same seeds. Every result's ``ran_on`` says where it trained.
        """
        seeds = self.seeds if seeds is None else seeds
        grid = tuple(self.budget.lr_grid if lr_grid is None else lr_grid)
        check_grid(grid, "lr_grid")
        runs = {variant: as_run(variant, spec) for variant, spec in runs.items()}
        if lr_grid is not None and len(grid) == 1:
            # an explicit one-value grid is that learning rate for every arm that has one (the
            # budget's one-value grid leaves each config's own rate alone)
            runs = {v: replace(r, config=with_lr(r.config, grid[0], r.tune)) if r.lr_grid is None
                    and hasattr(r.config, r.tune) else r for v, r in runs.items()}
        listed = list(runs)
        for variant, r in runs.items():
            earlier = listed[:listed.index(variant)]
            for arg, source in r.inputs.items():
                if source not in earlier:
                    raise ValueError(f"run {variant!r} takes {arg}={source!r}, which must be a variant "
                                     f"listed before it in runs; earlier: {earlier}")
        pick = _Chooser()
        if X.check_executor(self.executor) == "ray":
            return X.run_ray(self, runs, seeds, grid, pick)
        if self.cache_dir is not None:
            # first pass: train every independent run of the first seed that no other process
            # holds (notebooks of one batch share the cache), so a notebook whose next run is
            # being trained elsewhere works on its later runs instead of waiting; the pass below
            # then finds them cached
            for variant, r in runs.items():
                if not r.inputs:
                    g = r.grid(grid)
                    rung = self.budget.rung if halves(r, g, self.budget.rung) else None
                    for lr in (g if len(g) > 1 else (None,)):
                        self._run_one(r, variant, seeds[0], {}, [], lr=lr, wait=False, rung=rung)
        done: dict[tuple[str, int], tuple[MethodResult, str]] = {}   # (variant, seed) -> result, key
        out = []
        for variant, r in runs.items():
            chosen = None
            g = r.grid(grid)
            for i, s in enumerate(r.seeds_of(seeds)):
                given = {arg: done[input_unit(runs, source, s, seeds)][0] for arg, source in r.inputs.items()}
                upstream = [done[input_unit(runs, source, s, seeds)][1] for source in r.inputs.values()]
                lrs = trial_lrs(g, i == 0, chosen)
                if halves(r, lrs, self.budget.rung):
                    best, unit = self._halve(r, variant, s, given, upstream, lrs, pick)
                else:
                    trials = [self._run_one(r, variant, s, given, upstream, lr=lr) for lr in lrs]
                    best = pick(variant, r, lrs, [t[0] for t in trials], i == 0)
                    unit = trials[best]
                if i == 0:
                    chosen = lrs[best]
                done[variant, s] = unit
                out.append(unit[0])
        return out

    def map_calls(self, calls: list[tuple[Callable, tuple]]) -> list:
        """Independent calls ``fn(*args)`` (a sweep's trainings), results in order, run where
        ``executor`` says (:func:`seqtransfer.executor.map_calls`; not cached)."""
        return X.map_calls(self, calls)

    def _halve(self, r: Run, variant: str, seed: int, given: dict, upstream: list[str], lrs,
                pick) -> tuple[int, tuple[MethodResult, str]]:
        """Successive halving over ``lrs``: every rate's rung, then the whole runs of the best
        ``budget.keep`` (continued from their rungs' checkpoints), the best of which is chosen;
        (the chosen index, its (result, key))."""
        k = self.budget.rung
        rungs = [self._run_one(r, variant, seed, given, upstream, lr=lr, rung=k) for lr in lrs]
        kept = continuing([t[0] for t in rungs], self.budget.keep)
        keys = [self._cache_key(r, with_lr(r.config, lr, r.tune), variant, seed, upstream) for lr in lrs]
        whole = {}
        for j in kept:
            if restarts(rungs[j][0].history):   # not a prefix of one training: start it over
                _drop_checkpoint(self.checkpoint_dir(variant, seed, keys[j]))
            whole[j] = self._run_one(r, variant, seed, given, upstream, lr=lrs[j])
        best = pick(variant, r, lrs, [whole[j][0] if j in whole else t[0] for j, t in enumerate(rungs)], True,
                    rung=k, among=kept)
        for j, key in enumerate(keys):
            if j not in whole:
                _drop_checkpoint(self.checkpoint_dir(variant, seed, key))
        return best, whole[best]

    def _run_one(self, r: Run, variant: str, seed: int, given: dict, upstream: list[str],
                 lr: float | None = None, wait: bool = True,
                 rung: int | None = None) -> tuple[MethodResult, str] | None:
        """One (config at ``lr``, seed) run, through the cache when there is one. With
        ``wait=False`` a run that is cached, or held by another process, is left alone (None).
        With a ``rung``, only that many validations past the warm-up: kept in the cache as a
        run of its own, its checkpoint (the whole run's) left for the whole run to continue."""
        cfg = with_lr(r.config, lr, r.tune)
        key = self._cache_key(r, cfg, variant, seed, upstream)
        data, groups = self.run_data(r)
        ckpt = self.checkpoint_dir(variant, seed, key)
        if rung is not None:
            cfg = with_rung(cfg, rung, r.tune)
            variant_file, key = rung_file(variant, key, rung)
        if self.cache_dir is None:
            return _fit_here(r.fit, data, groups, cfg, seed, variant, {**r.given, **given}), key
        path = self.cache_file(variant if rung is None else variant_file, seed, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not wait and path.exists():
            return None
        with _claim(path, wait=wait) as held:
            if not held:
                return None
            if path.exists():
                return (torch.load(path, map_location="cpu", weights_only=False), key) if wait else None
            result = _fit_here(r.fit, data, groups, with_checkpoint(cfg, ckpt, r.tune), seed, variant,
                               {**r.given, **given})
            store(path, result)
            if rung is None:
                _drop_checkpoint(ckpt)
        return result, key

    def run_data(self, r: Run) -> tuple[D.SeqData, D.UserGroups | dict]:
        """The (data, groups) run ``r`` trains on: its own, or the experiment's."""
        if r.data is None:
            return self.data, self.groups
        return r.data, (r.groups if r.groups is not None else {"all": np.ones(r.data.n_users, dtype=bool)})

    def cache_file(self, variant: str, seed: int, key: str) -> Path | None:
        """Where the run ``(variant, seed)`` with cache ``key`` is kept (None: no cache)."""
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{_safe(variant)}-{seed}-{key[:16]}.pt"

    def checkpoint_dir(self, variant: str, seed: int, key: str) -> Path | None:
        """Where the run ``(variant, seed)`` with cache ``key`` checkpoints while it trains (None:
        no cache, no checkpoint); removed once the finished run is stored."""
        if self.cache_dir is None:
            return None
        return self.cache_dir / "checkpoints" / f"{_safe(variant)}-{seed}-{key[:16]}"

    def _cache_key(self, r: Run, cfg, variant: str, seed: int, upstream: list[str]) -> str:
        if r.data is None:
            if self._data_digest is None:
                self._data_digest = digest(self.data)
            data_digest = self._data_digest
        else:
            data_digest = digest((r.data, r.groups))
        key = hashlib.sha256()
        # a run on data of its own (a pre-training on the sources) does not depend on the target's
        # groups: targets with the same sources share it
        target_groups = (self.groups.head_threshold, self.groups.cold_max) if r.data is None else ()
        for part in (r.fit.__module__, r.fit.__qualname__, repr(cfg), r.tune, variant, seed,
                     *target_groups, data_digest,
                     *(f"{k}={digest(v)}" for k, v in sorted(r.given.items())), _code_fingerprint(), *upstream):
            key.update(repr(part).encode())
        return key.hexdigest()

    def describe(self) -> pd.DataFrame:
        """Users, share and activeness range of every group."""
        return self.groups.summary(self.split.activeness)

    def activeness_stats(self) -> pd.DataFrame:
        """The long-tail figures as a tidy metrics frame (group, metric, k, value) for
        :func:`seqtransfer.report.record`: each group's share of users and of training
        interactions, and the Gini coefficient of activeness (group ``all``); ``k`` is 0."""
        act = self.split.activeness
        rows = [{"group": "all", "metric": "gini", "k": 0, "value": D.lorenz(act)[2],
                 "n_users": len(act)}]
        for name, m in self.groups.masks.items():
            if name == "all":
                continue
            rows += [{"group": name, "metric": "user_share", "k": 0, "value": float(m.mean()),
                      "n_users": int(m.sum())},
                     {"group": name, "metric": "interaction_share", "k": 0,
                      "value": float(act[m].sum() / max(1, act.sum())), "n_users": int(m.sum())}]
        return pd.DataFrame(rows)


def prepare(dataset: str = "", budget: str | Budget = "quick", seed: int = 0,
            device: str = "auto", head_frac: float = 0.2, head_threshold: float | None = None,
            cold_max: int = 5, cold_start_frac: float = 0.0, min_user: int = 5,
            min_item: int = 5, data_dir: str | None = None, progress: bool = True,
            cache: bool | str = False, user_col: str | None = None, item_col: str | None = None,
            time_col: str | None = None, executor: str = "local", ray_address: str = "",
            ray_cpus_per_run: float = 1.0, n_seeds: int = 0) -> Experiment:
    """Load ``dataset`` and build the split, groups and tensors for ``budget``.

    Args:
        dataset: a known name (``"ml-1m"``, ``"ml-100k"``; fetched on first use) or a path to
            a GroupLens folder or a CSV/Parquet file (see :func:`seqtransfer.data.load`);
            ``""``: the budget's dataset (quick: ML-100K, smoke and full: ML-1M).
        budget: ``"smoke"`` | ``"quick"`` | ``"full"`` or a :class:`Budget`.
        seed: seeds the user sample (smoke budget), the cold-start draw and the first model.
        device: ``"auto"`` (CUDA when present) | ``"cpu"`` | ``"cuda"``.
        head_frac, head_threshold: head = top ``head_frac`` of users by activeness, or users
            with more than ``head_threshold`` training interactions when that is given.
        cold_max: cold-start users have at most this many training interactions.
        cold_start_frac: share of users whose histories are cut to ``cold_max`` (0: none).
        min_user, min_item: k-core filter.
        user_col, item_col, time_col: column names of a CSV/Parquet ``dataset`` (None or "":
            detected from the header).
        progress: show progress bars while training.
        executor: where :meth:`Experiment.run` trains: ``"local"`` (this process) or ``"ray"``
            (Ray tasks; see :mod:`seqtransfer.executor`). With ``"ray"`` the cluster is joined
            (or a local Ray started) here, so a wrong address fails before any data work.
        ray_address: ``""`` (start a local Ray on 127.0.0.1), ``"auto"``, ``"host:6379"`` or
            ``"ray://host:10001"``.
        ray_cpus_per_run: CPUs each run reserves on a CPU device (and its torch threads).
        cache: keep finished runs and reuse them (``True``: ``runs/`` inside the data folder;
            a path: there; ``False``: always train).
        n_seeds: model seeds per arm (``seed, seed + 1, ...``); 0: the budget's (smoke 1, quick
            and full 3). One seed measures no seed noise, and every verdict says so.

    Returns:
        An :class:`Experiment`.
    """
    b = budget if isinstance(budget, Budget) else get_budget(budget)
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, (int, np.integer)) or n_seeds < 0:
        raise ValueError(f"n_seeds must be a whole number >= 0 (0: the budget's {b.n_seeds}), got {n_seeds!r}")
    if n_seeds:
        b = replace(b, n_seeds=int(n_seeds))
    ray = X.RayOptions(address=ray_address or "", cpus_per_run=ray_cpus_per_run)
    if X.check_executor(executor) == "ray":
        X.connect(ray)
    if isinstance(dataset, str) and not dataset:
        dataset = b.dataset
    if not 0.0 <= cold_start_frac < 1.0:
        raise ValueError(f"cold_start_frac must be in [0, 1), got {cold_start_frac}")
    dev = resolve_device(device)
    ds = dataset if isinstance(dataset, D.Interactions) else D.load(
        dataset, data_dir=data_dir, min_user=min_user, min_item=min_item, user_col=user_col,
        item_col=item_col, time_col=time_col)
    ds = D.sample_users(ds, b.max_users, seed)
    split = D.leave_one_out(ds)
    cold = np.zeros(split.n_users, dtype=bool)
    if cold_start_frac > 0:
        split, cold = D.truncate_histories(split, cold_start_frac, keep=cold_max, seed=seed)
    groups = D.activeness_groups(split.activeness, head_frac=head_frac,
                                 head_threshold=head_threshold, cold_max=cold_max)
    seqs = D.build_sequences(split, b.max_len)
    cache_dir = None
    if cache:
        cache_dir = Path(data_dir or D.default_data_dir()) / "runs" if cache is True else Path(cache)
    return Experiment(ds, split, groups, seqs, b, dev, seed, cold, progress, cache_dir,
                      executor=executor, ray=ray)


@dataclass
class Transfer:
    """Everything one cross-domain setting needs: source tensors and features, the target as an
    :class:`Experiment` (groups, budget, runs) and its features."""

    setting: D.CrossDomain
    source: D.SeqData
    source_features: D.ItemFeatures
    target: Experiment               # the target's split, groups, tensors, budget and runs
    target_features: D.ItemFeatures
    seconds: dict[str, float] = field(default_factory=dict, metadata=UNDIGESTED)   # stage -> seconds spent preparing


def prepare_transfer(setting: D.CrossDomain, budget: str | Budget = "quick", seed: int = 0,
                     device: str = "auto", max_len: int = 50, slots: dict[str, str] | None = None,
                     data_dir: str | None = None, progress: bool = True, head_frac: float = 0.2,
                     cold_max: int = 5, cache: bool | str = False, source_eval_users: int | None = 2000,
                     source_users: int | None = None, executor: str = "local", ray_address: str = "",
                     n_seeds: int = 0) -> Transfer:
    """Sample (smoke budget), split and tensorise the sources and the target of ``setting``, and
    build both item feature sets (text embeddings cached). Sequences are cut to ``max_len``;
    ``cache``, ``executor``, ``ray_address`` and ``n_seeds`` are the target experiment's (see
    :func:`prepare`). A pre-training validates (early stopping) and reports on a seeded sample
    of ``source_eval_users`` source sequences (None: all); it trains on every sequence.
    ``source_users``: keep the source sequences of a seeded sample of this many source users
    (None: all; :meth:`~seqtransfer.data.CrossDomain.sample_sources`), so that a pre-training
    reaches early stopping on a CPU."""
    b = replace(budget if isinstance(budget, Budget) else get_budget(budget), max_len=max_len)
    t0 = time.perf_counter()
    setting = setting.sample(b.max_users, seed).sample_sources(source_users, seed)
    source = D.eval_sample(D.build_sequences(D.leave_one_out(setting.sources), max_len), source_eval_users, seed)
    exp = prepare(setting.target, b, seed, device, head_frac=head_frac, cold_max=cold_max,
                  progress=progress, data_dir=data_dir, cache=cache, executor=executor,
                  ray_address=ray_address, n_seeds=n_seeds)
    # a group no target user falls in (no cold-start users among ML genre targets) is left out
    exp.groups.masks = {k: m for k, m in exp.groups.masks.items() if m.any()}
    t1 = time.perf_counter()
    src_f = D.item_features(setting.sources, slots, data_dir, progress)
    tgt_f = D.item_features(exp.dataset, slots, data_dir, progress, genre_vocab=src_f.genre_vocab)
    t2 = time.perf_counter()
    return Transfer(setting, source, src_f, exp, tgt_f, {"data": t1 - t0, "features": t2 - t1})


@dataclass
class Domains:
    """A multi-source setting: every source domain's own tensors (own users, own item ids), its
    items, and the target as an :class:`Experiment` (groups, budget, runs)."""

    setting: D.CrossDomain
    sources: dict[str, D.SeqData]          # domain -> its sequences and item ids
    source_items: dict[str, pd.DataFrame]  # domain -> items (index = that domain's ids; title ...)
    target: Experiment
    seconds: dict[str, float] = field(default_factory=dict, metadata=UNDIGESTED)   # stage -> seconds spent preparing


def prepare_domains(setting: D.CrossDomain, budget: str | Budget = "quick", seed: int = 0,
                    device: str = "auto", max_len: int = 50, target_user_frac: float = 1.0,
                    target_history_frac: float = 1.0, progress: bool = True, head_frac: float = 0.2,
                    cold_max: int = 5, cache: bool | str = False, data_dir: str | None = None,
                    source_eval_users: int | None = 1000, source_users: int | None = None,
                    executor: str = "local", ray_address: str = "", n_seeds: int = 0) -> Domains:
    """Sample (smoke budget), split and tensorise every source domain of ``setting`` on its own,
    and the target. The limited-data target keeps a seeded ``target_user_frac`` of its users
    and, of every kept user, the most recent ``target_history_frac`` of the history
    (:func:`seqtransfer.data.recent_share`). Each source validates (a pre-training's early
    stopping) on a seeded sample of ``source_eval_users`` of its sequences (None: all) and
    trains on all of them; ``source_users`` keeps the sequences of a seeded sample of that many
    source users (None: all). ``cache``, ``executor``, ``ray_address``, ``n_seeds``: the target
    experiment's (:func:`prepare`)."""
    if not 0.0 < target_user_frac <= 1.0:
        raise ValueError(f"target_user_frac must be in (0, 1], got {target_user_frac}")
    b = replace(budget if isinstance(budget, Budget) else get_budget(budget), max_len=max_len)
    t0 = time.perf_counter()
    setting = setting.sample(b.max_users, seed).sample_sources(source_users, seed)
    sources, items = {}, {}
    for i, d in enumerate(sorted(setting.sources.inter["domain"].unique())):
        ds = D.domain_sequences(setting.sources, [d], min_len=3)
        sources[d] = D.eval_sample(D.build_sequences(D.leave_one_out(ds), max_len), source_eval_users, seed + i)
        items[d] = ds.items
    target = setting.target
    if target_user_frac < 1.0:
        target = D.sample_users(target, max(1, round(target_user_frac * target.n_users)), seed)
    target = D.recent_share(target, target_history_frac)
    exp = prepare(target, b, seed, device, head_frac=head_frac, cold_max=cold_max, progress=progress,
                  data_dir=data_dir, cache=cache, executor=executor, ray_address=ray_address, n_seeds=n_seeds)
    # a group no target user falls in (no cold-start users among ML targets) is left out
    exp.groups.masks = {k: m for k, m in exp.groups.masks.items() if m.any()}
    return Domains(setting, sources, items, exp, {"data": time.perf_counter() - t0})


def with_lr(cfg, lr: float | None, tune: str = "train"):
    """``cfg`` with the learning rate of its ``tune`` training settings set to ``lr``
    (unchanged for None)."""
    if lr is None:
        return cfg
    if not hasattr(cfg, tune):
        raise ValueError(f"{type(cfg).__name__} has no {tune} settings; cannot tune its learning rate "
                         "(pass lr_grid=(lr,) to run it as configured)")
    return replace(cfg, **{tune: replace(getattr(cfg, tune), lr=lr)})


def halves(r: Run, lrs, rung: int | None) -> bool:
    """Whether run ``r`` searches ``lrs`` by successive halving: a rung is set, there is more
    than one rate, its config does not restart (``restarts``: the plugin stage of a two-stage run
    is not a prefix of one training, so a rung could not be continued; ECAT's periods can, its
    rung being the first period's first validations) and its tuned settings can
    stop at a rung (a ``TrainConfig``)."""
    return (rung is not None and len(lrs) > 1 and not getattr(r.config, "restarts", False)
            and hasattr(getattr(r.config, r.tune, None), "rung"))


def continuing(rung_results: list[MethodResult], keep: int) -> list[int]:
    """Indices (in grid order) of the rates whose rungs are the best ``keep`` on validation
    NDCG@10: the ones successive halving continues to early stopping (``halving.best_rungs``)."""
    return best_rungs([_valid_ndcg(t) for t in rung_results], keep)


def with_rung(cfg, rung: int, tune: str = "train"):
    """``cfg`` whose ``tune`` training settings stop after ``rung`` validations past the warm-up."""
    return replace(cfg, **{tune: replace(getattr(cfg, tune), rung=rung)})


def rung_file(variant: str, key: str, rung: int) -> tuple[str, str]:
    """The (name, key) a rung of the run ``(variant, key)`` is cached under."""
    return f"{variant} (rung {rung})", hashlib.sha256(f"{key} rung {rung}".encode()).hexdigest()


def with_checkpoint(cfg, path: Path | None, tune: str = "train"):
    """``cfg`` whose ``tune`` training settings checkpoint to ``path`` (unchanged for None or a
    config without such settings)."""
    t = getattr(cfg, tune, None)
    if path is None or not hasattr(t, "checkpoint_dir"):
        return cfg
    return replace(cfg, **{tune: replace(t, checkpoint_dir=str(path))})


def _drop_checkpoint(path: Path | None) -> None:
    """Remove a stored run's checkpoint folder (it would only resume a finished run)."""
    if path is not None and path.exists():
        shutil.rmtree(path, ignore_errors=True)


def trial_lrs(grid: tuple[float, ...], first: bool, chosen: float | None) -> tuple:
    """The learning rates a (variant, seed) trains with: the whole grid on the first seed (when
    it has more than one value), else the rate chosen there; None: the config's own."""
    return grid if (first and len(grid) > 1) else ((chosen,) if chosen else (None,))


def store(path: Path, result: MethodResult) -> None:
    """Save a finished run atomically (a killed process never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(result, tmp)
    os.replace(tmp, path)


def _fit_here(fit: Callable, data, groups, cfg, seed: int, variant: str, given: dict) -> MethodResult:
    """One run trained in this process, labelled with where it ran."""
    result = fit(data, groups, cfg, seed=seed, variant=variant, **given)
    result.ran_on = X.where_local()
    return result


class _Chooser:
    """Chooses a (variant, seed)'s run among its learning-rate trials, the same way for every
    executor: the best validation NDCG@10 on the first seed (its ``tuning`` table is kept for
    the variant), the one trial on the others; the chosen result gets ``lr`` and ``tuning``."""

    def __init__(self):
        self.tuning: dict[str, pd.DataFrame] = {}

    def __call__(self, variant: str, r: Run, lrs, results: list[MethodResult], first: bool,
                 rung: int | None = None, among: list[int] | None = None) -> int:
        """The chosen index; ``among``: the indices that may be chosen (successive halving's
        continued rates; the others' ``results`` are their rungs)."""
        among = list(range(len(results))) if among is None else list(among)
        best = among[0] if len(among) == 1 else max(among, key=lambda j: _valid_ndcg(results[j]))
        used = [_lr_of(r.config, r.tune) if lr is None else lr for lr in lrs]
        if first:
            search = "grid" if rung is None else f"rung of {rung}" + (
                f", best {len(among)} continued" if len(among) > 1 else "")
            self.tuning[variant] = pd.DataFrame({"variant": variant, "lr": used,
                                                 "valid_ndcg10": [_valid_ndcg(r) for r in results],
                                                 "chosen": [j == best for j in range(len(results))],
                                                 "seconds": [_seconds(r) for r in results],
                                                 "search": search,
                                                 "continued": [rung is None or j in among
                                                               for j in range(len(results))]})
        results[best].lr, results[best].tuning = used[best], self.tuning[variant]
        return best


def _lr_of(cfg, tune: str = "train") -> float | None:
    """The learning rate a method config's ``tune`` settings ask for (None when it has none)."""
    t = getattr(cfg, tune, None)
    return None if t is None else t.lr


def _seconds(result: MethodResult) -> float:
    """Training seconds of a run (NaN when it kept no training record)."""
    t = getattr(result, "train", None)
    return float(t.seconds) if t is not None and hasattr(t, "seconds") else float("nan")


def _valid_ndcg(result: MethodResult) -> float:
    """Validation NDCG@10 of all users, the selection criterion (NaN when not recorded)."""
    try:
        return result.ndcg10("all", "valid")
    except (KeyError, IndexError):
        return float("nan")


@contextmanager
def _claim(path: Path, poll: float = 2.0, wait: bool = True):
    """Hold ``path``'s lock file while a run is trained or read: another process (a notebook of
    the same batch) that wants the same run waits, then loads the finished file. A lock left by a
    process that died is taken over. Yields True when held; with ``wait=False`` it yields False
    at once, holding nothing, when another live process has the lock."""
    lock = path.with_suffix(".lock")
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            break
        except FileExistsError:
            try:
                owner = int(lock.read_text() or 0)
                os.kill(owner, 0)                       # raises when the owner is gone
            except (ValueError, ProcessLookupError, FileNotFoundError):
                lock.unlink(missing_ok=True)
                continue
            except PermissionError:
                pass
            if not wait:
                yield False
                return
            time.sleep(poll)
    try:
        yield True
    finally:
        lock.unlink(missing_ok=True)


def _safe(variant: str) -> str:
    """A variant name as part of a file name."""
    return variant.replace(" ", "_").replace("/", "_")


def digest(value) -> str:
    """A content digest of what a run trains on or is given: tensors and arrays by their bytes,
    dataclasses (``SeqData``, ``ItemFeatures``), dicts and sequences by their parts, anything
    else by its ``repr``. Memoised per object while it lives (features are hashed once)."""
    memo = _DIGESTS.get(id(value))
    if memo is not None and memo[0] is value:
        return memo[1]
    h = hashlib.sha256()
    _feed(h, value)
    out = h.hexdigest()
    if not isinstance(value, (int, float, str, bool, type(None))):
        _DIGESTS[id(value)] = (value, out)
    return out


_DIGESTS: dict[int, tuple[object, str]] = {}


def _feed(h, value) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"tensor{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    elif isinstance(value, np.ndarray):
        h.update(f"array{value.shape}{value.dtype}".encode())
        h.update(np.ascontiguousarray(value).tobytes() if value.dtype != object else repr(value.tolist()).encode())
    elif isinstance(value, (pd.DataFrame, pd.Series)):
        h.update(pd.util.hash_pandas_object(value, index=True).to_numpy().tobytes())
    elif is_dataclass(value) and not isinstance(value, type):
        h.update(type(value).__qualname__.encode())
        for f in fields(value):
            if f.metadata.get("digest", True):      # a wall-clock field never reaches a cache key
                h.update(f.name.encode())
                _feed(h, getattr(value, f.name))
    elif isinstance(value, dict):
        for k in sorted(value, key=repr):
            h.update(repr(k).encode())
            _feed(h, value[k])
    elif isinstance(value, (list, tuple)):
        h.update(f"{type(value).__name__}{len(value)}".encode())
        for v in value:
            _feed(h, v)
    elif isinstance(value, D.UserGroups):
        _feed(h, (value.masks, value.head_threshold, value.cold_max))
    else:
        h.update(repr(value).encode())


_CODE_DIGEST: str | None = None


def _code_fingerprint() -> str:
    """A digest of the library's source: any code change invalidates cached runs."""
    global _CODE_DIGEST
    if _CODE_DIGEST is None:
        h = hashlib.sha256()
        for f in sorted(Path(__file__).parent.rglob("*.py")):
            h.update(f.read_bytes())
        _CODE_DIGEST = h.hexdigest()
    return _CODE_DIGEST
