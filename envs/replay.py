"""ReplayData: everything an episode needs, precomputed once, so that a step is an index lookup.

Decision points are the bars t = window, window + stride, ... with t + horizon <= T - 1: the first
bar whose observation window holds only valid features (bar 0 has no return), the last whose trade
ends inside the data. Builds are cached (synthetic markets by their config, CSV files by path and
modification time), because the trainer and a 256-slot vector env ask for the same data repeatedly;
the cached arrays are read-only so that no caller can corrupt another's copy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .config import SPLITS, TradeReplayConfig
from .features import FEATURE_NAMES, compute_features
from .market import bars_per_year, load_ohlcv
from .strategies import N_STRATEGIES, STRATEGIES, strategy_positions, trade_pnl
from .synthetic import SyntheticMarketConfig, generate_synthetic_market

SYNTHETIC_BARS_PER_YEAR = 252.0
_MAX_WINDOW_CACHE_BYTES = 128 * 2**20  # above this, observations are gathered from the features per call


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@dataclass(frozen=True, eq=False)  # identity hash: a cache key for the per-config build
class _Market:
    """Per-bar arrays that depend only on the data, not on window/horizon/stride/cost."""

    source: str
    timestamps: pd.DatetimeIndex
    close: np.ndarray  # (T,) float64
    features: np.ndarray  # (T, F) float32
    positions: np.ndarray  # (T, S) float64
    bar_regimes: np.ndarray | None  # (T,) int64
    regime_names: tuple[str, ...] | None
    bars_per_year: float


def _check_finite(
    values: np.ndarray, what: str, names: tuple[str, ...], source: str, bars: np.ndarray | None = None
) -> None:
    """Raise a one-line ValueError at the first non-finite entry of a (rows, len(names)) array.

    Prices are validated on loading, but extreme yet finite ones (1e300 next to 1e-300) can still
    overflow the arithmetic; NaN/inf must never reach a label, a reward or metrics.json.
    """
    bad = ~np.isfinite(values)  # (rows, K)
    if not bad.any():
        return
    i, j = (int(x) for x in np.argwhere(bad)[0])
    bar = i if bars is None else int(bars[i])
    raise ValueError(
        f"{source}: row {bar}: {what} {names[j]!r} is {values[i, j]}; the prices around that row are too "
        "extreme for float64 arithmetic; fix or drop those bars"
    )


def _market_from_frame(
    ohlcv: pd.DataFrame,
    source: str,
    bar_regimes: np.ndarray | None,
    regime_names: tuple[str, ...] | None,
    per_year: float,
) -> _Market:
    o, h, low, c, v = (
        ohlcv[k].to_numpy(dtype=np.float64) for k in ("open", "high", "low", "close", "volume")
    )
    features = compute_features(o, h, low, c, v)  # (T, F)
    _check_finite(features, "feature", FEATURE_NAMES, source)
    positions = strategy_positions(o, h, low, c)  # (T, S)
    _check_finite(positions, "position of strategy", STRATEGIES, source)
    return _Market(
        source=source,
        timestamps=pd.DatetimeIndex(ohlcv.index),
        close=_readonly(c.copy()),
        features=_readonly(features),
        positions=_readonly(positions),
        bar_regimes=None if bar_regimes is None else _readonly(bar_regimes.astype(np.int64)),
        regime_names=regime_names,
        bars_per_year=per_year,
    )


@functools.lru_cache(maxsize=8)
def _synthetic_market(config: SyntheticMarketConfig) -> _Market:
    frame = generate_synthetic_market(config)
    return _market_from_frame(
        frame, "synthetic", frame["regime"].to_numpy(), config.regime_names, SYNTHETIC_BARS_PER_YEAR
    )


@functools.lru_cache(maxsize=8)
def _csv_market(path: str, mtime_ns: int, size: int, name: str) -> _Market:
    del mtime_ns, size  # part of the cache key only: an edited file is read again
    ohlcv = load_ohlcv(path, name=name)
    return _market_from_frame(ohlcv, name, None, None, bars_per_year(pd.DatetimeIndex(ohlcv.index)))


def _market(config: TradeReplayConfig) -> _Market:
    data = config.data
    if isinstance(data, pd.DataFrame):
        ohlcv = load_ohlcv(data)
        return _market_from_frame(
            ohlcv, "DataFrame", None, None, bars_per_year(pd.DatetimeIndex(ohlcv.index))
        )
    if isinstance(data, str) and data == "synthetic":
        return _synthetic_market(config.synthetic)
    path = Path(data)
    stat = path.stat()
    return _csv_market(str(path.resolve()), stat.st_mtime_ns, stat.st_size, str(data))


@dataclass(frozen=True, eq=False)
class ReplayData:
    """Precomputed replay of one market: features, decision points, strategy PnL and labels.

    All arrays are read-only. Decision index i (0..D-1) refers to bar ``decision_bars[i]``.
    """

    source: str
    """Where the bars came from: "synthetic", the CSV path as given, or "DataFrame"."""
    timestamps: pd.DatetimeIndex
    """(T,) timestamp of every bar."""
    close: np.ndarray
    """(T,) float64 close of every bar (split/dividend-adjusted when the CSV has Adj Close)."""
    features: np.ndarray
    """(T, F) float32 causal features of every bar (row 0 is zeros: bar 0 has no return)."""
    positions: np.ndarray
    """(T, 8) float64 position of each strategy over bar j+1, decided at bar j."""
    decision_bars: np.ndarray
    """(D,) int64 bar index t of each decision point."""
    strategy_pnl: np.ndarray
    """(D, 8) float64 realized PnL of each strategy's trade over bars t+1..t+horizon, net of costs."""
    label_pnl: np.ndarray
    """(D, 8) float64 each strategy's PnL over bars t+1..t+label_horizon (cut at the last bar); the same
    array as strategy_pnl when label_horizon == horizon. Supervision only, like the labels."""
    labels: np.ndarray
    """(D,) int64 best strategy in hindsight (argmax of label_pnl, ties to the lowest index)."""
    regimes: np.ndarray | None
    """(D,) int64 true regime at each decision bar (synthetic data only)."""
    bar_regimes: np.ndarray | None
    """(T,) int64 true regime of every bar (synthetic data only)."""
    regime_names: tuple[str, ...] | None
    """Names of the regimes, index = regime id (synthetic data only)."""
    window: int
    """Bars per observation."""
    horizon: int
    """Bars per trade."""
    label_horizon: int
    """Bars over which labels are scored."""
    stride: int
    """Bars between consecutive decision points."""
    cost: float
    """Cost per unit of position change, as a fraction of capital."""
    test_fraction: float
    """Fraction of bars held out at the end as the test split."""
    boundary_bar: int
    """First bar of the test split: floor((1 - test_fraction) * T)."""
    bars_per_year: float
    """Bars per year (252 for synthetic; counted over the timestamps' span for real data)."""

    feature_names = FEATURE_NAMES
    strategy_names = STRATEGIES

    def __repr__(self) -> str:
        return (
            f"ReplayData(source={self.source!r}, bars={self.n_bars}, decisions={self.n_decisions}, "
            f"features={self.n_features}, window={self.window}, horizon={self.horizon}, stride={self.stride}, "
            f"cost={self.cost}, boundary_bar={self.boundary_bar}, regimes={self.regime_names})"
        )

    @property
    def n_features(self) -> int:
        """Features per bar (the observation's last dimension)."""
        return int(self.features.shape[1])

    @property
    def n_decisions(self) -> int:
        """Number of decision points D over the whole series."""
        return int(self.decision_bars.shape[0])

    @property
    def n_bars(self) -> int:
        """Number of bars T."""
        return int(self.close.shape[0])

    @functools.cached_property
    def _split_ranges(self) -> dict[str, tuple[int, int]]:
        # Decision bars increase with the index, so each split is a contiguous range [start, stop).
        bars = self.decision_bars
        # A train decision's trade and its label both end before the boundary bar.
        reach = max(self.horizon, self.label_horizon)
        train_stop = int(np.searchsorted(bars + reach, self.boundary_bar, side="left"))
        test_start = int(np.searchsorted(bars, self.boundary_bar, side="left"))
        return {
            "train": (0, train_stop),
            "test": (test_start, self.n_decisions),
            "all": (0, self.n_decisions),
        }

    def split_range(self, split: str) -> tuple[int, int]:
        """(start, stop) of the split's decision indices: chronological and contiguous."""
        if split not in SPLITS:
            raise ValueError(f"split={split!r}: expected one of {SPLITS}")
        return self._split_ranges[split]

    def split_indices(self, split: str) -> np.ndarray:
        """Decision indices of "train" (t + max(horizon, label_horizon) < boundary_bar), "test" (t >= boundary_bar) or "all".

        No train label uses a test bar: a train trade ends before the boundary bar.
        """
        start, stop = self.split_range(split)
        return np.arange(start, stop, dtype=np.int64)

    @functools.cached_property
    def windows(self) -> np.ndarray | None:
        """(D, window, F) float32 observation of every decision, read-only; None when too large to keep.

        Contiguous per decision, so a batch gather copies whole blocks (much faster than per-bar rows).
        """
        if self.n_decisions * self.window * self.n_features * 4 > _MAX_WINDOW_CACHE_BYTES:
            return None
        return _readonly(self._gather(np.arange(self.n_decisions)))

    def _gather(self, indices: np.ndarray) -> np.ndarray:
        offsets = np.arange(1 - self.window, 1)  # (W,)
        return self.features[self.decision_bars[indices][:, None] + offsets]  # (N, W, F) fresh copy

    def observations(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """Observations of the given decision indices, (N, window, F) float32, freshly allocated."""
        idx = np.asarray(indices, dtype=np.int64)  # (N,)
        windows = self.windows
        return windows[idx] if windows is not None else self._gather(idx)  # fancy indexing copies

    def regime_mean_pnl(self, split: str = "train") -> np.ndarray:
        """(K, 8) mean strategy PnL per true regime over the split's decisions (NaN where a regime is absent)."""
        if self.regimes is None or self.regime_names is None:
            raise ValueError(f"{self.source}: no true regimes (only the synthetic market has them)")
        idx = self.split_indices(split)
        out = np.full((len(self.regime_names), N_STRATEGIES), np.nan)  # (K, S)
        for k in range(len(self.regime_names)):
            rows = idx[self.regimes[idx] == k]
            if rows.size:
                out[k] = self.strategy_pnl[rows].mean(axis=0)
        return out

    def best_fixed_action(self, split: str = "train") -> int:
        """The single strategy with the best mean PnL over the split's decisions (ties to the lowest index)."""
        return int(np.argmax(self.strategy_pnl[self.split_indices(split)].mean(axis=0)))

    def regime_oracle_actions(self, fit_split: str = "train") -> np.ndarray:
        """(D,) the regime oracle's action at every decision: in each true regime, the strategy with the
        best mean PnL on `fit_split` (the realistic upper bound for a regime-aware policy).

        A regime absent from fit_split gets the best fixed strategy of fit_split.
        """
        means = self.regime_mean_pnl(fit_split)  # (K, S)
        best_fixed = self.best_fixed_action(fit_split)
        table = np.where(
            np.isnan(means).all(axis=1), best_fixed, np.argmax(np.nan_to_num(means, nan=-np.inf), axis=1)
        )
        assert self.regimes is not None  # checked by regime_mean_pnl
        return table.astype(np.int64)[self.regimes]


def _label_pnl(market: _Market, decision_bars: np.ndarray, label_horizon: int, cost: float) -> np.ndarray:
    """(D, S) strategy PnL over label_horizon bars; trades that would run past the last bar are cut there."""
    last_bar = market.close.shape[0] - 1
    fits = decision_bars + label_horizon <= last_bar  # (D,) a prefix: decision bars increase
    n_full = int(fits.sum())
    pnl = np.empty((decision_bars.shape[0], N_STRATEGIES))  # (D, S)
    pnl[:n_full] = trade_pnl(market.positions, market.close, decision_bars[:n_full], label_horizon, cost)
    for i in range(n_full, decision_bars.shape[0]):  # at most label_horizon / stride tail decisions
        t = decision_bars[i : i + 1]
        pnl[i] = trade_pnl(market.positions, market.close, t, int(last_bar - t[0]), cost)[0]
    return pnl


def _build(
    market: _Market,
    window: int,
    horizon: int,
    stride: int,
    cost: float,
    test_fraction: float,
    label_horizon: int | None = None,
) -> ReplayData:
    n_bars = market.close.shape[0]
    need = window + horizon + 1
    if n_bars < need:
        raise ValueError(
            f"{market.source}: {n_bars} rows (last row {n_bars - 1}), but window={window} + horizon={horizon} "
            f"+ 1 = {need} bars are needed for one decision; pass more bars or lower window/horizon"
        )
    decision_bars = np.arange(window, n_bars - horizon, stride, dtype=np.int64)  # (D,)
    pnl = trade_pnl(market.positions, market.close, decision_bars, horizon, cost)  # (D, S)
    _check_finite(pnl, "PnL of strategy", STRATEGIES, market.source, decision_bars)
    label_horizon = horizon if label_horizon is None else label_horizon
    label_pnl = pnl
    if label_horizon != horizon:
        label_pnl = _readonly(_label_pnl(market, decision_bars, label_horizon, cost))  # (D, S)
        _check_finite(label_pnl, "label PnL of strategy", STRATEGIES, market.source, decision_bars)
    regimes = None if market.bar_regimes is None else market.bar_regimes[decision_bars]  # (D,)
    return ReplayData(
        source=market.source,
        timestamps=market.timestamps,
        close=market.close,
        features=market.features,
        positions=market.positions,
        decision_bars=_readonly(decision_bars),
        strategy_pnl=_readonly(pnl),
        label_pnl=label_pnl,
        labels=_readonly(np.argmax(label_pnl, axis=1).astype(np.int64)),  # ties go to the lowest index
        regimes=None if regimes is None else _readonly(regimes),
        bar_regimes=market.bar_regimes,
        regime_names=market.regime_names,
        window=window,
        horizon=horizon,
        label_horizon=label_horizon,
        stride=stride,
        cost=cost,
        test_fraction=test_fraction,
        boundary_bar=int(np.floor((1.0 - test_fraction) * n_bars)),
        bars_per_year=market.bars_per_year,
    )


_build_cached = functools.lru_cache(maxsize=4)(_build)  # each may hold a (D, W, F) window cache


def build_replay(config: TradeReplayConfig | None = None) -> ReplayData:
    """Load or generate the market and precompute features, decisions, strategy PnL and labels.

    Synthetic and CSV builds are cached: the same config returns the same (read-only) ReplayData.
    """
    config = TradeReplayConfig() if config is None else config
    market = _market(config)
    args = (
        config.window,
        config.horizon,
        config.effective_stride,
        config.cost,
        config.test_fraction,
        config.effective_label_horizon,
    )
    if isinstance(config.data, pd.DataFrame):
        return _build(market, *args)
    return _build_cached(market, *args)
