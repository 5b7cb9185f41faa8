"""trm_act.stats against hand computations, a published worked example, and a known process."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trm_act import stats


def test_normal_quantile_inverts_the_cdf_to_machine_precision():
    assert stats.norm_ppf(0.975) == pytest.approx(1.959963984540054, abs=1e-13)
    assert stats.norm_ppf(0.5) == 0.0
    for p in (1e-12, 1e-4, 0.0123, 0.3, 0.77, 0.99, 1 - 1e-9):
        assert stats.norm_cdf(stats.norm_ppf(p)) == pytest.approx(p, rel=1e-10)
    with pytest.raises(ValueError, match="0 < p < 1"):
        stats.norm_ppf(1.0)


def test_sharpe_sortino_drawdown_by_hand():
    pnl = np.array([0.02, -0.01, 0.03, -0.02])
    mean, std = 0.005, math.sqrt((0.015**2 + 0.015**2 + 0.025**2 + 0.025**2) / 4)  # population std
    assert stats.sharpe_ratio(pnl) == pytest.approx(mean / std)
    assert stats.annualised_sharpe(pnl, 52) == pytest.approx(mean / std * math.sqrt(52))
    downside = math.sqrt((0.01**2 + 0.02**2) / 4)  # over all 4 decisions, target 0
    assert stats.sortino_ratio(pnl, 52) == pytest.approx(mean / downside * math.sqrt(52))
    # Equity 1 -> 1.1 -> 0.55 -> 0.66: the worst fall from a peak is 1.1 -> 0.55, i.e. 50%.
    assert stats.max_drawdown(np.log([1.1, 0.5, 1.2])) == pytest.approx(0.5)
    assert stats.max_drawdown(np.array([0.01, 0.02])) == 0.0
    assert stats.sharpe_ratio(np.zeros(5)) == 0.0 and stats.sortino_ratio(np.ones(3), 1) == 0.0


def test_moments_are_population_skewness_and_plain_kurtosis():
    assert stats.moments(np.array([-1.0, 1.0, -1.0, 1.0])) == pytest.approx((0.0, 1.0))
    x = np.array([0.0, 0.0, 0.0, 4.0])  # mean 1, m2 = 3, m3 = 6, m4 = 21
    assert stats.moments(x) == pytest.approx((6 / 3**1.5, 21 / 9))
    gaussian = np.random.default_rng(0).standard_normal(200_000)
    skew, kurtosis = stats.moments(gaussian)
    assert abs(skew) < 0.02 and kurtosis == pytest.approx(3.0, abs=0.05)


def test_psr_matches_a_hand_computation():
    # SR 0.1 per period over 100 returns, skewness -0.5, kurtosis 4:
    # variance term 1 + 0.5 * 0.1 + 3/4 * 0.01 = 1.0575; z = 0.1 * sqrt(99) / sqrt(1.0575) = 0.96756.
    assert stats.probabilistic_sharpe_ratio(0.1, 100, -0.5, 4.0) == pytest.approx(
        0.8333676424821832, abs=1e-12
    )
    # Normal returns: Lo's standard error sqrt((1 + SR^2 / 2) / (n - 1)).
    assert stats.sharpe_std_error(0.2, 51, 0.0, 3.0) == pytest.approx(math.sqrt((1 + 0.02) / 50))
    # Against its own value as the benchmark, PSR is one half.
    assert stats.probabilistic_sharpe_ratio(0.3, 40, 0.4, 5.0, benchmark=0.3) == pytest.approx(0.5)


def test_dsr_matches_the_published_worked_example():
    """Bailey & López de Prado (2014), "The Deflated Sharpe Ratio", numerical example: 100 trials whose
    annualised Sharpe ratios have variance 1/2; the best shows an annualised SR of 2.5 over 1,250 daily
    returns (250 a year) with skewness -3 and kurtosis 10. The paper gives E[max SR] = 0.1132 (daily) and
    DSR = 0.9004."""
    daily = 250
    sr0 = stats.expected_max_sharpe(100, 0.5 / daily)
    assert sr0 == pytest.approx(0.1132, abs=1e-3)
    dsr = stats.deflated_sharpe_ratio(2.5 / math.sqrt(daily), 1250, -3.0, 10.0, 100, 0.5 / daily)
    assert dsr == pytest.approx(0.9004, abs=1e-3)
    # One trial selects nothing: the DSR is the PSR against 0.
    assert stats.expected_max_sharpe(1, 0.3) == 0.0
    assert stats.deflated_sharpe_ratio(0.1, 100, 0.0, 3.0, 1, 0.3) == stats.probabilistic_sharpe_ratio(
        0.1, 100
    )
    with pytest.raises(ValueError, match="n_trials=0"):
        stats.expected_max_sharpe(0, 0.1)


def test_stationary_bootstrap_blocks_have_the_asked_mean_length():
    rng = np.random.default_rng(1)
    idx = stats.stationary_bootstrap_indices(1000, 200, 10.0, rng)  # (200, 1000)
    assert idx.shape == (200, 1000) and idx.min() >= 0 and idx.max() < 1000
    continues = (idx[:, 1:] == (idx[:, :-1] + 1) % 1000).mean()  # a block goes on with probability 1 - 1/10
    assert continues == pytest.approx(0.9, abs=0.01)
    assert stats.default_block_length(1000) == 10 and stats.default_block_length(1) == 1


def _ar1(rng: np.random.Generator, n: int, phi: float, mean: float) -> np.ndarray:
    noise = rng.standard_normal(n)
    x = np.empty(n)
    x[0] = noise[0] / math.sqrt(1 - phi**2)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + noise[t]
    return mean + x


def test_bootstrap_interval_covers_the_true_mean_of_a_dependent_process():
    """AR(1) with phi = 0.6 and mean 0.05: the block bootstrap's 95% interval covers the true mean about 95% of
    the time; an i.i.d. bootstrap (blocks of 1) misses the dependence and covers far less often."""
    rng = np.random.default_rng(7)
    covered = covered_iid = 0
    reps = 150
    for rep in range(reps):
        x = _ar1(rng, 400, 0.6, 0.05)
        ci = stats.bootstrap_mean_ci(x, n_resamples=400, block_length=20, seed=rep)
        iid = stats.bootstrap_mean_ci(x, n_resamples=400, block_length=1, seed=rep)
        covered += ci["ci_low"] <= 0.05 <= ci["ci_high"]
        covered_iid += iid["ci_low"] <= 0.05 <= iid["ci_high"]
    assert 0.85 <= covered / reps <= 0.99
    assert covered_iid / reps < 0.8


def test_bootstrap_result_fields():
    x = np.full(50, 0.01) + np.random.default_rng(0).normal(0, 1e-4, 50)
    ci = stats.bootstrap_mean_ci(x, n_resamples=200)
    assert ci["total"] == pytest.approx(50 * ci["mean"])
    assert ci["total_ci_low"] == pytest.approx(50 * ci["ci_low"]) and ci["ci_low"] > 0
    assert ci["p_value"] == pytest.approx(1 / 200)  # every resampled mean is above 0
    assert ci["block_length"] == 4 and ci["n_resamples"] == 200
    with pytest.raises(ValueError, match="n_resamples=10"):
        stats.bootstrap_mean_ci(x, n_resamples=10)
    with pytest.raises(ValueError, match="at least 2 decisions"):
        stats.bootstrap_mean_ci(x[:1])


def test_performance_turnover_and_exposure_per_bar():
    pnl = np.array([0.01, -0.02])
    turnover = np.array([2.0, 0.5])  # position units traded by each decision's trade
    exposed = np.array([4, 1])  # bars of each trade with a position
    out = stats.performance(pnl, 63, turnover=turnover, exposed_bars=exposed, bars=4)
    assert out["turnover"] == pytest.approx(2.5 / 8) and out["exposure"] == pytest.approx(5 / 8)
    assert out["pnl"] == pytest.approx(-0.01) and out["decisions"] == 2 and out["hit_rate"] == 0.5
    with pytest.raises(ValueError, match="bars=None"):
        stats.performance(pnl, 63, turnover=turnover)
    with pytest.raises(ValueError, match="periods_per_year=0"):
        stats.annualised_sharpe(pnl, 0)
