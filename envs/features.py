"""Causal per-bar features and the causal statistics they share with the strategies.

Every value at bar t is a function of bars 0..t only: exponentially weighted (EWM) and trailing
rolling statistics are computed forward in time, and nothing is normalised with a statistic of the
whole series (that would leak the future into the past). The test suite checks this bit for bit:
replacing every bar after t leaves the features of bars <= t unchanged.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FEATURE_NAMES: tuple[str, ...] = (
    "ret",  # log return, in units of long-run volatility
    "range",  # log(high / low), in units of long-run volatility
    "body",  # log(close / open), in units of long-run volatility
    "close_loc",  # where the close sits in the bar's range, -1 (low) .. +1 (high)
    "gap",  # log(open / previous close), in units of long-run volatility
    "volume_z",  # log volume z-score against its EWM mean and std
    "vol_ratio",  # log(short-run volatility / long-run volatility)
    "momentum",  # 16-bar return z-score (sum of returns / (short vol * sqrt(16)))
    "trend",  # distance of log close from its EWM, in units of long-run volatility
    "autocorr",  # EWM estimate of the lag-1 return autocorrelation
)
N_FEATURES = len(FEATURE_NAMES)

FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "all": FEATURE_NAMES,
    # Each bar's own shape, in units of long-run scales: nothing that summarises earlier bars' returns (momentum,
    # trend and autocorr carry tens to hundreds of bars of their direction and dependence, vol_ratio ~10 bars of
    # their size), so a window of W bars holds W bars of evidence and integrating more is left to the model.
    "bar": ("ret", "range", "body", "close_loc", "gap", "volume_z"),
}
"""The feature sets an env can give its observations (``TradeReplayConfig.features``)."""


def feature_columns(feature_set: str) -> list[int]:
    """Columns of :func:`compute_features`' output that ``feature_set`` keeps, in FEATURE_NAMES order."""
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"features={feature_set!r}: expected one of {tuple(FEATURE_SETS)}")
    return [FEATURE_NAMES.index(name) for name in FEATURE_SETS[feature_set]]

SHORT_VOL_HALFLIFE = 10.0  # bars; reacts within a regime (mean regime lengths are 80-150 bars)
LONG_VOL_HALFLIFE = 500.0  # bars; a "normal" volatility level to compare against
VOLUME_HALFLIFE = 500.0  # bars
FEATURE_CLIP = 10.0  # z-scores beyond +-10 carry no extra information and destabilise training
_TINY = 1e-12  # keeps 0 / 0 (a flat, volume-less start) at 0 instead of NaN


def ewm_mean(x: np.ndarray, halflife: float) -> np.ndarray:
    """Causal exponentially weighted mean (bias-corrected at the start, like pandas adjust=True)."""
    return pd.Series(x).ewm(halflife=halflife, adjust=True).mean().to_numpy()


def trailing_sum(x: np.ndarray, n: int) -> np.ndarray:
    """Sum of the last n values (fewer at the start), causal."""
    return pd.Series(x).rolling(n, min_periods=1).sum().to_numpy()


def log_returns(close: np.ndarray) -> np.ndarray:
    """r[t] = log(close[t] / close[t-1]); r[0] = 0 (bar 0 has no previous close)."""
    r = np.zeros_like(close, dtype=np.float64)  # (T,)
    r[1:] = np.diff(np.log(close))
    return r


def volatility(r: np.ndarray, halflife: float) -> np.ndarray:
    """Causal EWM root-mean-square of returns from bar 1 on (bar 0's return is undefined)."""
    sq = np.square(r)  # (T,)
    out = np.zeros_like(sq)  # (T,)
    out[1:] = np.sqrt(ewm_mean(sq[1:], halflife))
    return out


def compute_features(
    open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray
) -> np.ndarray:
    """Features of every bar, (T, N_FEATURES) float32, clipped to +-FEATURE_CLIP.

    Row 0 is all zeros (no previous close); rows >= 1 are valid.
    """
    r = log_returns(close)  # (T,)
    vol_short = volatility(r, SHORT_VOL_HALFLIFE) + _TINY  # (T,)
    vol_long = volatility(r, LONG_VOL_HALFLIFE) + _TINY  # (T,)
    log_close = np.log(close)  # (T,)
    prev_log_close = np.concatenate((log_close[:1], log_close[:-1]))  # (T,)
    bar_range = high - low  # (T,)

    log_volume = np.log1p(volume)  # (T,)
    # A slow baseline (like long-run vol) so that a regime's volume level shows instead of adapting away.
    vol_mean = ewm_mean(log_volume, VOLUME_HALFLIFE)  # (T,)
    vol_std = np.sqrt(np.maximum(ewm_mean(np.square(log_volume - vol_mean), VOLUME_HALFLIFE), 0.0))  # (T,)

    # Lag-1 autocorrelation: EWM of r_t r_{t-1} over EWM of r_t^2 (bounded by Cauchy-Schwarz, roughly).
    lagged = np.concatenate(([0.0], r[:-1]))  # (T,)
    autocorr = ewm_mean(r * lagged, 32.0) / (ewm_mean(np.square(r), 32.0) + _TINY)  # (T,)

    # Filled one float64 column at a time, clipped before the cast (so nothing overflows float32):
    # a (T, F) float64 intermediate would double the peak memory of a multi-million-bar build.
    feats = np.empty((close.shape[0], N_FEATURES), dtype=np.float32)  # (T, F)

    def put(name: str, values: np.ndarray) -> None:
        feats[:, FEATURE_NAMES.index(name)] = np.clip(values, -FEATURE_CLIP, FEATURE_CLIP)  # (T,)

    put("ret", r / vol_long)
    put("range", np.log(high / low) / vol_long)
    put("body", np.log(close / open_) / vol_long)
    put(
        "close_loc",
        np.where(bar_range > 0, 2.0 * (close - low) / np.where(bar_range > 0, bar_range, 1.0) - 1.0, 0.0),
    )
    put("gap", (np.log(open_) - prev_log_close) / vol_long)
    put("volume_z", (log_volume - vol_mean) / (vol_std + _TINY))
    put("vol_ratio", np.log(vol_short / vol_long))
    put("momentum", trailing_sum(r, 16) / (vol_short * 4.0))
    put("trend", (log_close - ewm_mean(log_close, 32.0)) / vol_long)
    put("autocorr", autocorr)
    feats[0] = 0.0
    return feats
