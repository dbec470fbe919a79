"""What one entry of :meth:`seqtransfer.experiment.Experiment.run` is: :class:`Run`.

Its own module, importing nothing of the engine or the methods, so a method can say which runs
a notebook trains (ANT's pre-training and the variants built on it) without importing the
engine, and the engine can read them without importing a method.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .data.batches import SeqData


@dataclass(frozen=True)
class Run:
    """One entry of :meth:`Experiment.run`'s ``runs``: what trains, on what, from what.

    ``fit(data, groups, config, seed=, variant=, **inputs, **given)`` trains and returns a
    :class:`~seqtransfer.results.MethodResult`. ``inputs``: ``{argument: earlier variant}``,
    that variant's chosen result for the same seed (or for its last seed when it has fewer).
    ``given``: constant keyword arguments (item features); each is digested into the cache
    key. ``data``/``groups``: the run's own tensors (a pre-training's source domains; default
    the experiment's; groups default to ``all``), which the run alone sees. ``lr_grid``: this
    run's grid (None: the call's). ``tune``: the config field holding the ``TrainConfig`` whose
    ``lr`` the grid sets (and that checkpoints). ``n_seeds``: train only the first this many of
    the call's seeds (None: all): an upstream model trained once that every seed builds on.
    """

    fit: Callable
    config: object
    inputs: dict = field(default_factory=dict)
    given: dict = field(default_factory=dict)
    data: SeqData | None = None
    groups: dict | None = None
    lr_grid: tuple[float, ...] | None = None
    tune: str = "train"
    n_seeds: int | None = None

    def __post_init__(self):
        if self.lr_grid is not None:
            check_grid(tuple(self.lr_grid), "Run.lr_grid")
        if self.n_seeds is not None and self.n_seeds < 1:
            raise ValueError(f"Run.n_seeds must be >= 1 (None: every seed), got {self.n_seeds}")

    def grid(self, default: tuple[float, ...]) -> tuple[float, ...]:
        return tuple(self.lr_grid) if self.lr_grid is not None else default

    def seeds_of(self, seeds: list[int]) -> list[int]:
        return list(seeds) if self.n_seeds is None else list(seeds)[:self.n_seeds]


def as_run(variant: str, spec) -> Run:
    """A ``runs`` entry as a :class:`Run`: ``(fit, config)``, ``(fit, config, inputs)`` or a Run."""
    if isinstance(spec, Run):
        return spec
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        got = f"a tuple of {len(spec)}" if isinstance(spec, tuple) else f"a {type(spec).__name__}"
        raise ValueError(f"run {variant!r} must be (fit, config), (fit, config, inputs) or a Run, got {got}")
    return Run(spec[0], spec[1], dict(spec[2]) if len(spec) == 3 else {})


def input_unit(runs: dict[str, Run], source: str, seed: int, seeds: list[int]) -> tuple[str, int]:
    """The (variant, seed) whose result a run of ``seed`` gets from input ``source``: the same
    seed, or the source's last seed when it trains fewer."""
    own = runs[source].seeds_of(seeds)
    return source, (seed if seed in own else own[-1])


def check_grid(grid: tuple, name: str) -> None:
    if not grid or any(not (isinstance(lr, (int, float)) and lr > 0) for lr in grid):
        raise ValueError(f"{name} must hold positive learning rates, got {grid}")
