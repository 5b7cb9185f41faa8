"""OHLCV loading and validation: a CSV path or a pandas DataFrame in, a clean frame out.

Column names are matched case-insensitively, ignoring spaces, dots, dashes and underscores, so
``Date``, ``timestamp``, ``Adj Close``, ``adj_close`` all work. Every problem raises a one-line
ValueError (``DataError``) naming the source (file name or "DataFrame"), the column as the user spelled
it, the row, and a fix; whatever pandas or numpy raise underneath is turned into one too. Rows are
counted from 0 over the data rows (as ``df.iloc`` counts them); for a CSV the file line is given too,
assuming a one-line header and no blank lines.

``load_ohlcv`` is ``read_ohlcv_csv`` (CSV files only) followed by ``validate_ohlcv``; a loader of many
instruments can call the two parts per instrument, with ``rows`` mapping each bar to its source row.
"""

from __future__ import annotations

import math
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
# Below the smallest normal float64 precision is lost and products underflow to 0 (log returns then break).
SMALLEST_PRICE = float(np.finfo(np.float64).tiny)
_MAX_SHOWN = 40  # characters of a bad value quoted in a message
_SEPARATORS = {  # separator -> (name, extra read_csv arguments to suggest)
    ";": ("semicolon", " (with decimal=',' for decimal commas)"),
    "\t": ("tab", ""),
}
_FIELDS_ERROR = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def _normalise(name: object) -> str:
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


def _shown(value: object) -> str:
    """repr of a bad value, shortened so that a 400-digit number still gives a readable line."""
    if isinstance(value, np.generic):
        value = value.item()  # 1.5, not np.float64(1.5)
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else f"{text[: _MAX_SHOWN - 3]}... ({len(str(value))} characters)"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class DataError(ValueError):
    """Bad OHLCV data: one line naming the source, column, row and fix."""


class Reporter:
    """Formats errors as '<source>: column '<col>' row <i> (line <l>): <problem>; <fix>'.

    ``rows`` maps a position in the frame being checked to its row in the source (for one instrument
    cut from a long file); None means positions are the source's rows.
    """

    def __init__(self, source: str, is_file: bool, rows: np.ndarray | None = None) -> None:
        self.source = source
        self.is_file = is_file
        self.rows = rows

    def where(self, column: str | None = None, row: int | None = None) -> str:
        parts = [self.source]
        if column is not None:
            parts.append(f"column {column!r}")
        if row is not None:
            row = int(self.rows[row]) if self.rows is not None else row
            parts.append(f"row {row}" + (f" (line {row + 2})" if self.is_file else ""))
        return ": ".join([parts[0], " ".join(parts[1:])]) if len(parts) > 1 else parts[0]

    def error(self, problem: str, fix: str, column: str | None = None, row: int | None = None) -> DataError:
        return DataError(f"{self.where(column, row)}: {problem}; {fix}")


def _find_columns(frame: pd.DataFrame, report: Reporter) -> dict[str, str]:
    """Map canonical names to the frame's own column names; raise on duplicates."""
    found: dict[str, str] = {}
    stamp_columns: dict[str, str] = {}  # normalised spelling -> column, for the timestamp aliases
    for column in frame.columns:
        key = _normalise(column)
        for canonical, spellings in _ALIASES.items():
            if key not in spellings:
                continue
            if canonical == "timestamp":
                stamp_columns.setdefault(key, str(column))
                found.setdefault(canonical, str(column))
            elif canonical in found:
                raise report.error(
                    f"columns {found[canonical]!r} and {column!r} both mean {canonical!r}",
                    "drop one of them",
                )
            else:
                found[canonical] = str(column)
    # Separate Date and Time columns (MetaTrader and many broker exports) are joined, in either order.
    if "date" in stamp_columns and "time" in stamp_columns:
        found["timestamp"], found["time_of_day"] = stamp_columns["date"], stamp_columns["time"]
    return found


def _zone(stamp: object) -> str | None:
    """'UTC+05:00', 'no time zone', or None when the value is no timestamp at all."""
    try:
        offset = pd.Timestamp(stamp).utcoffset()
    except (ValueError, TypeError, OverflowError):
        return None
    if offset is None:
        return "no time zone"
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _mixed_zones(raw: pd.Series, name: str, report: Reporter, exc: ValueError) -> DataError:
    """The error for timestamps pandas cannot put on one axis: the first row whose zone differs from row 0."""
    first = _zone(raw.iloc[0])
    for i in range(1, len(raw)):  # error path only; stops at the first row that differs
        zone = _zone(raw.iloc[i])
        if zone is not None and zone != first:
            return report.error(
                f"timestamp {_shown(raw.iloc[i])} has {zone} but row 0 ({_shown(raw.iloc[0])}) has {first}: "
                "mixed time zones",
                "convert every timestamp to one zone (e.g. UTC) before loading",
                column=name,
                row=i,
            )
    return report.error(f"cannot parse timestamps ({_one_line(exc)})", "fix that column", column=name)


def _parse_timestamps(frame: pd.DataFrame, columns: dict[str, str], report: Reporter) -> pd.DatetimeIndex:
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
            try:
                parsed = pd.to_datetime(raw, errors="coerce")
                if parsed.isna().any():  # formats that vary between rows need the (slower) mixed parser
                    parsed = pd.to_datetime(raw, errors="coerce", format="mixed")
            except ValueError as exc:  # pandas refuses timestamps in different zones
                raise _mixed_zones(raw, name, report, exc) from None
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if bad.size:
        i = int(bad[0])
        raise report.error(
            f"cannot parse timestamp {_shown(raw.iloc[i])}", "fix or drop that row", column=name, row=i
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


def _as_float(value: object) -> float:
    """float(value), NaN when it is no number, +-inf when it is too large (a 400-digit int overflows float())."""
    try:
        return float(value)  # type: ignore[arg-type]
    except OverflowError:
        return float(str(value))  # the decimal string rounds to +-inf instead of raising
    except (TypeError, ValueError):
        return math.nan


def _numeric(frame: pd.DataFrame, column: str, report: Reporter, *, price: bool) -> np.ndarray:
    raw = frame[column].reset_index(drop=True)
    try:
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)  # (T,)
    except (OverflowError, TypeError, ValueError):  # Python ints beyond float64 (a 400-digit price)
        values = np.array([_as_float(x) for x in raw], dtype=np.float64)  # (T,)
    kind = "price" if price else "volume"
    rule = "must be > 0" if price else "must be >= 0"
    # (bad rows, problem at the first bad row i, fix), checked in this order; the first that finds a row raises.
    checks = [
        (np.isnan(values) & raw.notna().to_numpy(), lambda i: f"non-numeric value {_shown(raw.iloc[i])}",
         "fix or drop that row"),
        (np.isnan(values), lambda i: f"NaN {kind}", "fill or drop missing bars (e.g. df.ffill() or df.dropna())"),
        (np.isinf(values), lambda i: f"{kind} {_shown(raw.iloc[i])} is not a finite float64 (beyond about 1.8e308)",
         "fix or drop that row"),
        (values <= 0 if price else values < 0, lambda i: f"{kind} {values[i]} {rule}",
         "fix or drop that row (log returns need positive prices)"),
    ]  # fmt: skip
    if price:
        checks.append((
            values < SMALLEST_PRICE,
            lambda i: f"price {float(values[i])!r} is below {SMALLEST_PRICE:.4g}, the smallest normal float64",
            "fix or drop that row, or quote prices in a smaller unit",
        ))  # fmt: skip
    for bad, problem, fix in checks:
        rows = np.flatnonzero(bad)
        if rows.size:
            i = int(rows[0])
            raise report.error(problem(i), fix, column=column, row=i)
    return values


def read_ohlcv_csv(path: str | Path, report: Reporter) -> pd.DataFrame:
    """Read a comma-separated file with a header into a raw frame; every failure is one line."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            header = handle.readline().rstrip("\r\n")
    except OSError as exc:
        raise report.error(
            f"cannot read ({exc.strerror or _one_line(exc)})", "check the path and its permissions"
        ) from None
    for separator, (word, extra) in _SEPARATORS.items():
        if separator in header and "," not in header:
            raise report.error(
                f"the header {_shown(header)} is {word}-separated, but columns are split at commas",
                f"re-save the file with commas, or read it with pandas.read_csv(path, sep={separator!r}){extra} "
                "and pass the DataFrame as data",
            )
    try:
        return pd.read_csv(path)
    except pd.errors.ParserError as exc:
        ragged = _FIELDS_ERROR.search(str(exc))
        if ragged:
            expected, line, saw = (int(g) for g in ragged.groups())
            raise report.error(
                f"{saw} fields, but the header has {expected} columns",
                "remove the extra field (often an unquoted comma inside a value) or drop that row",
                row=line - 2,
            ) from None
        raise report.error(
            f"cannot read as CSV ({_one_line(exc)})", "pass a comma-separated file with a header"
        ) from None
    except pd.errors.EmptyDataError as exc:
        raise report.error(
            f"cannot read as CSV ({_one_line(exc)})", "pass a comma-separated file with a header"
        ) from None
    except UnicodeDecodeError as exc:
        raise report.error(
            f"cannot read as CSV (not UTF-8 text: {_one_line(exc)})", "save the file as UTF-8 text"
        ) from None


def validate_ohlcv(frame: pd.DataFrame, report: Reporter) -> pd.DataFrame:
    """Validate a raw OHLCV frame and return the clean one (see ``load_ohlcv``)."""
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
        adj = _numeric(frame, columns["adj_close"], report, price=True)  # (T,)
        with np.errstate(over="ignore", under="ignore"):  # checked below, row by row
            factor = adj / c  # (T,)
            scaled = {"open": o * factor, "high": h * factor, "low": low * factor, "close": c * factor}
        for canonical, values in scaled.items():  # monotone scaling keeps h >= o, c >= low
            bad = np.flatnonzero(~(np.isfinite(values) & (values >= SMALLEST_PRICE)))
            if bad.size:
                i = int(bad[0])
                raise report.error(
                    f"{columns['adj_close']} {float(adj[i])!r} / Close {float(c[i])!r} scales {canonical} "
                    f"{float(prices[canonical][i])!r} to {float(values[i])!r}, outside float64's normal range",
                    "fix Adj Close in that row (it is Close times the split/dividend factor)",
                    column=columns["adj_close"],
                    row=i,
                )
        o, h, low, c = scaled["open"], scaled["high"], scaled["low"], scaled["close"]

    out = pd.DataFrame(
        {"open": o, "high": h, "low": low, "close": c, "volume": volume},
        index=pd.DatetimeIndex(stamps, name="timestamp"),
    )
    out.attrs["source"] = report.source
    return out


# What pandas and numpy may raise on hostile input that the checks above do not foresee.
_FOREIGN_ERRORS = (ValueError, TypeError, OverflowError, ArithmeticError, OSError)


def load_ohlcv(data: str | Path | pd.DataFrame, *, name: str | None = None) -> pd.DataFrame:
    """Load and validate OHLCV bars.

    Args:
        data: a CSV path or a DataFrame. Needs a timestamp (column Date/Time/Datetime/Timestamp, or
            separate Date and Time columns in either order, or a DatetimeIndex) and Open, High, Low,
            Close; Volume and Adj Close are optional, any case.
        name: how errors refer to the source (default: the path as given, or "DataFrame").

    Returns:
        A DataFrame indexed by a sorted, unique DatetimeIndex named "timestamp", with float64
        columns open, high, low, close, volume. With Adj Close present, open/high/low/close are
        scaled by adj_close / close (split- and dividend-adjusted); without Volume, volume is 0.
        Every price is finite and at least ``SMALLEST_PRICE``, after that scaling too.

    Raises:
        ValueError: one line naming the source, column and row of the first problem, and the fix.
    """
    if isinstance(data, pd.DataFrame):
        report = Reporter(name or "DataFrame", is_file=False)
    elif isinstance(data, str | Path):
        report = Reporter(name or str(data), is_file=True)
        if not Path(data).is_file():
            raise report.error("file not found", "pass an existing CSV path, a DataFrame or 'synthetic'")
    else:
        raise ValueError(
            f"data={type(data).__name__}: expected a CSV path (str or Path) or a pandas DataFrame; "
            "pass one of those (or 'synthetic' to TradeReplayConfig)"
        )
    try:
        frame = data if isinstance(data, pd.DataFrame) else read_ohlcv_csv(data, report)
        return validate_ohlcv(frame, report)
    except DataError:
        raise
    except _FOREIGN_ERRORS as exc:  # never let a multi-line pandas message or a traceback reach the user
        raise report.error(
            f"cannot load ({type(exc).__name__}: {_one_line(exc)})",
            "check that it holds OHLCV bars with a header row",
        ) from None


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
