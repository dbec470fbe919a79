"""seqtransfer.stats: the t-quantile against the printed table, the t-interval by hand, and
the paired bootstrap against cases whose answer is known."""
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from seqtransfer.stats import ci95, paired_bootstrap, paired_verdict, t_interval, t_quantile, verdict_interval

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


def _seeded(effects, users=400, noise=0.01, seed=0):
    """(S, U) per-user values of a method and a baseline: seed s adds ``effects[s]`` to every
    user plus N(0, noise^2) per user, around baselines that differ a lot between users."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 1, size=(len(effects), users))
    return base + np.asarray(effects)[:, None] + rng.normal(0, noise, base.shape), base


def test_an_effect_consistent_across_seeds_is_detected():
    a, b = _seeded([0.020, 0.024, 0.018])
    v = paired_verdict(a, b)
    assert v["verdict"] == "positive" and v["n_seeds"] == 3
    assert v["lo"] > 0 and v["seed_lo"] > 0
    assert v["seed_diffs"] == pytest.approx((0.020, 0.024, 0.018), abs=2e-3)
    mean, half = t_interval(v["seed_diffs"])                    # the seeds' interval by hand
    assert (v["seed_lo"], v["seed_hi"]) == pytest.approx((mean - half, mean + half))
    assert v["diff"] == pytest.approx(mean)                     # both intervals share the centre
    assert paired_verdict(b, a)["verdict"] == "negative"


def test_an_effect_that_flips_sign_between_seeds_is_not_transfer_however_narrow_each_seed():
    a, b = _seeded([0.05, -0.05, 0.05], noise=0.001)
    for s in range(3):                                            # each seed alone: a sure effect
        _, lo, hi = paired_bootstrap(a[s], b[s])
        assert lo > 0 or hi < 0
    v = paired_verdict(a, b)
    assert v["lo"] > 0                                            # over users alone: "positive"
    assert v["seed_lo"] < 0 < v["seed_hi"] and v["verdict"] == "none"


def test_three_same_signed_seeds_with_a_wide_spread_are_not_enough():
    """A bootstrap over 3 seeds never leaves the observed range, so it would call this positive;
    the t-interval on 2 degrees of freedom does not."""
    a, b = _seeded([0.001, 0.02, 0.04], noise=0.001)
    v = paired_verdict(a, b)
    assert min(v["seed_diffs"]) > 0 and v["lo"] > 0
    assert v["seed_lo"] < 0 and v["verdict"] == "none"


def test_one_seed_falls_back_to_the_users_interval():
    a, b = _seeded([0.03])
    one = paired_verdict(a[0], b[0])
    assert one["n_seeds"] == 1 and math.isnan(one["seed_lo"]) and one["verdict"] == "positive"
    assert one["seed_diffs"] == pytest.approx((one["diff"],))
    empty = paired_verdict(np.zeros((3, 0)), np.zeros((3, 0)))
    assert empty["verdict"] == "none" and math.isnan(empty["diff"])


def test_the_verdict_interval_is_the_union_of_both():
    assert verdict_interval(0.01, 0.03, -0.02, 0.05) == (-0.02, 0.05)
    assert verdict_interval(0.01, 0.03, 0.015, 0.025) == (0.01, 0.03)
    assert verdict_interval(0.01, 0.03) == (0.01, 0.03)
