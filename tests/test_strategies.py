"""Strategies, trade PnL, labels, splits and the regime oracle (envs/strategies.py, envs/replay.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from trm_act.envs import (
    STRATEGIES,
    SyntheticMarketConfig,
    TradeReplayConfig,
    build_replay,
    generate_synthetic_market,
    strategies,
)
from trm_act.envs import replay as replay_module
from trm_act.envs.strategies import strategy_positions, trade_pnl

from trm_act.baselines import regime_mean_pnl, regime_oracle_actions


@pytest.fixture(scope="module")
def replay():
    return build_replay(TradeReplayConfig())  # the default synthetic market


def naive_pnl(positions: np.ndarray, close: np.ndarray, t: int, horizon: int, cost: float) -> float:
    """The PnL definition written out bar by bar: enter from flat at t, exit to flat at t + horizon."""
    pnl, previous = 0.0, 0.0
    for k in range(horizon):
        p = positions[t + k]
        pnl += p * np.log(close[t + k + 1] / close[t + k]) - cost * abs(p - previous)
        previous = p
    return pnl - cost * abs(previous)


def test_strategy_names():
    assert len(STRATEGIES) == 8 and len(set(STRATEGIES)) == 8
    assert STRATEGIES[:3] == ("flat", "long", "short")


def test_trade_pnl_matches_bar_by_bar_definition():
    bars = generate_synthetic_market(SyntheticMarketConfig(n_bars=400, seed=3))
    o, h, low, c = (bars[k].to_numpy() for k in ("open", "high", "low", "close"))
    positions = strategy_positions(o, h, low, c)  # (T, 8)
    decision_bars = np.arange(20, 400 - 5, 3)
    pnl = trade_pnl(positions, c, decision_bars, horizon=5, cost=0.001)
    for i, t in enumerate(decision_bars):
        for s in range(8):
            assert pnl[i, s] == pytest.approx(naive_pnl(positions[:, s], c, t, 5, 0.001), abs=1e-13)
    # flat earns 0; long and short pay the round trip on top of the close-to-close log return.
    move = np.log(c[decision_bars + 5] / c[decision_bars])
    np.testing.assert_array_equal(pnl[:, 0], 0.0)
    np.testing.assert_allclose(pnl[:, 1], move - 0.002, atol=1e-13)
    np.testing.assert_allclose(pnl[:, 2], -move - 0.002, atol=1e-13)


def reference_trade_pnl(
    positions: np.ndarray, close: np.ndarray, decision_bars: np.ndarray, horizon: int, cost: float
) -> np.ndarray:
    """The straightforward vectorised form, with the (D, horizon, 8) temporaries trade_pnl avoids."""
    r = np.concatenate(([0.0], np.diff(np.log(close))))  # (T,)
    offsets = np.arange(horizon)  # (H,)
    held = positions[decision_bars[:, None] + offsets]  # (D, H, S)
    gross = np.einsum("dhs,dh->ds", held, r[decision_bars[:, None] + offsets + 1])  # (D, S)
    turnover = np.abs(held[:, 0]) + np.abs(np.diff(held, axis=1)).sum(axis=1) + np.abs(held[:, -1])
    return gross - cost * turnover


@pytest.mark.parametrize(
    ("horizon", "stride", "cost", "block"),
    [(1, 1, 0.0, 7), (8, 1, 5e-4, 7), (16, 3, 1e-3, 50), (16, 1, 5e-4, 1 << 15)],
)
def test_trade_pnl_equals_reference(monkeypatch, horizon, stride, cost, block):
    monkeypatch.setattr(strategies, "_PNL_BLOCK", block)  # small blocks: many block edges
    bars = generate_synthetic_market(SyntheticMarketConfig(n_bars=3000, seed=5))
    o, h, low, c = (bars[k].to_numpy() for k in ("open", "high", "low", "close"))
    positions = strategy_positions(o, h, low, c)  # (T, 8)
    decision_bars = np.arange(1, 3000 - horizon, stride)  # (D,)
    pnl = trade_pnl(positions, c, decision_bars, horizon, cost)
    expected = reference_trade_pnl(positions, c, decision_bars, horizon, cost)
    assert pnl.shape == expected.shape == (decision_bars.shape[0], 8) and pnl.dtype == np.float64
    np.testing.assert_allclose(pnl, expected, rtol=1e-12, atol=1e-15)  # summation order only
    assert trade_pnl(positions, c, decision_bars[:0], horizon, cost).shape == (0, 8)


@pytest.mark.parametrize("stride", [1, 4])
def test_evenly_spaced_decisions_read_strided_views_with_bit_identical_pnl(monkeypatch, stride):
    bars = generate_synthetic_market(SyntheticMarketConfig(n_bars=3000, seed=7))
    o, h, low, c = (bars[k].to_numpy() for k in ("open", "high", "low", "close"))
    positions = strategy_positions(o, h, low, c)  # (T, 8)
    even = np.arange(5, 3000 - 16, stride)  # (D,) as a replay lays its decisions out
    assert isinstance(strategies._shifted(even)(3), slice)
    fast = trade_pnl(positions, c, even, 16, 5e-4)
    monkeypatch.setattr(strategies, "_shifted", lambda bars: lambda k: bars + k)  # the gathering path
    np.testing.assert_array_equal(fast, trade_pnl(positions, c, even, 16, 5e-4))
    monkeypatch.undo()
    uneven = np.sort(np.random.default_rng(0).choice(np.arange(1, 3000 - 16), 500, replace=False))  # (D,)
    assert not isinstance(strategies._shifted(uneven)(3), slice)
    np.testing.assert_allclose(
        trade_pnl(positions, c, uneven, 16, 5e-4), reference_trade_pnl(positions, c, uneven, 16, 5e-4), rtol=1e-12
    )


@pytest.mark.parametrize("what", ["features", "pnl"])
def test_replay_build_refuses_non_finite_values(monkeypatch, what):
    frame = generate_synthetic_market(SyntheticMarketConfig(n_bars=300, seed=1)).drop(columns="regime")
    if what == "features":
        real = replay_module.compute_features

        def poisoned(*args):
            feats = real(*args)
            feats[123, 4] = np.nan
            return feats

        monkeypatch.setattr(replay_module, "compute_features", poisoned)
        message = r"DataFrame: row 123: feature 'gap' is nan; the prices around that row are too extreme"
    else:
        real = replay_module.trade_pnl

        def poisoned(*args):
            pnl = real(*args)
            pnl[10, 7] = -np.inf
            return pnl

        monkeypatch.setattr(replay_module, "trade_pnl", poisoned)
        message = r"DataFrame: row 112: PnL of strategy 'vol_target' is -inf"  # decision 10 = bar 32 + 10 * 8
    with pytest.raises(ValueError, match=message):  # labels over the trade's horizon: one trade_pnl call
        build_replay(TradeReplayConfig(data=frame, label_horizon=None))


@pytest.mark.parametrize("t", [60, 333, 1200])
def test_positions_are_causal(t):
    """Replacing every bar after t leaves every strategy's position at bars <= t unchanged, bit for bit."""
    bars = generate_synthetic_market(SyntheticMarketConfig(n_bars=1500, seed=5))
    other = generate_synthetic_market(SyntheticMarketConfig(n_bars=1500, seed=6))
    cols = ["open", "high", "low", "close"]
    changed = bars[cols].to_numpy().copy()
    changed[t + 1 :] = other[cols].to_numpy()[t + 1 :] * (bars["close"].iloc[t] / other["close"].iloc[t])
    before = strategy_positions(*bars[cols].to_numpy().T)
    after = strategy_positions(*changed.T)
    assert np.array_equal(before[: t + 1], after[: t + 1])
    assert not np.array_equal(before[t + 1 :], after[t + 1 :])  # the replacement did change the future


def test_labels_are_argmax_with_ties_to_lowest(replay):
    # By default labels score each strategy over label_horizon = 32 bars (label_pnl); trades last 8 (strategy_pnl).
    assert replay.label_pnl is not replay.strategy_pnl
    np.testing.assert_array_equal(replay.labels, np.argmax(replay.label_pnl, axis=1))
    own = build_replay(TradeReplayConfig(label_horizon=None, synthetic={"n_bars": 3000}))  # the trade's horizon
    assert own.label_pnl is own.strategy_pnl
    np.testing.assert_array_equal(own.labels, np.argmax(own.strategy_pnl, axis=1))
    # Constant prices at zero cost: every strategy earns exactly 0, so the label is 0 (flat).
    frame = pd.DataFrame(
        {"open": 10.0, "high": 10.0, "low": 10.0, "close": 10.0, "volume": 100.0},
        index=pd.bdate_range("2020-01-01", periods=80, name="date"),
    )
    flat = build_replay(TradeReplayConfig(data=frame, cost=0.0))
    assert np.all(flat.strategy_pnl == 0.0) and np.all(flat.labels == 0)
    assert np.isfinite(flat.features).all()


def test_realized_label_costs_charge_a_round_trip_per_trade():
    """label_costs="realized": the label PnL of a decision is the sum of the back-to-back horizon-bar trades that
    start at it, each paying its entry and exit; "single" charges one round trip over the label horizon."""
    single = build_replay(TradeReplayConfig(synthetic={"n_bars": 3000}, label_costs="single"))
    realized = build_replay(TradeReplayConfig(synthetic={"n_bars": 3000}, label_costs="realized"))
    chained = sum(realized.strategy_pnl[k : realized.n_decisions - 3 + k] for k in range(4))  # (D - 3, S)
    np.testing.assert_allclose(realized.label_pnl[:-3], chained, rtol=0, atol=1e-12)  # stride = horizon = 32 / 4
    # Gross PnL is the same; realized pays 3 extra round trips of |position|: flat alone never pays.
    extra = single.label_pnl - realized.label_pnl  # (D, S)
    assert np.all(extra[:, 0] == 0.0) and np.all(extra[:-3, 1:3] == pytest.approx(3 * 2 * 0.0005))
    np.testing.assert_array_equal(realized.labels, np.argmax(realized.label_pnl, axis=1))
    # A worked example: price up 1% a bar, cost 1%, trades of 2 bars, labels over 4. Long earns 4 log(1.01) gross;
    # one round trip costs 0.02, two cost 0.04 (the last decision's label is cut at the last bar).
    close = 1.01 ** np.arange(40)
    frame = pd.DataFrame(
        {"open": close, "high": close, "low": close, "close": close, "volume": 1.0},
        index=pd.bdate_range("2020-01-01", periods=40, name="date"),
    )
    options = {"data": frame, "window": 8, "horizon": 2, "label_horizon": 4, "cost": 0.01}
    for costs, round_trips in (("single", 1), ("realized", 2)):
        replay = build_replay(TradeReplayConfig(**options, label_costs=costs))
        long = replay.label_pnl[:-2, 1]  # (D - 2,) decisions whose label window fits
        np.testing.assert_allclose(long, 4 * np.log(1.01) - round_trips * 0.02, rtol=0, atol=1e-12)
    # Labels over 5 bars with 2-bar trades: two round trips and half of a third.
    replay = build_replay(TradeReplayConfig(**{**options, "label_horizon": 5}, label_costs="realized"))
    np.testing.assert_allclose(replay.label_pnl[:-3, 1], 5 * np.log(1.01) - 2.5 * 0.02, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"label_costs='twice'.*expected one of \('realized', 'single'\)"):
        TradeReplayConfig(label_costs="twice")


def test_decision_points_and_splits(replay):
    t = replay.decision_bars
    assert t[0] == replay.window  # first bar whose window holds only valid features (bar 0 has none)
    assert replay.stride == replay.horizon and np.all(np.diff(t) == replay.stride)
    assert t[-1] + replay.horizon <= replay.n_bars - 1 < t[-1] + replay.stride + replay.horizon
    train, test = replay.split_indices("train"), replay.split_indices("test")
    assert np.all(t[train] + replay.horizon < replay.boundary_bar)  # no train label uses a test bar
    assert np.all(t[test] >= replay.boundary_bar)
    assert train[-1] < test[0] and np.all(np.diff(train) == 1) and np.all(np.diff(test) == 1)
    assert replay.boundary_bar == int(0.8 * replay.n_bars)
    assert len(test) == pytest.approx(0.2 * replay.n_decisions, abs=2)
    np.testing.assert_array_equal(replay.split_indices("all"), np.arange(replay.n_decisions))
    with pytest.raises(ValueError, match="split='valid'"):
        replay.split_indices("valid")


def test_default_market_strategies_differ_and_labels_spread(replay):
    pnl = replay.strategy_pnl
    equal = max(
        np.mean(np.abs(pnl[:, i] - pnl[:, j]) <= 1e-12) for i, j in itertools.combinations(range(8), 2)
    )
    assert equal <= 0.10
    shares = np.bincount(replay.labels, minlength=8) / replay.n_decisions
    assert shares.max() <= 0.50


def test_regimes_favour_different_strategies(replay):
    means = regime_mean_pnl(replay, "train")  # (K, 8)
    best = np.argmax(means, axis=1)
    assert len(set(best.tolist())) >= 5
    for k, name in enumerate(replay.regime_names):
        favoured = {
            "bull": "long",
            "bear": "short",
            "range": "mean_reversion",
            "swing": "momentum",
            "quiet": "vol_target",
        }.get(name)
        if favoured is not None:
            assert STRATEGIES[best[k]] == favoured, name
    chop = replay.regime_names.index("chop")
    assert np.all(means[chop, 3:7] < -0.01)  # every active rule bleeds in the whipsaw regime


def test_regime_oracle_beats_best_fixed_on_test(replay):
    train, test = replay.split_indices("train"), replay.split_indices("test")
    pnl = replay.strategy_pnl
    best_fixed = int(np.argmax(pnl[train].mean(axis=0)))
    oracle = regime_oracle_actions(replay, "train")
    assert oracle.shape == (replay.n_decisions,)
    regime_total = pnl[test, oracle[test]].sum()
    fixed_total = pnl[test, best_fixed].sum()
    random_total = pnl[test].mean(axis=1).sum()  # expected total of a uniformly random policy
    hindsight_total = pnl[test].max(axis=1).sum()
    assert regime_total > fixed_total + 3.0  # +300% of capital over the test split
    assert regime_total > random_total + 3.0
    assert hindsight_total > regime_total
    # The oracle is constant within a regime.
    for k in range(len(replay.regime_names)):
        assert len(set(oracle[replay.regimes == k].tolist())) == 1


def test_regime_oracle_needs_regimes():
    frame = generate_synthetic_market(SyntheticMarketConfig(n_bars=300)).drop(columns="regime")
    replay = build_replay(TradeReplayConfig(data=frame))
    assert replay.regimes is None and replay.regime_names is None
    with pytest.raises(ValueError, match="no true regimes"):
        regime_oracle_actions(replay)
