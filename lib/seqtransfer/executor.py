"""Where :meth:`seqtransfer.experiment.Experiment.run` trains: in this process or on Ray.

``"local"`` (the default) trains every (variant, learning rate, seed) run one after another in
the notebook's kernel; nothing to install or start. ``"ray"`` makes each run a Ray task:

- **Data once.** The prepared tensors and groups go into Ray's object store once per
  ``Experiment.run`` call, and so do a run's own tensors (a pre-training's sources) and each
  constant it is given (item features); every task reads them from there.
- **Resources.** A task asks for one GPU when the experiment's device is CUDA, else for
  ``cpus_per_run`` CPUs, and trains with that many torch threads. Independent runs proceed in
  parallel up to the cluster's size.
- **Order.** A run that builds on another (``{"stage1": "sasrec joint"}``) is given the
  upstream task's result reference, so Ray starts it when that result exists. The learning
  rate grid is searched on the first seed as with ``"local"``: the other seeds of a variant are
  submitted once its grid has finished and a rate is chosen (on validation NDCG@10).
- **Cache.** The run cache stays where the notebook runs: a cached run is loaded here and not
  submitted; a finished task's result is saved here as it arrives, so when a later run fails
  the finished ones are kept. A task checkpoints under the cache's ``checkpoints/`` folder (on
  a local Ray, the notebook's disk), so a retried task resumes where its worker died.
- **Faults.** A task whose worker process or node dies is retried by Ray (``retries`` times);
  an exception raised by the training itself is not retried and fails the notebook, naming the
  run. A cluster that cannot be reached fails :func:`connect` with one message.
- **Progress.** A line in the notebook counts the runs done, running, queued on the cluster,
  and waiting for an earlier run or a learning-rate choice.

Addresses (``ray_address``): ``""`` starts a local Ray on this machine, bound to 127.0.0.1;
``"auto"`` joins the cluster this machine is part of (``ray start`` was run here);
``"host:6379"`` joins that cluster's head; ``"ray://host:10001"`` goes through a Ray client
server. The worker nodes need the same Python packages (``pip install -e '.[ray]'`` of the same
checkout); the library itself is shipped to them with each job (Ray's ``py_modules``), so they
run the notebook's version of :mod:`seqtransfer`.

Results are identical to ``"local"`` for the same seeds when both train with the same number of
torch threads: every run seeds itself, and the order in which runs execute does not enter.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Callable

import torch

EXECUTORS = ("local", "ray")
RAY_INSTALL = "pip install -e '.[ray]' in the checkout (or pip install 'ray==2.52.0')"


@dataclass
class RayOptions:
    """How runs go to Ray (``Experiment.ray``)."""

    address: str = ""          # "": local Ray on 127.0.0.1; "auto"; "host:port"; "ray://host:10001"
    cpus_per_run: float = 1.0  # CPUs a run reserves on a CPU device (its torch threads: the floor)
    retries: int = 3           # times a run is retried after its worker or node died
    local_cpus: int | None = None  # CPUs of a local Ray (None: $SEQTRANSFER_RAY_CPUS, which a
                                   # batch of several notebooks sets to each one's share, else all)

    def __post_init__(self):
        if not self.cpus_per_run > 0:
            raise ValueError(f"cpus_per_run must be positive, got {self.cpus_per_run}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")


def check_executor(executor: str) -> str:
    """``executor`` itself when it is known, else a ValueError naming the choices."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)} "
                         "(\"local\" trains in this process, \"ray\" on a Ray cluster)")
    return executor


def _import_ray():
    try:
        import ray
    except ImportError as err:
        raise ImportError(f"executor='ray' needs Ray, which is not installed: {RAY_INSTALL}; "
                          "executor='local' needs nothing") from err
    return ray


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast, with the fix, when nothing listens at a ``host:port`` or ``ray://`` address
    (Ray itself retries for minutes before it gives up)."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"ray_address {address!r} is not an address; give \"\" (a local Ray), "
                         "\"auto\", \"host:6379\" or \"ray://host:10001\"")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise ConnectionError(
            f"cannot reach the Ray cluster at {address!r} ({err}). Start it there with "
            "`ray start --head --port=6379` (and `ray start --address=HEAD:6379` on each worker), "
            "check the host and port, or use executor=\"local\" to train in this process") from None


def connect(options: RayOptions) -> dict:
    """Start or join Ray as ``options.address`` says (once per process) and describe the
    cluster: ``{"address", "nodes", "cpus", "gpus"}``."""
    ray = _import_ray()
    if not ray.is_initialized():
        library = str(Path(__file__).resolve().parent)
        kwargs = dict(log_to_driver=False, runtime_env={"py_modules": [library]})
        if options.address == "":
            # a local Ray: loopback only, no dashboard, no usage report
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")   # no FutureWarning
            cpus = options.local_cpus or int(os.environ.get("SEQTRANSFER_RAY_CPUS", 0)) or None
            kwargs.update(num_cpus=cpus, include_dashboard=False,
                          _node_ip_address="127.0.0.1")
        elif options.address == "auto":
            pass
        else:
            _reachable(options.address)
        try:
            ray.init(address=options.address or None, **kwargs)
        except ConnectionError as err:
            raise ConnectionError(f"cannot join the Ray cluster at {options.address!r}: {err}. "
                                  "For \"auto\", run `ray start --head` on this machine first; or "
                                  "use executor=\"local\"") from None
    resources = ray.cluster_resources()
    return {"address": options.address or "local", "nodes": sum(n["Alive"] for n in ray.nodes()),
            "cpus": resources.get("CPU", 0.0), "gpus": resources.get("GPU", 0.0)}


def where_local() -> dict:
    """``MethodResult.ran_on`` of a run trained in this process."""
    return {"executor": "local", "node": "local", "host": socket.gethostname(), "pid": os.getpid()}


def _fit_task(fit: Callable, shared: tuple, cfg, seed: int, variant: str, threads: int, **given):
    """Body of one Ray task: train ``fit`` on the shared (data, groups) and say where it ran."""
    import ray

    data, groups = shared
    torch.set_num_threads(threads)
    cfg = _quiet(cfg)
    result = fit(data, groups, cfg, seed=seed, variant=variant, **given)
    result.ran_on = {"executor": "ray", "node": ray.get_runtime_context().get_node_id(),
                     "host": socket.gethostname(), "pid": os.getpid()}
    return result


def _quiet(cfg):
    """``cfg`` with every ``TrainConfig`` field's progress bars off (no bars in worker logs)."""
    if not is_dataclass(cfg):
        return cfg
    changes = {f.name: replace(getattr(cfg, f.name), progress=False) for f in fields(cfg)
               if is_dataclass(getattr(cfg, f.name)) and hasattr(getattr(cfg, f.name), "progress")}
    return replace(cfg, **changes) if changes else cfg


@dataclass
class _Trial:
    lr: float | None
    key: str
    ref: object = None        # a Ray ObjectRef while the task runs (None when cached)
    result: object = None     # the MethodResult once here
    ckpt: Path | None = None  # where it checkpoints while it trains
    file: str = ""            # the name its cache file goes under (the variant; a rung's own)
    rung: bool = False        # a rung of successive halving (its checkpoint is kept for the winner)


class RunsProgress:
    """One line, updated in place in a notebook (a log line elsewhere): runs done, running,
    queued and waiting. ``running`` is the submitted runs the cluster has room for at once."""

    def __init__(self, total: int, capacity: int):
        self.total, self.capacity = total, max(1, capacity)
        self.handle, self.last, self.start = None, None, time.time()

    def text(self, done: int, submitted: int, cached: int = 0) -> str:
        running = min(submitted, self.capacity)
        waiting = self.total - done - submitted
        mins = (time.time() - self.start) / 60
        extra = f" ({cached} from the cache)" if cached else ""
        return (f"Ray: {done}/{self.total} runs done{extra} · {running} running · "
                f"{submitted - running} queued · {waiting} waiting for an earlier run · {mins:.1f} min")

    def update(self, done: int, submitted: int, cached: int = 0) -> None:
        counts = (done, submitted, cached)
        if counts == self.last:
            return
        self.last = counts
        line = self.text(done, submitted, cached)
        from .train_progress import _in_kernel
        if _in_kernel():
            from IPython.display import display
            if self.handle is None:
                self.handle = display({"text/plain": line}, raw=True, display_id=True)
            else:
                self.handle.update({"text/plain": line}, raw=True)
        else:
            print(line, flush=True)


def _remote(exp, body: Callable):
    """Ray, ``body`` as a remote function with a run's resources and retries, the torch threads
    a task uses, and how many such tasks the cluster runs at once."""
    ray = _import_ray()
    opts = exp.ray
    info = connect(opts)
    if exp.device.type == "cuda":
        resources, threads, capacity = {"num_gpus": 1, "num_cpus": 1}, max(1, torch.get_num_threads()), int(info["gpus"])
    else:
        resources = {"num_cpus": opts.cpus_per_run}
        threads, capacity = max(1, int(opts.cpus_per_run)), int(info["cpus"] // opts.cpus_per_run)
    task = ray.remote(max_retries=opts.retries, retry_exceptions=False, **resources)(body)
    return ray, task, threads, capacity


def _get(ray, ref, name: str, retries: int):
    """A finished task's value, or the error naming the run: a training that raised is not
    retried; a lost worker or node was retried ``retries`` times first."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        raise RuntimeError(f"{name} failed in its training on Ray: {err.cause!r}") from err
    except ray.exceptions.RayError as err:
        raise RuntimeError(f"{name} lost its Ray worker or node {retries + 1} times "
                           f"(retries={retries}): {err}") from err


def run_ray(exp, runs: dict[str, tuple], seeds: list[int], grid: tuple[float, ...],
            pick: Callable) -> list:
    """:meth:`Experiment.run` on Ray; see the module docstring. ``pick(variant, cfg, lrs,
    trials, first)`` chooses among a unit's finished trials and labels the result, exactly as
    the local path does; it returns the chosen trial's index."""
    from .experiment import (_drop_checkpoint, continuing, halves, input_unit, restarts, rung_file, store,
                             trial_lrs, with_checkpoint, with_lr, with_rung)

    ray, task, threads, capacity = _remote(exp, _fit_task)
    stored: dict[int, object] = {}

    def put(value):
        """``value`` in the object store, once per object (the data, each constant)."""
        if id(value) not in stored:
            stored[id(value)] = (value, ray.put(value))
        return stored[id(value)][1]

    def shared_of(r):
        data, groups = exp.run_data(r)
        key = (id(data), id(groups))
        if key not in stored:
            stored[key] = ((data, groups), ray.put((data, groups)))   # the data, once a (data, groups)
        return stored[key][1]

    order = [(v, s) for v, r in runs.items() for s in r.seeds_of(seeds)]
    trials: dict[tuple[str, int], list[_Trial]] = {}
    chosen: dict[tuple[str, int], tuple[object, str, object]] = {}   # unit -> (result, key, ref)
    chosen_lr: dict[str, float | None] = {}
    pending: dict[object, tuple[tuple[str, int], int]] = {}           # ref -> (unit, trial index)
    k = exp.budget.rung
    keep = exp.budget.keep
    halving = {(v, seeds[0]): None for v, r in runs.items() if halves(r, r.grid(grid), k)}   # unit -> continued
    n_trials = sum(len(runs[v].grid(grid)) if (s == seeds[0] and len(runs[v].grid(grid)) > 1) else 1
                   for v, s in order) + sum(min(keep, len(runs[v].grid(grid))) for v, _ in halving)
    bar = RunsProgress(n_trials, capacity)    # shown in batch runs too: one line, updated in place
    n_done = n_cached = 0

    def ready(unit) -> bool:
        variant, seed = unit
        if any(input_unit(runs, src, seed, seeds) not in chosen for src in runs[variant].inputs.values()):
            return False
        return seed == seeds[0] or len(runs[variant].grid(grid)) == 1 or variant in chosen_lr

    def submit(unit) -> None:
        variant, seed = unit
        r = runs[variant]
        lrs = trial_lrs(r.grid(grid), seed == seeds[0], chosen_lr.get(variant))
        trials[unit] = []
        for lr in lrs:
            launch(unit, lr, rung=k if unit in halving else None)
        settle(unit)

    def launch(unit, lr, rung=None) -> None:
        """Start one trial of ``unit`` at ``lr`` (a rung of it with ``rung``), or load it from
        the cache."""
        nonlocal n_done, n_cached
        variant, seed = unit
        r = runs[variant]
        upstream = [chosen[input_unit(runs, src, seed, seeds)][1] for src in r.inputs.values()]
        run_cfg = with_lr(r.config, lr, r.tune)
        key = exp._cache_key(r, run_cfg, variant, seed, upstream)
        ckpt = exp.checkpoint_dir(variant, seed, key)
        file = variant
        if rung is not None:
            run_cfg = with_rung(run_cfg, rung, r.tune)
            file, key = rung_file(variant, key, rung)
        trial = _Trial(lr, key, ckpt=ckpt, file=file, rung=rung is not None)
        path = exp.cache_file(file, seed, key)
        if path is not None and path.exists():
            trial.result = torch.load(path, map_location="cpu", weights_only=False)
            n_done += 1
            n_cached += 1
        else:
            given = {arg: upstream_ref(input_unit(runs, src, seed, seeds)) for arg, src in r.inputs.items()}
            given.update({arg: put(v) for arg, v in r.given.items()})
            trial.ref = task.remote(r.fit, shared_of(r), with_checkpoint(run_cfg, ckpt, r.tune), seed,
                                    variant, threads, **given)
            pending[trial.ref] = (unit, len(trials[unit]))
        trials[unit].append(trial)

    def upstream_ref(unit):
        """The reference a dependent task gets of ``unit``'s chosen run (put into the object
        store here when that run came from the cache)."""
        result, key, ref = chosen[unit]
        if not isinstance(ref, ray.ObjectRef):
            ref = ray.put(ref)
            chosen[unit] = (result, key, ref)
        return ref

    def settle(unit) -> None:
        """Choose a unit's run once all its trials are here (or, for a single-trial run, make
        its reference available to the runs built on it at once)."""
        variant, seed = unit
        ts = trials[unit]
        if len(ts) == 1 and ts[0].ref is not None and unit not in chosen:
            chosen[unit] = (None, ts[0].key, ts[0].ref)         # dependents may go ahead
        if any(t.result is None for t in ts):
            return
        if unit in halving:
            if halving[unit] is None:        # the rungs are in: the best ``keep`` continue
                kept = halving[unit] = continuing([t.result for t in ts], keep)
                for j in kept:
                    if restarts(ts[j].result.history) and ts[j].ckpt is not None:
                        _drop_checkpoint(ts[j].ckpt)     # not a prefix of one training: start over
                    launch(unit, ts[j].lr)
                settle(unit)                             # the whole runs may come from the cache
                return
            kept = halving[unit]
            n = len(ts) - len(kept)                      # the rungs, then the continued whole runs
            whole = dict(zip(kept, ts[n:]))
            best = pick(variant, runs[variant], [t.lr for t in ts[:n]],
                        [whole[j].result if j in whole else ts[j].result for j in range(n)], True,
                        rung=k, among=kept)
            for j in range(n):
                if j not in whole:
                    _drop_checkpoint(ts[j].ckpt)
            full = whole[best]
            chosen[unit] = (full.result, full.key, full.ref if full.ref is not None else full.result)
            chosen_lr[variant] = ts[best].lr
            return
        best = ts[pick(variant, runs[variant], [t.lr for t in ts], [t.result for t in ts], seed == seeds[0])]
        result = best.result
        chosen[unit] = (result, best.key, best.ref if best.ref is not None else result)
        if seed == seeds[0]:
            chosen_lr[variant] = best.lr

    waiting = list(order)
    try:
        while True:
            for unit in list(waiting):
                if ready(unit):
                    waiting.remove(unit)
                    submit(unit)
            bar.update(n_done, len(pending), n_cached)
            if not pending:
                if waiting:   # cannot happen when Experiment.run checked the inputs' order
                    raise RuntimeError(f"runs {waiting} wait for runs that never come")
                break
            finished, _ = ray.wait(list(pending), num_returns=1, timeout=5.0)
            for ref in finished:
                unit, j = pending.pop(ref)
                variant, seed = unit
                result = _get(ray, ref, f"run {variant!r} (seed {seed}, lr {trials[unit][j].lr})",
                              exp.ray.retries)
                trial = trials[unit][j]
                trial.result = result
                path = exp.cache_file(trial.file, seed, trial.key)
                if path is not None:
                    store(path, result)       # kept here as it arrives, as the local path does
                    if not trial.rung:        # a rung's checkpoint is where its winner continues
                        _drop_checkpoint(trial.ckpt)
                n_done += 1
                settle(unit)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
    bar.update(n_done, 0, n_cached)
    return [chosen[v, s][0] for v, s in order]


def _call_task(fn: Callable, threads: int, *args):
    """Body of one Ray task of :func:`map_calls`."""
    torch.set_num_threads(threads)
    return fn(*args)


def map_calls(exp, calls: list[tuple[Callable, tuple]]) -> list:
    """Independent calls ``fn(*args)``, results in order, where ``exp.executor`` says: one by
    one here, or as Ray tasks in parallel (each distinct argument put into the object store
    once; the resources, retries and progress line of :func:`run_ray`; a call that raises
    fails with its position and error). Not cached. For sweeps that are not ``Experiment.run``
    runs (03's sensitivity)."""
    if check_executor(exp.executor) == "local" or not calls:
        return [fn(*args) for fn, args in calls]
    ray, task, threads, capacity = _remote(exp, _call_task)
    stored: dict[int, tuple] = {}

    def put(a):
        if id(a) not in stored:
            stored[id(a)] = (a, ray.put(a))   # the object kept alive: its id stays its own
        return stored[id(a)][1]
    refs = [task.remote(fn, threads, *[put(a) for a in args]) for fn, args in calls]
    bar = RunsProgress(len(refs), capacity)
    index = {ref: i for i, ref in enumerate(refs)}
    out: dict[int, object] = {}
    pending = list(refs)
    try:
        while pending:
            bar.update(len(out), len(pending))
            finished, pending = ray.wait(pending, num_returns=1, timeout=5.0)
            for ref in finished:
                i = index[ref]
                name = f"call {i + 1} of {len(refs)} ({getattr(calls[i][0], '__name__', calls[i][0])})"
                out[i] = _get(ray, ref, name, exp.ray.retries)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
    bar.update(len(out), 0)
    return [out[i] for i in range(len(refs))]
