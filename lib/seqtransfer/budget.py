"""The size switch every notebook shares: ``budget`` = "smoke" | "quick" | "full".

* smoke: under a minute on a CPU, for tests; a user sample, a few steps. Numbers are noise.
* quick: the default; all users, 4 epochs a model (3-5 min a model on an idle 2-core CPU, about
  1.5 hours for the whole batch). Models are still improving when it stops.
* full: the paper-scale run, meant for a GPU; early stopping on validation, several seeds.
"""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Budget:
    name: str
    max_users: int | None     # subsample this many users (None: all)
    max_len: int              # longest input sequence
    dim: int                  # hidden size of the backbones
    epochs: int               # upper bound on epochs
    max_steps: int | None     # cap on optimisation steps per model (None: none)
    patience: int             # early-stopping patience in evaluations
    eval_every: int           # epochs between validations
    n_seeds: int              # seeds per configuration in comparisons
    batch_size: int = 128     # training windows per step


BUDGETS = {
    "smoke": Budget("smoke", max_users=300, max_len=50, dim=32, epochs=1, max_steps=4,
                    patience=1, eval_every=1, n_seeds=1),
    "quick": Budget("quick", max_users=None, max_len=200, dim=64, epochs=4, max_steps=None,
                    patience=2, eval_every=1, n_seeds=1),
    "full": Budget("full", max_users=None, max_len=200, dim=64, epochs=200, max_steps=None,
                   patience=10, eval_every=2, n_seeds=3),
}


def get_budget(name: str, **overrides) -> Budget:
    """The named budget, with optional field overrides."""
    if name not in BUDGETS:
        raise ValueError(f"unknown budget {name!r}; choose one of {list(BUDGETS)} "
                         "(smoke: tests, quick: 4 epochs a model, full: early stopping and 3 seeds, for a GPU)")
    return replace(BUDGETS[name], **overrides)
