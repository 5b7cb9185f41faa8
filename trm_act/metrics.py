"""The figures of a held-out evaluation: trading metrics of a sequence of decisions, and the breakdowns by
instrument and by true regime (synthetic data) that ``metrics.json`` holds.

:func:`trm_act.evaluation.evaluate` computes every policy's actions; the functions here score them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from trm_act.baselines import best_fixed_actions
from trm_act.envs import STRATEGIES, ReplayData


def trading_metrics(
    pnl: np.ndarray, actions: np.ndarray, labels: np.ndarray, periods_per_year: float
) -> dict[str, float]:
    """Summary of a sequence of non-overlapping trades.

    pnl: (N,) realized log-PnL per decision; actions, labels: (N,) strategy indices.
    ``sharpe`` is annualised with ``periods_per_year`` decisions a year; ``max_drawdown`` is the largest
    fractional fall of the equity curve ``exp(cumsum(pnl))`` from its running peak.
    """
    pnl = np.asarray(pnl, dtype=np.float64)
    equity = np.concatenate([[0.0], np.cumsum(pnl)])  # (N+1,) log equity
    drawdown = 1.0 - np.exp(equity - np.maximum.accumulate(equity))  # (N+1,)
    std = pnl.std()
    traded = pnl != 0.0
    return {
        "pnl": float(pnl.sum()),
        "mean_pnl": float(pnl.mean()),
        "sharpe": float(pnl.mean() / std * math.sqrt(periods_per_year)) if std > 0 else 0.0,
        "max_drawdown": float(drawdown.max()),
        "hit_rate": float((pnl[traded] > 0).mean()) if traded.any() else 0.0,
        "accuracy": float((np.asarray(actions) == np.asarray(labels)).mean()),
        "trades": int(traded.sum()),
    }


def steps_by_regime(replay: ReplayData, indices: np.ndarray, steps: np.ndarray) -> dict[str, float] | None:
    """``{regime name: mean reasoning steps}`` over the decisions at ``indices`` (None without true regimes)."""
    if replay.regimes is None or replay.regime_names is None:
        return None
    regimes = replay.regimes[indices]  # (N,)
    return {
        name: float(steps[regimes == k].mean())
        for k, name in enumerate(replay.regime_names)
        if (regimes == k).any()
    }


def per_instrument_table(
    replay: ReplayData,
    test_idx: np.ndarray,
    pnl_matrix: np.ndarray,
    labels: np.ndarray,
    model_actions: np.ndarray,
    baselines_actions: dict[str, np.ndarray],
) -> dict[str, dict[str, Any]]:
    """{symbol: decisions, model/best-fixed/random PnL and accuracy}; each PnL column sums to the pooled one."""
    symbol = replay.symbol_index[test_idx]  # (N,)
    rows = np.arange(len(test_idx))
    k = replay.n_symbols

    def per_symbol(values: np.ndarray) -> list[float]:
        return np.bincount(symbol, weights=values, minlength=k).tolist()  # (K,)

    decisions = np.bincount(symbol, minlength=k).tolist()
    model_pnl = per_symbol(pnl_matrix[rows, model_actions])
    model_correct = per_symbol((model_actions == labels).astype(np.float64))
    best_pnl = per_symbol(pnl_matrix[rows, baselines_actions["best_fixed"]])
    random_pnl = per_symbol(pnl_matrix[rows, baselines_actions["random"]])
    best = best_fixed_actions(replay, "train").tolist()  # (K,)
    return {
        name: {
            "decisions": decisions[i],
            "model_pnl": model_pnl[i],
            "model_accuracy": model_correct[i] / decisions[i] if decisions[i] else None,
            "best_fixed_strategy": STRATEGIES[best[i]],
            "best_fixed_pnl": best_pnl[i],
            "random_pnl": random_pnl[i],
        }
        for i, name in enumerate(replay.symbols)
    }


RECENT_CHANGE_BARS = 16  # "just after a regime change": the change happened at most this many bars ago
SETTLED_BARS = 48  # "deep inside a regime": the regime has held for at least this many bars


def bars_since_regime_change(bar_regimes: np.ndarray, bars: np.ndarray) -> np.ndarray:
    """(N,) bars since the true regime last changed, at each of ``bars`` (the first run counts from bar 0)."""
    changed = np.flatnonzero(np.diff(bar_regimes) != 0) + 1  # (K,) first bar of each new regime
    starts = np.concatenate(([0], changed))  # (K+1,)
    return bars - starts[np.searchsorted(starts, bars, side="right") - 1]  # (N,)


def by_regime(
    replay: ReplayData,
    indices: np.ndarray,
    pnl_matrix: np.ndarray,
    actions: np.ndarray,
    baselines_actions: dict[str, np.ndarray],
) -> dict[str, dict[str, Any]]:
    """Where the model earns or loses against the regime oracle, per true regime (synthetic data).

    ``{regime: {decisions, pnl, regime_oracle_pnl, regime_oracle_strategy, picks_oracle_strategy
    (share of its decisions on the oracle's strategy), strategy_usage (decisions per strategy)}}``.
    """
    assert replay.regimes is not None and replay.regime_names is not None  # synthetic data
    regimes = replay.regimes[indices]  # (N,)
    oracle = baselines_actions["regime_oracle"]  # (N,) one strategy per regime
    rows = np.arange(len(indices))
    out = {}
    for k, name in enumerate(replay.regime_names):
        mine = regimes == k
        if not mine.any():
            continue
        out[name] = {
            "decisions": int(mine.sum()),
            "pnl": float(pnl_matrix[rows[mine], actions[mine]].sum()),
            "regime_oracle_pnl": float(pnl_matrix[rows[mine], oracle[mine]].sum()),
            "regime_oracle_strategy": STRATEGIES[int(oracle[mine][0])],
            "picks_oracle_strategy": float((actions[mine] == oracle[mine]).mean()),
            "strategy_usage": np.bincount(actions[mine], minlength=len(STRATEGIES)).tolist(),
        }
    return out


def steps_by_regime_age(replay: ReplayData, indices: np.ndarray, steps: np.ndarray) -> dict[str, Any]:
    """Mean reasoning steps just after a true regime change vs deep inside a regime (synthetic data).

    A model whose halting tracks difficulty thinks longer while the new regime is still ambiguous.
    """
    age = bars_since_regime_change(replay.bar_regimes, replay.decision_bars[indices])  # (N,)
    recent, settled = age < RECENT_CHANGE_BARS, age >= SETTLED_BARS
    if not (recent.any() and settled.any()):  # None, not NaN: metrics.json stays valid JSON
        return {"recent_change": None, "settled": None, "ratio": None}
    recent_steps, settled_steps = float(steps[recent].mean()), float(steps[settled].mean())
    return {
        "recent_change": recent_steps,
        "settled": settled_steps,
        "ratio": recent_steps / settled_steps,
        "recent_decisions": int(recent.sum()),
        "settled_decisions": int(settled.sum()),
    }
