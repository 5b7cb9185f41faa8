"""The filter bound: a causal Bayesian filter over the true regimes of the synthetic market.

A policy that sees only the past can at best know the *probability* of each regime, not the regime itself.
This module computes that probability the way the best such policy would: the forward recursion of a hidden
Markov model (Hamilton 1989) told the true parameters of the market that generated the bars, i.e. each
regime's drift, lag coefficients and volatility (``RegimeSpec``) and the Markov switching between them (stay
with probability 1 - 1/mean_duration, else jump to another regime uniformly). Row t of the result uses the
returns of bars <= t only.

Each regime k is an AR process of the demeaned return, r_t = drift_k + x_t with x_t = sum_j ar_kj x_{t-j} +
s_k eps_t. The generator keeps one history of x across regime switches; the filter approximates the lagged
x_{t-j} by r_{t-j} - drift_k of the candidate regime k (exact while the regime has held for len(ar) bars, off by
a drift difference for a few bars after a switch). Returns before the first one given count as 0 (the
generator's history starts at 0). Only returns are used: volume and the bars' ranges are left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .synthetic import RegimeSpec


def regime_log_likelihoods(ret: np.ndarray, regimes: Sequence[RegimeSpec]) -> np.ndarray:
    """(T, K) log density of each return ``ret[t]`` under regime k given the returns before it (up to a constant)."""
    ret = np.asarray(ret, dtype=np.float64)  # (T,)
    n, order = ret.shape[0], max((len(r.ar) for r in regimes), default=0)
    drift = np.array([r.drift for r in regimes])  # (K,)
    coeffs = np.zeros((len(regimes), order))  # (K, P)
    for k, spec in enumerate(regimes):
        coeffs[k, : len(spec.ar)] = spec.ar
    scale = np.array([r.innovation_std for r in regimes])  # (K,)
    mean = np.broadcast_to(drift, (n, len(regimes))).copy()  # (T, K)
    for j in range(1, order + 1):
        lagged = np.concatenate((np.zeros(min(j, n)), ret[:-j]))[:n]  # (T,) r_{t-j}, 0 before the series
        known = (np.arange(n) >= j)[:, None]  # (T, 1) the lag lies inside the series
        mean += coeffs[:, j - 1] * np.where(known, lagged[:, None] - drift, 0.0)  # (T, K)
    return -0.5 * np.square((ret[:, None] - mean) / scale) - np.log(scale)  # (T, K)


def transition_matrix(regimes: Sequence[RegimeSpec]) -> np.ndarray:
    """(K, K) P(regime j at t+1 | regime i at t): stay 1 - 1/mean_duration, else a uniform jump elsewhere."""
    k = len(regimes)
    leave = np.array([1.0 / r.mean_duration for r in regimes])  # (K,)
    out = np.repeat((leave / (k - 1))[:, None], k, axis=1)  # (K, K)
    np.fill_diagonal(out, 1.0 - leave)
    return out


def filter_regimes(ret: np.ndarray, regimes: Sequence[RegimeSpec]) -> np.ndarray:
    """(T, K) filtered probabilities P(regime at bar t = k | ret[0..t]); every row sums to 1.

    ``ret``: (T,) log returns, ret[t] = log(close[t] / close[t-1]). The prior of the first bar is uniform
    (the generator draws the first regime uniformly).
    """
    log_emission = regime_log_likelihoods(ret, regimes)  # (T, K)
    emission = np.exp(log_emission - log_emission.max(axis=1, keepdims=True))  # (T, K), max 1 per row
    transition = transition_matrix(regimes)  # (K, K)
    n, k = emission.shape
    out = np.empty((n, k))  # (T, K)
    belief = np.full(k, 1.0 / k)  # (K,) P(regime at t-1 | past), then at t
    for t in range(n):  # the recursion is sequential; each step is a few microseconds (40k bars: ~0.1 s)
        belief = (belief @ transition if t else belief) * emission[t]
        belief /= belief.sum()
        out[t] = belief
    return out
