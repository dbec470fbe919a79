"""seqtransfer.stats: the t-quantile against the printed table, the t-interval by hand, and
the paired bootstrap against cases whose answer is known."""
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from seqtransfer.stats import ci95, paired_bootstrap, t_interval, t_quantile

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("df, value", [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042),
                                       (120, 1.980)])
def test_t_quantile_matches_the_printed_table(df, value):
    assert t_quantile(df) == pytest.approx(value, abs=5e-4)


def test_t_quantile_refuses_zero_degrees_of_freedom():
    with pytest.raises(ValueError, match="at least 1 degree of freedom"):
        t_quantile(0)


def test_t_interval_by_hand():
    mean, half = t_interval([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2)
    assert half == pytest.approx(4.3027 * 0.1 / math.sqrt(3), rel=1e-4)       # sd = 0.1
    assert t_interval([0.5]) == (0.5, pytest.approx(float("nan"), nan_ok=True))
    assert math.isnan(t_interval([])[0]) and math.isnan(ci95([1.0]))
    assert t_interval([1.0, np.nan, 3.0]) == (2.0, pytest.approx(12.706 * math.sqrt(2) / math.sqrt(2), rel=1e-4))


def test_paired_bootstrap_constant_difference_has_no_width():
    a = np.array([0.3, 0.5, 0.1, 0.9])
    assert paired_bootstrap(a + 0.2, a) == pytest.approx((0.2, 0.2, 0.2))


def test_paired_bootstrap_matches_the_normal_approximation_and_is_seeded():
    rng = np.random.default_rng(1)
    b = rng.random(2000)
    d = rng.normal(0.05, 0.3, 2000)
    diff, lo, hi = paired_bootstrap(b + d, b, n_boot=4000, seed=3)
    assert diff == pytest.approx(d.mean())
    se = d.std(ddof=1) / math.sqrt(len(d))
    assert lo == pytest.approx(d.mean() - 1.96 * se, abs=0.15 * se)
    assert hi == pytest.approx(d.mean() + 1.96 * se, abs=0.15 * se)
    assert paired_bootstrap(b + d, b, n_boot=4000, seed=3) == (diff, lo, hi)
    assert paired_bootstrap(b + d, b, n_boot=4000, seed=4) != (diff, lo, hi)


def test_paired_bootstrap_pairs_users_not_groups():
    # the same users with very different difficulty: unpaired, the interval would be huge
    base = np.repeat([0.0, 1.0], 500)
    diff, lo, hi = paired_bootstrap(base + 0.01, base)
    assert (diff, lo, hi) == pytest.approx((0.01, 0.01, 0.01))


def test_paired_bootstrap_averages_seeds_per_user_first():
    a = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])       # (S=2, U=3)
    b = np.zeros((2, 3))
    diff, lo, hi = paired_bootstrap(a, b, n_boot=500)
    assert diff == pytest.approx(2 / 3)                    # per user 0.5, 0.5, 1.0
    assert 0.5 <= lo <= diff <= hi <= 1.0
    # the bootstrap distribution of the mean of (0.5, 0.5, 1) takes only values k/6, k = 3..6
    assert lo * 6 == pytest.approx(round(lo * 6)) and hi * 6 == pytest.approx(round(hi * 6))


def test_paired_bootstrap_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        paired_bootstrap(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap(np.array([np.nan]), np.zeros(1))
    assert all(math.isnan(x) for x in paired_bootstrap(np.zeros(0), np.zeros(0)))


def test_interval_agrees_with_scipy():
    x = np.array([0.11, 0.14, 0.09, 0.13, 0.12])
    lo, hi = scipy_stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=scipy_stats.sem(x))
    mean, half = t_interval(x)
    assert (mean - half, mean + half) == pytest.approx((lo, hi))


def test_percent_keeps_real_small_changes_and_drops_float_noise():
    from seqtransfer.stats import percent
    assert percent(0.0123) == "+1.2%" and percent(-0.25) == "-25.0%"
    assert percent(-0.00004) == "-0.004%"                     # a real change never reads as 0.0%
    assert percent(1e-16) == "+0.0%" and percent(0.0) == "+0.0%"   # noise of equal means
