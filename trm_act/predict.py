"""``python -m trm_act.predict --run RUN --data FILE [--out decisions.csv]``: decide on new bars and backtest.

Writes every decision of ``Policy.load(RUN).decide(FILE)`` to a CSV, then scores the decisions on those
bars with the environment's own strategy PnL: a replay of FILE built with the run's env options
(window, horizon, stride, cost) and ``split="all"``, whose decision points are every ``stride``-th bar
from bar ``window`` on, each trading over the next ``horizon`` bars net of costs (a true backtest: the
trades do not overlap). The model's trade at a decision point is its decision at that bar. It prints
PnL, Sharpe and max drawdown of the model against always long and against the best fixed strategy in
hindsight (picked per instrument on these same bars: a bound no fixed choice made beforehand beats),
with the model's mean reasoning steps.

User mistakes (a missing file or column, too few bars, a checkpoint of another format) exit with code 2
and one line on stderr; a failed write exits with 1.
"""

from __future__ import annotations

import argparse
import io
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd

from trm_act.cli import report_user_mistake
from trm_act.tables import HIT_RATE, MAX_DRAWDOWN, PNL, SHARPE, score_table

EXIT_USAGE, EXIT_IO = 2, 1

BACKTEST_COLUMNS = (PNL, SHARPE, MAX_DRAWDOWN, HIT_RATE)
"""The columns of the backtest table."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (no usage block)."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(
        prog="python -m trm_act.predict",
        description="Decide on new OHLCV bars with a trained run, write the decisions, and backtest them.",
    )
    parser.add_argument(
        "--run", required=True, help="run directory of python -m trm_act.train, or its checkpoint.pt"
    )
    parser.add_argument(
        "--data",
        required=True,
        help="OHLCV CSV (or a directory/glob of CSVs, a long CSV/Parquet with a Symbol column, or 'synthetic')",
    )
    parser.add_argument(
        "--out", default="decisions.csv", help="where to write the decisions (default: %(default)s)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="reason with torch.compile (needs a C++ compiler; pays a compile of ~5-20 s, then ~4x faster steps)",
    )
    return parser.parse_args(argv)


def _utc_ns(index: pd.DatetimeIndex) -> np.ndarray:
    """(N,) int64 nanoseconds since the epoch, UTC for aware timestamps (comparable across zones and units)."""
    index = pd.DatetimeIndex(index)
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    return index.as_unit("ns").asi8


def backtest(policy: Any, data: Any, decisions: pd.DataFrame) -> dict[str, Any]:
    """Score ``decisions`` (``policy.decide(data)``) on the replay of ``data``: the model, always long, and the
    best fixed strategy in hindsight, pooled over instruments in time order. Raises ValueError when
    ``data`` is too short for one trade."""
    from trm_act.baselines import best_fixed_actions
    from trm_act.envs import STRATEGIES, TradeReplayConfig, build_replay
    from trm_act.metrics import trading_metrics

    env = policy.env
    config = TradeReplayConfig(
        data=data,
        window=env["window"],
        horizon=env["horizon"],
        stride=env.get("stride"),
        cost=env.get("cost", TradeReplayConfig.cost),
        synthetic=env.get("synthetic") or {},
        split="all",
    )
    replay = build_replay(config)
    idx = replay.split_indices("all")  # (N,) every decision point, instrument by instrument
    symbol = replay.symbol_index[idx]  # (N,)
    lengths = np.diff(replay.bar_offsets)  # (K,) bars per instrument
    per_symbol = np.array(
        [len(policy.decision_bars(int(n))) for n in lengths]
    )  # (K,) policy rows per instrument
    if per_symbol.sum() != len(decisions):
        raise ValueError(
            f"data={data!r}: {len(decisions)} decisions but the replay's bars give {per_symbol.sum()}; pass the "
            "same data to decide and backtest"
        )
    first_row = np.concatenate(([0], np.cumsum(per_symbol)))[symbol]  # (N,)
    local = replay.decision_bars[idx] - replay.bar_offsets[symbol]  # (N,) bar within its instrument
    rows = first_row + (local - policy.window) // policy.stride  # (N,) the decision made at that bar
    stamps = decisions.index.get_level_values("timestamp")
    if not np.array_equal(_utc_ns(stamps[rows]), _utc_ns(replay.timestamps[replay.decision_bars[idx]])):
        raise ValueError("decisions and replay disagree on the decision bars; pass the same data to both")
    order = np.argsort(
        _utc_ns(replay.timestamps[replay.decision_bars[idx]]), kind="stable"
    )  # pooled, in time
    idx, rows = idx[order], rows[order]
    pnl = replay.strategy_pnl[idx]  # (N, 8)
    labels = replay.labels[idx]  # (N,)
    periods = replay.bars_per_year / replay.stride
    n = np.arange(len(idx))
    model_actions = decisions["action"].to_numpy()[rows]  # (N,)
    best = best_fixed_actions(replay, "all")  # (K,) per instrument, in hindsight on these bars
    policies = {
        "model": model_actions,
        "long": np.full(len(idx), STRATEGIES.index("long")),
        "best_fixed": best[replay.symbol_index[idx]],
    }
    scores = {name: trading_metrics(pnl[n, a], a, labels, periods) for name, a in policies.items()}
    chosen = np.unique(best)
    scores["best_fixed"]["strategy"] = STRATEGIES[int(chosen[0])] if len(chosen) == 1 else "per instrument"
    scores["model"]["mean_steps"] = float(decisions["steps"].to_numpy()[rows].mean())
    return {
        "scores": scores,
        "trades": len(idx),
        "horizon": replay.horizon,
        "stride": replay.stride,
        "cost": replay.cost,
        "instruments": replay.n_symbols,
        "first": str(replay.timestamps[replay.decision_bars[idx].min()]),
        "last": str(replay.timestamps[replay.decision_bars[idx].max()]),
    }


def format_backtest(result: dict[str, Any], max_steps: int) -> str:
    """The backtest as a small table."""
    scores = result["scores"]
    model = scores["model"]
    rows = [
        (f"model (mean {model['mean_steps']:.2f} of {max_steps} steps)", model),
        ("long", scores["long"]),
        (f"best fixed in hindsight ({scores['best_fixed']['strategy']})", scores["best_fixed"]),
    ]
    where = f"{result['instruments']} instruments, " if result["instruments"] > 1 else ""
    lines = [
        f"backtest: {result['trades']} trades of {result['horizon']} bars every {result['stride']} bars "
        f"({where}{result['first']} .. {result['last']}), cost {result['cost']:g} per unit of position change",
        *score_table(rows, BACKTEST_COLUMNS),
    ]
    return "\n".join(lines)


def _one_line_warning(message: Any, category: type, filename: str, lineno: int, line: Any = None) -> str:
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 user mistake, 1 failed write)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    formatwarning, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        return _main(args)
    finally:
        warnings.formatwarning = formatwarning


def _main(args: argparse.Namespace) -> int:
    try:
        if args.threads < 1:
            raise ValueError(f"--threads {args.threads}: expected an int >= 1")
        import torch

        from trm_act.policy import Policy

        torch.set_num_threads(args.threads)
        policy = Policy.load(args.run, compile=args.compile)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # decide's note is reported below, in one line
            decisions = policy.decide(args.data)
        if decisions.empty:
            note = decisions.attrs.get("note", "no bars")
            raise ValueError(note if "no decisions" in note else f"no decisions: {note}")
        buffer = io.StringIO()
        decisions.to_csv(buffer)
        out = Path(args.out)
        try:
            from trm_act.files import atomic_write

            atomic_write(out, lambda handle: handle.write(buffer.getvalue().encode()))
        except OSError as exc:
            print(f"error: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_IO
        steps = decisions["steps"].to_numpy()
        print(
            f"{len(decisions)} decisions (every {policy.stride} bar(s) from bar {policy.window}; mean "
            f"{steps.mean():.2f} of {policy.max_steps} reasoning steps) -> {out}"
        )
        if "note" in decisions.attrs:
            print(f"note: {decisions.attrs['note']}")
        try:
            result = backtest(policy, args.data, decisions)
        except ValueError as exc:  # too few bars for a trade: the decisions stand, the backtest cannot
            print(f"no backtest: {exc}")
            return 0
        print(format_backtest(result, policy.max_steps))
    except ValueError as exc:
        report_user_mistake(exc)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
