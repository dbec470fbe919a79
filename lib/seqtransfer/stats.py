"""The one place the library computes intervals: every mean +- half-width and every verdict's
noise comes from here.

* :func:`t_quantile`: Student-t quantile (scipy), e.g. 4.303 for the 97.5% point at 2 degrees
  of freedom.
* :func:`t_interval`: mean over seeds and the half-width of its two-sided 95% t-interval,
  ``t(0.975, n-1) * sd / sqrt(n)`` (sample sd, ``ddof=1``); the half-width is NaN for n < 2.
* :func:`paired_bootstrap`: the difference of a per-user metric between a method and a
  baseline scored on the *same* users, with a percentile bootstrap interval over users.

Why a paired bootstrap over users: both models rank the same test targets, so the per-user
differences ``a_u - b_u`` cancel how hard each user is; the interval then measures how much
the mean difference would move with another draw of users of the same population. It does not
include seed noise (another initialisation of the same models); with several seeds the
per-user values are averaged over seeds first (see :func:`paired_bootstrap`), and the spread
of the per-seed differences is reported beside it by :func:`t_interval`.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as _scipy_stats

LEVEL = 0.95          # every interval in the library is a two-sided 95% interval
N_BOOT = 2000         # bootstrap resamples
_CHUNK = 250          # resamples drawn at a time (bounds memory at U * _CHUNK indices)


def t_quantile(df: int, q: float = 0.5 + LEVEL / 2) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (``df >= 1``)."""
    if df < 1:
        raise ValueError(f"a t-interval needs at least 1 degree of freedom (2 values), got df={df}")
    return float(_scipy_stats.t.ppf(q, df))


def t_interval(values) -> tuple[float, float]:
    """(mean, half-width of the two-sided 95% t-interval of the mean) of ``values``.

    NaN values are dropped; the half-width is NaN with fewer than two values (one seed has no
    interval) and the mean is NaN with none.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    n = len(v)
    if n == 0:
        return float("nan"), float("nan")
    if n == 1:
        return float(v[0]), float("nan")
    return float(v.mean()), t_quantile(n - 1) * float(v.std(ddof=1)) / math.sqrt(n)


def ci95(values) -> float:
    """Half-width of the 95% t-interval of the mean of ``values`` (NaN for fewer than two)."""
    return t_interval(values)[1]


def paired_bootstrap(a, b, n_boot: int = N_BOOT, seed: int = 0,
                     level: float = LEVEL) -> tuple[float, float, float]:
    """Mean of ``a - b`` over users and its percentile bootstrap interval.

    Args:
        a, b: per-user metric values of the method and the baseline on the same users, shape
            (U,), or (S, U) for S seeds of each (seed s of ``a`` paired with seed s of ``b``).
            With seeds, each user's values are first averaged over the seeds, and then users are
            resampled: the unit of resampling is the user, the population the claim is about,
            and a user appears in a resample with all its seeds together.
        n_boot: resamples of U users drawn with replacement.
        seed: seeds the resampling (same inputs and seed give the same interval).
        level: coverage of the interval (two-sided).

    Returns:
        (diff, lo, hi): the observed mean difference and the ``(1-level)/2`` and
        ``(1+level)/2`` quantiles of the resampled mean differences. All NaN for zero users.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values must have the same shape (same users, same seeds), got "
                         f"{a.shape} and {b.shape}")
    if a.ndim not in (1, 2):
        raise ValueError(f"expected (U,) or (S, U) per-user values, got shape {a.shape}")
    d = a - b if a.ndim == 1 else (a - b).mean(0)                       # (U,) per-user difference
    if np.isnan(d).any():
        raise ValueError("per-user values contain NaN; a paired comparison needs every user scored")
    n = len(d)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for s in range(0, n_boot, _CHUNK):
        m = min(_CHUNK, n_boot - s)
        idx = rng.integers(0, n, size=(m, n))                           # (m, U) resampled users
        means[s:s + m] = d[idx].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(d.mean()), float(lo), float(hi)


def percent(change: float) -> str:
    """A relative change (0.0123) as text ("+1.2%"): enough digits that a real non-zero change
    never reads as 0.0% ("-0.004%"), while floating-point noise (below 1e-12 relative, e.g. the
    difference of two means of the same numbers) reads as "+0.0%"."""
    rel = 100 * change
    if abs(change) < 1e-12:
        rel = 0.0
    return f"{rel:+.1f}%" if rel == 0 or abs(rel) >= 0.05 else f"{rel:+.1g}%"
