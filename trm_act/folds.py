"""Walk-forward folds: where each fold trains and tests, and the data file each fold's run reads.

Layout (``plan_folds``). The bars' timestamps, pooled over every instrument, give one calendar of T distinct
times. The first ``train_bars`` times (default T / (K + 1)) only ever train; the rest is cut into K test folds
of equal length, in time order. Fold k tests on times ``[test_start, test_stop)`` and trains on the times
before ``test_start - embargo``: all of them (``expanding``), or the last ``train_bars - embargo`` of them
(``rolling``). So the folds' test spans tile the calendar after the first training span, and every fold
trains on the past only.

Purging and embargo. A training decision at bar t reads bars up to t + max(horizon, label_horizon) (its
trade and its label). It is used only when that whole window ends before ``train_cut = test_start -
embargo``: a decision whose window reaches into the test fold is purged, and the ``embargo`` bars right
before the test fold are read by no training decision at all. The trainer's own split rule does this
(``ReplayData.split_indices``: t + reach < boundary) once the fold's boundary is put at ``train_cut``.

The fold's data file (``FoldSlice``). Each fold's run is an ordinary ``Trainer`` run on its own CSV, which
holds the bars from the fold's first training bar to ``horizon`` bars past its test span (so the last test
decisions' trades can settle) and nothing later. Features, strategy positions and regime-model labels are
all computed from that file, so no statistic of a later bar, and no bar before the training span, reaches
the fold. Each instrument's slice starts on a multiple of the stride, which keeps its decision grid that of
the whole series: the stitched test decisions are exactly the full series' decisions in the test spans.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trm_act.envs import SyntheticMarketConfig, TradeReplayConfig, generate_synthetic_market, load_ohlcv
from trm_act.envs.market import bars_per_year
from trm_act.envs.replay import SYNTHETIC_BARS_PER_YEAR
from trm_act.envs.universe import is_universe, load_universe
from trm_act.files import atomic_write

SCHEMES: tuple[str, ...] = ("expanding", "rolling")
MIN_TEST_DECISIONS = 2
"""Test decisions each fold needs at least (a fold's Sharpe needs two PnL values)."""


@dataclass(frozen=True)
class Market:
    """The validated bars a walk-forward runs on: one instrument or a universe."""

    frames: dict[str, pd.DataFrame]
    """Symbol -> OHLCV frame (``load_ohlcv``'s columns, sorted DatetimeIndex), in sorted symbol order."""
    universe: bool
    """True when the data came in a multi-instrument form (the fold files are then long CSVs)."""
    source: str
    """The data as the user gave it."""
    bars_per_year: float
    """Bars per year of the whole series (a universe: the median over its instruments)."""

    @property
    def times(self) -> list[np.ndarray]:
        """Per instrument, (T_i,) int64 nanoseconds (UTC for timezone-aware data), comparable across instruments."""
        return [_ns(frame.index) for frame in self.frames.values()]

    @property
    def calendar(self) -> np.ndarray:
        """(T,) int64 the distinct bar times of all instruments, sorted: the axis folds are cut on."""
        return np.unique(np.concatenate(self.times))

    @property
    def tz(self) -> Any:
        return pd.DatetimeIndex(next(iter(self.frames.values())).index).tz

    def timestamp(self, ns: int) -> str:
        """ISO 8601 text of a calendar time (with its UTC offset for timezone-aware data)."""
        stamp = pd.Timestamp(int(ns))
        return (stamp.tz_localize("UTC") if self.tz is not None else stamp).isoformat()

    def fingerprint(self) -> str:
        """sha256 of every instrument's symbol, timestamps and OHLCV values: a resume refuses changed data."""
        digest = hashlib.sha256()
        for symbol, frame in self.frames.items():
            digest.update(symbol.encode())
            digest.update(_ns(frame.index).tobytes())
            digest.update(np.ascontiguousarray(frame[list(OHLCV)].to_numpy(dtype=np.float64)).tobytes())
        return digest.hexdigest()


OHLCV = ("open", "high", "low", "close", "volume")


def _ns(index: pd.Index) -> np.ndarray:
    stamps = pd.DatetimeIndex(index)
    if stamps.tz is not None:
        stamps = stamps.tz_convert("UTC").tz_localize(None)
    return stamps.to_numpy(dtype="datetime64[ns]").astype(np.int64)


def load_market(env: TradeReplayConfig) -> Market:
    """The bars of ``env.data``, validated exactly as a training run validates them.

    "synthetic" is generated from ``env.synthetic`` (its true regimes are dropped: a fold's file holds OHLCV
    only). A universe (directory, glob, long file or dict) keeps its instruments; each fold writes them
    into one long CSV.
    """
    data = env.data
    min_bars = env.window + env.horizon + 1
    if isinstance(data, str) and data == "synthetic":
        return Market(
            {"synthetic": synthetic_frame(env.synthetic)}, False, "synthetic", SYNTHETIC_BARS_PER_YEAR
        )
    if is_universe(data):
        universe = load_universe(data, skip_bad_files=env.skip_bad_files, min_bars=min_bars)
        per_year = float(
            np.median([bars_per_year(pd.DatetimeIndex(f.index)) for f in universe.frames.values()])
        )
        source = f"dict of {len(data)} DataFrames" if isinstance(data, dict) else str(data)
        return Market(dict(universe.frames), True, source, per_year)
    if isinstance(data, pd.DataFrame):
        frame, source, symbol = load_ohlcv(data), "DataFrame", "DataFrame"
    else:
        frame, source, symbol = load_ohlcv(data), str(data), Path(str(data)).stem
    return Market({symbol: frame}, False, source, bars_per_year(pd.DatetimeIndex(frame.index)))


def synthetic_frame(config: SyntheticMarketConfig) -> pd.DataFrame:
    """The OHLCV bars of a synthetic market (what ``--data synthetic`` walks forward on)."""
    return generate_synthetic_market(config)[list(OHLCV)].rename_axis("timestamp")


@dataclass(frozen=True)
class FoldSpan:
    """Where fold ``index`` trains and tests, as indices into the calendar (``Market.calendar``)."""

    index: int
    train_first: int
    """First calendar time of the training span (each instrument's slice starts at its stride-aligned bar
    at or before it)."""
    train_cut: int
    """First calendar time no training decision may read: ``test_start - embargo``."""
    test_start: int
    """First calendar time of the test fold."""
    test_stop: int
    """One past the last calendar time of the test fold."""


def plan_folds(
    n_times: int,
    folds: int,
    scheme: str = "expanding",
    embargo: int = 0,
    train_bars: int | None = None,
) -> list[FoldSpan]:
    """Cut a calendar of ``n_times`` times into ``folds`` walk-forward folds (see the module docstring).

    Raises ValueError naming the flag (``--folds``, ``--embargo``, ``--train-bars``, ``--scheme``) and the fix.
    """
    if not (isinstance(folds, int) and folds >= 2):
        raise ValueError(
            f"--folds {folds}: a walk-forward needs at least 2 folds (one train/test split is what "
            "python -m trm_act.train does); use --folds 2 or more"
        )
    if scheme not in SCHEMES:
        raise ValueError(f"--scheme {scheme}: expected one of {', '.join(SCHEMES)}")
    if not (isinstance(embargo, int) and embargo >= 0):
        raise ValueError(f"--embargo {embargo}: expected bars >= 0 (0 = purging only)")
    first_test = n_times // (folds + 1) if train_bars is None else train_bars
    if not (isinstance(first_test, int) and 0 < first_test < n_times):
        raise ValueError(
            f"--train-bars {train_bars}: expected bars between 1 and {n_times - 1} (the data has {n_times} "
            "bars); leave it out for 1/(folds + 1) of the bars"
        )
    test_bars = n_times - first_test
    if test_bars < folds:
        raise ValueError(
            f"--folds {folds}: only {test_bars} bars are left for testing after the first {first_test} "
            f"training bars; use --folds <= {test_bars} or a smaller --train-bars"
        )
    starts = [first_test + (k * test_bars) // folds for k in range(folds + 1)]  # (K+1,) the last is n_times
    shortest = int(np.diff(starts).min())
    if embargo >= shortest:
        raise ValueError(
            f"--embargo {embargo}: larger than a test fold ({shortest} bars with --folds {folds} on {n_times} "
            f"bars); use --embargo < {shortest}"
        )
    if embargo >= first_test:
        raise ValueError(
            f"--embargo {embargo}: leaves fold 0 no training bars (it has {first_test}); use a smaller "
            "--embargo or a larger --train-bars"
        )
    out = []
    window = first_test - embargo  # training span of the rolling scheme
    for k in range(folds):
        cut = starts[k] - embargo
        first = 0 if scheme == "expanding" else max(0, cut - window)
        out.append(FoldSpan(k, first, cut, starts[k], starts[k + 1]))
    return out


@dataclass(frozen=True)
class FoldSlice:
    """The bars of one fold's data file and what its trainer will see in them."""

    span: FoldSpan
    ranges: dict[str, tuple[int, int]]
    """Symbol -> [lo, hi) rows of its frame in the file (instruments with too few bars are left out)."""
    n_bars: int
    """Bars in the file (all instruments)."""
    cut_bars: int
    """Bars of the file before ``train_cut`` (the trainer's boundary: no training decision reads past it)."""
    test_bars: int
    """Bars of the file before ``test_start`` (the boundary of the out-of-sample scoring)."""
    train_decisions: int
    """Training decision points (at the training stride) the trainer draws from."""
    largest_train: int
    """Training decision points of the instrument that has the most (an episode must fit in one)."""
    purged: int
    """Decision points before the test fold dropped because their trade or label window reaches into it."""
    embargoed: int
    """Decision points dropped because their window reaches into the embargo before the test fold."""
    test_decisions: int
    """Out-of-sample decision points (at the evaluation stride) of the test fold."""
    train_start: int
    """ns of the first bar in the file."""
    train_end: int
    """ns of the last bar training may read (the bar before ``train_cut``)."""

    @property
    def train_fraction(self) -> float:
        """``env.test_fraction`` that puts the trainer's boundary at ``train_cut`` (see ``boundary_fraction``)."""
        return boundary_fraction(self.n_bars, self.cut_bars)

    @property
    def test_fraction(self) -> float:
        """``env.test_fraction`` that puts the boundary at ``test_start`` (out-of-sample scoring)."""
        return boundary_fraction(self.n_bars, self.test_bars)


# FoldSlice fields that sum over a fold's instruments.
FOLD_COUNTS = ("n_bars", "cut_bars", "test_bars", "train_decisions", "purged", "embargoed", "test_decisions")


def boundary_fraction(n_bars: int, before: int) -> float:
    """The ``test_fraction`` f whose split boundary is the bar after the first ``before`` of ``n_bars`` bars.

    The replay puts the boundary at pooled bar floor((1 - f) n); f = (n - before - 1/2) / n gives
    (1 - f) n = before + 1/2, whose floor is ``before`` whatever the rounding of f.
    """
    if not 0 < before < n_bars:
        raise ValueError(f"before={before}: expected 0 < before < n_bars={n_bars}")
    return (n_bars - before - 0.5) / n_bars


def _grid_count(first: int, last: int, step: int) -> int:
    """Points first, first + step, ... that are <= last."""
    return 0 if last < first else (last - first) // step + 1


def slice_fold(
    market: Market,
    calendar: np.ndarray,
    span: FoldSpan,
    env: TradeReplayConfig,
    train_stride: int,
) -> FoldSlice:
    """The rows of each instrument in fold ``span``'s data file, and the decision counts its runs will see.

    Each instrument contributes its bars from its stride-aligned bar at or before ``train_first`` to
    ``horizon`` bars past its last bar before ``test_stop``; an instrument with fewer than window + horizon
    + 1 such bars is left out of the fold (``check_slices`` refuses a fold left with none).
    """
    window, horizon, stride = env.window, env.horizon, env.effective_stride
    reach = max(horizon, env.effective_label_horizon)
    need = window + horizon + 1
    first_t = calendar[span.train_first]
    cut_t, test_t = calendar[span.train_cut], calendar[span.test_start]
    stop_t = calendar[span.test_stop] if span.test_stop < len(calendar) else np.iinfo(np.int64).max
    ranges: dict[str, tuple[int, int]] = {}
    totals: Counter[str] = Counter()  # FoldSlice's count fields, summed over instruments
    largest = 0
    starts: list[int] = []
    for (symbol, _), times in zip(market.frames.items(), market.times, strict=True):
        lo = (int(np.searchsorted(times, first_t, side="left")) // stride) * stride
        last = int(np.searchsorted(times, stop_t, side="left")) - 1  # last bar before the next fold
        hi = min(last + horizon, len(times) - 1) + 1
        if hi - lo < need:
            continue
        local = times[lo:hi]
        n = hi - lo
        cut = int(np.searchsorted(local, cut_t, side="left"))
        test = int(np.searchsorted(local, test_t, side="left"))
        ranges[symbol] = (lo, hi)
        starts.append(int(local[0]))
        last_decision = n - 1 - horizon
        # Training grid (train_stride): used when t + reach < cut; purged when t < test <= t + reach.
        used = _grid_count(window, min(last_decision, cut - reach - 1), train_stride)
        before_test = _grid_count(window, min(last_decision, test - 1), train_stride)
        clean = _grid_count(window, min(last_decision, test - reach - 1), train_stride)
        largest = max(largest, used)
        # Out-of-sample grid (the env's stride) from the first grid point at or after the test start.
        first_test = window + max(0, -(-(test - window) // stride)) * stride
        totals.update(
            n_bars=n, cut_bars=cut, test_bars=test, train_decisions=used, purged=before_test - clean,
            embargoed=clean - used, test_decisions=_grid_count(first_test, last_decision, stride),
        )
    counts = {name: totals[name] for name in FOLD_COUNTS}  # zero for a fold no instrument reaches
    return FoldSlice(
        span=span, ranges=ranges, largest_train=largest, **counts,
        train_start=min(starts, default=int(first_t)), train_end=int(calendar[span.train_cut - 1]),
    )


def check_slices(slices: list[FoldSlice], env: TradeReplayConfig, folds: int, source: str) -> None:
    """Every fold can train (an episode fits) and test (``MIN_TEST_DECISIONS``); else a one-line error."""
    need = 2 if env.episode_length is None else env.episode_length
    for s in slices:
        if not s.ranges:
            raise ValueError(
                f"--folds {folds}: {source} has too few bars for {folds} folds: no instrument has the "
                f"{env.window + env.horizon + 1} bars (window + horizon + 1) one decision needs in fold "
                f"{s.span.index}; use fewer --folds or more bars"
            )
        if s.largest_train < need:
            raise ValueError(
                f"--folds {folds}: {source} has too few bars for {folds} folds: fold {s.span.index} trains on "
                f"{s.largest_train} decision point(s) after purging and embargo, but an episode needs {need} "
                "(env.episode_length); use fewer --folds, a larger --train-bars, or more bars"
            )
        if s.test_decisions < MIN_TEST_DECISIONS:
            raise ValueError(
                f"--folds {folds}: {source} has too few bars for {folds} folds: fold {s.span.index} tests on "
                f"{s.test_decisions} decision(s) (needs {MIN_TEST_DECISIONS}); use fewer --folds or more bars"
            )


def fold_frame(market: Market, fold: FoldSlice) -> pd.DataFrame:
    """The fold's bars as one frame: OHLCV indexed by timestamp, plus a ``symbol`` column for a universe."""
    parts = []
    for symbol, (lo, hi) in fold.ranges.items():
        part = market.frames[symbol].iloc[lo:hi][list(OHLCV)]
        if market.universe:
            part = part.assign(symbol=symbol)[["symbol", *OHLCV]]
        parts.append(part)
    frame = pd.concat(parts) if len(parts) > 1 else parts[0]
    return frame.rename_axis("timestamp")


def write_fold_csv(market: Market, fold: FoldSlice, path: Path) -> Path:
    """Atomically write the fold's data file (floats in round-trip precision); returns ``path``."""
    frame = fold_frame(market, fold)
    buffer = io.StringIO()
    frame.to_csv(buffer, float_format="%.17g")
    text = buffer.getvalue().encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda handle: handle.write(text))


def fold_env(env: TradeReplayConfig, data: Path, fraction: float, **changes: Any) -> TradeReplayConfig:
    """``env`` reading the fold's file with its boundary set by ``fraction`` (``FoldSlice.*_fraction``)."""
    return dataclasses.replace(env, data=str(data), test_fraction=fraction, **changes)
