"""score_table: the fixed-width table the CLIs print (predict's backtest, the walk-forward summary)."""

from __future__ import annotations

from trm_act.tables import Column, score_table


def test_score_table_aligns_names_left_and_values_right_in_their_columns():
    rows = [("model", {"pnl": 0.1234, "sharpe": -1.5}), ("long", {"pnl": -12.0, "sharpe": float("nan")})]
    columns = [Column("pnl", "pnl", 8, "+.3f"), Column("sharpe", "sharpe", 7, ".2f")]
    assert score_table(rows, columns) == [
        "policy       pnl   sharpe",
        "-------------------------",
        "model    +0.123    -1.50",
        "long    -12.000      nan",
    ]


def test_a_long_name_widens_the_name_column_and_a_wide_value_is_not_cut():
    lines = score_table([("best fixed in hindsight", {"x": 123456.0})], [Column("x", "x", 3, ".1f")])
    assert lines == [
        "policy                     x",
        "----------------------------",
        "best fixed in hindsight  123456.0",
    ]
