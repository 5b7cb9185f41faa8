"""ReplayData: everything an episode needs, precomputed once, so that a step is an index lookup.

Decision points are the bars t = window, window + stride, ... with t + horizon <= T - 1: the first
bar whose observation window holds only valid features (bar 0 has no return), the last whose trade
ends inside the data. Builds are cached (synthetic markets by their config, CSV files by path and
modification time), because the trainer and a 256-slot vector env ask for the same data repeatedly;
the cached arrays are read-only so that no caller can corrupt another's copy.

A universe of instruments (see :mod:`.universe`) is laid end to end: instrument k owns bars
``bar_offsets[k]:bar_offsets[k+1]`` and decisions ``decision_offsets[k]:decision_offsets[k+1]``.
Features, strategy positions and trade PnL are computed per instrument, so nothing crosses an
instrument boundary: an observation window and a trade both lie inside one instrument. The split
uses one calendar cutoff for all instruments (``boundary_time``, see ``_cutoff``).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from .config import SPLITS, TradeReplayConfig
from .features import FEATURE_NAMES, FEATURE_SETS, compute_features, feature_columns
from .market import bars_per_year, load_ohlcv
from .regimes import fit_regime_hmm, most_probable_states
from .strategies import N_STRATEGIES, STRATEGIES, strategy_positions, trade_pnl
from .synthetic import RegimeSpec, SyntheticMarketConfig, generate_synthetic_market
from .timing import FEATURES, LABELS, PARSE, phase
from .universe import Universe, is_universe, load_universe, universe_files

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
    regime_specs: tuple[RegimeSpec, ...] | None  # the true regimes' parameters (synthetic data)
    bars_per_year: float
    symbols: tuple[str, ...]  # (K,) instrument names
    bar_offsets: np.ndarray  # (K+1,) int64: instrument k owns bars bar_offsets[k]:bar_offsets[k+1]
    universe: bool = False  # the data came in a multi-instrument form (directory, glob, long file, dict)
    skipped: tuple[str, ...] = ()  # why each skipped file was skipped (skip_bad_files only)


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
    regime_specs: tuple[RegimeSpec, ...] | None,
    per_year: float,
    symbol: str,
) -> _Market:
    o, h, low, c, v = (
        ohlcv[k].to_numpy(dtype=np.float64) for k in ("open", "high", "low", "close", "volume")
    )
    with phase(FEATURES):
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
        regime_names=None if regime_specs is None else tuple(r.name for r in regime_specs),
        regime_specs=regime_specs,
        bars_per_year=per_year,
        symbols=(symbol,),
        bar_offsets=_readonly(np.array([0, len(ohlcv)], dtype=np.int64)),
    )


def _as_naive_ns(index: pd.DatetimeIndex) -> np.ndarray:
    """(T,) datetime64[ns] of an index, timezone-aware ones in UTC, so instruments share one time axis."""
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    return index.to_numpy(dtype="datetime64[ns]")


def _market_from_universe(universe: Universe, source: str) -> _Market:
    """Instruments laid end to end; features and positions computed per instrument (never across one)."""
    frames = list(universe.frames.values())
    parts = [_market_from_frame(f, s, None, None, 0.0, s) for s, f in universe.frames.items()]
    lengths = np.array([len(f) for f in frames], dtype=np.int64)  # (K,)
    tz = pd.DatetimeIndex(frames[0].index).tz
    times = pd.DatetimeIndex(np.concatenate([_as_naive_ns(pd.DatetimeIndex(f.index)) for f in frames]))
    per_year = [bars_per_year(pd.DatetimeIndex(f.index)) for f in frames]
    return _Market(
        source=source,
        timestamps=times if tz is None else times.tz_localize("UTC"),
        close=_readonly(np.concatenate([p.close for p in parts])),
        features=_readonly(np.concatenate([p.features for p in parts])),
        positions=_readonly(np.concatenate([p.positions for p in parts])),
        bar_regimes=None,
        regime_names=None,
        regime_specs=None,
        bars_per_year=float(
            np.median(per_year)
        ),  # annualises per-trade Sharpe at a typical instrument's rate
        symbols=tuple(universe.frames),
        bar_offsets=_readonly(np.concatenate(([0], np.cumsum(lengths)))),
        universe=True,
        skipped=universe.skipped,
    )


@functools.lru_cache(maxsize=8)
def _synthetic_market(config: SyntheticMarketConfig) -> _Market:
    with phase(PARSE):  # generating the bars stands in for reading them
        frame = generate_synthetic_market(config)
    return _market_from_frame(
        frame,
        "synthetic",
        frame["regime"].to_numpy(),
        tuple(config.regimes),
        SYNTHETIC_BARS_PER_YEAR,
        "synthetic",
    )


@functools.lru_cache(maxsize=8)
def _csv_market(path: str, mtime_ns: int, size: int, name: str) -> _Market:
    del mtime_ns, size  # part of the cache key only: an edited file is read again
    with phase(PARSE):
        ohlcv = load_ohlcv(path, name=name)
    per_year = bars_per_year(pd.DatetimeIndex(ohlcv.index))
    return _market_from_frame(ohlcv, name, None, None, per_year, Path(name).stem)


@functools.lru_cache(maxsize=2)  # a 500 x 5,000-bar universe holds ~0.3 GB of per-bar arrays
def _universe_market(
    data: str, files: tuple[tuple[str, int, int], ...], skip: bool, min_bars: int
) -> _Market:
    del files  # part of the cache key only: (path, mtime, size) of every file, so edits are read again
    with phase(PARSE):
        universe = load_universe(data, skip_bad_files=skip, min_bars=min_bars)
    return _market_from_universe(universe, data)


def _market(config: TradeReplayConfig) -> _Market:
    data = config.data
    min_bars = config.window + config.horizon + 1
    if isinstance(data, pd.DataFrame):
        with phase(PARSE):
            ohlcv = load_ohlcv(data)
        per_year = bars_per_year(pd.DatetimeIndex(ohlcv.index))
        return _market_from_frame(ohlcv, "DataFrame", None, None, per_year, "DataFrame")
    if isinstance(data, dict):
        with phase(PARSE):
            universe = load_universe(data, skip_bad_files=config.skip_bad_files, min_bars=min_bars)
        return _market_from_universe(universe, f"dict of {len(data)} DataFrames")
    if isinstance(data, str) and data == "synthetic":
        return _synthetic_market(config.synthetic)
    if is_universe(data):
        path = Path(data)
        files = [path] if path.is_file() else universe_files(data)
        key = tuple((str(f.resolve()), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
        return _universe_market(str(data), key, config.skip_bad_files, min_bars)
    path = Path(data)
    stat = path.stat()
    return _csv_market(str(path.resolve()), stat.st_mtime_ns, stat.st_size, str(data))


@dataclass(frozen=True, eq=False)
class ReplayData:
    """Precomputed replay of one market or a universe: features, decision points, strategy PnL and labels.

    All arrays are read-only. Decision index i (0..D-1) refers to bar ``decision_bars[i]``. A universe's
    instruments lie end to end: bars and decisions are grouped by instrument, in time order within each.
    """

    source: str
    """Where the bars came from: "synthetic", the CSV path as given, "DataFrame", or the universe's data."""
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
    """(D, 8) float64 each strategy's PnL over bars t+1..t+label_horizon (cut at the last bar), costs charged as
    ``TradeReplayConfig.label_costs`` says; the same array as strategy_pnl when label_horizon == horizon.
    Supervision only, like the labels."""
    labels: np.ndarray
    """(D,) int64 best strategy in hindsight (argmax of label_pnl, ties to the lowest index); with
    label_source "hmm", the best strategy of the decision's state in a regime model (``regimes``); with
    "regime", the regime oracle's strategy (:func:`regime_oracle_labels`)."""
    regimes: np.ndarray | None
    """(D,) int64 true regime at each decision bar (synthetic data only)."""
    bar_regimes: np.ndarray | None
    """(T,) int64 true regime of every bar (synthetic data only)."""
    regime_names: tuple[str, ...] | None
    """Names of the regimes, index = regime id (synthetic data only)."""
    regime_specs: tuple[RegimeSpec, ...] | None
    """The true parameters of each regime, index = regime id (synthetic data only; the filter bound's model)."""
    window: int
    """Bars per observation."""
    horizon: int
    """Bars per trade."""
    label_horizon: int
    """Bars over which labels are scored."""
    label_source: str
    """What the labels name: "hindsight", "hmm" or "regime" (``TradeReplayConfig.label_source``)."""
    stride: int
    """Bars between consecutive decision points."""
    cost: float
    """Cost per unit of position change, as a fraction of capital."""
    test_fraction: float
    """Fraction of bars held out at the end as the test split."""
    boundary_bar: int
    """First bar of the test split: floor((1 - test_fraction) * T). For a universe: ``boundary_bars[0]``."""
    bars_per_year: float
    """Bars per year (252 for synthetic; counted over the timestamps' span for real data; a universe's
    median over its instruments)."""
    symbols: tuple[str, ...]
    """Instrument names, index = symbol id: the file stem, dict key or Symbol value ("synthetic" or
    "DataFrame" for those single sources)."""
    symbol_index: np.ndarray
    """(D,) int64 instrument (index into ``symbols``) of each decision."""
    bar_offsets: np.ndarray
    """(K+1,) int64: instrument k owns bars ``bar_offsets[k]:bar_offsets[k+1]``."""
    decision_offsets: np.ndarray
    """(K+1,) int64: instrument k owns decisions ``decision_offsets[k]:decision_offsets[k+1]``."""
    boundary_bars: np.ndarray
    """(K,) int64 first test bar of each instrument: its first bar at or after ``boundary_time``
    (``bar_offsets[k+1]`` when it ends before the cutoff)."""
    boundary_time: pd.Timestamp
    """The calendar cutoff shared by every instrument: the timestamp of the first test bar."""
    universe: bool
    """True when the data came in a multi-instrument form (directory, glob, long file, dict)."""
    skipped: tuple[str, ...]
    """Why each skipped instrument file was skipped (only with skip_bad_files=True)."""
    feature_names: tuple[str, ...] = FEATURE_NAMES
    """The name of each column of ``features`` (TradeReplayConfig.features picks them)."""

    strategy_names = STRATEGIES

    def __repr__(self) -> str:
        return (
            f"ReplayData(source={self.source!r}, bars={self.n_bars}, decisions={self.n_decisions}, "
            f"features={self.n_features}, window={self.window}, horizon={self.horizon}, stride={self.stride}, "
            f"cost={self.cost}, boundary_bar={self.boundary_bar}, regimes={self.regime_names}"
            + (f", instruments={self.n_symbols}, cutoff={self.boundary_time})" if self.universe else ")")
        )

    @property
    def n_symbols(self) -> int:
        """Number of instruments K (1 for a single market)."""
        return len(self.symbols)

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
    def _split_ranges(self) -> dict[str, np.ndarray]:
        # Decision bars increase within an instrument, so each split is a contiguous range per instrument.
        reach = max(self.horizon, self.label_horizon)  # a train trade and its label end before the cutoff
        out = {name: np.empty((self.n_symbols, 2), dtype=np.int64) for name in SPLITS}
        for k in range(self.n_symbols):
            first, last = int(self.decision_offsets[k]), int(self.decision_offsets[k + 1])
            bars = self.decision_bars[first:last]
            boundary = self.boundary_bars[k]
            out["train"][k] = first, first + int(np.searchsorted(bars + reach, boundary, side="left"))
            out["test"][k] = first + int(np.searchsorted(bars, boundary, side="left")), last
            out["all"][k] = first, last
        return {name: _readonly(ranges) for name, ranges in out.items()}

    def split_ranges(self, split: str) -> np.ndarray:
        """(K, 2) int64 [start, stop) of the split's decision indices in each instrument (possibly empty)."""
        if split not in SPLITS:
            raise ValueError(f"split={split!r}: expected one of {SPLITS}")
        return self._split_ranges[split]

    def split_range(self, split: str) -> tuple[int, int]:
        """(start, stop) of the split's decision indices: chronological and contiguous (one instrument)."""
        ranges = self.split_ranges(split)
        if self.n_symbols > 1:
            raise ValueError(
                f"split_range({split!r}): {self.source} holds {self.n_symbols} instruments, whose splits are "
                "not one contiguous range; use split_ranges() or split_indices()"
            )
        return int(ranges[0, 0]), int(ranges[0, 1])

    def split_indices(self, split: str) -> np.ndarray:
        """Decision indices of "train" (t + max(horizon, label_horizon) < boundary_bar), "test" (t >= boundary_bar) or "all".

        No train label uses a test bar: a train trade ends before the boundary bar (of its instrument,
        which in a universe is the instrument's first bar at or after the shared calendar cutoff).
        """
        ranges = self.split_ranges(split)
        return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in ranges.tolist()])

    @functools.cached_property
    def windows(self) -> np.ndarray | None:
        """(D, window, F) float32 observation of every decision, read-only; None when too large to keep.

        Contiguous per decision, so a batch gather copies whole blocks (much faster than per-bar rows).
        """
        if self.n_decisions * self.window * self.n_features * 4 > _MAX_WINDOW_CACHE_BYTES:
            return None
        return _readonly(self._gather(np.arange(self.n_decisions)))

    @functools.cached_property
    def _window_rows(self) -> np.ndarray:
        """(T-W+1, W*F) read-only view (no copy): row j holds the features of bars j..j+W-1, flattened.

        Gathering whole rows of this view copies one contiguous block per decision, several times faster
        than indexing (N, W) single bars, which is what keeps a large universe's per-call gather cheap.
        """
        flat = np.ascontiguousarray(self.features).reshape(-1)  # (T*F,) a view when features is contiguous
        return sliding_window_view(flat, self.window * self.n_features)[:: self.n_features]

    def _gather(self, indices: np.ndarray) -> np.ndarray:
        starts = self.decision_bars[indices] - (self.window - 1)  # (N,) first bar of each window
        return self._window_rows[starts].reshape(-1, self.window, self.n_features)  # (N, W, F) fresh copy

    def observations(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """Observations of the given decision indices, (N, window, F) float32, freshly allocated."""
        idx = np.asarray(indices, dtype=np.int64)  # (N,)
        windows = self.windows
        return windows[idx] if windows is not None else self._gather(idx)  # fancy indexing copies

    def group_mean_pnl(self, groups: np.ndarray, n_groups: int, split: str) -> np.ndarray:
        """(G, 8) mean strategy PnL per group (``groups`` (D,) in 0..G-1) over the split's decisions; NaN rows
        for groups absent from the split."""
        idx = self.split_indices(split)
        out = np.full((n_groups, N_STRATEGIES), np.nan)  # (G, S)
        for k in range(n_groups):
            rows = idx[groups[idx] == k]
            if rows.size:
                out[k] = self.strategy_pnl[rows].mean(axis=0)
        return out

    def best_fixed_action(self, split: str = "train") -> int:
        """The single strategy with the best mean PnL over the split's decisions (ties to the lowest index).

        Pooled over every instrument of a universe; an empty split gives 0 (flat).
        """
        idx = self.split_indices(split)
        return int(np.argmax(self.strategy_pnl[idx].mean(axis=0))) if idx.size else 0

    def best_strategy_by_group(
        self, groups: np.ndarray, n_groups: int, fit_split: str = "train"
    ) -> np.ndarray:
        """(D,) for every decision, the strategy with the best mean PnL on `fit_split` among the decisions of
        its group (``groups`` (D,) int in 0..n_groups-1: true regimes, or a regime model's states); a group
        absent from fit_split gets the best fixed strategy of fit_split."""
        return self.best_strategy_table(groups, n_groups, fit_split)[groups]

    def best_strategy_table(self, groups: np.ndarray, n_groups: int, fit_split: str = "train") -> np.ndarray:
        """(G,) int64 the strategy of each group in ``best_strategy_by_group``."""
        means = self.group_mean_pnl(groups, n_groups, fit_split)  # (G, S)
        best_fixed = self.best_fixed_action(fit_split)
        table = np.where(
            np.isnan(means).all(axis=1), best_fixed, np.argmax(np.nan_to_num(means, nan=-np.inf), axis=1)
        )  # (G,)
        return table.astype(np.int64)


def _label_pnl(
    positions: np.ndarray,
    close: np.ndarray,
    decision_bars: np.ndarray,
    label_horizon: int,
    trade_bars: int,
    cost: float,
) -> np.ndarray:
    """(D, S) strategy PnL over label_horizon bars as back-to-back trades of trade_bars (<= label_horizon) bars,
    each paying its own entry and exit. A last trade shorter than trade_bars (label_horizon not a multiple of it)
    pays its share of a round trip, length / trade_bars. Trades that would run past the last
    bar are cut there, and trades that would start at or after it are left out."""
    last_bar = close.shape[0] - 1
    pnl = np.zeros((decision_bars.shape[0], N_STRATEGIES))  # (D, S)
    for offset in range(0, label_horizon, trade_bars):
        length = min(trade_bars, label_horizon - offset)
        share = cost * length / trade_bars  # the cost of this trade's part of a round trip
        starts = decision_bars + offset  # (D,)
        n_full = int((starts + length <= last_bar).sum())  # a prefix: decision bars increase
        pnl[:n_full] += trade_pnl(positions, close, starts[:n_full], length, share)
        for i in range(n_full, starts.shape[0]):  # at most label_horizon / stride tail decisions
            if starts[i] < last_bar:
                pnl[i] += trade_pnl(positions, close, starts[i : i + 1], int(last_bar - starts[i]), share)[0]
    return pnl


def _cutoff(market: _Market, test_fraction: float) -> tuple[np.ndarray, pd.Timestamp]:
    """(K,) first test bar of each instrument and the one calendar cutoff they share.

    The cutoff is the (1 - test_fraction) quantile of the pooled timestamps of all instruments' bars
    (the timestamp of bar floor((1 - test_fraction) * T) in the pooled, time-sorted order), so about
    test_fraction of all bars are held out, whatever each instrument's date range. Every bar at or after
    the cutoff, in any instrument, is a test bar. For one instrument this is bar floor((1 - f) * T).
    """
    n_bars = market.close.shape[0]
    offsets = market.bar_offsets
    if len(market.symbols) == 1:
        boundary = int(np.floor((1.0 - test_fraction) * n_bars))
        return np.array([boundary], dtype=np.int64), market.timestamps[boundary]
    times = _as_naive_ns(market.timestamps)  # (T,) comparable across instruments
    pooled = np.sort(times)
    cutoff = pooled[int(np.floor((1.0 - test_fraction) * n_bars))]
    boundaries = np.array(
        [
            offsets[k] + np.searchsorted(times[offsets[k] : offsets[k + 1]], cutoff, side="left")
            for k in range(len(offsets) - 1)
        ],
        dtype=np.int64,
    )  # (K,)
    stamp = pd.Timestamp(cutoff)
    return boundaries, stamp if market.timestamps.tz is None else stamp.tz_localize("UTC")


def _build(
    market: _Market,
    window: int,
    horizon: int,
    stride: int,
    cost: float,
    test_fraction: float,
    label_horizon: int | None = None,
    label_source: str = "hindsight",
    label_costs: str = "realized",
    label_states: int = 16,
    features: str = "all",
) -> ReplayData:
    need = window + horizon + 1
    offsets = market.bar_offsets.tolist()
    label_horizon = horizon if label_horizon is None else label_horizon
    # Bars between the label's round trips: one per trade, or one over the whole label horizon.
    trade_bars = min(horizon, label_horizon) if label_costs == "realized" else label_horizon
    bars, pnls, label_pnls, symbol_index = [], [], [], []
    for k in range(len(offsets) - 1):
        first, stop = offsets[k], offsets[k + 1]
        n_bars = stop - first
        if n_bars < need:
            name = market.source if len(offsets) == 2 else f"{market.source}, symbol {market.symbols[k]!r}"
            raise ValueError(
                f"{name}: {n_bars} rows (last row {n_bars - 1}), but window={window} + horizon={horizon} "
                f"+ 1 = {need} bars are needed for one decision; pass more bars or lower window/horizon"
            )
        # Per instrument: views of its own bars, so no trade or label reads another instrument's bars.
        positions, close = market.positions[first:stop], market.close[first:stop]
        local = np.arange(window, n_bars - horizon, stride, dtype=np.int64)  # (D_k,)
        pnl = trade_pnl(positions, close, local, horizon, cost)  # (D_k, S)
        bars.append(local + first)
        pnls.append(pnl)
        label_pnls.append(
            pnl
            if label_horizon == horizon
            else _label_pnl(positions, close, local, label_horizon, trade_bars, cost)
        )
        symbol_index.append(np.full(local.shape[0], k, dtype=np.int64))
    one = len(bars) == 1  # a single market keeps its arrays as computed (no concatenation copy)
    decision_bars = bars[0] if one else np.concatenate(bars)  # (D,)
    pnl = _readonly(pnls[0] if one else np.concatenate(pnls))  # (D, S)
    label_pnl = (
        pnl if label_horizon == horizon else _readonly(label_pnls[0] if one else np.concatenate(label_pnls))
    )
    _check_finite(pnl, "PnL of strategy", STRATEGIES, market.source, decision_bars)
    if label_pnl is not pnl:
        _check_finite(label_pnl, "label PnL of strategy", STRATEGIES, market.source, decision_bars)
    regimes = None if market.bar_regimes is None else market.bar_regimes[decision_bars]  # (D,)
    boundary_bars, boundary_time = _cutoff(market, test_fraction)
    replay = ReplayData(
        source=market.source,
        timestamps=market.timestamps,
        close=market.close,
        features=market.features,
        positions=market.positions,
        decision_bars=_readonly(decision_bars),
        strategy_pnl=pnl,
        label_pnl=label_pnl,
        labels=_readonly(np.argmax(label_pnl, axis=1).astype(np.int64)),  # ties go to the lowest index
        regimes=None if regimes is None else _readonly(regimes),
        bar_regimes=market.bar_regimes,
        regime_names=market.regime_names,
        regime_specs=market.regime_specs,
        window=window,
        horizon=horizon,
        label_horizon=label_horizon,
        label_source=label_source,
        stride=stride,
        cost=cost,
        test_fraction=test_fraction,
        boundary_bar=int(boundary_bars[0]),
        bars_per_year=market.bars_per_year,
        symbols=market.symbols,
        symbol_index=_readonly(np.concatenate(symbol_index)),
        bar_offsets=market.bar_offsets,
        decision_offsets=_readonly(
            np.concatenate(([0], np.cumsum([b.shape[0] for b in bars]))).astype(np.int64)
        ),
        boundary_bars=_readonly(boundary_bars),
        boundary_time=boundary_time,
        universe=market.universe,
        skipped=market.skipped,
    )
    if label_source == "regime":  # the clean-supervision control: what each regime's oracle would trade
        replay = dataclasses.replace(replay, labels=_readonly(regime_oracle_labels(replay)))
    elif label_source == "hmm":
        replay = dataclasses.replace(replay, labels=_readonly(_regime_model_labels(replay, label_states)))
    if features != "all":  # after the labels: the regime model reads ret and volume_z of the full set
        kept = np.ascontiguousarray(market.features[:, feature_columns(features)])  # (T, F') a copy
        replay = dataclasses.replace(replay, features=_readonly(kept), feature_names=FEATURE_SETS[features])
    return replay


def regime_oracle_labels(replay: ReplayData, fit_split: str = "train") -> np.ndarray:
    """(D,) in each true regime, the strategy with the best mean PnL on ``fit_split``: the labels of label_source
    "regime" and the regime oracle baseline (:func:`trm_act.baselines.regime_oracle_actions`). A regime absent
    from fit_split gets the best fixed strategy of fit_split."""
    if replay.regimes is None or replay.regime_names is None:
        raise ValueError(f"{replay.source}: no true regimes (only the synthetic market has them)")
    return replay.best_strategy_by_group(replay.regimes, len(replay.regime_names), fit_split)


def _regime_model_labels(replay: ReplayData, n_states: int) -> np.ndarray:
    """(D,) labels of label_source "hmm": the best strategy of each decision's state (see ``regimes``)."""
    if len(replay.symbols) != 1:
        raise ValueError(
            f"label_source='hmm' fits one regime model to one instrument's bars, but {replay.source} holds "
            f"{len(replay.symbols)} instruments; use label_source='hindsight' for a universe"
        )
    ret = replay.features[:, FEATURE_NAMES.index("ret")]  # (T,)
    volume = replay.features[:, FEATURE_NAMES.index("volume_z")]  # (T,)
    boundary = replay.boundary_bar
    hmm = fit_regime_hmm(ret[1:boundary], volume[1:boundary], n_states)  # bar 0 has no return
    states = np.empty(replay.n_bars, dtype=np.int64)  # (T,)
    # Train bars from a pass over train bars only (no test bar informs a train label), the rest from all bars.
    states[1:] = most_probable_states(hmm, ret[1:], volume[1:])
    states[1:boundary] = most_probable_states(hmm, ret[1:boundary], volume[1:boundary])
    states[0] = states[1]
    return replay.best_strategy_by_group(states[replay.decision_bars], n_states)


_build_cached = functools.lru_cache(maxsize=4)(_build)  # each may hold a (D, W, F) window cache


def build_replay(config: TradeReplayConfig | None = None) -> ReplayData:
    """Load or generate the market and precompute features, decisions, strategy PnL and labels.

    Synthetic, CSV, directory and long-file builds are cached: the same config returns the same
    (read-only) ReplayData. DataFrames and dicts of DataFrames are built afresh each call.
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
        config.label_source,
        config.label_costs,
        config.label_states,
        config.features,
    )
    with phase(LABELS):  # trade PnL and labels of every decision (a cached build costs nothing)
        if isinstance(config.data, pd.DataFrame | dict):
            return _build(market, *args)
        return _build_cached(market, *args)
