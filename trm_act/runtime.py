"""Bars in, decisions out: what :class:`trm_act.Policy` (torch) and ``trm_act.onnx.OnnxPolicy`` share.

Both are a :class:`DecisionRuntime` around an engine that maps observation windows (and beliefs) to
halted answers; everything else lives here and imports no torch: loading and validating bars (the
loaders training uses), the features (``compute_features`` for a whole frame, :mod:`.stream_features`
bar by bar), the decision cadence, walking a belief through an instrument's decisions, the output frame
and the streams.

Decision cadence. A window holds the features of bars t-window+1..t, and bar 0 has no return, so the
first bar with a full window is t = window (the first decision point of training's replay too).

- A fresh-carry model decides at every bar from t = window on: nothing but the window is read.
- A belief model decides at t = window, window + stride, window + 2 stride, ... (stride = the env's
  ``stride``, ``horizon`` by default), counted from the first bar given: the belief is revised once per
  decision, and it was trained (and is evaluated) at that cadence; updating it every bar would feed it
  evidence at ``stride`` times the rate it learned. The belief starts from the model's initial belief at
  the first decision. Give a belief model the instrument's history from the same first bar each time:
  the decisions at bar t then do not depend on what follows t (causal), and a stream fed the same bars
  makes the same decisions.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from trm_act.envs import STRATEGIES
from trm_act.envs.features import FEATURE_NAMES, compute_features, feature_columns
from trm_act.envs.market import SMALLEST_PRICE, load_ohlcv
from trm_act.envs.universe import is_universe, load_universe
from trm_act.stream_features import FeatureState, FeatureStream

__all__ = [
    "STREAM_FORMAT",
    "Decision",
    "DecisionRuntime",
    "Engine",
    "Outcome",
    "PolicyStream",
    "StreamBatch",
    "decisions_frame",
    "env_section",
]

STREAM_FORMAT = "trm_act.stream/1"
"""Written into every stream ``state_dict``; a state of another format is refused."""
DECIDE_BATCH_SIZE = 512
"""Windows per engine call in ``decide`` (fresh carry); the answers do not depend on it."""
PROBABILITY_PREFIX = "p_"


class Outcome(NamedTuple):
    """What an engine returns for B observations: the answer at the reasoning step each one halted."""

    logits: np.ndarray
    """(B, C) float32 task logits."""
    steps: np.ndarray
    """(B,) int64 reasoning steps taken."""
    halt_logits: np.ndarray
    """(B,) float32 halt logit of the step that halted."""
    belief: np.ndarray | None
    """(B, D) float32 belief after the decision (belief models), else None."""


class Engine(Protocol):
    """Observations (B, window, n_features) float32 and beliefs (B, D) -> :class:`Outcome`.

    Each row's answer must not depend on the other rows of the call (the torch engine sees to it), so a
    stream of one instrument decides exactly as a batch of thousands.
    """

    window: int
    n_features: int
    has_belief: bool
    max_steps: int

    def initial_belief(self) -> np.ndarray | None:
        """(D,) float32 belief before an instrument's first decision (None without a belief)."""

    def run(self, obs: np.ndarray, belief: np.ndarray | None) -> Outcome:
        """Halt each row by the model's halting rule and return its answer."""


@dataclass(frozen=True)
class Decision:
    """One decision of a stream (a row of :meth:`DecisionRuntime.decide`)."""

    timestamp: pd.Timestamp
    """The decision bar's timestamp: the decision uses bars up to and including it."""
    symbol: str | None
    """The instrument (None for a stream opened without one)."""
    strategy: str
    """The chosen strategy's name."""
    action: int
    """The chosen strategy's index (into ``trm_act.envs.STRATEGIES``)."""
    steps: int
    """Reasoning steps taken before halting."""
    probabilities: dict[str, float]
    """Softmax of the task logits, by strategy name."""
    halt_logit: float
    """The halt logit of the step that halted (> 0: the model chose to stop)."""

    def as_row(self) -> dict[str, Any]:
        """The columns of ``decide``'s frame: strategy, action, steps, p_<strategy>..., halt_logit."""
        probabilities = {PROBABILITY_PREFIX + name: p for name, p in self.probabilities.items()}
        return (
            {"strategy": self.strategy, "action": self.action, "steps": self.steps}
            | probabilities
            | {"halt_logit": self.halt_logit}
        )


def env_section(env: Any) -> dict[str, Any]:
    """The run's env options as a JSON-safe dict (a ``TradeReplayConfig`` or a checkpoint's ``[env]``)."""
    if dataclasses.is_dataclass(env) and not isinstance(env, type):
        env = {f.name: getattr(env, f.name) for f in dataclasses.fields(env)}
    if not isinstance(env, Mapping):
        raise ValueError(
            f"env={env!r:.80}: expected a TradeReplayConfig or a dict of its fields (a run's [env])"
        )
    out = dict(env)
    synthetic = out.get("synthetic")
    if dataclasses.is_dataclass(synthetic) and not isinstance(synthetic, type):
        out["synthetic"] = dataclasses.asdict(synthetic)
    if not isinstance(out.get("data"), (str, type(None))):
        out["data"] = str(out["data"]) if isinstance(out["data"], Path) else f"<{type(out['data']).__name__}>"
    for name in ("window", "horizon"):
        value = out.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"env.{name}={value!r}: expected an int >= 1; pass the run's env options")
    return json.loads(json.dumps(out))  # a plain copy; fails loudly on anything that is not JSON


def decision_stride(env: Mapping[str, Any], has_belief: bool) -> int:
    """Bars between decisions: 1 with a fresh carry, the env's stride (horizon by default) with a belief."""
    if not has_belief:
        return 1
    stride = env.get("stride")
    return int(env["horizon"] if stride is None else stride)


def softmax(logits: np.ndarray) -> np.ndarray:
    """(B, C) float64 probabilities; the sum runs column by column, so a row's value never depends on B."""
    z = logits.astype(np.float64)  # (B, C)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)  # (B, C)
    total = e[:, 0].copy()  # (B,)
    for k in range(1, e.shape[1]):
        total += e[:, k]
    return e / total[:, None]


def decisions_frame(decisions: Iterable[Decision]) -> pd.DataFrame:
    """Stream decisions as the frame ``decide`` returns (a ``symbol`` index level when they have symbols)."""
    decisions = list(decisions)
    symbols = [d.symbol for d in decisions]
    universe = bool(decisions) and all(s is not None for s in symbols)
    stamps = pd.DatetimeIndex([d.timestamp for d in decisions], name="timestamp")
    index: pd.Index = (
        pd.MultiIndex.from_arrays([pd.Index(symbols, name="symbol"), stamps]) if universe else stamps
    )
    return pd.DataFrame([d.as_row() for d in decisions], index=index, columns=_columns())


def _columns() -> list[str]:
    return ["strategy", "action", "steps", *(PROBABILITY_PREFIX + s for s in STRATEGIES), "halt_logit"]


def _frame(
    stamps: pd.DatetimeIndex,
    logits: np.ndarray,
    steps: np.ndarray,
    halt: np.ndarray,
    symbols: list[str] | None,
) -> pd.DataFrame:
    """decide's output for N decisions: logits (N, C) float32, steps (N,), halt (N,) float32."""
    actions = logits.argmax(axis=1).astype(np.int64)  # (N,) the first maximum, as torch.argmax
    probabilities = softmax(logits)  # (N, C)
    columns: dict[str, Any] = {
        "strategy": np.asarray(STRATEGIES, dtype=object)[actions],
        "action": actions,
        "steps": steps.astype(np.int64),
    }
    for k, name in enumerate(STRATEGIES):
        columns[PROBABILITY_PREFIX + name] = probabilities[:, k]
    columns["halt_logit"] = halt.astype(np.float64)
    stamps = pd.DatetimeIndex(stamps, name="timestamp")
    index: pd.Index = (
        stamps if symbols is None else pd.MultiIndex.from_arrays([pd.Index(symbols, name="symbol"), stamps])
    )
    return pd.DataFrame(columns, index=index, columns=_columns())


def _check_features(features: np.ndarray, source: str) -> None:
    bad = np.argwhere(~np.isfinite(features))  # (K, 2)
    if bad.size:
        row, column = (int(v) for v in bad[0])
        raise ValueError(
            f"{source}: row {row}: feature {FEATURE_NAMES[column]!r} is {features[row, column]}; the prices "
            "around that row are too extreme for float64 arithmetic; fix or drop those bars"
        )


class _Plan(NamedTuple):
    """One instrument's decisions in ``decide``: decision i reads ``windows[starts[i]]``."""

    symbol: str
    stamps: pd.DatetimeIndex  # (N,) the decision bars' timestamps
    windows: np.ndarray  # (T-W+1, W, F) float32 view: row j holds the features of bars j..j+W-1
    starts: np.ndarray  # (N,) int64 first bar of each decision's window


class DecisionRuntime:
    """Decide with an engine: ``decide(frame)`` for a whole history, ``stream()`` bar by bar.

    Args:
        engine: maps windows (and beliefs) to halted answers (:class:`Engine`).
        env: the run's env options (``TradeReplayConfig`` or its dict): window, horizon, stride, and the
            synthetic market's options for ``decide("synthetic")``.
    """

    def __init__(self, engine: Engine, env: Any) -> None:
        self.engine = engine
        self.env = env_section(env)
        if self.env["window"] != engine.window:
            raise ValueError(
                f"env.window={self.env['window']} but the model reads windows of {engine.window} bars; pass "
                "the env options the model was trained with"
            )
        feature_set = self.env.get("features", "all")  # runs saved before env.features had all of them
        self.columns = feature_columns(feature_set)
        """The columns of compute_features' output the model reads (env.features)."""
        if engine.n_features != len(self.columns):
            raise ValueError(
                f"the model reads {engine.n_features} features per bar but env.features={feature_set!r} has "
                f"{len(self.columns)}; pass the env options the model was trained with"
            )
        self.window = engine.window
        self.has_belief = engine.has_belief
        self.max_steps = engine.max_steps
        """The most reasoning steps a decision takes."""
        self.stride = decision_stride(self.env, self.has_belief)
        """Bars between decisions (1 with a fresh carry; see the module docstring)."""
        self.strategies: tuple[str, ...] = STRATEGIES

    def _repr_fields(self) -> list[str]:
        """The fields the repr names first: where the engine comes from (the subclasses say)."""
        return []

    def __repr__(self) -> str:
        carry = "belief" if self.has_belief else "fresh"
        fields = [
            *self._repr_fields(),
            f"window={self.window}",
            f"carry={carry}",
            f"decides every {self.stride} bar(s)",
            f"max_steps={self.max_steps}",
        ]
        return f"{type(self).__name__}({', '.join(fields)})"

    # ------------------------------------------------------------------ whole histories

    def decision_bars(self, n_bars: int) -> np.ndarray:
        """(N,) int64 positions of the decision bars among ``n_bars`` bars (window, window + stride, ...)."""
        return np.arange(self.window, n_bars, self.stride, dtype=np.int64)

    def decide(self, data: Any) -> pd.DataFrame:
        """Decisions on every decision bar of ``data``.

        ``data``: what training accepts as ``--data``: an OHLCV CSV path or DataFrame (one instrument), a
        directory or glob of CSV/Parquet files, a long CSV/Parquet with a Symbol column, a dict of
        DataFrames (a universe), or "synthetic" (the run's synthetic market). Returns a DataFrame indexed
        by the decision bar's timestamp (``(symbol, timestamp)`` for a universe) with columns strategy,
        action, steps, ``p_<strategy>`` for each strategy, and halt_logit. Too few bars for a decision
        give no rows; the reason is in ``frame.attrs["note"]`` and in a warning.
        """
        frames, universe = self._load(data)
        plans = []
        notes = []
        for symbol, frame in frames.items():
            bars = self.decision_bars(len(frame))
            if not bars.size:
                source = frame.attrs.get("source", symbol)
                notes.append(
                    f"{source}: {len(frame)} bars, but a decision needs window + 1 = {self.window + 1} (bar 0 "
                    "has no return); no decisions"
                )
                continue
            features = compute_features(
                *(frame[k].to_numpy(dtype=np.float64) for k in ("open", "high", "low", "close", "volume"))
            )  # (T, all features)
            _check_features(features, frame.attrs.get("source", symbol))
            if len(self.columns) != features.shape[1]:
                features = np.ascontiguousarray(features[:, self.columns])  # (T, F) the env's feature set
            windows = sliding_window_view(features, (self.window, features.shape[1]))[
                :, 0
            ]  # (T-W+1, W, F) a view
            plans.append(
                _Plan(symbol, pd.DatetimeIndex(frame.index)[bars], windows, bars - (self.window - 1))
            )
        walk = self._walk_beliefs if self.has_belief else self._walk_windows
        parts = [walk(plans)] if plans else []
        symbols = None
        if universe:
            symbols = [plan.symbol for plan in plans for _ in range(len(plan.stamps))]
        if parts:
            logits, steps, halt = parts[0]
            stamps = plans[0].stamps.append([plan.stamps for plan in plans[1:]])
            if not isinstance(stamps, pd.DatetimeIndex):  # instruments in different time zones: one axis, UTC
                stamps = pd.DatetimeIndex(pd.to_datetime(stamps, utc=True))
            out = _frame(stamps, logits, steps, halt, symbols)
        else:
            out = _frame(
                pd.DatetimeIndex([]),
                np.zeros((0, len(STRATEGIES)), np.float32),
                np.zeros(0, np.int64),
                np.zeros(0, np.float32),
                [] if universe else None,
            )
        if notes:
            note = "; ".join(notes)
            out.attrs["note"] = note
            warnings.warn(note, UserWarning, stacklevel=2)
        return out

    def _load(self, data: Any) -> tuple[dict[str, pd.DataFrame], bool]:
        """{symbol: validated OHLCV frame} and whether ``data`` is a universe, with training's loaders."""
        if isinstance(data, str) and data == "synthetic":
            from trm_act.envs import TradeReplayConfig, generate_synthetic_market

            config = TradeReplayConfig(data="synthetic", synthetic=self.env.get("synthetic") or {}).synthetic
            frame = generate_synthetic_market(config)
            return {"synthetic": load_ohlcv(frame.drop(columns="regime"), name="synthetic")}, False
        if isinstance(data, pd.DataFrame):
            return {"DataFrame": load_ohlcv(data)}, False
        if isinstance(data, (dict, str, Path)) and is_universe(data):
            return dict(load_universe(data, min_bars=1).frames), True
        if isinstance(data, (str, Path)):
            return {Path(data).stem: load_ohlcv(data)}, False
        raise ValueError(
            f"data={type(data).__name__}: expected an OHLCV CSV path or DataFrame, a directory or glob of CSVs, "
            "a long CSV/Parquet with a Symbol column, a dict of DataFrames, or 'synthetic'"
        )

    def _walk_windows(self, plans: list[_Plan]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fresh carry: every decision on its own, in batches (each batch's windows gathered as it runs)."""
        n = sum(len(plan.starts) for plan in plans)
        logits = np.zeros((n, len(STRATEGIES)), np.float32)  # (N, C)
        steps = np.zeros(n, np.int64)  # (N,)
        halt = np.zeros(n, np.float32)  # (N,)
        row = 0
        for plan in plans:
            for lo in range(0, len(plan.starts), DECIDE_BATCH_SIZE):
                obs = plan.windows[plan.starts[lo : lo + DECIDE_BATCH_SIZE]]  # (B, W, F) a fresh copy
                out = self.engine.run(obs, None)
                rows = slice(row, row + len(obs))
                logits[rows], steps[rows], halt[rows] = out.logits, out.steps, out.halt_logits
                row += len(obs)
        return logits, steps, halt

    def _walk_beliefs(self, plans: list[_Plan]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Belief carry: each instrument's decisions in time order from its initial belief; the
        instruments walk side by side (one engine call per decision position)."""
        lengths = np.array([len(plan.starts) for plan in plans])  # (K,)
        offsets = np.concatenate(([0], np.cumsum(lengths)))  # (K+1,)
        n = int(offsets[-1])
        logits = np.zeros((n, len(STRATEGIES)), np.float32)  # (N, C)
        steps = np.zeros(n, np.int64)  # (N,)
        halt = np.zeros(n, np.float32)  # (N,)
        belief = np.tile(self.engine.initial_belief(), (len(plans), 1))  # (K, D)
        for p in range(int(lengths.max())):
            alive = np.flatnonzero(lengths > p)  # (A,) instruments with a p-th decision
            obs = np.stack([plans[k].windows[plans[k].starts[p]] for k in alive])  # (A, W, F)
            out = self.engine.run(obs, belief[alive])
            rows = offsets[alive] + p  # (A,)
            logits[rows], steps[rows], halt[rows] = out.logits, out.steps, out.halt_logits
            belief[alive] = out.belief
        return logits, steps, halt

    # ------------------------------------------------------------------ streams

    def stream(self, symbol: str | None = None) -> PolicyStream:
        """A stream of one instrument: ``update(bar)`` returns a :class:`Decision` on each decision bar."""
        return PolicyStream(self, symbol)

    def stream_batch(self, symbols: Sequence[str]) -> StreamBatch:
        """Streams of many instruments that share one engine call per bar (``update({symbol: bar})``)."""
        return StreamBatch(self, symbols)

    def fingerprint(self) -> dict[str, Any]:
        """What a stream's state must agree on with the policy that resumes it."""
        return {
            "window": self.window,
            "n_features": self.engine.n_features,
            "stride": self.stride,
            "belief": self.has_belief,
            "strategies": list(self.strategies),
        }


# ---------------------------------------------------------------------- bars


def _normalise(name: object) -> str:
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


_BAR_KEYS = {
    "open": "open",
    "high": "high",
    "low": "low",
    "close": "close",
    "volume": "volume",
    "vol": "volume",
    "adjclose": "adj_close",
    "adjustedclose": "adj_close",
    "timestamp": "timestamp",
    "datetime": "timestamp",
    "date": "date",
    "time": "time",
    "ts": "timestamp",
}


class _Bar(NamedTuple):
    timestamp: pd.Timestamp
    open: float
    high: float
    low: float
    close: float
    volume: float


def parse_bar(bar: Any, where: str) -> _Bar:
    """A validated bar from a dict or Series; ValueError (one line, naming ``where``) on any problem.

    The rules are training's (``trm_act.envs.market``): open/high/low/close finite and > 0, high the bar's
    maximum and low its minimum, volume finite and >= 0 (0 when absent), Adj Close scaling the prices.
    """
    if isinstance(bar, pd.Series):
        items, name = bar.to_dict(), bar.name
    elif isinstance(bar, Mapping):
        items, name = dict(bar), None
    else:
        raise ValueError(
            f"{where}: bar={type(bar).__name__}: expected a dict or pandas Series with open, high, low, close, "
            "volume and a timestamp"
        )
    found: dict[str, Any] = {}
    for key, value in items.items():
        canonical = _BAR_KEYS.get(_normalise(key))
        if canonical is not None:
            found.setdefault(canonical, value)
    if "timestamp" not in found:
        if "date" in found and "time" in found:
            found["timestamp"] = f"{found['date']} {found['time']}"
        elif "date" in found or "time" in found:
            found["timestamp"] = found.get("date", found.get("time"))
        elif name is not None:
            found["timestamp"] = name  # a row of frame.iterrows(): the index is the timestamp
    missing = [k for k in ("timestamp", "open", "high", "low", "close") if k not in found]
    if missing:
        raise ValueError(
            f"{where}: missing {missing[0]!r} (the bar has {sorted(map(str, items))}); pass open, high, low, "
            "close, volume and a timestamp"
        )
    raw_stamp = found["timestamp"]
    try:
        if isinstance(raw_stamp, (int, float, np.integer, np.floating)) and not isinstance(raw_stamp, bool):
            top = abs(
                float(raw_stamp)
            )  # Unix epoch: its magnitude tells the unit, as training's loader reads it
            stamp = pd.Timestamp(raw_stamp, unit="s" if top < 1e11 else "ms" if top < 1e14 else "ns")
        else:
            stamp = pd.Timestamp(raw_stamp)
    except (ValueError, TypeError, OverflowError):
        stamp = pd.NaT
    if stamp is pd.NaT:
        raise ValueError(
            f"{where}: cannot read timestamp {found['timestamp']!r}; pass a date/time or pd.Timestamp"
        )
    values = {}
    for key in ("open", "high", "low", "close", "volume", "adj_close"):
        if key not in found:
            continue
        raw = found[key]
        try:
            value = float(raw)
        except (TypeError, ValueError, OverflowError):
            value = math.nan
        price = key != "volume"
        if not math.isfinite(value) or (price and value < SMALLEST_PRICE) or value < 0:
            rule = "a finite price > 0" if price else "a finite volume >= 0"
            raise ValueError(
                f"{where} ({stamp}): {key}={raw!r}; each bar needs {rule} (fill or drop the bar)"
            )
        values[key] = value
    o, h, low, c = values["open"], values["high"], values["low"], values["close"]
    if h < max(o, c) or low > min(o, c):
        raise ValueError(
            f"{where} ({stamp}): open={o}, high={h}, low={low}, close={c}; high must be the bar's maximum and "
            "low its minimum"
        )
    if "adj_close" in values:  # validate_ohlcv: prices scaled by adj_close / close
        factor = values["adj_close"] / c
        o, h, low, c = o * factor, h * factor, low * factor, c * factor
        if not all(math.isfinite(v) and v >= SMALLEST_PRICE for v in (o, h, low, c)):
            raise ValueError(
                f"{where} ({stamp}): adj_close={values['adj_close']} scales the prices out of range"
            )
    return _Bar(stamp, o, h, low, c, values.get("volume", 0.0))


# ---------------------------------------------------------------------- streams


class _Pending(NamedTuple):
    """A validated bar's effect on a stream, not yet committed."""

    bar: _Bar
    features: FeatureState
    window: np.ndarray  # (W, F) float32 the last window bars' features
    decides: bool


class PolicyStream:
    """Decisions of one instrument, bar by bar; the same decisions as ``decide`` on the same bars.

    It keeps the exact feature recursions (:class:`~trm_act.stream_features.FeatureStream`), the last
    ``window`` feature rows and, for a belief model, the belief: O(1) work and memory per bar whatever the
    length of the history. A bar that fails validation raises ValueError and changes nothing.
    """

    def __init__(self, runtime: DecisionRuntime, symbol: str | None = None) -> None:
        if symbol is not None and not isinstance(symbol, str):
            raise ValueError(f"symbol={symbol!r}: expected a str (the instrument's name) or None")
        self.runtime = runtime
        self.symbol = symbol
        self._features = FeatureStream()
        self._window = np.zeros((runtime.window, runtime.engine.n_features), np.float32)  # (W, F)
        self._last: pd.Timestamp | None = None
        self._belief = runtime.engine.initial_belief()  # (D,) or None

    @property
    def bars(self) -> int:
        """Bars seen so far."""
        return self._features.state.bars

    @property
    def belief(self) -> np.ndarray | None:
        """(D,) float32 copy of the belief the next decision starts from (None without a belief)."""
        return None if self._belief is None else self._belief.copy()

    def update(self, bar: Any) -> Decision | None:
        """Take one bar (dict or Series: open, high, low, close, volume and a timestamp, or a Series named
        by its timestamp); return the decision when it is a decision bar, else None."""
        pending = self._prepare(bar)
        outcome = None
        if pending.decides:
            belief = None if self._belief is None else self._belief[None]  # (1, D)
            outcome = self.runtime.engine.run(pending.window[None], belief)
        return self._commit(pending, outcome, 0)

    def _where(self) -> str:
        return f"bar {self.bars}" + ("" if self.symbol is None else f" of {self.symbol!r}")

    def _prepare(self, bar: Any) -> _Pending:
        parsed = parse_bar(bar, self._where())
        if self._last is not None:
            try:
                later = parsed.timestamp > self._last
            except TypeError:  # naive against timezone-aware
                raise ValueError(
                    f"{self._where()}: timestamp {parsed.timestamp} and the previous bar's {self._last} are not "
                    "comparable (one has a time zone); give every bar the same kind of timestamp"
                ) from None
            if not later:
                raise ValueError(
                    f"{self._where()}: timestamp {parsed.timestamp} is not after the previous bar's {self._last}; "
                    "feed bars once each, in time order"
                )
        row, state = self._features.advance(parsed.open, parsed.high, parsed.low, parsed.close, parsed.volume)
        if not np.isfinite(row).all():
            name = FEATURE_NAMES[int(np.flatnonzero(~np.isfinite(row))[0])]
            raise ValueError(
                f"{self._where()} ({parsed.timestamp}): feature {name!r} is not finite; the prices are too "
                "extreme for float64 arithmetic; fix or drop the bar"
            )
        window = np.empty_like(self._window)  # (W, F)
        window[:-1] = self._window[1:]
        window[-1] = row[self.runtime.columns]  # the env's feature set
        t = self.bars  # this bar's position in the stream
        decides = t >= self.runtime.window and (t - self.runtime.window) % self.runtime.stride == 0
        return _Pending(parsed, state, window, decides)

    def _commit(self, pending: _Pending, outcome: Outcome | None, row: int) -> Decision | None:
        self._features.state = pending.features
        self._window = pending.window
        self._last = pending.bar.timestamp
        if outcome is None:
            return None
        if outcome.belief is not None:
            self._belief = outcome.belief[row].copy()
        logits = outcome.logits[row : row + 1]  # (1, C)
        action = int(logits.argmax(axis=1)[0])
        probabilities = softmax(logits)[0]  # (C,)
        return Decision(
            timestamp=pending.bar.timestamp,
            symbol=self.symbol,
            strategy=self.runtime.strategies[action],
            action=action,
            steps=int(outcome.steps[row]),
            probabilities={
                name: float(p) for name, p in zip(self.runtime.strategies, probabilities, strict=True)
            },
            halt_logit=float(outcome.halt_logits[row]),
        )

    def state_dict(self) -> dict[str, Any]:
        """Everything the stream needs to go on, JSON-safe (``json.dumps`` it) and exact."""
        return {
            "format": STREAM_FORMAT,
            "policy": self.runtime.fingerprint(),
            "symbol": self.symbol,
            "last_timestamp": None if self._last is None else self._last.isoformat(),
            "features": self._features.state.to_dict(),
            "window": self._window.astype(np.float64).tolist(),
            "belief": None if self._belief is None else self._belief.astype(np.float64).tolist(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state_dict()`` (of a stream of the same policy); ValueError when it does not fit,
        and then the stream is unchanged."""
        if not isinstance(state, Mapping) or state.get("format") != STREAM_FORMAT:
            found = state.get("format") if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(
                f"state format={found!r}: expected {STREAM_FORMAT!r}; pass what PolicyStream.state_dict() returned"
            )
        if state.get("policy") != self.runtime.fingerprint():
            raise ValueError(
                f"state policy={state.get('policy')!r}: this stream's policy is {self.runtime.fingerprint()}; load "
                "the state into a stream of the policy that wrote it"
            )
        features = FeatureState.from_dict(dict(state["features"]))
        window = np.asarray(state["window"], dtype=np.float64)
        if window.shape != self._window.shape:
            raise ValueError(f"state window has shape {window.shape}, expected {self._window.shape}")
        belief = None
        if self._belief is not None:
            belief = np.asarray(state["belief"], dtype=np.float64)
            if belief.shape != self._belief.shape:
                raise ValueError(f"state belief has shape {belief.shape}, expected {self._belief.shape}")
            belief = belief.astype(np.float32)
        symbol = state.get("symbol")
        if symbol != self.symbol:
            raise ValueError(
                f"state symbol={symbol!r}: this stream is {self.symbol!r}; open the stream with "
                f"policy.stream({symbol!r})"
            )
        last = state.get("last_timestamp")
        self._features.state = features
        self._window = window.astype(np.float32)
        self._belief = belief
        self._last = None if last is None else pd.Timestamp(last)


class StreamBatch:
    """Streams of many instruments; each ``update({symbol: bar})`` makes one engine call for all the
    instruments that decide on that bar. Its decisions equal each instrument's own stream's."""

    def __init__(self, runtime: DecisionRuntime, symbols: Sequence[str]) -> None:
        symbols = list(symbols)
        if not symbols or len(set(symbols)) != len(symbols):
            raise ValueError(f"symbols={symbols!r:.80}: expected distinct instrument names")
        self.runtime = runtime
        self.streams = {symbol: PolicyStream(runtime, symbol) for symbol in symbols}

    def update(self, bars: Mapping[str, Any]) -> dict[str, Decision]:
        """Feed one bar to each instrument in ``bars``; returns the decisions made, by symbol. Every bar is
        validated first: one bad bar raises ValueError and no stream moves."""
        unknown = [s for s in bars if s not in self.streams]
        if unknown:
            raise ValueError(
                f"bars for unknown symbol {unknown[0]!r}; this batch streams {list(self.streams)[:5]}..."
            )
        pending = {symbol: self.streams[symbol]._prepare(bar) for symbol, bar in bars.items()}
        deciding = [symbol for symbol, p in pending.items() if p.decides]
        outcome = None
        if deciding:
            obs = np.stack([pending[s].window for s in deciding])  # (A, W, F)
            belief = None
            if self.runtime.has_belief:
                belief = np.stack([self.streams[s]._belief for s in deciding])  # (A, D)
            outcome = self.runtime.engine.run(obs, belief)
        rows = {symbol: i for i, symbol in enumerate(deciding)}
        out = {}
        for symbol, p in pending.items():
            decision = self.streams[symbol]._commit(p, outcome if p.decides else None, rows.get(symbol, 0))
            if decision is not None:
                out[symbol] = decision
        return out

    def state_dict(self) -> dict[str, Any]:
        return {symbol: stream.state_dict() for symbol, stream in self.streams.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for symbol, stream in self.streams.items():
            stream.load_state_dict(state[symbol])
