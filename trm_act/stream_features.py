"""Bar-by-bar features that equal :func:`trm_act.envs.features.compute_features` bit for bit.

``compute_features`` is causal, but not bounded: its exponentially weighted means (pandas
``ewm(adjust=True)``, halflives up to 500 bars) give every past bar a weight, and pandas' rolling sum
is a running Kahan-compensated sum over the whole series, so the value at bar t depends (in its last
bits) on every bar since the first. No fixed lookback reproduces it. Each of those statistics is,
however, a recursion with a few numbers of state, so :class:`FeatureStream` carries exactly that state
and performs pandas' float operations in pandas' order (``pandas/_libs/window/aggregations.pyx``:
``ewm`` and ``roll_sum``). Work and memory per bar are O(1) in the length of the history: 7 weighted
means, one 16-bar sum with its 16 returns, and the previous close and return.

A test (``tests/test_policy.py``) checks bit equality with ``compute_features`` on 20,000 bars, on
constant stretches and on zero volume; if ``envs/features.py`` changes, that test names the feature
that drifted. No torch here: the ONNX runtime uses this module too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from trm_act.envs.features import (
    _TINY,
    FEATURE_CLIP,
    LONG_VOL_HALFLIFE,
    SHORT_VOL_HALFLIFE,
    VOLUME_HALFLIFE,
)

__all__ = ["FeatureState", "FeatureStream"]

# Literals of compute_features that envs/features.py does not name (the bit-equality test guards them).
MOMENTUM_BARS = 16  # trailing_sum(r, 16)
TREND_HALFLIFE = 32.0  # ewm_mean(log_close, 32.0)
AUTOCORR_HALFLIFE = 32.0  # ewm_mean(r * lagged, 32.0), ewm_mean(r**2, 32.0)

# The weighted means, by what they average (their order in FeatureState.means).
MEANS: tuple[tuple[str, float], ...] = (
    ("vol_short", SHORT_VOL_HALFLIFE),  # r**2 from bar 1 on (bar 0 has no return)
    ("vol_long", LONG_VOL_HALFLIFE),  # r**2 from bar 1 on
    ("volume_mean", VOLUME_HALFLIFE),  # log1p(volume)
    ("volume_var", VOLUME_HALFLIFE),  # (log1p(volume) - volume_mean)**2
    ("autocorr_num", AUTOCORR_HALFLIFE),  # r[t] * r[t-1]
    ("autocorr_den", AUTOCORR_HALFLIFE),  # r**2
    ("trend", TREND_HALFLIFE),  # log(close)
)


def _decay_factor(halflife: float) -> float:
    """1 - alpha of ``Series.ewm(halflife=...)``, computed as pandas computes it (via the centre of mass)."""
    decay = 1 - np.exp(np.log(0.5) / halflife)  # pandas.core.window.ewm.get_center_of_mass
    com = float(1 / decay - 1)
    return 1.0 - 1.0 / (1.0 + com)  # aggregations.pyx ewm: alpha = 1 / (1 + com); old_wt_factor = 1 - alpha


_FACTORS = tuple(_decay_factor(halflife) for _, halflife in MEANS)


def _ewm_next(mean: float, weight: float, x: float, factor: float) -> tuple[float, float]:
    """One step of pandas' adjust=True weighted mean (no NaN); ``mean`` NaN = no value yet."""
    if math.isnan(mean):
        return x, 1.0
    weight *= factor
    if mean != x:  # pandas skips the update on a constant series, to avoid rounding drift
        mean = (weight * mean + x) / (weight + 1.0)
    return mean, weight + 1.0


@dataclass(frozen=True)
class FeatureState:
    """Everything the next bar's features depend on; immutable, so a refused bar changes nothing."""

    bars: int = 0
    """Bars seen so far."""
    prev_log_close: float = math.nan
    """log(close) of the previous bar (NaN before the first)."""
    prev_return: float = 0.0
    """Log return of the previous bar (0 for bar 0, as compute_features' lagged returns)."""
    means: tuple[float, ...] = (math.nan,) * len(MEANS)
    """Each weighted mean of MEANS (NaN before its first value)."""
    weights: tuple[float, ...] = (1.0,) * len(MEANS)
    """pandas' running weight (``old_wt``) of each mean."""
    momentum: tuple[float, ...] = (0.0, 0.0, 0.0, 0, 0, math.nan)
    """pandas' rolling-sum state: sum, add and remove compensations, count, run of equal values, last value."""
    recent_returns: tuple[float, ...] = ()
    """The last MOMENTUM_BARS returns (the rolling sum removes the oldest)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (NaN written as None), exact: a float64 survives json's repr round trip."""

        def plain(value: Any) -> Any:
            if isinstance(value, tuple):
                return [plain(v) for v in value]
            return None if isinstance(value, float) and math.isnan(value) else value

        return {f.name: plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> FeatureState:
        """Inverse of :meth:`to_dict`; raises ValueError naming the field when the state is malformed."""

        def number(value: Any, name: str) -> float:
            if value is None:
                return math.nan
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(
                    f"features.{name}={value!r}: expected a number; pass a state_dict() unchanged"
                )
            return float(value)

        if not isinstance(state, dict) or set(state) != {f.name for f in fields(cls)}:
            raise ValueError(
                f"features={state!r:.80}: expected the dict FeatureState.to_dict() writes; pass a state_dict() "
                "unchanged"
            )
        try:
            momentum = [number(v, "momentum") for v in state["momentum"]]
            out = cls(
                bars=int(state["bars"]),
                prev_log_close=number(state["prev_log_close"], "prev_log_close"),
                prev_return=number(state["prev_return"], "prev_return"),
                means=tuple(number(v, "means") for v in state["means"]),
                weights=tuple(number(v, "weights") for v in state["weights"]),
                momentum=(*momentum[:3], int(momentum[3]), int(momentum[4]), momentum[5]),
                recent_returns=tuple(number(v, "recent_returns") for v in state["recent_returns"]),
            )
        except (TypeError, IndexError, ValueError) as exc:
            raise ValueError(
                f"features: malformed stream state ({exc}); pass a state_dict() unchanged"
            ) from None
        if len(out.means) != len(MEANS) or len(out.weights) != len(MEANS) or out.bars < 0:
            raise ValueError(
                f"features: {len(out.means)} means for {len(MEANS)} statistics; pass a state_dict() unchanged"
            )
        return out


class FeatureStream:
    """The features of one instrument, one bar at a time: ``row = stream.update(o, h, l, c, v)``.

    ``advance`` computes a bar's features and the next state without changing the stream, so that a
    caller can refuse the bar (non-finite features) and keep the stream as it was; ``update`` commits.
    """

    def __init__(self, state: FeatureState | None = None) -> None:
        self.state = FeatureState() if state is None else state

    def update(self, open_: float, high: float, low: float, close: float, volume: float) -> np.ndarray:
        """Features of the next bar, (N_FEATURES,) float32, and the stream moves past it."""
        row, self.state = self.advance(open_, high, low, close, volume)
        return row

    def advance(
        self, open_: float, high: float, low: float, close: float, volume: float
    ) -> tuple[np.ndarray, FeatureState]:
        """(features (N_FEATURES,) float32, next state) of the bar after ``self.state``; no side effect.

        Prices must be validated floats (> 0, high the bar's maximum, low its minimum), volume >= 0.
        """
        s = self.state
        first = s.bars == 0
        # One call per ufunc, as compute_features makes on whole columns (the same per-element results).
        log_close, log_range, log_body, log_open = np.log(np.array([close, high / low, close / open_, open_]))
        log_close, log_range, log_body, log_open = (
            float(log_close),
            float(log_range),
            float(log_body),
            float(log_open),
        )
        log_volume = float(np.log1p(np.array([volume]))[0])
        r = 0.0 if first else log_close - s.prev_log_close  # np.diff(np.log(close)); r[0] = 0
        prev_log_close = log_close if first else s.prev_log_close

        means, weights = list(s.means), list(s.weights)

        def ewm(k: int, x: float) -> float:
            means[k], weights[k] = _ewm_next(means[k], weights[k], x, _FACTORS[k])
            return means[k]

        if first:  # volatility(): bar 0 is 0 and the weighted mean starts at bar 1
            vol_short = vol_long = 0.0
        else:
            vol_short = math.sqrt(ewm(0, r * r))
            vol_long = math.sqrt(ewm(1, r * r))
        vol_short += _TINY
        vol_long += _TINY
        volume_mean = ewm(2, log_volume)
        deviation = log_volume - volume_mean
        volume_std = math.sqrt(max(ewm(3, deviation * deviation), 0.0))
        autocorr = ewm(4, r * s.prev_return) / (ewm(5, r * r) + _TINY)
        trend_mean = ewm(6, log_close)
        momentum, recent = self._rolling_sum(r)
        (vol_ratio,) = np.log(np.array([vol_short / vol_long]))

        bar_range = high - low
        values = (
            r / vol_long,  # ret
            log_range / vol_long,  # range
            log_body / vol_long,  # body
            2.0 * (close - low) / bar_range - 1.0 if bar_range > 0 else 0.0,  # close_loc
            (log_open - prev_log_close) / vol_long,  # gap
            (log_volume - volume_mean) / (volume_std + _TINY),  # volume_z
            float(vol_ratio),  # vol_ratio
            _rolling_value(momentum) / (vol_short * 4.0),  # momentum
            (log_close - trend_mean) / vol_long,  # trend
            autocorr,  # autocorr
        )
        row = np.clip(np.array(values), -FEATURE_CLIP, FEATURE_CLIP).astype(np.float32)  # (F,)
        if first:
            row[:] = 0.0  # compute_features: row 0 is all zeros
        state = replace(
            s,
            bars=s.bars + 1,
            prev_log_close=log_close,
            prev_return=r,
            means=tuple(means),
            weights=tuple(weights),
            momentum=momentum,
            recent_returns=recent,
        )
        return row, state

    def _rolling_sum(self, x: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """pandas' ``rolling(16, min_periods=1).sum()`` after one more value: (new state, last 16 values)."""
        total, comp_add, comp_remove, count, same, previous = self.state.momentum
        recent = self.state.recent_returns
        if math.isnan(previous):  # the first window: pandas' "setup" starts its run of equal values here
            previous, same = x, 0
        if len(recent) == MOMENTUM_BARS:  # remove_sum: the value that leaves the window
            y = -recent[0] - comp_remove
            t = total + y
            comp_remove = t - total - y
            total = t
            count -= 1
            recent = recent[1:]
        y = x - comp_add  # add_sum (Kahan)
        t = total + y
        comp_add = t - total - y
        total = t
        count += 1
        same = same + 1 if x == previous else 1  # pandas' guard against rounding on constant runs
        return (total, comp_add, comp_remove, count, same, x), (*recent, x)


def _rolling_value(momentum: tuple[float, ...]) -> float:
    """The rolling sum's value (pandas' calc_sum): the last value times the count when the window holds one
    repeated value, the running sum otherwise."""
    total, _, _, count, same, previous = momentum
    return previous * count if same >= count else total
