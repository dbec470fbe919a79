"""The size switch every notebook shares: ``budget`` = "smoke" | "quick" | "full".

Every budget except smoke trains each model until early stopping on validation NDCG@10, under a
per-model wall-clock cap that is there for safety and rarely hit; a model stopped by a cap is
marked as such in its notebook's verdict and in the leaderboard. Every arm of a comparison gets
its learning rate from the same grid, chosen on validation (``Experiment.run``).

* smoke: seconds a model, for tests: a user sample, a few steps. Numbers are noise.
* quick: the default, sized so that the batch of notebooks 00-03 finishes within 45 minutes on
  a 2-core CPU with ``--jobs 2``. To afford early stopping and a 3-point learning-rate grid for
  every arm it uses the smaller real dataset, MovieLens-100K (943 users, all of them), windows
  of 50, three seeds (the grid searched on the first; seeds 1 and 2 train at its choice, so
  three seeds cost about 5/3 of one; the grid is searched by successive halving: every rate
  trains one validation past its warm-up and the best two continue from there to early
  stopping, the better of them chosen: ``seqtransfer bench --halving`` measured on a whole
  batch's grids that this keeps the full grid's choice for 20 of 26 arms at 72% of its
  seconds); notebooks default to one backbone (SASRec) and name the
  dataset they ran on. Verdicts need seed noise measured: the joint model alone moves by 16%
  between seeds on ML-100K (``stats.paired_verdict``).
* full: paper scale: MovieLens-1M, all users, windows of 200, 3 seeds, patience 10, the
  learning-rate grid searched on the first seed. Meant for a GPU; one notebook of it takes a
  night on a CPU.

A notebook's ``dataset`` parameter overrides the budget's dataset (``""`` keeps it).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class Budget:
    name: str
    max_users: int | None     # subsample this many users (None: all)
    max_len: int              # training window and evaluation history length
    dim: int                  # hidden size of the backbones
    epochs: int               # upper bound on epochs (early stopping ends training first)
    max_steps: int | None     # cap on optimisation steps per model (None: none)
    patience: int             # early-stopping patience in evaluations
    eval_every: int           # epochs between validations
    n_seeds: int              # seeds per configuration in comparisons
    batch_size: int = 128     # training windows per step
    lr: float = 3e-3          # learning rate when no grid is searched
    lr_grid: tuple[float, ...] = (3e-3,)  # every arm's lr is chosen on validation from these
    warmup_steps: int = 100   # linear learning-rate warm-up
    loss_type: str = "ce"     # "ce" full softmax | "sampled" shared negatives | "bce"
    n_negatives: int = 512    # shared negatives per batch when loss_type == "sampled"
    max_minutes: float | None = None   # wall-clock cap per model (a safety net)
    rung: int | None = None   # successive halving: each grid point trains this many validations
                              # past its warm-up, only the best continue (None: the whole grid)
    keep: int = 1             # successive halving: how many rates continue past the rung to early
                              # stopping (the best of them on validation is chosen)
    dataset: str = "ml-1m"    # what notebooks use when their ``dataset`` parameter is empty


BUDGETS = {
    "smoke": Budget("smoke", max_users=300, max_len=20, dim=32, epochs=1, max_steps=4,
                    patience=1, eval_every=1, n_seeds=1, warmup_steps=2),
    "quick": Budget("quick", max_users=None, max_len=50, dim=64, epochs=200, max_steps=None,
                    patience=5, eval_every=1, n_seeds=3, lr_grid=(1.5e-3, 3e-3, 6e-3),
                    max_minutes=10.0, rung=1, keep=2, dataset="ml-100k"),
    "full": Budget("full", max_users=None, max_len=200, dim=64, epochs=400, max_steps=None,
                   patience=10, eval_every=1, n_seeds=3, lr_grid=(1.5e-3, 3e-3, 6e-3),
                   max_minutes=180.0),
}

def describe(name: str) -> str:
    """One line on what a budget costs and trains, for notebooks, the CLI and the README."""
    b = get_budget(name)
    users = f"{b.dataset}, " + ("all users" if b.max_users is None else f"a sample of {b.max_users} users")
    if b.max_steps is not None:
        return f"{name}: {users}, {b.max_steps} steps a model; for tests, the numbers are noise"
    grid = "/".join(f"{lr:g}" for lr in b.lr_grid)
    search = "" if b.rung is None else (
        f" (successive halving: every rate {b.rung} validation{'s' if b.rung > 1 else ''} past its warm-up, "
        f"the best {b.keep} on to early stopping)")
    return (f"{name}: {users}, windows of {b.max_len}, every model trained to early stopping "
            f"(patience {b.patience}, cap {b.max_minutes:g} min a model), learning rate per arm "
            f"chosen on validation from {grid}{search}, {b.n_seeds} seed{'s' if b.n_seeds > 1 else ''}")


def get_budget(name: str, **overrides) -> Budget:
    """The named budget, with optional field overrides."""
    if name not in BUDGETS:
        raise ValueError(f"unknown budget {name!r}; choose one of {list(BUDGETS)} "
                         "(smoke: tests; quick: the default, early stopping on a user sample; "
                         "full: paper scale, 3 seeds)")
    known = {f.name for f in fields(Budget)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"unknown budget settings {bad}; a budget has {sorted(known - {'name'})}")
    out = replace(BUDGETS[name], **overrides)
    if out.keep < 1:
        raise ValueError(f"keep must be at least 1 (the rates that continue past a rung), got {out.keep}")
    if out.rung is not None and out.rung < 1:
        raise ValueError(f"rung must be at least one validation (or None: the whole grid), got {out.rung}")
    return out
