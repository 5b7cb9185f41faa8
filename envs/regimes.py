"""Hindsight regime labels from a Markov-switching model, fitted on the train split (``label_source="hmm"``).

Hindsight labels (the argmax of each strategy's PnL over the next bars) are noisy: over a few dozen bars luck
decides between strategies whose expected PnLs differ little. A regime model pools the evidence of a whole
regime instead. This module fits a Markov-switching AR(1) model (Hamilton 1989) to the train split's bars:
each hidden state k has its own return dynamics and volume level,

    ret_t | state k  ~  N(a_k + phi_k * ret_{t-1}, sigma_k^2)        volume_z_t | state k  ~  N(m_k, s_k^2)

with a first-order Markov chain between states, by expectation-maximisation (Baum-Welch). Each bar's state is
the most probable one under the smoothed posterior (forward-backward, so it uses later bars too: a label, never
an observation), and each decision is labelled with the strategy that earned the most on average, on the train
split, in its state. The inputs are two of the model's own features (``ret`` and ``volume_z``), so the model
works on any OHLCV data; only the number of states is a choice.

The fit sees train bars only, and train labels come from a forward-backward pass over train bars only, so no
test bar informs a train label. Test decisions are labelled from a pass over the whole series (their labels
only feed evaluation's label accuracy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .features import ewm_mean

EM_ITERATIONS = 30
"""Baum-Welch iterations at most: on the default market 30 agree with the true regimes as well as 50 do, at
half the time (about 0.3 s each on its 32,000 train bars)."""
EM_TOLERANCE = 1e-6
"""Stop when an iteration raises the log-likelihood per bar by less than this."""
INITIAL_STAY = 0.99
"""Initial probability of staying in a state (regimes last many bars); EM then learns the transitions."""
_MIN_SCALE = 1e-3  # floor of sigma_k and s_k, so that no state collapses onto a few identical bars


@dataclass(frozen=True)
class RegimeHMM:
    """Parameters of the fitted model; every array is indexed by state."""

    intercept: np.ndarray
    """(K,) a_k."""
    ar: np.ndarray
    """(K,) phi_k, the lag-1 autoregression of ret."""
    sigma: np.ndarray
    """(K,) residual standard deviation of ret."""
    volume_mean: np.ndarray
    """(K,) m_k."""
    volume_std: np.ndarray
    """(K,) s_k."""
    transition: np.ndarray
    """(K, K) transition[i, j] = P(state j at t+1 | state i at t)."""
    initial: np.ndarray
    """(K,) distribution of the first bar's state."""
    log_likelihood_per_bar: float
    """Mean log-likelihood of the fitted bars (a fit diagnostic)."""


def _log_emission(
    ret: np.ndarray,
    volume: np.ndarray,
    intercept: np.ndarray,
    ar: np.ndarray,
    sigma: np.ndarray,
    volume_mean: np.ndarray,
    volume_std: np.ndarray,
) -> np.ndarray:
    """(T, K) log density of bar t's (ret, volume_z) in each state, up to a constant (bar 0 has no lag)."""
    lagged = np.concatenate(([0.0], ret[:-1]))  # (T,)
    mean = intercept + ar * lagged[:, None]  # (T, K)
    log_ret = -0.5 * np.square((ret[:, None] - mean) / sigma) - np.log(sigma)  # (T, K)
    log_vol = -0.5 * np.square((volume[:, None] - volume_mean) / volume_std) - np.log(volume_std)  # (T, K)
    return log_ret + log_vol  # (T, K)


def _forward_backward(
    log_emission: np.ndarray, transition: np.ndarray, initial: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """Scaled forward-backward: posterior (T, K), expected transition counts (K, K), log-likelihood."""
    n, k = log_emission.shape
    shift = log_emission.max(axis=1, keepdims=True)  # (T, 1) keeps exp() in range
    emission = np.exp(log_emission - shift)  # (T, K)
    alpha = np.empty((n, k))  # (T, K) filtered state probabilities
    scale = np.empty(n)  # (T,) P(bar t | bars < t), up to exp(shift)
    a = initial * emission[0]
    scale[0] = a.sum()
    alpha[0] = a / scale[0]
    for t in range(1, n):  # sequential by nature; K is small, so each step is a few microseconds
        a = (alpha[t - 1] @ transition) * emission[t]
        scale[t] = a.sum()
        alpha[t] = a / scale[t]
    beta = np.empty((n, k))  # (T, K)
    beta[-1] = 1.0
    for t in range(n - 2, -1, -1):
        beta[t] = transition @ (emission[t + 1] * beta[t + 1]) / scale[t + 1]
    posterior = alpha * beta  # (T, K), rows sum to 1
    weighted_next = emission[1:] * beta[1:] / scale[1:, None]  # (T-1, K)
    expected_transitions = transition * (alpha[:-1].T @ weighted_next)  # (K, K)
    return posterior, expected_transitions, float(np.log(scale).sum() + shift.sum())


def _maximise(ret: np.ndarray, volume: np.ndarray, posterior: np.ndarray) -> dict[str, np.ndarray]:
    """Emission parameters maximising the expected log-likelihood: weighted least squares per state."""
    lagged = np.concatenate(([0.0], ret[:-1]))  # (T,)
    w = posterior + 1e-12  # (T, K)
    n = w.sum(axis=0)  # (K,)
    sx, sy = lagged @ w, ret @ w  # (K,), (K,)
    sxx, sxy = np.square(lagged) @ w, (ret * lagged) @ w  # (K,), (K,)
    det = n * sxx - sx**2  # (K,) > 0 unless a state sees one lagged value only
    ar = np.where(det > 1e-12, (n * sxy - sx * sy) / np.maximum(det, 1e-12), 0.0)  # (K,)
    intercept = (sy - ar * sx) / n  # (K,)
    residual = ret[:, None] - intercept - ar * lagged[:, None]  # (T, K)
    sigma = np.sqrt((w * np.square(residual)).sum(axis=0) / n) + _MIN_SCALE  # (K,)
    volume_mean = volume @ w / n  # (K,)
    volume_std = np.sqrt((w * np.square(volume[:, None] - volume_mean)).sum(axis=0) / n) + _MIN_SCALE
    return {
        "intercept": intercept,
        "ar": ar,
        "sigma": sigma,
        "volume_mean": volume_mean,
        "volume_std": volume_std,
    }


def _initial_posterior(ret: np.ndarray, volume: np.ndarray, n_states: int, seed: int) -> np.ndarray:
    """(T, K) a starting posterior: k-means over slow summaries (volatility, volume, autocorrelation) of each bar."""
    lagged = np.concatenate(([0.0], ret[:-1]))
    summaries = np.column_stack(
        (
            np.log(ewm_mean(np.square(ret), 10.0) + 1e-6),
            ewm_mean(volume, 10.0),
            ewm_mean(ret * lagged, 20.0) / (ewm_mean(np.square(ret), 20.0) + 1e-6),
        )
    )  # (T, 3)
    summaries = (summaries - summaries.mean(axis=0)) / (summaries.std(axis=0) + 1e-12)
    rng = np.random.default_rng(seed)
    centres = summaries[rng.choice(summaries.shape[0], n_states, replace=False)]  # (K, 3)
    for _ in range(20):
        nearest = np.square(summaries[:, None, :] - centres[None]).sum(axis=-1).argmin(axis=1)  # (T,)
        for k in range(n_states):
            if (nearest == k).any():
                centres[k] = summaries[nearest == k].mean(axis=0)
    return np.eye(n_states)[nearest] * 0.9 + 0.1 / n_states  # (T, K) soft one-hot


def fit_regime_hmm(ret: np.ndarray, volume: np.ndarray, n_states: int, seed: int = 0) -> RegimeHMM:
    """Fit the Markov-switching AR(1) model to the bars (ret, volume_z), each (T,) float, by Baum-Welch."""
    ret, volume = np.asarray(ret, dtype=np.float64), np.asarray(volume, dtype=np.float64)
    if ret.shape != volume.shape or ret.ndim != 1 or ret.shape[0] < 10 * n_states:
        raise ValueError(
            f"fit_regime_hmm needs two (T,) series with T >= 10 x n_states = {10 * n_states} bars; "
            f"got ret {ret.shape} and volume {volume.shape}"
        )
    posterior = _initial_posterior(ret, volume, n_states, seed)
    transition = np.full((n_states, n_states), (1.0 - INITIAL_STAY) / (n_states - 1))
    np.fill_diagonal(transition, INITIAL_STAY)
    initial = np.full(n_states, 1.0 / n_states)
    previous = -np.inf
    for _ in range(EM_ITERATIONS):
        emission = _log_emission(ret, volume, **_maximise(ret, volume, posterior))  # (T, K)
        posterior, counts, log_likelihood = _forward_backward(emission, transition, initial)
        transition = counts / counts.sum(axis=1, keepdims=True)
        initial = posterior[0]
        per_bar = log_likelihood / ret.shape[0]
        if per_bar - previous < EM_TOLERANCE:
            break
        previous = per_bar
    return RegimeHMM(**_maximise(ret, volume, posterior), transition=transition, initial=initial,
                     log_likelihood_per_bar=per_bar)  # fmt: skip


def most_probable_states(hmm: RegimeHMM, ret: np.ndarray, volume: np.ndarray) -> np.ndarray:
    """(T,) int64 the state of highest smoothed posterior probability at each bar."""
    ret, volume = np.asarray(ret, np.float64), np.asarray(volume, np.float64)
    log_emission = _log_emission(
        ret, volume, hmm.intercept, hmm.ar, hmm.sigma, hmm.volume_mean, hmm.volume_std
    )  # (T, K)
    posterior, _, _ = _forward_backward(log_emission, hmm.transition, hmm.initial)
    return posterior.argmax(axis=1).astype(np.int64)
