"""The policies the model is scored against, each fitted on the train split only.

- ``random``: a uniformly random strategy per decision (seeded);
- ``best_fixed``: per instrument, the one strategy with the best mean PnL over its train decisions;
- ``oracle``: the best strategy in hindsight, the argmax of each decision's supervision PnL;
- ``regime_oracle`` (synthetic data): in each true regime, the strategy with the best mean train PnL, the
  realistic upper bound for a regime-aware policy;
- ``filter_bound`` (synthetic data): the regime oracle with the regime inferred causally by a Bayesian filter told
  the true regime parameters (:mod:`trm_act.envs.regime_filter`), roughly the best a policy that sees only the
  past can do.

The label policies that the env trains on (hindsight labels, the regime model's labels) stay in
:mod:`trm_act.envs.replay`, with the per-group best-strategy table they share with these baselines.
"""

from __future__ import annotations

import numpy as np

from trm_act.envs import STRATEGIES, ReplayData
from trm_act.envs.regime_filter import filter_regimes
from trm_act.envs.replay import regime_oracle_labels

__all__ = [
    "baseline_actions",
    "best_fixed_actions",
    "filter_bound_actions",
    "filtered_regimes",
    "regime_mean_pnl",
    "regime_oracle_actions",
]


def baseline_actions(replay: ReplayData, test_idx: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Actions per test decision for each baseline. ``best_fixed`` and the regime map are fit on train only.

    ``best_fixed`` is chosen per instrument (one strategy for a single market).
    """
    n = len(test_idx)
    actions = {
        "random": np.random.default_rng(seed).integers(0, len(STRATEGIES), size=n),
        "best_fixed": best_fixed_actions(replay, "train")[replay.symbol_index[test_idx]],
        # The best strategy in hindsight: the labels, unless env.label_source gives the labels another source.
        "oracle": np.argmax(replay.label_pnl[test_idx], axis=1),
    }
    if replay.regimes is not None:
        actions["regime_oracle"] = regime_oracle_actions(replay, "train")[test_idx]
        # The regime oracle with the regime inferred causally (a Bayesian filter told the true parameters).
        actions["filter_bound"] = filter_bound_actions(replay, "train")[test_idx]
    return actions


def best_fixed_actions(replay: ReplayData, split: str = "train") -> np.ndarray:
    """(K,) per instrument, the strategy with the best mean PnL over its decisions in the split.

    An instrument without decisions in the split gets the pooled best (``ReplayData.best_fixed_action``).
    """
    pooled = replay.best_fixed_action(split)
    out = np.full(replay.n_symbols, pooled, dtype=np.int64)  # (K,)
    for k, (a, b) in enumerate(replay.split_ranges(split).tolist()):
        if b > a:
            out[k] = int(np.argmax(replay.strategy_pnl[a:b].mean(axis=0)))
    return out


def regime_mean_pnl(replay: ReplayData, split: str = "train") -> np.ndarray:
    """(K, 8) mean strategy PnL per true regime over the split's decisions (NaN where a regime is absent)."""
    if replay.regimes is None or replay.regime_names is None:
        raise ValueError(f"{replay.source}: no true regimes (only the synthetic market has them)")
    return replay.group_mean_pnl(replay.regimes, len(replay.regime_names), split)


def regime_oracle_actions(replay: ReplayData, fit_split: str = "train") -> np.ndarray:
    """(D,) the regime oracle's action at every decision: in each true regime, the strategy with the
    best mean PnL on `fit_split` (the realistic upper bound for a regime-aware policy).

    A regime absent from fit_split gets the best fixed strategy of fit_split. The same policy gives the labels of
    ``env.label_source="regime"`` (:func:`trm_act.envs.replay.regime_oracle_labels`, where the env needs it).
    """
    return regime_oracle_labels(replay, fit_split)


def filtered_regimes(replay: ReplayData) -> np.ndarray | None:
    """(T,) int64 the most probable true regime at every bar given the returns of bars <= t, from a Bayesian
    filter told the true regime parameters (:mod:`trm_act.envs.regime_filter`); None without true regimes.

    Bar 0 has no return: it gets regime 0 (the uniform prior's first argmax).
    """
    if replay.regime_specs is None:
        return None
    probabilities = filter_regimes(np.diff(np.log(replay.close)), replay.regime_specs)  # (T-1, K) bars 1..T-1
    return np.concatenate(([0], probabilities.argmax(axis=1))).astype(np.int64)


def filter_bound_actions(replay: ReplayData, fit_split: str = "train") -> np.ndarray:
    """(D,) the filter bound's action at every decision: the regime oracle's strategy (fitted on
    `fit_split`) for the regime that :func:`filtered_regimes` finds most probable at the decision bar.

    The regime oracle with the regime inferred causally instead of revealed: roughly the best a policy
    that sees only the past can do in the synthetic market (its model is the market's own).
    """
    filtered = filtered_regimes(replay)
    if replay.regimes is None or replay.regime_names is None or filtered is None:
        raise ValueError(
            f"{replay.source}: no true regime parameters to filter with (only the synthetic market has them)"
        )
    table = replay.best_strategy_table(replay.regimes, len(replay.regime_names), fit_split)  # (K,)
    return table[filtered[replay.decision_bars]]
