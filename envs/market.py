"""OHLCV loading and validation: a CSV path or a pandas DataFrame in, a clean frame out.

Column names are matched case-insensitively, ignoring spaces, dots, dashes and underscores, so
``Date``, ``timestamp``, ``Adj Close``, ``adj_close`` all work. Every problem raises ValueError
naming the source (file name or "DataFrame"), the column as the user spelled it, the row, and a fix.
Rows are counted from 0 over the data rows (as ``df.iloc`` counts them); for a CSV the file line is
given too, assuming a one-line header and no blank lines.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

PRICE_COLUMNS = ("open", "high", "low", "close")
OHLCV_COLUMNS = (*PRICE_COLUMNS, "volume")

# Canonical name -> accepted spellings after normalisation (lower case, only letters and digits).
_ALIASES: dict[str, tuple[str, ...]] = {
    "timestamp": ("timestamp", "datetime", "date", "time", "ts"),
    "open": ("open",),
    "high": ("high",),
    "low": ("low",),
    "close": ("close",),
    "adj_close": ("adjclose", "adjustedclose"),
    "volume": ("volume", "vol"),
}
_SPELLINGS = {
    "timestamp": "Date, Time, Datetime, Timestamp (or a DatetimeIndex)",
    "open": "Open",
    "high": "High",
    "low": "Low",
    "close": "Close",
}
_DAYS_PER_YEAR = 365.2425


def _normalise(name: object) -> str:
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


class _Reporter:
    """Formats errors as '<source>: column '<col>' row <i> (line <l>): <problem>; <fix>'."""

    def __init__(self, source: str, is_file: bool) -> None:
        self.source = source
        self.is_file = is_file

    def where(self, column: str | None = None, row: int | None = None) -> str:
        parts = [self.source]
        if column is not None:
            parts.append(f"column {column!r}")
        if row is not None:
            parts.append(f"row {row}" + (f" (line {row + 2})" if self.is_file else ""))
        return ": ".join([parts[0], " ".join(parts[1:])]) if len(parts) > 1 else parts[0]

    def error(self, problem: str, fix: str, column: str | None = None, row: int | None = None) -> ValueError:
        return ValueError(f"{self.where(column, row)}: {problem}; {fix}")


def _find_columns(frame: pd.DataFrame, report: _Reporter) -> dict[str, str]:
    """Map canonical names to the frame's own column names; raise on duplicates."""
    found: dict[str, str] = {}
    for column in frame.columns:
        key = _normalise(column)
        for canonical, spellings in _ALIASES.items():
            if key in spellings:
                if canonical in found and canonical != "timestamp":
                    raise report.error(
                        f"columns {found[canonical]!r} and {column!r} both mean {canonical!r}",
                        "drop one of them",
                    )
                # Separate Date and Time columns (as in MetaTrader exports) are joined below.
                found.setdefault(canonical, str(column))
                if canonical == "timestamp" and key == "time" and _normalise(found[canonical]) == "date":
                    found["time_of_day"] = str(column)
    return found


def _parse_timestamps(frame: pd.DataFrame, columns: dict[str, str], report: _Reporter) -> pd.DatetimeIndex:
    if "timestamp" not in columns:
        if isinstance(frame.index, pd.DatetimeIndex):
            raw, name = frame.index.to_series(), str(frame.index.name or "index")
        elif frame.index.name is not None and _normalise(frame.index.name) in _ALIASES["timestamp"]:
            raw, name = frame.index.to_series(), str(frame.index.name)
        else:
            raise report.error(
                f"missing column 'date' (accepted, any case: {_SPELLINGS['timestamp']}); "
                f"found columns {[str(c) for c in frame.columns]}",
                "add a timestamp column or set a DatetimeIndex",
            )
    else:
        name = columns["timestamp"]
        raw = frame[name]
        if "time_of_day" in columns:
            raw = raw.astype(str) + " " + frame[columns["time_of_day"]].astype(str)
    raw = raw.reset_index(drop=True)
    if isinstance(raw.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(raw):
        parsed = raw
    elif pd.api.types.is_numeric_dtype(raw):  # Unix epoch; its magnitude tells the unit
        top = float(np.nanmax(np.abs(raw.to_numpy(dtype=np.float64)))) if raw.notna().any() else 0.0
        unit = "s" if top < 1e11 else "ms" if top < 1e14 else "ns"
        parsed = pd.to_datetime(raw, errors="coerce", unit=unit)
    else:
        with warnings.catch_warnings():  # "could not infer format": we check every row below anyway
            warnings.simplefilter("ignore", UserWarning)
            parsed = pd.to_datetime(raw, errors="coerce")
            if parsed.isna().any():  # formats that vary between rows need the (slower) mixed parser
                parsed = pd.to_datetime(raw, errors="coerce", format="mixed")
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if bad.size:
        i = int(bad[0])
        raise report.error(
            f"cannot parse timestamp {raw.iloc[i]!r}", "fix or drop that row", column=name, row=i
        )
    stamps = pd.DatetimeIndex(parsed)
    values = stamps.asi8  # (T,) int64 in the index's unit; comparisons are exact
    step = np.diff(values)  # (T-1,)
    dup = np.flatnonzero(step == 0)
    back = np.flatnonzero(step < 0)
    if back.size and (not dup.size or back[0] < dup[0]):
        i = int(back[0]) + 1
        raise report.error(
            f"timestamp {stamps[i]} is earlier than row {i - 1} ({stamps[i - 1]}): timestamps are not sorted",
            f"sort the rows by time, e.g. df.sort_values({name!r})",
            column=name,
            row=i,
        )
    if dup.size:
        i = int(dup[0]) + 1
        raise report.error(
            f"duplicate timestamp {stamps[i]} (same as row {i - 1})",
            "drop duplicated bars, e.g. df.drop_duplicates(subset=...)",
            column=name,
            row=i,
        )
    return stamps


def _numeric(frame: pd.DataFrame, column: str, report: _Reporter, *, price: bool) -> np.ndarray:
    raw = frame[column].reset_index(drop=True)
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)  # (T,)
    non_numeric = np.flatnonzero(np.isnan(values) & raw.notna().to_numpy())
    if non_numeric.size:
        i = int(non_numeric[0])
        raise report.error(f"non-numeric value {raw.iloc[i]!r}", "fix or drop that row", column=column, row=i)
    missing = np.flatnonzero(np.isnan(values))
    kind = "price" if price else "volume"
    if missing.size:
        i = int(missing[0])
        raise report.error(
            f"NaN {kind}", "fill or drop missing bars (e.g. df.ffill() or df.dropna())", column=column, row=i
        )
    infinite = np.flatnonzero(np.isinf(values))
    if infinite.size:
        i = int(infinite[0])
        raise report.error(f"infinite {kind} {values[i]}", "fix or drop that row", column=column, row=i)
    invalid = np.flatnonzero(values <= 0) if price else np.flatnonzero(values < 0)
    if invalid.size:
        i = int(invalid[0])
        rule = "must be > 0" if price else "must be >= 0"
        raise report.error(
            f"{kind} {values[i]} {rule}",
            "fix or drop that row (log returns need positive prices)",
            column=column,
            row=i,
        )
    return values


def load_ohlcv(data: str | Path | pd.DataFrame, *, name: str | None = None) -> pd.DataFrame:
    """Load and validate OHLCV bars.

    Args:
        data: a CSV path or a DataFrame. Needs a timestamp (column Date/Time/Datetime/Timestamp, or a
            DatetimeIndex) and Open, High, Low, Close; Volume and Adj Close are optional, any case.
        name: how errors refer to the source (default: the path as given, or "DataFrame").

    Returns:
        A DataFrame indexed by a sorted, unique DatetimeIndex named "timestamp", with float64
        columns open, high, low, close, volume. With Adj Close present, open/high/low/close are
        scaled by adj_close / close (split- and dividend-adjusted); without Volume, volume is 0.

    Raises:
        ValueError: naming the source, column and row of the first problem, and the fix.
    """
    if isinstance(data, pd.DataFrame):
        report = _Reporter(name or "DataFrame", is_file=False)
        frame = data
    elif isinstance(data, str | Path):
        path = Path(data)
        report = _Reporter(name or str(data), is_file=True)
        if not path.is_file():
            raise report.error("file not found", "pass an existing CSV path, a DataFrame or 'synthetic'")
        try:
            frame = pd.read_csv(path)
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise report.error(
                f"cannot read as CSV ({exc})", "pass a comma-separated file with a header"
            ) from exc
    else:
        raise ValueError(
            f"data={type(data).__name__}: expected a CSV path (str or Path) or a pandas DataFrame; "
            "pass one of those (or 'synthetic' to TradeReplayConfig)"
        )

    columns = _find_columns(frame, report)
    for canonical in PRICE_COLUMNS:
        if canonical not in columns:
            raise report.error(
                f"missing column {canonical!r} (accepted, any case: {_SPELLINGS[canonical]}); "
                f"found columns {[str(c) for c in frame.columns]}",
                "rename the column or add it",
            )
    if len(frame) == 0:
        raise report.error("no data rows", "pass at least window + horizon + 1 bars")
    stamps = _parse_timestamps(frame, columns, report)
    prices = {c: _numeric(frame, columns[c], report, price=True) for c in PRICE_COLUMNS}
    if "volume" in columns:
        volume = _numeric(frame, columns["volume"], report, price=False)
    else:
        volume = np.zeros(len(frame))  # (T,) volume features then stay at 0

    o, h, low, c = prices["open"], prices["high"], prices["low"], prices["close"]
    for column, bad, problem in (
        ("high", h < np.maximum(o, c), "high below open or close"),
        ("low", low > np.minimum(o, c), "low above open or close"),
    ):
        rows = np.flatnonzero(bad)
        if rows.size:
            i = int(rows[0])
            raise report.error(
                f"{problem} (open={o[i]}, high={h[i]}, low={low[i]}, close={c[i]})",
                "fix the bar; high must be the bar's maximum and low its minimum",
                column=columns[column],
                row=i,
            )

    if "adj_close" in columns:
        factor = _numeric(frame, columns["adj_close"], report, price=True) / c  # (T,)
        o, h, low, c = (
            o * factor,
            h * factor,
            low * factor,
            c * factor,
        )  # monotone scaling keeps h >= o, c >= low

    out = pd.DataFrame(
        {"open": o, "high": h, "low": low, "close": c, "volume": volume},
        index=pd.DatetimeIndex(stamps, name="timestamp"),
    )
    out.attrs["source"] = report.source
    return out


def bars_per_year(index: pd.DatetimeIndex) -> float:
    """Bars per calendar year, counted over the data's span (252 for daily stock data, ~8766 for hourly crypto).

    Counting bars over the span, rather than inverting the median spacing, gets closed markets right:
    daily stock bars are one day apart but only ~252 fall in a year.
    """
    if len(index) < 2:
        return 252.0
    years = (index[-1] - index[0]) / pd.Timedelta(
        days=_DAYS_PER_YEAR
    )  # unit-safe (pandas 3 may use us, not ns)
    return float((len(index) - 1) / years) if years > 0 else 252.0
