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
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from . import data as D
from . import executor as X
from .budget import Budget, get_budget
from .methods.common import MethodResult
from .train import TrainConfig, resolve_device


@dataclass
class Experiment:
    """One prepared dataset under one budget: what every method in a notebook shares."""

    dataset: D.Interactions       # the tidy interactions after k-core and user sampling
    split: D.Split                # leave-one-out split (after cold-start truncation)
    groups: D.UserGroups          # all / head / tail / cold masks over users
    data: D.SeqData               # padded tensors on the CPU (the loop moves them)
    budget: Budget
    device: torch.device
    seed: int                     # data seed; model seeds are ``seeds``
    cold_users: np.ndarray        # (U,) users whose histories were truncated
    progress: bool = True
    cache_dir: Path | None = None # finished runs are kept here and reused (None: no cache)
    executor: str = "local"       # where run() trains: "local" (this process) | "ray"
    ray: X.RayOptions = field(default_factory=X.RayOptions)   # address, CPUs a run, retries
    _data_digest: str | None = field(default=None, repr=False)   # of ``data``, for cache keys

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

    def run(self, runs: dict[str, tuple], seeds: list[int] | None = None,
            lr_grid: tuple[float, ...] | None = None) -> list[MethodResult]:
        """Fit every ``variant -> (fit, config)`` for every seed; results in that order.

        ``fit`` is a method module's ``fit(data, groups, cfg, seed, variant)``. A run that
        builds on an earlier one is ``variant -> (fit, config, {argument: earlier variant})``:
        ``fit`` then also gets, as that keyword argument, the earlier variant's result for the
        same seed (e.g. ``{"stage1": "sasrec joint"}`` puts plugins on the trained base model).
        The earlier variant must come before it in ``runs``.

        Fair arms: every variant's learning rate (``config.train.lr``) is chosen on validation
        NDCG@10 from the same grid, ``lr_grid`` (default: the budget's). The grid is searched
        with the first seed; the other seeds reuse the chosen value. An explicit one-value
        ``lr_grid=(lr,)`` trains every arm with a ``train`` field at ``lr``. Each result carries its
        ``lr`` and the ``tuning`` table (lr, best validation NDCG@10, chosen). A run built on
        an earlier one gets the earlier variant's chosen run.

        With a ``cache_dir``, a finished run is saved there and loaded instead of re-trained when
        the same fit, config, variant, seed, data, library code and inputs come again (a
        notebook re-run after a crash, or the base model shared by several notebooks). A run
        that another process is training (notebooks of one batch in parallel) is waited for,
        not trained twice.

        Where the runs train is ``executor``: ``"local"``, one after another in this process, or
        ``"ray"``, as Ray tasks in parallel (:mod:`seqtransfer.executor`); both give the same
        results for the same seeds. Every result's ``ran_on`` says where it trained.
        """
        seeds = self.seeds if seeds is None else seeds
        grid = tuple(self.budget.lr_grid if lr_grid is None else lr_grid)
        if not grid or any(not (lr > 0) for lr in grid):
            raise ValueError(f"lr_grid must hold positive learning rates, got {grid}")
        for variant, spec in runs.items():
            if len(spec) not in (2, 3):
                raise ValueError(f"run {variant!r} must be (fit, config) or (fit, config, inputs), "
                                 f"got a tuple of {len(spec)}")
        if lr_grid is not None and len(grid) == 1:
            # an explicit one-value grid is that learning rate for every arm that has one (the
            # budget's one-value grid leaves each config's own rate alone)
            runs = {v: (spec[0], with_lr(spec[1], grid[0]) if hasattr(spec[1], "train") else spec[1], *spec[2:])
                    for v, spec in runs.items()}
        listed = list(runs)
        for variant, spec in runs.items():
            earlier = listed[:listed.index(variant)]
            for arg, source in run_inputs(spec).items():
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
            for variant, spec in runs.items():
                if len(spec) == 2:
                    for lr in (grid if len(grid) > 1 else (None,)):
                        self._run_one(*spec, variant, seeds[0], {}, [], lr=lr, wait=False)
        done: dict[tuple[str, int], tuple[MethodResult, str]] = {}   # (variant, seed) -> result, key
        out = []
        for variant, spec in runs.items():
            fit, cfg = spec[:2]
            inputs = run_inputs(spec)
            chosen = None
            for i, s in enumerate(seeds):
                given = {arg: done[source, s][0] for arg, source in inputs.items()}
                upstream = [done[source, s][1] for source in inputs.values()]
                lrs = trial_lrs(grid, i == 0, chosen)
                trials = [self._run_one(fit, cfg, variant, s, given, upstream, lr=lr) for lr in lrs]
                best = pick(variant, cfg, lrs, [t[0] for t in trials], i == 0)
                if i == 0:
                    chosen = lrs[best]
                done[variant, s] = trials[best]
                out.append(trials[best][0])
        return out

    def map_calls(self, calls: list[tuple[Callable, tuple]]) -> list:
        """Independent calls ``fn(*args)`` (a sweep's trainings), results in order, run where
        ``executor`` says (:func:`seqtransfer.executor.map_calls`; not cached)."""
        return X.map_calls(self, calls)

    def _run_one(self, fit: Callable, cfg, variant: str, seed: int, given: dict,
                 upstream: list[str], lr: float | None = None,
                 wait: bool = True) -> tuple[MethodResult, str] | None:
        """One (config at ``lr``, seed) run, through the cache when there is one. With
        ``wait=False`` a run that is cached, or held by another process, is left alone (None)."""
        cfg = with_lr(cfg, lr)
        key = self._cache_key(fit, cfg, variant, seed, upstream)
        if self.cache_dir is None:
            return _fit_here(fit, self.data, self.groups, cfg, seed, variant, given), key
        path = self.cache_file(variant, seed, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not wait and path.exists():
            return None
        with _claim(path, wait=wait) as held:
            if not held:
                return None
            if path.exists():
                return (torch.load(path, map_location="cpu", weights_only=False), key) if wait else None
            result = _fit_here(fit, self.data, self.groups, cfg, seed, variant, given)
            store(path, result)
        return result, key

    def cache_file(self, variant: str, seed: int, key: str) -> Path | None:
        """Where the run ``(variant, seed)`` with cache ``key`` is kept (None: no cache)."""
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{_safe(variant)}-{seed}-{key[:16]}.pt"

    def _cache_key(self, fit: Callable, cfg, variant: str, seed: int, upstream: list[str]) -> str:
        if self._data_digest is None:
            self._data_digest = _fingerprint(self.data)
        key = hashlib.sha256()
        for part in (fit.__module__, fit.__qualname__, repr(cfg), variant, seed, self.groups.head_threshold,
                     self.groups.cold_max, self._data_digest, _code_fingerprint(), *upstream):
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


def with_lr(cfg, lr: float | None):
    """``cfg`` with its training learning rate set to ``lr`` (unchanged for None)."""
    if lr is None:
        return cfg
    if not hasattr(cfg, "train"):
        raise ValueError(f"{type(cfg).__name__} has no train settings; cannot tune its learning rate "
                         "(pass lr_grid=(lr,) to run it as configured)")
    return replace(cfg, train=replace(cfg.train, lr=lr))


def run_inputs(spec: tuple) -> dict[str, str]:
    """The ``{argument: earlier variant}`` of a ``runs`` entry (empty for ``(fit, config)``)."""
    return dict(spec[2]) if len(spec) == 3 else {}


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

    def __call__(self, variant: str, cfg, lrs, results: list[MethodResult], first: bool) -> int:
        best = 0 if len(results) == 1 else max(range(len(results)), key=lambda j: _valid_ndcg(results[j]))
        used = [_lr_of(cfg) if lr is None else lr for lr in lrs]
        if first:
            self.tuning[variant] = pd.DataFrame({"variant": variant, "lr": used,
                                                 "valid_ndcg10": [_valid_ndcg(r) for r in results],
                                                 "chosen": [j == best for j in range(len(results))]})
        results[best].lr, results[best].tuning = used[best], self.tuning[variant]
        return best


def _lr_of(cfg) -> float | None:
    """The training learning rate a method config asks for (None when it has no train settings)."""
    t = getattr(cfg, "train", None)
    return None if t is None else t.lr


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


def _fingerprint(data: D.SeqData) -> str:
    """A digest of the tensors a run trains and is evaluated on."""
    h = hashlib.sha256()
    for t in (data.train_inputs, data.train_users, data.eval_targets["valid"], data.eval_targets["test"],
              data.history_items["test"]):
        h.update(t.cpu().numpy().tobytes())
    return h.hexdigest()


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
