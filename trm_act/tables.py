"""Fixed-width tables of policies' scores, as the command-line tools print them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple


class Column(NamedTuple):
    """One column of a score table after the policy's name."""

    title: str
    """Header of the column."""
    key: str
    """The score it shows (a key of each row's scores)."""
    width: int
    """Characters of the column; header and values are right-aligned in it."""
    format: str
    """Format spec of the value, e.g. ``"+.3f"``."""


# The columns several tables share (the held-out summary, predict's backtest, the stitched walk-forward).
PNL = Column("pnl", "pnl", 8, "+.3f")
SHARPE = Column("sharpe", "sharpe", 7, ".2f")
MAX_DRAWDOWN = Column("max_dd", "max_drawdown", 7, ".3f")
HIT_RATE = Column("hit_rate", "hit_rate", 8, ".3f")


def score_table(rows: Sequence[tuple[str, Mapping[str, Any]]], columns: Sequence[Column]) -> list[str]:
    """The lines of a table, one policy a row: the header, a rule under it, then each ``(name, scores)`` of ``rows``.

    The names are left-aligned in a column as wide as the longest; columns are two spaces apart.
    """
    width = max(len(name) for name, _ in rows)
    header = "  ".join([f"{'policy':<{width}}", *(f"{c.title:>{c.width}}" for c in columns)])
    lines = [header, "-" * len(header)]
    for name, scores in rows:
        values = (format(scores[c.key], c.format).rjust(c.width) for c in columns)
        lines.append("  ".join([f"{name:<{width}}", *values]))
    return lines
