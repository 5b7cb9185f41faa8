"""Performance statistics of a sequence of per-decision PnL, and the tests a quant reads them with.

Pure numpy (``math.erf`` and a rational approximation for the normal distribution), so the walk-forward
can stitch and score folds without scipy. Every function states the formula and where it comes from.

Conventions: ``pnl`` (N,) is the realized log-PnL of N consecutive, non-overlapping decisions (fractions of
capital, net of costs, as ``TradeReplayEnv`` pays them). Moments are population moments (divide by N), as
in the formulas cited; ``periods_per_year`` is the number of decisions a year (bars per year / stride).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

EULER_GAMMA = 0.5772156649015329
"""The Euler-Mascheroni constant (in the expected maximum of N Gaussian Sharpe ratios)."""


def _pnl(pnl: Any, name: str = "pnl") -> np.ndarray:
    x = np.asarray(pnl, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of per-decision PnL, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: holds NaN or infinity at index {int(np.flatnonzero(~np.isfinite(x))[0])}")
    return x


def _periods(periods_per_year: float) -> float:
    if not (isinstance(periods_per_year, int | float | np.floating) and periods_per_year > 0):
        raise ValueError(f"periods_per_year={periods_per_year!r}: expected decisions per year > 0")
    return float(periods_per_year)


# ---------------------------------------------------------------------------------------------- the normal law


def norm_cdf(z: float) -> float:
    """Standard normal CDF Φ(z) = (1 + erf(z / √2)) / 2 (exact to double precision via ``math.erf``)."""
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def norm_ppf(p: float) -> float:
    """Standard normal quantile Φ⁻¹(p), 0 < p < 1.

    Acklam's rational approximation (relative error < 1.2e-9), refined by one Halley step on ``norm_cdf``,
    which brings it to about machine precision (P. J. Acklam, "An algorithm for computing the inverse normal
    cumulative distribution function", 2003; the Halley refinement is the one Acklam recommends).
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p={p!r}: the normal quantile needs 0 < p < 1")
    a = (
        -3.969683028665376e01,
        2.209460984245205e02,
        -2.759285104469687e02,
        1.383577518672690e02,
        -3.066479806614716e01,
        2.506628277459239e00,
    )
    b = (
        -5.447609879822406e01,
        1.615858368580409e02,
        -1.556989798598866e02,
        6.680131188771972e01,
        -1.328068155288572e01,
    )
    c = (
        -7.784894002430293e-03,
        -3.223964580411365e-01,
        -2.400758277161838e00,
        -2.549732539343734e00,
        4.374664141464968e00,
        2.938163982698783e00,
    )
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
    low = 0.02425
    if p < low:
        q = math.sqrt(-2.0 * math.log(p))
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
            (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0
        )
    elif p > 1.0 - low:
        q = math.sqrt(-2.0 * math.log(1.0 - p))
        x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
            (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0
        )
    else:
        q = p - 0.5
        r = q * q
        x = (
            (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5])
            * q
            / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0)
        )
    e = norm_cdf(x) - p  # one Halley step
    u = e * math.sqrt(2.0 * math.pi) * math.exp(x * x / 2.0)
    return x - u / (1.0 + x * u / 2.0)


# ---------------------------------------------------------------------------------------------- performance


def sharpe_ratio(pnl: Any) -> float:
    """Per-decision Sharpe ratio mean(x) / std(x) (population std; 0 when the std is 0).

    W. F. Sharpe, "The Sharpe Ratio", J. Portfolio Management 21(1), 1994 (excess over a zero benchmark:
    the PnL is already net of the cash it does not use).
    """
    x = _pnl(pnl)
    std = x.std()
    return float(x.mean() / std) if x.size and std > 0 else 0.0


def annualised_sharpe(pnl: Any, periods_per_year: float) -> float:
    """mean / std of per-decision PnL × √(decisions per year).

    The √q scaling of the per-period Sharpe ratio assumes serially uncorrelated returns (A. W. Lo, "The
    Statistics of Sharpe Ratios", Financial Analysts Journal 58(4), 2002, eq. 14).
    """
    return sharpe_ratio(pnl) * math.sqrt(_periods(periods_per_year))


def sortino_ratio(pnl: Any, periods_per_year: float) -> float:
    """mean(x) / DD × √(decisions per year), with downside deviation DD = √(mean(min(x, 0)²)) over all N.

    Target return 0; F. A. Sortino and L. N. Price, "Performance Measurement in a Downside Risk Framework",
    J. Investing 3(3), 1994. 0 when nothing was lost (DD = 0).
    """
    x = _pnl(pnl)
    downside = math.sqrt(float(np.mean(np.minimum(x, 0.0) ** 2))) if x.size else 0.0
    ratio = float(x.mean()) / downside if downside > 0 else 0.0
    return ratio * math.sqrt(_periods(periods_per_year))


def max_drawdown(pnl: Any) -> float:
    """Largest fractional fall of the equity curve exp(cumsum(x)) from its running peak, 0..1.

    With log-PnL x the equity after n decisions is exp(Σ x); the drawdown at n is 1 − equity / running max
    (M. Magdon-Ismail and A. Atiya, "Maximum drawdown", Risk 17(10), 2004). The start (equity 1) counts as
    a peak. Same definition as ``trm_act.evaluation.trading_metrics``.
    """
    x = _pnl(pnl)
    equity = np.concatenate([[0.0], np.cumsum(x)])  # (N+1,) log equity
    return float((1.0 - np.exp(equity - np.maximum.accumulate(equity))).max())


def drawdown_curve(pnl: Any) -> np.ndarray:
    """(N+1,) the drawdown after each decision (see ``max_drawdown``), starting at 0."""
    x = _pnl(pnl)
    equity = np.concatenate([[0.0], np.cumsum(x)])  # (N+1,)
    return 1.0 - np.exp(equity - np.maximum.accumulate(equity))


def moments(pnl: Any) -> tuple[float, float]:
    """(skewness γ3, kurtosis γ4) with population moments; γ4 is the plain kurtosis (3 for a normal law).

    γ3 = m3 / m2^1.5, γ4 = m4 / m2², m_k = mean((x − mean)^k). 0 and 3 for a constant series.
    """
    x = _pnl(pnl)
    centred = x - x.mean()
    m2 = float(np.mean(centred**2))
    if m2 <= 0:
        return 0.0, 3.0
    return float(np.mean(centred**3) / m2**1.5), float(np.mean(centred**4) / m2**2)


# ---------------------------------------------------------------------------------------------- overfitting


def sharpe_std_error(sharpe: float, n: int, skew: float, kurtosis: float) -> float:
    """Standard error of a per-period Sharpe estimate SR from n non-normal returns:

        σ(SR) = √((1 − γ3·SR + (γ4 − 1)/4 · SR²) / (n − 1))

    (J. Mertens, "Comments on variance of the IID estimator in Lo (2002)", 2002; used in Bailey & López de
    Prado 2012, eq. 9). γ4 is the plain kurtosis (3 for normal returns, which gives Lo's √((1 + SR²/2)/(n−1))).
    """
    if n < 2:
        raise ValueError(f"n={n!r}: a Sharpe ratio's standard error needs at least 2 returns")
    variance = 1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    return math.sqrt(max(variance, 0.0) / (n - 1))


def probabilistic_sharpe_ratio(
    sharpe: float, n: int, skew: float = 0.0, kurtosis: float = 3.0, benchmark: float = 0.0
) -> float:
    """PSR(SR*) = Φ((SR − SR*) √(n − 1) / √(1 − γ3·SR + (γ4 − 1)/4 · SR²)).

    The probability that the true per-period Sharpe ratio exceeds ``benchmark`` SR*, given the estimate
    ``sharpe`` SR from ``n`` returns with skewness γ3 and kurtosis γ4 (all per period, not annualised).
    D. H. Bailey and M. López de Prado, "The Sharpe Ratio Efficient Frontier", J. of Risk 15(2), 2012, eq. 11.
    """
    se = sharpe_std_error(sharpe, n, skew, kurtosis)
    if se == 0:
        return 1.0 if sharpe > benchmark else 0.0
    return norm_cdf((sharpe - benchmark) / se)


def expected_max_sharpe(n_trials: int, sharpe_variance: float) -> float:
    """E[max SR] over N independent trials whose Sharpe ratios have variance V and true value 0:

        SR0 = √V · ((1 − γ) Φ⁻¹(1 − 1/N) + γ Φ⁻¹(1 − 1/(N e)))

    with γ the Euler-Mascheroni constant (Bailey & López de Prado 2014, eq. 2, from the "false strategy
    theorem"; Bailey, Borwein, López de Prado and Zhu, Notices of the AMS 61(5), 2014). 0 for N = 1 (nothing
    was selected). The units of SR0 are those of V (per period here).
    """
    if not (isinstance(n_trials, int | np.integer) and n_trials >= 1):
        raise ValueError(f"n_trials={n_trials!r}: expected an int >= 1 (every recipe and seed tried)")
    if not (sharpe_variance >= 0 and math.isfinite(sharpe_variance)):
        raise ValueError(f"sharpe_variance={sharpe_variance!r}: expected a finite variance >= 0")
    if n_trials == 1:
        return 0.0
    n = float(n_trials)
    spread = (1.0 - EULER_GAMMA) * norm_ppf(1.0 - 1.0 / n) + EULER_GAMMA * norm_ppf(1.0 - 1.0 / (n * math.e))
    return math.sqrt(sharpe_variance) * spread


def deflated_sharpe_ratio(
    sharpe: float, n: int, skew: float, kurtosis: float, n_trials: int, sharpe_variance: float
) -> float:
    """DSR = PSR(SR0), with SR0 = ``expected_max_sharpe(n_trials, sharpe_variance)``.

    The probability that the true Sharpe ratio is positive after charging for the best of ``n_trials``
    tries: D. H. Bailey and M. López de Prado, "The Deflated Sharpe Ratio: Correcting for Selection Bias,
    Backtest Overfitting and Non-Normality", J. Portfolio Management 40(5), 2014, eq. 1-2. All Sharpe
    figures per period; ``sharpe_variance`` is the variance of the trials' per-period Sharpe ratios.
    """
    return probabilistic_sharpe_ratio(
        sharpe, n, skew, kurtosis, benchmark=expected_max_sharpe(n_trials, sharpe_variance)
    )


# ---------------------------------------------------------------------------------------------- bootstrap


def default_block_length(n: int) -> int:
    """⌈n^(1/3)⌉: the rate at which a block bootstrap's mean block length should grow for a variance or
    distribution of the mean (P. Hall, J. L. Horowitz and B.-Y. Jing, "On blocking rules for the bootstrap
    with dependent data", Biometrika 82(3), 1995)."""
    return max(1, math.ceil(n ** (1.0 / 3.0)))


def stationary_bootstrap_indices(
    n: int, n_resamples: int, block_length: float, rng: np.random.Generator
) -> np.ndarray:
    """(n_resamples, n) indices of the stationary bootstrap (Politis and Romano 1994).

    Each resample is a chain of blocks: a block starts at a uniform index and runs on, wrapping around
    the end of the series (circularly), for a geometric number of steps with mean ``block_length``
    (each next index starts a new block with probability 1 / block_length). D. N. Politis and J. P.
    Romano, "The Stationary Bootstrap", JASA 89(428), 1994.
    """
    if not block_length >= 1:
        raise ValueError(f"block_length={block_length!r}: expected a mean block length >= 1")
    starts = rng.integers(0, n, size=(n_resamples, n))  # (B, n) a fresh start wherever a block begins
    new_block = rng.random((n_resamples, n)) < 1.0 / block_length  # (B, n)
    new_block[:, 0] = True
    position = np.arange(n)  # (n,)
    block_begin = np.maximum.accumulate(
        np.where(new_block, position, 0), axis=1
    )  # (B, n) where each block began
    rows = np.arange(n_resamples)[:, None]  # (B, 1)
    return (starts[rows, block_begin] + (position - block_begin)) % n  # (B, n)


def bootstrap_mean_ci(
    diff: Any,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    block_length: float | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Stationary-bootstrap percentile interval of the mean of ``diff`` (N,) (e.g. model − benchmark PnL).

    Returns ``mean``, ``ci_low``, ``ci_high`` (per decision), ``total`` (= N × mean) with ``total_ci_low``
    and ``total_ci_high``, ``p_value`` (two-sided: twice the smaller share of resampled means on either
    side of 0, at least 1 / n_resamples), ``block_length`` and ``n_resamples``. Blocks keep the serial
    dependence of the PnL inside each resample (Politis and Romano 1994, see
    ``stationary_bootstrap_indices``); the mean block length defaults to ⌈N^(1/3)⌉ (``default_block_length``).
    The interval is the percentile interval (B. Efron and R. Tibshirani, *An Introduction to the
    Bootstrap*, 1993, ch. 13). Resamples are drawn in chunks, so memory stays small for long series.
    """
    x = _pnl(diff, "diff")
    n = x.size
    if n < 2:
        raise ValueError(f"diff: {n} value(s); a bootstrap interval needs at least 2 decisions")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r}: expected a level strictly between 0 and 1, e.g. 0.95")
    if not (isinstance(n_resamples, int) and n_resamples >= 100):
        raise ValueError(f"n_resamples={n_resamples!r}: expected an int >= 100 (2000 is the default)")
    length = float(default_block_length(n) if block_length is None else block_length)
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)  # (B,)
    chunk = max(1, (1 << 22) // n)  # resamples per chunk: about 4M indices at a time
    for lo in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - lo)
        means[lo : lo + b] = x[stationary_bootstrap_indices(n, b, length, rng)].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    tail = min(float((means <= 0).mean()), float((means >= 0).mean()))
    return {
        "mean": float(x.mean()),
        "ci_low": float(low),
        "ci_high": float(high),
        "total": float(x.sum()),
        "total_ci_low": float(low * n),
        "total_ci_high": float(high * n),
        "p_value": max(min(1.0, 2.0 * tail), 1.0 / n_resamples),
        "confidence": confidence,
        "block_length": length,
        "n_resamples": n_resamples,
    }


# ---------------------------------------------------------------------------------------------- one policy


def performance(
    pnl: Any,
    periods_per_year: float,
    *,
    turnover: Any | None = None,
    exposed_bars: Any | None = None,
    bars: int | None = None,
) -> dict[str, float]:
    """The walk-forward's figures of one policy over N decisions.

    Args:
        pnl: (N,) per-decision log-PnL.
        periods_per_year: decisions per year.
        turnover: (N,) position units traded per decision (entry from flat, every rebalance, exit to flat).
        exposed_bars: (N,) bars of each decision's trade with a non-zero position.
        bars: bars each decision accounts for (the stride).

    Returns ``pnl`` (sum), ``mean_pnl``, ``sharpe`` and ``sortino`` (annualised), ``max_drawdown``,
    ``hit_rate`` (share of traded decisions with PnL > 0), ``decisions``, and with the optional arrays
    ``turnover`` (mean |Δposition| per bar) and ``exposure`` (share of bars with a non-zero position).
    """
    x = _pnl(pnl)
    traded = x != 0.0
    out = {
        "pnl": float(x.sum()),
        "mean_pnl": float(x.mean()) if x.size else 0.0,
        "sharpe": annualised_sharpe(x, periods_per_year) if x.size else 0.0,
        "sortino": sortino_ratio(x, periods_per_year) if x.size else 0.0,
        "max_drawdown": max_drawdown(x),
        "hit_rate": float((x[traded] > 0).mean()) if traded.any() else 0.0,
        "decisions": int(x.size),
    }
    if turnover is not None or exposed_bars is not None:
        if not (isinstance(bars, int) and bars >= 1):
            raise ValueError(f"bars={bars!r}: expected the bars per decision (the stride), an int >= 1")
        span = max(x.size * bars, 1)
        if turnover is not None:
            out["turnover"] = float(np.sum(turnover)) / span
        if exposed_bars is not None:
            out["exposure"] = float(np.sum(exposed_bars)) / span
    return out
