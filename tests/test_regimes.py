"""The regime model behind label_source="hmm": it recovers a known Markov-switching process, its labels never
read a test bar, and its blocked forward-backward reproduces the sequential one it replaced."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
from trm_act.envs import SyntheticMarketConfig, TradeReplayConfig, build_replay, regimes
from trm_act.envs import replay as replay_module
from trm_act.envs.features import FEATURE_NAMES, ewm_mean
from trm_act.envs.regimes import fit_regime_hmm, most_probable_states
from trm_act.envs.synthetic import generate_synthetic_market

from trm_act.baselines import regime_oracle_actions

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
    oracle = regime_oracle_actions(model, "train")[train]
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


# --- the blocked forward-backward against the sequential loop it replaced (issue 24 part 3) -----------------

PARAMS = ("intercept", "ar", "sigma", "volume_mean", "volume_std")


def _posterior(hmm, ret, volume, method):
    log_emission = regimes._log_emission(ret, volume, **{name: getattr(hmm, name) for name in PARAMS})
    smoother = regimes._forward_backward if method == "scan" else regimes._forward_backward_loop
    return smoother(log_emission, hmm.transition, hmm.initial)


def test_scan_reproduces_the_loop_on_the_default_market(monkeypatch):
    # The default market and label_states, as a DataFrame so that each build runs (no cache): once as shipped
    # (scan), once with the sequential reference (loop) at both call sites of replay.py.
    frame = generate_synthetic_market(SyntheticMarketConfig()).drop(columns="regime")
    config = TradeReplayConfig(data=frame, label_source="hmm")
    fits, replays = {}, {}
    for method in regimes.METHODS:

        def fit(*args, method=method, **kwargs):
            fits[method] = fit_regime_hmm(*args, method=method, **kwargs)
            return fits[method]

        monkeypatch.setattr(replay_module, "fit_regime_hmm", fit)
        monkeypatch.setattr(
            replay_module, "most_probable_states", functools.partial(most_probable_states, method=method)
        )
        replays[method] = build_replay(config)
    np.testing.assert_array_equal(replays["scan"].labels, replays["loop"].labels)
    assert fits["scan"].iterations == fits["loop"].iterations
    ret = replays["scan"].features[1:, FEATURE_NAMES.index("ret")]
    volume = replays["scan"].features[1:, FEATURE_NAMES.index("volume_z")]
    # Each fit's posteriors over the whole series with its own forward-backward, then both at the same model.
    scan, counts_scan, log_likelihood_scan = _posterior(fits["scan"], ret, volume, "scan")
    loop, counts_loop, log_likelihood_loop = _posterior(fits["loop"], ret, volume, "loop")
    assert np.abs(scan - loop).max() <= 1e-9
    np.testing.assert_array_equal(scan.argmax(axis=1), loop.argmax(axis=1))
    scan, counts_scan, log_likelihood_scan = _posterior(fits["loop"], ret, volume, "scan")
    assert np.abs(scan - loop).max() <= 1e-9
    np.testing.assert_allclose(counts_scan, counts_loop, rtol=1e-9)
    assert log_likelihood_scan == pytest.approx(log_likelihood_loop, rel=1e-12)


def _random_chain(rng, k, n):
    """A transition matrix with some near-zero moves, an initial distribution, log-emissions with outliers."""
    transition = rng.random((k, k)) ** 4 + np.eye(k) * rng.choice([0.0, 5.0, 50.0])
    transition[rng.random((k, k)) < 0.2] *= 1e-30
    transition /= transition.sum(axis=1, keepdims=True)
    initial = rng.dirichlet(np.ones(k))
    log_emission = rng.normal(size=(n, k)) * rng.choice([0.1, 3.0, 30.0])
    log_emission[rng.random(n) < 0.01] -= 800.0  # bars every state finds impossible (exp underflows)
    return log_emission, transition, initial


@pytest.mark.parametrize(
    ("k", "n"), [(2, 2), (3, 3), (2, 1024), (4, 1025), (16, 2049), (5, 5000), (16, 33_000)]
)
def test_scan_matches_the_loop_on_random_chains(k, n):
    # Lengths around the block size (1024): empty cells before bar 0, none, one block, several.
    log_emission, transition, initial = _random_chain(np.random.default_rng(k * n), k, n)
    loop = regimes._forward_backward_loop(log_emission, transition, initial)
    scan = regimes._forward_backward(log_emission, transition, initial)
    assert np.abs(scan[0] - loop[0]).max() <= 1e-9
    np.testing.assert_allclose(scan[1], loop[1], rtol=1e-9, atol=1e-9)
    assert scan[2] == pytest.approx(loop[2], rel=1e-12)


def test_scan_is_exact_when_the_chain_never_forgets_its_start():
    # Two states that look alike and almost never switch: the filter keeps its prior between them for good, so
    # rerun rounds cannot settle block after block; past _MAX_ROUNDS the exact two-level scan takes over.
    n, k = 20_000, 4
    transition = np.full((k, k), 1e-9)
    np.fill_diagonal(transition, 1.0 - 3e-9)
    log_emission = np.zeros((n, k))
    log_emission[:, :2] = np.random.default_rng(0).normal(size=(n, 1)) * 0.01
    initial = np.array([0.7, 0.2, 0.05, 0.05])
    smoother = regimes._Smoother(np.zeros(n), np.zeros(n), k)
    smoother.set_log_emission(log_emission)
    smoother.smooth(transition, initial)
    assert min(smoother.rounds) > regimes._MAX_ROUNDS  # both directions took the exact path
    loop = regimes._forward_backward_loop(log_emission, transition, initial)[0]
    assert np.abs(smoother.posterior() - loop).max() <= 1e-9
    assert loop[-1, 0] / loop[-1, 1] == pytest.approx(3.5, rel=1e-3)  # the prior's 0.7 : 0.2, still


def _kmeans_reference(ret, volume, n_states, seed):
    """The starting partition as the full-array k-means computed it before the fit was chunked."""
    lagged = np.concatenate(([0.0], ret[:-1]))
    summaries = np.column_stack(
        (
            np.log(ewm_mean(np.square(ret), 10.0) + 1e-6),
            ewm_mean(volume, 10.0),
            ewm_mean(ret * lagged, 20.0) / (ewm_mean(np.square(ret), 20.0) + 1e-6),
        )
    )
    summaries = (summaries - summaries.mean(axis=0)) / (summaries.std(axis=0) + 1e-12)
    centres = summaries[np.random.default_rng(seed).choice(summaries.shape[0], n_states, replace=False)]
    for _ in range(20):
        nearest = np.square(summaries[:, None, :] - centres[None]).sum(axis=-1).argmin(axis=1)
        for state in range(n_states):
            if (nearest == state).any():
                centres[state] = summaries[nearest == state].mean(axis=0)
    return nearest


def test_the_chunked_starting_partition_is_the_full_array_one_bit_for_bit(monkeypatch):
    monkeypatch.setattr(regimes, "_CHUNK_BARS", 128)  # several chunks (of 4 x 128 bars) on 3000 bars
    ret, volume, _ = _simulate(3000, seed=4)
    for n_states in (2, 6, 16):
        np.testing.assert_array_equal(
            regimes._initial_states(ret, volume, n_states, 0), _kmeans_reference(ret, volume, n_states, 0)
        )


def test_fit_and_labels_validate_the_method():
    ret, volume, _ = _simulate(200)
    with pytest.raises(ValueError, match=r"method='viterbi': expected one of \('scan', 'loop'\)"):
        fit_regime_hmm(ret, volume, 2, method="viterbi")
    hmm = fit_regime_hmm(ret, volume, 2)
    with pytest.raises(ValueError, match="method='viterbi'"):
        most_probable_states(hmm, ret, volume, method="viterbi")
    np.testing.assert_array_equal(
        most_probable_states(hmm, ret, volume), most_probable_states(hmm, ret, volume, method="loop")
    )


def test_bench_labels_rows_times_the_fit_in_a_child_and_compares_the_loop(monkeypatch, capsys):
    from trm_act.bench import busy, labels

    monkeypatch.setattr(busy, "matmul_gflops", lambda: 100.0)  # skip the torch probe
    assert labels.main(["--rows", "3000", "--peer-rows", "600", "--states", "3"]) == 0
    out = capsys.readouterr().out
    assert "| scan (blocked) | 3,000 |" in out and "| loop (old, sequential) | 600 |" in out
    assert "labels identical" in out
    assert "(PASS: bar 60 s)" in out and "(PASS: bar 1.5 GiB)" in out
    ret, volume = labels.model_inputs(500, "random-walk")
    assert ret.shape == volume.shape == (500,) and np.isfinite(ret).all() and volume.std() > 0
