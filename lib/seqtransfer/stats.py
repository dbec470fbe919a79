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
see seed noise (another initialisation of the same models): on ML-100K the joint SASRec alone
moves by 16% between seeds 0 and 1, more than most effects the notebooks look for.

The verdict rule, :func:`paired_verdict`: **two intervals, both must exclude zero.**

* over users: :func:`paired_bootstrap` of the per-user differences averaged over the seeds
  ("would another draw of users move it?");
* over seeds: the 95% t-interval of the S per-seed mean differences ``d_s = mean_u(a_su -
  b_su)`` (:func:`t_interval`; "would another initialisation move it?").

Positive (negative) transfer is named only when both lie above (below) zero. Both intervals
are centred on the same mean difference (the mean over users of the seed-averaged differences
is the mean of the ``d_s``), so "both exclude zero" is "their union excludes zero": the union
is the interval a verdict reads (``verdict_interval``).

Why this and not a two-level bootstrap (seeds, then users within seeds): with the 3 seeds a
CPU budget affords, resampling seeds can never reach beyond the smallest and largest observed
``d_s``, so three same-signed seeds read as an effect whatever their spread (three positive
differences in a row happen one time in four under no effect); the bootstrap's variance is
also biased low by (S-1)/S. The t-interval on S-1 degrees of freedom is exact for normal seed
noise and widens as it should for few seeds (t = 4.30 at 3 seeds), so an effect that flips
sign between seeds is never called transfer, however narrow each seed's own user interval.
The cost is power: with 3 seeds, ``|mean d| > 2.48 sd(d_s)`` is needed, which is what
"consistent across seeds" should mean. With one seed there is no seed interval: the verdict
falls back to the users' interval and every sentence says "one seed: seed noise not measured".
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


def paired_verdict(a, b, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> dict:
    """Method ``a`` against baseline ``b`` on the same users and seeds, under the rule of the
    module docstring (both the users' and the seeds' interval must exclude zero).

    Args:
        a, b: per-user metric values, shape (S, U) for S seeds (seed s of ``a`` paired with seed
            s of ``b``) or (U,) for one seed.
        n_boot, seed, level: as in :func:`paired_bootstrap`.

    Returns:
        dict with ``diff`` (mean difference), ``lo``/``hi`` (the bootstrap interval over users),
        ``seed_diffs`` (tuple of the S per-seed mean differences), ``seed_lo``/``seed_hi`` (the
        t-interval over seeds; NaN for one seed), ``n_seeds`` and ``verdict``: "positive" or
        "negative" when both intervals exclude zero on that side (with one seed: the users'
        interval alone), else "none". All NaN and "none" for zero users.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim == 1:
        a, b = a[None], b[None]
    diff, lo, hi = paired_bootstrap(a, b, n_boot=n_boot, seed=seed, level=level)
    n_seeds = a.shape[0]
    per_seed = tuple(float(x) for x in (a - b).mean(1)) if a.shape[1] else (float("nan"),) * n_seeds
    mean, half = t_interval(per_seed) if n_seeds > 1 and a.shape[1] else (diff, float("nan"))
    seed_lo, seed_hi = mean - half, mean + half
    verdict = interval_verdict(lo, hi, seed_lo, seed_hi)   # no users: all NaN, "none"
    return {"diff": diff, "lo": lo, "hi": hi, "seed_diffs": per_seed, "seed_lo": seed_lo,
            "seed_hi": seed_hi, "n_seeds": n_seeds, "verdict": verdict}


def verdict_interval(lo: float, hi: float, seed_lo: float = float("nan"),
                     seed_hi: float = float("nan")) -> tuple[float, float]:
    """The interval a verdict reads: the union of the users' interval ``lo..hi`` and, where
    there is one (several seeds), the seeds' ``seed_lo..seed_hi``."""
    if math.isnan(seed_lo) or math.isnan(seed_hi):
        return lo, hi
    return min(lo, seed_lo), max(hi, seed_hi)


def interval_verdict(lo: float, hi: float, seed_lo: float = float("nan"),
                     seed_hi: float = float("nan")) -> str:
    """"positive" / "negative" when the :func:`verdict_interval` of the users' and (where there is
    one) the seeds' interval lies above / below zero, else "none" (also with no interval)."""
    lo, hi = verdict_interval(lo, hi, seed_lo, seed_hi)
    if lo > 0:
        return "positive"
    if hi < 0:
        return "negative"
    return "none"


def percent(change: float) -> str:
    """A relative change (0.0123) as text ("+1.2%"): enough digits that a real non-zero change
    never reads as 0.0% ("-0.004%"), while floating-point noise (below 1e-12 relative, e.g. the
    difference of two means of the same numbers) reads as "+0.0%"."""
    rel = 100 * change
    if abs(change) < 1e-12:
        rel = 0.0
    return f"{rel:+.1f}%" if rel == 0 or abs(rel) >= 0.05 else f"{rel:+.1g}%"
