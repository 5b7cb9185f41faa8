"""A universe of instruments: every data form, per-instrument features, one calendar cutoff, envs, evaluation, CLI."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import bars
from trm_act.envs import (
    TradeReplayConfig,
    TradeReplayEnv,
    TradeReplayVectorEnv,
    build_replay,
)
from trm_act.envs import replay as replay_module
from trm_act.envs.universe import MissingDependencyError, load_universe

from trm_act.baselines import best_fixed_actions
from trm_act.evaluation import evaluate
from trm_act.model import RecurrentTRM, TRMConfig

SMALL = {"window": 16, "horizon": 4, "test_fraction": 0.25}


def market(seed: int, n_bars: int, start: str) -> pd.DataFrame:
    return bars(n_bars, seed, start_date=start)


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    """Three instruments with different date ranges; BBB has a gap of 40 missing bars."""
    bbb = market(2, 460, "2020-03-02")
    return {
        "AAA": market(1, 400, "2020-01-01"),
        "BBB": pd.concat([bbb.iloc[:150], bbb.iloc[190:]]),
        "CCC": market(3, 300, "2020-06-01"),
    }


def write_dir(frames: dict[str, pd.DataFrame], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for symbol, frame in frames.items():
        frame.to_csv(folder / f"{symbol}.csv", index_label="Date")
    return folder


def long_frame(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One table, rows interleaved by date (as vendors ship them), with a Ticker column."""
    parts = [f.rename_axis("Date").reset_index().assign(Ticker=s) for s, f in frames.items()]
    return pd.concat(parts).sort_values(["Date", "Ticker"], kind="stable").reset_index(drop=True)


def assert_same_replay(a, b) -> None:
    assert a.symbols == b.symbols
    for name in ("features", "positions", "close", "decision_bars", "strategy_pnl", "labels", "symbol_index"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(a.boundary_bars, b.boundary_bars)
    assert a.boundary_time == b.boundary_time
    for split in ("train", "test", "all"):
        np.testing.assert_array_equal(a.split_indices(split), b.split_indices(split))


@pytest.mark.parametrize("form", ["directory", "glob", "long-csv", "long-parquet", "dict-reordered"])
def test_every_form_gives_the_same_replay(frames, tmp_path, form):
    expected = build_replay(TradeReplayConfig(data=frames, **SMALL))
    if form == "directory":
        data = write_dir(frames, tmp_path / "prices")
    elif form == "glob":
        write_dir(frames, tmp_path / "prices")
        (tmp_path / "prices" / "notes.txt").write_text("not a price file")
        data = str(tmp_path / "prices" / "*.csv")
    elif form == "long-csv":
        data = tmp_path / "universe.csv"
        long_frame(frames).to_csv(data, index=False)
    elif form == "long-parquet":
        pytest.importorskip("pyarrow")
        data = tmp_path / "universe.parquet"
        long_frame(frames).to_parquet(data, index=False)
    else:
        data = dict(reversed(list(frames.items())))  # symbols are sorted, whatever the dict order
    replay = build_replay(TradeReplayConfig(data=data, **SMALL))
    assert replay.symbols == ("AAA", "BBB", "CCC") and replay.universe and replay.n_symbols == 3
    assert_same_replay(replay, expected)


def test_instruments_are_laid_end_to_end_and_match_their_own_builds(frames):
    replay = build_replay(TradeReplayConfig(data=frames, **SMALL))
    assert replay.bar_offsets.tolist() == [0, 400, 820, 1120]
    for k, frame in enumerate(frames.values()):
        alone = build_replay(TradeReplayConfig(data=frame, **SMALL))
        bars = slice(replay.bar_offsets[k], replay.bar_offsets[k + 1])
        decisions = slice(replay.decision_offsets[k], replay.decision_offsets[k + 1])
        # Features, positions and trades of an instrument are those of the instrument on its own.
        np.testing.assert_array_equal(replay.features[bars], alone.features)
        np.testing.assert_array_equal(replay.positions[bars], alone.positions)
        np.testing.assert_array_equal(replay.strategy_pnl[decisions], alone.strategy_pnl)
        np.testing.assert_array_equal(replay.decision_bars[decisions] - bars.start, alone.decision_bars)
        assert (replay.symbol_index[decisions] == k).all()
        assert alone.symbols == ("DataFrame",) and not alone.universe


def test_first_bars_of_an_instrument_do_not_depend_on_another(frames):
    before = build_replay(TradeReplayConfig(data=frames, **SMALL))
    changed = dict(frames)
    wild = frames["AAA"].copy()
    wild[["open", "high", "low", "close"]] *= np.exp(np.linspace(0.0, 3.0, len(wild)))[:, None]  # (T, 4)
    wild["volume"] *= 50.0
    changed["AAA"] = wild
    after = build_replay(TradeReplayConfig(data=changed, **SMALL))
    b0 = int(before.bar_offsets[1])  # BBB's first bar: right after AAA's last one
    assert not np.array_equal(before.features[:b0], after.features[:b0])  # AAA did change
    np.testing.assert_array_equal(before.features[b0:], after.features[b0:])
    np.testing.assert_array_equal(before.positions[b0:], after.positions[b0:])
    assert (after.features[b0] == 0).all()  # an instrument's bar 0 has no previous close, like a market's
    d0 = int(before.decision_offsets[1])
    np.testing.assert_array_equal(before.strategy_pnl[d0:], after.strategy_pnl[d0:])
    obs = after.observations([d0])[0]  # (W, F): BBB's first window holds only BBB's bars
    np.testing.assert_array_equal(obs, after.features[b0 + 1 : b0 + 1 + SMALL["window"]])


@pytest.mark.parametrize("label_horizon", [None, 20])
def test_one_calendar_cutoff_no_train_label_reaches_it(frames, label_horizon):
    replay = build_replay(TradeReplayConfig(data=frames, label_horizon=label_horizon, **SMALL))
    pooled = np.sort(replay.timestamps.to_numpy())
    assert replay.boundary_time == pd.Timestamp(pooled[int(0.75 * len(pooled))])  # the pooled quantile
    reach = max(replay.horizon, replay.label_horizon)
    times = replay.timestamps
    train, test = replay.split_indices("train"), replay.split_indices("test")
    last_train_bar = replay.decision_bars[train] + reach  # the last bar a train trade or label reads
    assert (times[last_train_bar] < replay.boundary_time).all()
    owner = np.searchsorted(replay.bar_offsets, last_train_bar, side="right") - 1  # instrument of that bar
    np.testing.assert_array_equal(
        owner, replay.symbol_index[train]
    )  # a trade never reads the next instrument
    assert (times[replay.decision_bars[test]] >= replay.boundary_time).all()
    for k in range(replay.n_symbols):
        own = times[replay.bar_offsets[k] : replay.bar_offsets[k + 1]]
        first_test = replay.boundary_bars[k] - replay.bar_offsets[k]
        assert (own[:first_test] < replay.boundary_time).all() and (
            own[first_test:] >= replay.boundary_time
        ).all()
        stop = replay.split_ranges("train")[k, 1]
        assert (
            stop == replay.decision_offsets[k + 1]
            or times[replay.decision_bars[stop] + reach] >= replay.boundary_time
        )
    with pytest.raises(ValueError, match=r"split_range\('train'\).*3 instruments.*split_ranges"):
        replay.split_range("train")


def test_instruments_outside_one_side_of_the_cutoff(frames):
    data = {"EARLY": market(4, 300, "2000-01-03"), "LATE": market(5, 300, "2030-01-01"), **frames}
    replay = build_replay(TradeReplayConfig(data=data, **SMALL))
    k_early, k_late = replay.symbols.index("EARLY"), replay.symbols.index("LATE")
    train, test = replay.split_ranges("train"), replay.split_ranges("test")
    assert test[k_early, 0] == test[k_early, 1]  # ends before the cutoff: no test decisions
    assert train[k_late, 0] == train[k_late, 1]  # starts after it: no train decisions
    env = TradeReplayVectorEnv(16, config=TradeReplayConfig(data=data, episode_length=4, **SMALL))
    env.reset(seed=0)
    seen = set()
    for _ in range(40):
        info = env.step(np.zeros(16, dtype=np.int64))[4]
        seen.update(info["symbol"].tolist())
    assert "LATE" not in seen and {"EARLY", "AAA", "BBB", "CCC"} <= seen


def test_single_env_symbol_and_episodes_stay_in_one_instrument(frames):
    env = TradeReplayEnv(config=TradeReplayConfig(data=frames, episode_length=6, **SMALL))
    replay = env.replay
    counts = dict.fromkeys(replay.symbols, 0)
    for seed in range(30):
        obs, info = env.reset(seed=seed)
        symbol = info["symbol"]
        assert type(symbol) is str and symbol == replay.symbols[replay.symbol_index[info["decision"]]]
        truncated = False
        while not truncated:
            obs, _, _, truncated, info = env.step(1)
            assert info["symbol"] == symbol  # an episode never crosses into another instrument
            t = info["t"]
            np.testing.assert_array_equal(obs, replay.features[t - SMALL["window"] + 1 : t + 1])
        counts[symbol] += 1
    assert all(counts.values())  # every instrument gets episodes


def test_whole_split_episodes_pick_an_instrument(frames):
    env = TradeReplayEnv(config=TradeReplayConfig(data=frames, episode_length=None, **SMALL))
    starts = {env.reset(seed=s)[1]["decision"] for s in range(20)}
    assert starts <= set(env.replay.split_ranges("train")[:, 0].tolist()) and len(starts) == 3


def test_vector_env_symbol_array_and_gathered_observations(frames, monkeypatch):
    monkeypatch.setattr(replay_module, "_MAX_WINDOW_CACHE_BYTES", 0)  # a big universe: no window cache
    env = TradeReplayVectorEnv(8, config=TradeReplayConfig(data=frames, episode_length=5, **SMALL))
    replay = env.replay
    assert replay.windows is None
    obs, info = env.reset(seed=0)
    for _ in range(9):
        expected = np.array(replay.symbols)[replay.symbol_index[info["decision"]]]
        assert all(type(s) is str for s in info["symbol"]) and info["_symbol"].all()
        assert info["symbol"].shape == (8,) and (info["symbol"] == expected).all()
        for i, t in enumerate(info["t"].tolist()):
            np.testing.assert_array_equal(obs[i], replay.features[t - SMALL["window"] + 1 : t + 1])
        previous = info["symbol"].copy()
        obs, _, _, truncated, info = env.step(np.arange(8) % 8)
        if truncated.any():
            final = info["final_info"]["symbol"]
            assert (final[truncated] == previous[truncated]).all() and (final[~truncated] == "").all()
        assert (info["symbol"][~truncated] == previous[~truncated]).all()


def test_single_csv_names_its_symbol_by_the_file_stem(frames, tmp_path):
    path = tmp_path / "AAA.csv"
    frames["AAA"].to_csv(path, index_label="Date")
    env = TradeReplayEnv(data=str(path), episode_length=None, **SMALL)  # 63 train decisions: the whole split
    assert env.reset(seed=0)[1]["symbol"] == "AAA" and not env.replay.universe


@pytest.mark.parametrize("form", ["directory", "long-csv"])
def test_bad_file_fails_with_one_line_naming_file_column_and_row(frames, tmp_path, form):
    bad = frames["BBB"].copy()
    bad.iloc[7, bad.columns.get_loc("close")] = -1.0
    data = {**frames, "BBB": bad}
    if form == "directory":
        folder = write_dir(data, tmp_path / "prices")
        expected = rf"{folder / 'BBB.csv'}: column 'close' row 7 \(line 9\): price -1\.0 must be > 0"
    else:
        folder = tmp_path / "universe.csv"
        table = long_frame(data)
        table.to_csv(folder, index=False)
        row = int(np.flatnonzero((table["Ticker"] == "BBB").to_numpy())[7])  # BBB's 8th row in the file
        expected = (
            rf"universe\.csv \(symbol 'BBB'\): column 'close' row {row} \(line {row + 2}\): price -1\.0"
        )
    with pytest.raises(ValueError, match=expected) as caught:
        build_replay(TradeReplayConfig(data=folder, **SMALL))
    assert "\n" not in str(caught.value)


def test_skip_flag_lists_the_skipped_files(frames, tmp_path):
    folder = write_dir(frames, tmp_path / "prices")
    (folder / "BAD.csv").write_text("Date,Open,High,Low\n2020-01-01,1,1,1\n")
    (folder / "SHORT.csv").write_text(frames["AAA"].iloc[:10].to_csv(index_label="Date"))
    with pytest.raises(ValueError, match=r"BAD\.csv: missing column 'close'"):
        build_replay(TradeReplayConfig(data=folder, **SMALL))
    with pytest.warns(UserWarning, match=r"skipped 2 bad instrument file\(s\)") as record:
        replay = build_replay(TradeReplayConfig(data=folder, skip_bad_files=True, **SMALL))
    message = str(record[0].message)
    assert "BAD.csv: missing column 'close'" in message and "SHORT.csv: 10 rows" in message
    assert replay.symbols == ("AAA", "BBB", "CCC") and len(replay.skipped) == 2
    assert "BAD.csv" in replay.skipped[0] and "SHORT.csv" in replay.skipped[1]


@pytest.mark.parametrize(
    "data,message",
    [
        ({}, r"data=\{\}: an empty dict"),
        ({"A": "prices.csv"}, r"data\['A'\]: expected non-empty str symbols mapped to OHLCV DataFrames"),
        ("no_such_dir/*.csv", "no such file, directory or matching files"),
    ],
)
def test_config_rejects_bad_universes(data, message):
    with pytest.raises(ValueError, match=message):
        TradeReplayConfig(data=data)


def test_directory_without_price_files_and_duplicate_symbols(frames, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no CSV or Parquet file"):
        build_replay(TradeReplayConfig(data=tmp_path / "empty"))
    write_dir({"AAA": frames["AAA"]}, tmp_path / "a")
    write_dir({"AAA": frames["CCC"]}, tmp_path / "b")
    with pytest.raises(ValueError, match=r"symbol 'AAA' also comes from .*a[/\\]AAA\.csv; rename one"):
        build_replay(TradeReplayConfig(data=str(tmp_path / "*" / "AAA.csv"), **SMALL))


def test_long_file_rejects_empty_symbols(frames, tmp_path):
    table = long_frame(frames)
    table.loc[5, "Ticker"] = np.nan
    path = tmp_path / "u.csv"
    table.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"u\.csv: column 'Ticker' row 5 \(line 7\): empty symbol"):
        load_universe(path)


def test_parquet_without_pyarrow_says_how_to_install(frames, tmp_path, monkeypatch):
    path = tmp_path / "u.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    with pytest.raises(MissingDependencyError, match=r'pip install "trm-act\[parquet\]"'):
        load_universe(path)


def test_mixed_timezones_are_refused(frames):
    aware = frames["AAA"].tz_localize("UTC")
    with pytest.raises(
        ValueError, match=r"data\['AAA'\]: timestamps carry a timezone but those of data\['BBB'\]"
    ):
        load_universe({"AAA": aware, "BBB": frames["BBB"]})


def test_evaluation_pools_and_tables_per_instrument(frames):
    replay = build_replay(TradeReplayConfig(data=frames, split="test", **SMALL))
    torch.manual_seed(0)
    model = RecurrentTRM(
        TRMConfig(window=16, n_features=replay.n_features, d_model=16, n_heads=2, max_steps=2)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = evaluate(model, replay, max_steps=2, device=torch.device("cpu")).metrics
    table = metrics["per_instrument"]
    assert list(table) == ["AAA", "BBB", "CCC"]
    test = replay.split_indices("test")
    assert sum(row["decisions"] for row in table.values()) == len(test) == metrics["test_split"]["decisions"]
    for column, pooled in (
        ("model_pnl", metrics["model"]["pnl"]),
        ("best_fixed_pnl", metrics["baselines"]["best_fixed"]["pnl"]),
        ("random_pnl", metrics["baselines"]["random"]["pnl"]),
    ):
        assert sum(row[column] for row in table.values()) == pytest.approx(pooled, abs=1e-12)
    best = best_fixed_actions(replay, "train")
    for k, row in enumerate(table.values()):
        a, b = replay.split_ranges("test")[k]
        assert row["best_fixed_pnl"] == pytest.approx(replay.strategy_pnl[a:b, best[k]].sum(), abs=1e-12)
        a, b = replay.split_ranges("train")[k]
        assert best[k] == np.argmax(replay.strategy_pnl[a:b].mean(axis=0))  # chosen on its own train
        assert row["best_fixed_strategy"] == replay.strategy_names[best[k]]
    assert metrics["test_split"]["instruments"] == 3 and metrics["test_split"]["skipped_files"] == []


def test_cli_trains_on_a_directory_of_csvs(frames, tmp_path, train_cli):
    folder = write_dir(frames, tmp_path / "prices")
    config = tmp_path / "small.toml"
    config.write_text(
        "[env]\nwindow = 16\nhorizon = 4\nepisode_length = 8\n\n"
        "[model]\nd_model = 16\nn_heads = 2\nmax_steps = 3\nn_latent = 1\n\n[train]\nwarmup_steps = 2\n"
    )
    result = train_cli(
        "--config", str(config), "--data", str(folder), "--steps", "20", "--batch-size", "8", "--no-progress",
        "--logdir", str(tmp_path), "--run-name", "u", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "u" / "metrics.json").read_text())
    for key in ("pnl", "mean_steps", "max_steps"):
        assert isinstance(metrics["model"][key], int | float)
    assert isinstance(metrics["model"]["fixed_max_steps"]["pnl"], float)
    assert set(metrics["per_instrument"]) == {"AAA", "BBB", "CCC"}
    pooled = sum(row["model_pnl"] for row in metrics["per_instrument"].values())
    assert pooled == pytest.approx(metrics["model"]["pnl"], abs=1e-9)
    assert "3 instruments, calendar cutoff" in result.stdout


def test_long_csv_of_the_universe_benchmark_reads_back_as_the_universe(frames, tmp_path):
    from trm_act.bench.universe import write_long_csv

    path = tmp_path / "long.csv"
    write_long_csv(frames, path)
    loaded = load_universe(path)
    assert list(loaded.frames) == sorted(frames)
    for symbol, frame in frames.items():
        back = loaded.frames[symbol]
        np.testing.assert_array_equal(back.index, frame.index)
        np.testing.assert_allclose(back["close"], frame["close"], rtol=1e-6)


def test_bench_universe_reports_the_end_to_end_training_run(capsys):
    from trm_act.bench.universe import main as bench_universe

    # 900 daily bars: a belief trains 8 bars apart, so an episode of 64 decisions spans 505 bars of the train split.
    argv = ["--instruments", "3", "--bars", "900", "--num-envs", "8", "--seconds", "0.01", "--rounds", "1"]
    assert bench_universe([*argv, "--train-steps", "2"]) == 0
    out = capsys.readouterr().out
    run = next(line for line in out.splitlines() if "python -m trm_act.train --data <long csv> --steps 2" in line)
    wall = float(run.split("|")[2].strip(" s"))
    total = next(line for line in out.splitlines() if line.startswith("| **total (wall)**"))
    assert float(total.split("|")[2].strip(" s*")) == pytest.approx(wall, abs=0.06)
    assert "| evaluation |" in out and "| labels |" in out and "| peak RSS |" in out
