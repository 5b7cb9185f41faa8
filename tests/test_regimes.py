"""The regime model behind label_source="hmm": it recovers a known Markov-switching process, and its labels
never read a test bar."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from trm_act.envs import SyntheticMarketConfig, TradeReplayConfig, build_replay
from trm_act.envs.regimes import fit_regime_hmm, most_probable_states
from trm_act.envs.synthetic import generate_synthetic_market

SMALL = {"n_bars": 3000, "seed": 3}


def _simulate(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A two-state AR(1) switching process with volume levels: (ret, volume, true states)."""
    rng = np.random.default_rng(seed)
    ar, sigma, level = np.array([0.5, -0.4]), np.array([1.0, 2.0]), np.array([-1.0, 1.0])
    states = np.empty(n, dtype=np.int64)
    ret, volume = np.empty(n), np.empty(n)
    state, previous = 0, 0.0
    for t in range(n):
        if rng.random() < 0.02:  # mean stay 50 bars
            state = 1 - state
        states[t] = state
        ret[t] = ar[state] * previous + sigma[state] * rng.standard_normal()
        volume[t] = level[state] + 0.5 * rng.standard_normal()
        previous = ret[t]
    return ret, volume, states


def test_fit_recovers_a_known_switching_process():
    ret, volume, truth = _simulate(4000)
    hmm = fit_regime_hmm(ret, volume, 2)
    order = np.argsort(hmm.volume_mean)  # fitted state order is arbitrary: sort by volume level
    np.testing.assert_allclose(hmm.ar[order], [0.5, -0.4], atol=0.08)
    np.testing.assert_allclose(hmm.sigma[order], [1.0, 2.0], rtol=0.1)
    np.testing.assert_allclose(hmm.volume_mean[order], [-1.0, 1.0], atol=0.1)
    np.testing.assert_allclose(np.diag(hmm.transition), 0.98, atol=0.015)
    states = most_probable_states(hmm, ret, volume)
    accuracy = max((states == truth).mean(), (states != truth).mean())
    assert accuracy > 0.97


def test_fit_validates_its_input():
    with pytest.raises(ValueError, match="T >= 10 x n_states"):
        fit_regime_hmm(np.zeros(15), np.zeros(15), 2)
    with pytest.raises(ValueError, match="label_states=1"):
        TradeReplayConfig(label_source="hmm", label_states=1)


def test_hmm_labels_never_read_a_test_bar():
    frame = generate_synthetic_market(SyntheticMarketConfig(**SMALL)).drop(columns="regime")
    base = build_replay(TradeReplayConfig(data=frame, window=16, label_source="hmm"))
    changed = frame.copy()
    test_rows = np.arange(base.boundary_bar, len(frame))
    scale = np.linspace(1.0, 3.0, test_rows.size)  # a different future: prices drift away, volume triples
    for column in ("open", "high", "low", "close"):
        changed.iloc[test_rows, changed.columns.get_loc(column)] *= scale
    changed.iloc[test_rows, changed.columns.get_loc("volume")] *= 3.0
    other = build_replay(TradeReplayConfig(data=changed, window=16, label_source="hmm"))
    train = base.split_indices("train")
    assert other.boundary_bar == base.boundary_bar
    np.testing.assert_array_equal(other.labels[train], base.labels[train])
    assert (other.features[test_rows] != base.features[test_rows]).any()  # the future did change


def test_hmm_labels_are_closer_to_the_regimes_than_hindsight_labels():
    options = {"window": 16, "label_horizon": 32, "synthetic": {"n_bars": 8000, "seed": 5}}
    hindsight = build_replay(TradeReplayConfig(**options))
    model = build_replay(TradeReplayConfig(**options, label_source="hmm", label_states=6))
    train = model.split_indices("train")
    oracle = model.regime_oracle_actions("train")[train]
    agree_model, agree_hindsight = (
        (model.labels[train] == oracle).mean(),
        (hindsight.labels[train] == oracle).mean(),
    )
    assert agree_model > agree_hindsight + 0.05, (agree_model, agree_hindsight)
    # Each state gets one strategy: the labels change far less often than the hindsight labels do.
    switches = [np.mean(np.diff(r.labels[train]) != 0) for r in (model, hindsight)]
    assert switches[0] < 0.5 * switches[1], switches
    np.testing.assert_array_equal(model.strategy_pnl, hindsight.strategy_pnl)  # rewards untouched


def test_hmm_labels_refuse_a_universe():
    frames = {
        symbol: generate_synthetic_market(SyntheticMarketConfig(n_bars=600, seed=s)).drop(columns="regime")
        for symbol, s in zip(("AAA", "BBB"), itertools.count(), strict=False)
    }
    with pytest.raises(ValueError, match="label_source='hmm' fits one regime model to one instrument"):
        build_replay(TradeReplayConfig(data=frames, window=16, label_source="hmm"))
