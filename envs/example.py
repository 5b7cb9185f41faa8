"""A small OHLCV CSV shipped with the package, so that examples with ``data=<a CSV>`` run as written.

The file holds ``EXAMPLE_BARS`` daily bars of the synthetic market (seed ``EXAMPLE_SEED``), in the
layout of a broker export (Date, Open, High, Low, Close, Volume), rounded to 4 decimals. It was
written once by ``write_example_csv`` and is committed; the test suite checks that it still matches.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .synthetic import SyntheticMarketConfig, generate_synthetic_market

EXAMPLE_BARS = 3000
EXAMPLE_SEED = 7
_PATH = Path(__file__).parent / "data" / "example_ohlcv.csv"


def example_csv() -> str:
    """Path of the shipped example OHLCV CSV (3000 daily bars), e.g. for ``gym.make(..., data=example_csv())``."""
    return str(_PATH)


def example_frame() -> pd.DataFrame:
    """The example bars as written to the CSV: columns Date (YYYY-MM-DD), Open, High, Low, Close, Volume."""
    bars = generate_synthetic_market(SyntheticMarketConfig(n_bars=EXAMPLE_BARS, seed=EXAMPLE_SEED))
    frame = bars.drop(columns="regime").rename(columns=str.title)
    # Rounding is monotone, so high >= max(open, close) and low <= min(open, close) still hold.
    frame[["Open", "High", "Low", "Close"]] = frame[["Open", "High", "Low", "Close"]].round(4)
    frame["Volume"] = frame["Volume"].round().astype("int64")
    frame.index = frame.index.strftime("%Y-%m-%d")
    return frame.rename_axis("Date").reset_index()


def write_example_csv(path: str | Path = _PATH) -> Path:
    """(Re)write the example CSV; the shipped file came from ``write_example_csv()``."""
    path = Path(path)
    example_frame().to_csv(path, index=False, lineterminator="\n")
    return path
