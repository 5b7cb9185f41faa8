"""trm_act.Policy: loading a run, decide, the exact bar-by-bar features, streams, and python -m trm_act.predict."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import HORIZON, REPO, WINDOW, python
from helpers import bars as market
from helpers import tiny_run_config as tiny_config
from helpers import varied_halting as with_halting
from trm_act.envs import (
    STRATEGIES,
    TradeReplayConfig,
    build_replay,
    example_csv,
    load_ohlcv,
)
from trm_act.envs.features import compute_features

from trm_act import Policy
from trm_act.act import act_predict
from trm_act.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from trm_act.model import RecurrentTRM, TRMConfig
from trm_act.runtime import decisions_frame
from trm_act.stream_features import FeatureState, FeatureStream


@pytest.fixture
def runs(trained_runs) -> dict[str, Path]:
    """A tiny trained run of each carry (30 steps), shared by the suite."""
    return trained_runs


def varied_halting(policy: Policy, frame: pd.DataFrame) -> Policy:
    """The policy with a halt head that halts about half of ``frame``'s windows after one step (see helpers)."""
    feats = compute_features(*(frame[k].to_numpy() for k in ("open", "high", "low", "close", "volume")))
    windows = np.lib.stride_tricks.sliding_window_view(feats, (WINDOW, feats.shape[1]))[1::7, 0]
    with_halting(policy.model, torch.from_numpy(np.ascontiguousarray(windows)))  # (N, W, F)
    return policy


def feed(stream, frame: pd.DataFrame) -> list:
    return [d for _, row in frame.iterrows() if (d := stream.update(row)) is not None]


def as_decide(frame: pd.DataFrame, like: pd.DataFrame) -> pd.DataFrame:
    """Stream decisions' frame with the datetime unit of ``like``'s index (pandas infers units per source)."""
    if isinstance(frame.index, pd.MultiIndex):
        return frame.set_index(
            frame.index.set_levels(frame.index.levels[1].as_unit(like.index.levels[1].unit), level=1)
        )
    frame.index = frame.index.as_unit(like.index.unit)
    return frame


# ---------------------------------------------------------------------- package


def test_the_design_names_import_from_the_package_and_import_trm_act_stays_light():
    from trm_act import Policy as P
    from trm_act import RecurrentTRM as R
    from trm_act import TradeReplayEnv, TRMConfig, TRMLoss, act_predict  # noqa: F401

    assert P is Policy and R is RecurrentTRM
    code = (
        "import sys, trm_act; print(sorted(m for m in ('torch', 'onnxruntime', 'onnx') if m in sys.modules))"
    )
    out = python("-c", code, cwd=REPO)  # a fresh interpreter: what importing trm_act alone loads
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------- exact bar-by-bar features


def _random_bars(n: int = 4000) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    close[300:420] = close[300]  # a constant stretch: pandas' equal-value guards
    open_ = np.r_[close[0], close[:-1]]
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.01, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.01, n))
    high[300:420] = low[300:420] = open_[300:420] = close[300]
    volume = rng.integers(0, 1000, n).astype(float)
    volume[:60] = 0.0  # a volume-less start
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": volume})


@pytest.mark.parametrize(
    "frame",
    [market(seed=3, n_bars=20_000), _random_bars(), load_ohlcv(example_csv())],
    ids=["synthetic-20000", "constant-stretch-zero-volume", "example-csv"],
)
def test_stream_features_equal_compute_features_bit_for_bit(frame):
    columns = [frame[k].to_numpy(dtype=np.float64) for k in ("open", "high", "low", "close", "volume")]
    expected = compute_features(*columns)  # (T, F)
    stream = FeatureStream()
    rows = []
    for t in range(len(frame)):
        rows.append(stream.update(*(float(c[t]) for c in columns)))
        if t == len(frame) // 2:  # through JSON and back: the state is exact
            stream = FeatureStream(FeatureState.from_dict(json.loads(json.dumps(stream.state.to_dict()))))
    got = np.stack(rows)
    bad = np.argwhere(got != expected)
    assert bad.size == 0, f"first mismatch at bar {bad[0][0]}, feature {bad[0][1]}"


# ---------------------------------------------------------------------- loading


def test_load_restores_the_ema_weights_env_and_halting_rule(runs):
    policy = Policy.load(runs["fresh"])
    state = load_checkpoint(runs["fresh"] / "checkpoint.pt")
    assert policy.weights == "ema" and state["ema"] is not None
    for name, value in policy.model.state_dict().items():
        torch.testing.assert_close(value, state["ema"][name], rtol=0, atol=0, msg=name)
    assert not torch.equal(state["ema"]["in_proj.weight"], state["model"]["in_proj.weight"])
    assert policy.window == WINDOW and policy.env["horizon"] == HORIZON and policy.max_steps == 3
    assert policy.step == 30 and policy.stride == 1
    from_file = Policy.load(runs["fresh"] / "checkpoint.pt")
    frame = market(n_bars=300)
    pd.testing.assert_frame_equal(from_file.decide(frame), policy.decide(frame), check_exact=True)
    assert Policy.load(runs["belief"]).stride == HORIZON  # env.stride None = horizon


def _reference_model(run_dir: Path) -> RecurrentTRM:
    """The run's EMA model rebuilt by hand (no Policy, no hook), as evaluation would use it."""
    state = load_checkpoint(run_dir / "checkpoint.pt")
    model = RecurrentTRM(TRMConfig(**state["model_config"]))
    model.load_state_dict(state["ema"])
    return model.eval()


def test_fresh_decisions_equal_act_predict_on_the_held_out_split(runs):
    policy = Policy.load(runs["fresh"])
    replay = build_replay(tiny_config("fresh").env)
    test_idx = replay.split_indices("test")
    decisions = policy.decide("synthetic")  # the run's own market, every bar from bar `window` on
    rows = replay.decision_bars[test_idx] - WINDOW
    assert (decisions.index[rows] == replay.timestamps[replay.decision_bars[test_idx]]).all()
    reference = act_predict(_reference_model(runs["fresh"]), torch.from_numpy(replay.observations(test_idx)))
    np.testing.assert_array_equal(decisions["action"].to_numpy()[rows], reference.actions.numpy())
    np.testing.assert_array_equal(decisions["steps"].to_numpy()[rows], reference.steps.numpy())
    probabilities = decisions[[f"p_{s}" for s in STRATEGIES]].to_numpy()[rows]
    np.testing.assert_allclose(probabilities, torch.softmax(reference.task_logits, -1).numpy(), atol=1e-6)


def test_belief_decisions_equal_a_walk_of_act_predict_through_the_market(runs):
    policy = Policy.load(runs["belief"])
    replay = build_replay(tiny_config("belief").env)
    idx = replay.split_indices("all")  # every stride-th bar from bar `window`: the policy's cadence
    decisions = policy.decide("synthetic")
    model = _reference_model(runs["belief"])
    obs = torch.from_numpy(replay.observations(idx))
    actions, steps, belief = [], [], None
    for i in range(len(idx)):
        result = act_predict(model, obs[i : i + 1], belief=belief)
        belief = result.belief
        actions.append(int(result.actions[0]))
        steps.append(int(result.steps[0]))
    n = len(idx)  # the policy also decides on the last bars, whose trades would run past the data
    assert (decisions.index[:n] == replay.timestamps[replay.decision_bars[idx]]).all()
    np.testing.assert_array_equal(decisions["action"].to_numpy()[:n], actions)
    np.testing.assert_array_equal(decisions["steps"].to_numpy()[:n], steps)


# ---------------------------------------------------------------------- decide


@pytest.mark.parametrize("carry", ["fresh", "belief"])
def test_decide_rows_columns_and_cadence(runs, carry):
    policy = Policy.load(runs[carry])
    frame = market(n_bars=400)
    decisions = policy.decide(frame)
    stride = 1 if carry == "fresh" else HORIZON
    assert list(decisions.index) == list(frame.index[WINDOW::stride])
    assert decisions.index.name == "timestamp"
    assert list(decisions.columns) == [
        "strategy",
        "action",
        "steps",
        *(f"p_{s}" for s in STRATEGIES),
        "halt_logit",
    ]
    assert (decisions["strategy"] == [STRATEGIES[a] for a in decisions["action"]]).all()
    probabilities = decisions.filter(like="p_").to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-12)
    assert (decisions["action"].to_numpy() == probabilities.argmax(axis=1)).all()
    assert decisions["steps"].between(1, policy.max_steps).all()


@pytest.mark.parametrize("carry", ["fresh", "belief"])
def test_decisions_are_causal(runs, carry):
    policy = varied_halting(Policy.load(runs[carry]), market())
    frame = market(n_bars=600)
    full = policy.decide(frame)
    for t in (WINDOW, WINDOW + 1, 123, 124, 400, 599):
        part = policy.decide(frame.iloc[: t + 1])
        assert part.index.max() <= frame.index[t]
        pd.testing.assert_frame_equal(part, full[full.index <= frame.index[t]], check_exact=True)


def test_decide_reads_a_csv_with_adj_close_like_training(runs, tmp_path):
    policy = Policy.load(runs["fresh"])
    frame = market(n_bars=300)
    factor = np.linspace(0.5, 1.0, len(frame))  # a split/dividend factor that changes over time
    raw = frame.assign(**{"Adj Close": frame["close"] * factor})
    raw.to_csv(tmp_path / "bars.csv", index_label="Date")
    scale = raw["Adj Close"] / raw["close"]  # the factor as training's loader computes it
    adjusted = frame[["open", "high", "low", "close"]].mul(scale, axis=0).assign(volume=frame["volume"])
    from_csv = policy.decide(tmp_path / "bars.csv")
    expected = policy.decide(adjusted)
    from_csv.index = from_csv.index.as_unit(expected.index.unit)
    pd.testing.assert_frame_equal(from_csv, expected, check_exact=True)
    stream = policy.stream()
    streamed = feed(stream, raw)  # the stream applies Adj Close bar by bar
    pd.testing.assert_frame_equal(as_decide(decisions_frame(streamed), expected), expected, check_exact=True)


def test_decide_on_a_universe_gives_one_row_per_symbol_and_bar(runs, tmp_path):
    policy = Policy.load(runs["belief"])
    frames = {"AAA": market(seed=1, n_bars=300), "BBB": market(seed=2, n_bars=500)}
    decisions = policy.decide(frames)
    assert decisions.index.names == ["symbol", "timestamp"]
    for symbol, frame in frames.items():
        alone = policy.decide(frame)
        pd.testing.assert_frame_equal(decisions.loc[symbol], alone, check_exact=True)
    for symbol, frame in frames.items():
        frame.to_csv(tmp_path / f"{symbol}.csv", index_label="Date")
    from_dir = policy.decide(tmp_path)
    from_dir.index = from_dir.index.set_levels(from_dir.index.levels[1].as_unit("ns"), level=1)
    expected = decisions.copy()
    expected.index = expected.index.set_levels(expected.index.levels[1].as_unit("ns"), level=1)
    pd.testing.assert_frame_equal(from_dir, expected, check_exact=True)


# ---------------------------------------------------------------------- streams


@pytest.mark.slow
@pytest.mark.parametrize("carry", ["fresh", "belief"])
def test_a_stream_makes_exactly_the_decisions_of_decide_also_after_a_resume(runs, carry):
    policy = varied_halting(Policy.load(runs[carry]), market())
    frame = market(seed=11, n_bars=2000)
    expected = policy.decide(frame)
    assert expected["steps"].nunique() >= 2  # the halting rule decides per bar, not at the cap
    streamed = decisions_frame(feed(policy.stream(), frame))
    pd.testing.assert_frame_equal(as_decide(streamed, expected), expected, check_exact=True)

    first = policy.stream()
    head = feed(first, frame.iloc[:1000])
    state = json.loads(json.dumps(first.state_dict()))  # what a live process would write and read back
    resumed = Policy.load(runs[carry]).stream()  # a new process: a new policy, a new stream
    varied_halting(resumed.runtime, market())
    resumed.load_state_dict(state)
    if carry == "belief":
        np.testing.assert_array_equal(resumed.belief, first.belief)
    tail = feed(resumed, frame.iloc[1000:])
    pd.testing.assert_frame_equal(
        as_decide(decisions_frame(head + tail), expected), expected, check_exact=True
    )


@pytest.mark.slow
@pytest.mark.parametrize("carry", ["fresh", "belief"])
def test_a_compiled_policy_streams_as_it_decides_and_decides_as_eager(runs, carry):
    eager = varied_halting(Policy.load(runs[carry]), market())
    compiled = Policy(eager.model, eager.env, compile=True)
    frame = market(seed=11, n_bars=600)
    expected = compiled.decide(frame)
    assert expected["steps"].nunique() >= 2
    streamed = decisions_frame(feed(compiled.stream(), frame))  # one row per step: torch's size-1 graph
    pd.testing.assert_frame_equal(as_decide(streamed, expected), expected, check_exact=True)
    reference = eager.decide(frame)
    np.testing.assert_array_equal(expected["action"].to_numpy(), reference["action"].to_numpy())
    np.testing.assert_array_equal(expected["steps"].to_numpy(), reference["steps"].to_numpy())
    probabilities = [f"p_{s}" for s in STRATEGIES]
    np.testing.assert_allclose(
        expected[probabilities].to_numpy(), reference[probabilities].to_numpy(), rtol=0, atol=1e-5
    )
    # the random halt head's logits reach ~100 and are sums of terms that large: rounding scales with them
    scale = float(np.abs(reference["halt_logit"]).max())
    np.testing.assert_allclose(expected["halt_logit"], reference["halt_logit"], rtol=0, atol=1e-6 * scale)
    assert not expected[probabilities].equals(reference[probabilities])  # it did run other kernels


def test_compile_is_refused_in_one_line_where_it_cannot_run(runs, monkeypatch):
    with pytest.raises(ValueError, match=r"compile='yes': expected True or False"):
        Policy.load(runs["fresh"], compile="yes")
    monkeypatch.setattr("trm_act.policy.has_cxx_compiler", lambda: False)
    with pytest.raises(ValueError, match=r"needs a C\+\+ compiler.*install g\+\+"):
        Policy.load(runs["fresh"], compile=True)
    assert Policy.load(runs["fresh"]).engine.compiled is False


def test_a_stream_batch_decides_as_each_instrument_alone(runs):
    policy = varied_halting(Policy.load(runs["belief"]), market())
    frames = {f"S{k}": market(seed=20 + k, n_bars=300) for k in range(3)}
    batch = policy.stream_batch(list(frames))
    decisions = []
    for t in range(300):
        out = batch.update(
            {s: f.iloc[t] for s, f in frames.items() if not (s == "S2" and t % 5 == 0 and t > 200)}
        )
        decisions.extend(out.values())
    expected = policy.decide({s: f for s, f in frames.items() if s != "S2"})
    got = decisions_frame(d for d in decisions if d.symbol != "S2")
    got = got.sort_index(level=["symbol", "timestamp"])
    pd.testing.assert_frame_equal(as_decide(got, expected), expected, check_exact=True)


def test_a_stream_holds_a_bounded_state(runs):
    policy = Policy.load(runs["belief"])
    frame = market(n_bars=3000)
    stream = policy.stream()

    def numbers(value) -> int:  # leaves of the state: what it holds, whatever their digits
        if isinstance(value, dict):
            return sum(numbers(v) for v in value.values())
        return sum(numbers(v) for v in value) if isinstance(value, list) else 1

    sizes = []
    for t, (_, row) in enumerate(frame.iterrows()):
        stream.update(row)
        if t in (100, 2999):
            sizes.append(numbers(stream.state_dict()))
    assert stream.bars == 3000
    assert sizes[0] == sizes[1]  # nothing grows with the history
    assert np.asarray(stream.state_dict()["window"]).shape == (WINDOW, 10)


# ---------------------------------------------------------------------- bad input


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_a_frame_missing_a_column_is_refused_in_one_line(runs):
    policy = Policy.load(runs["fresh"])
    with pytest.raises(ValueError, match="missing column 'close'") as exc:
        policy.decide(market(n_bars=100).drop(columns="close"))
    one_line(exc)


def test_fewer_bars_than_the_window_give_no_rows_and_say_why(runs):
    policy = Policy.load(runs["fresh"])
    with pytest.warns(UserWarning, match=r"10 bars, but a decision needs window \+ 1 = 17"):
        decisions = policy.decide(market(n_bars=10))
    assert decisions.empty and "p_long" in decisions.columns
    assert "10 bars" in decisions.attrs["note"]


@pytest.mark.parametrize("carry", ["fresh", "belief"])
def test_a_bad_bar_is_refused_and_changes_nothing(runs, carry):
    policy = varied_halting(Policy.load(runs[carry]), market())
    frame = market(n_bars=200)
    clean, dirty = policy.stream(), policy.stream()
    feed(clean, frame.iloc[:100])
    feed(dirty, frame.iloc[:100])
    before = dirty.state_dict()
    nan_bar = frame.iloc[100].copy()
    nan_bar["close"] = np.nan
    with pytest.raises(ValueError, match="close=nan") as exc:
        dirty.update(nan_bar)
    one_line(exc)
    with pytest.raises(ValueError, match="not after the previous bar"):
        dirty.update(frame.iloc[50])  # an old bar
    with pytest.raises(ValueError, match="high must be the bar's maximum"):
        dirty.update(frame.iloc[100].to_dict() | {"timestamp": frame.index[100], "high": 0.1})
    with pytest.raises(ValueError, match="missing 'close'"):
        dirty.update({"timestamp": frame.index[100], "open": 1.0, "high": 1.0, "low": 1.0})
    assert dirty.state_dict() == before  # the belief, the features, the window: all as they were
    pd.testing.assert_frame_equal(
        decisions_frame(feed(dirty, frame.iloc[100:])),
        decisions_frame(feed(clean, frame.iloc[100:])),
        check_exact=True,
    )


def test_a_state_of_another_policy_is_refused_and_changes_nothing(runs):
    fresh, belief = Policy.load(runs["fresh"]).stream(), Policy.load(runs["belief"]).stream()
    feed(belief, market(n_bars=50))
    before = belief.state_dict()
    with pytest.raises(ValueError, match="load the state into a stream of the policy that wrote it") as exc:
        belief.load_state_dict(fresh.state_dict())
    one_line(exc)
    with pytest.raises(ValueError, match=r"expected 'trm_act\.stream/1'"):
        belief.load_state_dict({"format": "other"})
    assert belief.state_dict() == before


def test_checkpoints_of_another_format_or_version_are_refused_in_one_line(runs, tmp_path):
    torch.save({"format": "someone-else/1", "weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="written by another tool or version") as exc:
        Policy.load(tmp_path / "other.pt")
    one_line(exc)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"not a torch file that loads safely \(is it a trm_act") as exc:
        Policy.load(tmp_path / "garbage.pt")
    assert "weights_only" not in str(exc.value)  # torch's advice to load a foreign file unsafely is not passed on
    one_line(exc)
    save_checkpoint(tmp_path / "old.pt", {"config": {}, "model": {}})
    with pytest.raises(CheckpointError, match="missing model_config, ema") as exc:
        Policy.load(tmp_path / "old.pt")
    one_line(exc)
    state = load_checkpoint(runs["fresh"] / "checkpoint.pt")
    state["model_config"] = state["model_config"] | {"dream_steps": 3}
    save_checkpoint(tmp_path / "newer.pt", state)
    with pytest.raises(CheckpointError, match=r"option\(s\) \['dream_steps'\]") as exc:
        Policy.load(tmp_path / "newer.pt")
    one_line(exc)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        Policy.load(tmp_path / "nowhere")


# ---------------------------------------------------------------------- python -m trm_act.predict


@pytest.fixture
def predict_cli(call_main, tmp_path):
    """``python -m trm_act.predict <argv>`` in ``tmp_path``, run in process."""
    from trm_act.predict import main

    return lambda *argv: call_main(main, *argv, cwd=tmp_path)


def test_predict_writes_the_decisions_and_backtests_them(runs, tmp_path, predict_cli):
    frame = market(seed=5, n_bars=1500)
    frame.to_csv(tmp_path / "new.csv", index_label="Date")
    result = predict_cli("--run", str(runs["belief"]), "--data", "new.csv", "--out", "out/decisions.csv")
    assert result.returncode == 1 and result.stderr.startswith("error: cannot write")  # no out/ directory
    assert result.stderr.count("\n") == 1
    result = predict_cli("--run", str(runs["belief"]), "--data", "new.csv", "--out", "decisions.csv")
    assert result.returncode == 0, result.stderr
    written = pd.read_csv(tmp_path / "decisions.csv", index_col="timestamp", parse_dates=True)
    policy = Policy.load(runs["belief"])
    expected = policy.decide(tmp_path / "new.csv")
    np.testing.assert_array_equal(written["action"].to_numpy(), expected["action"].to_numpy())
    np.testing.assert_allclose(written["p_long"].to_numpy(), expected["p_long"].to_numpy(), rtol=1e-12)
    out = result.stdout
    for text in (
        "backtest: 370 trades of 4 bars every 4 bars",
        "model (mean",
        "long",
        "best fixed in hindsight",
    ):
        assert text in out
    # The model's PnL is the env's strategy PnL at the decided actions.
    replay = build_replay(
        TradeReplayConfig(data=str(tmp_path / "new.csv"), window=WINDOW, horizon=HORIZON, split="all")
    )
    actions = expected["action"].to_numpy()[: replay.n_decisions]
    pnl = replay.strategy_pnl[np.arange(replay.n_decisions), actions].sum()
    model_line = next(line for line in out.splitlines() if line.startswith("model (mean"))
    assert f"{pnl:+.3f}" in model_line


def test_predict_reports_user_mistakes_in_one_line(runs, tmp_path, capsys, monkeypatch):
    from trm_act.predict import main

    monkeypatch.chdir(tmp_path)
    market(n_bars=300).drop(columns="close").to_csv("noclose.csv", index_label="Date")
    market(n_bars=10).to_csv("short.csv", index_label="Date")
    cases = [
        (["--run", str(runs["fresh"]), "--data", "noclose.csv"], "missing column 'close'"),
        (["--run", str(runs["fresh"]), "--data", "short.csv"], "error: short.csv: 10 bars, but a decision needs"),
        (["--run", str(runs["fresh"]), "--data", "absent.csv"], "file not found"),
        (["--run", str(tmp_path / "nowhere"), "--data", "short.csv"], "no checkpoint at"),
        (["--run", str(runs["fresh"]), "--data", "short.csv", "--threads", "0"], "--threads 0"),
        (["--run", str(runs["fresh"])], "the following arguments are required: --data"),
    ]
    for args, text in cases:
        try:
            status = main(args)
        except SystemExit as exc:  # argparse's own mistakes
            status = exc.code
        err = capsys.readouterr().err
        assert status == 2, (args, err)
        assert err.startswith("error: ") and text in err, err
        assert err.count("\n") == 1 and "Traceback" not in err and err.count("no decisions") <= 1
    assert not (tmp_path / "decisions.csv").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the clean path warns about nothing
        Policy.load(runs["fresh"]).decide(market(n_bars=100))
