"""Market data: OHLCV loading and validation (envs/market.py) and the synthetic generator (envs/synthetic.py)."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from trm_act.envs import (
    DEFAULT_REGIMES,
    SLOW_REGIMES,
    STRATEGIES,
    RegimeSpec,
    SyntheticMarketConfig,
    TradeReplayConfig,
    build_replay,
    example_csv,
    generate_synthetic_market,
    load_ohlcv,
)
from trm_act.envs.example import example_frame
from trm_act.envs.market import bars_per_year

from trm_act.baselines import regime_mean_pnl


def yahoo_frame(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """Synthetic bars in the column layout of a Yahoo Finance CSV (Date, Open, ..., Adj Close, Volume)."""
    bars = generate_synthetic_market(SyntheticMarketConfig(n_bars=n, seed=seed))
    frame = bars.drop(columns="regime").rename(columns=str.title).reset_index(names="Date")
    frame["Date"] = frame["Date"].dt.strftime("%Y-%m-%d")
    frame.insert(5, "Adj Close", frame["Close"])
    return frame


def write_csv(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path


# --- loading -----------------------------------------------------------------------------------


def test_csv_round_trip_matches_source(tmp_path):
    frame = yahoo_frame()
    ohlcv = load_ohlcv(write_csv(tmp_path / "prices.csv", frame))
    assert list(ohlcv.columns) == ["open", "high", "low", "close", "volume"]
    assert isinstance(ohlcv.index, pd.DatetimeIndex) and ohlcv.index.name == "timestamp"
    assert ohlcv.index[0] == pd.Timestamp(frame["Date"].iloc[0])
    np.testing.assert_allclose(ohlcv["close"].to_numpy(), frame["Close"].to_numpy(), rtol=1e-12)
    assert ohlcv.attrs["source"].endswith("prices.csv")


@pytest.mark.parametrize(
    "rename",
    [
        str.lower,
        str.upper,
        lambda c: {"Date": "Timestamp", "Adj Close": "adj_close"}.get(c, c),
        lambda c: {"Date": "datetime", "Adj Close": "AdjClose", "Volume": "vol"}.get(c, c),
        lambda c: {"Date": " time "}.get(c, c),
    ],
    ids=["lower", "upper", "timestamp-adj_close", "datetime-AdjClose-vol", "padded-time"],
)
def test_column_spellings_are_case_insensitive(rename):
    frame = yahoo_frame()
    reference = load_ohlcv(frame)
    pd.testing.assert_frame_equal(load_ohlcv(frame.rename(columns=rename)), reference)


def test_datetime_index_and_optional_columns():
    frame = yahoo_frame().drop(columns=["Adj Close", "Volume"])
    indexed = frame.assign(Date=pd.to_datetime(frame["Date"])).set_index("Date")
    ohlcv = load_ohlcv(indexed)
    assert (ohlcv["volume"] == 0).all()  # Volume is optional
    pd.testing.assert_frame_equal(ohlcv, load_ohlcv(frame))


def test_separate_date_and_time_columns_are_joined():
    frame = yahoo_frame(50).drop(columns="Adj Close")
    frame["Time"] = "09:30:00"
    assert load_ohlcv(frame).index[0] == pd.Timestamp(frame["Date"].iloc[0] + " 09:30")


def test_adj_close_adjusts_prices():
    frame = yahoo_frame(50)
    frame.loc[:24, "Adj Close"] = frame.loc[:24, "Close"] / 2.0  # a 2:1 split after row 24
    ohlcv = load_ohlcv(frame)
    np.testing.assert_allclose(ohlcv["close"].to_numpy()[:25], frame["Close"].to_numpy()[:25] / 2.0)
    np.testing.assert_allclose(ohlcv["high"].to_numpy()[:25], frame["High"].to_numpy()[:25] / 2.0)
    np.testing.assert_allclose(ohlcv["open"].to_numpy()[25:], frame["Open"].to_numpy()[25:])


def test_bars_per_year_is_inferred_from_timestamps():
    assert bars_per_year(pd.bdate_range("2001-01-01", periods=2000)) == pytest.approx(260.9, abs=0.5)
    assert bars_per_year(pd.date_range("2001-01-01", periods=5000, freq="h")) == pytest.approx(
        8765.8, rel=1e-3
    )
    frame = yahoo_frame(600).drop(columns="Adj Close")
    frame["Date"] = pd.date_range("2020-01-01", periods=600, freq="h").strftime("%Y-%m-%d %H:%M")
    replay = build_replay(TradeReplayConfig(data=frame))
    assert replay.bars_per_year == pytest.approx(8765.8, rel=1e-2)
    assert build_replay(TradeReplayConfig()).bars_per_year == 252.0


# --- validation: every error names file, column and row ------------------------------------------


def _corrupt(kind: str, frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    if kind == "missing column":
        return frame.drop(columns="Close")
    if kind == "NaN price":
        frame["Close"] = frame["Close"].astype(object)
        frame.loc[17, "Close"] = None
    elif kind == "zero price":
        frame.loc[5, "Open"] = 0.0
    elif kind == "negative price":
        frame.loc[8, "Low"] = -1.0
    elif kind == "non-numeric":
        frame["High"] = frame["High"].astype(object)
        frame.loc[9, "High"] = "12.3.4"
    elif kind == "unsorted dates":
        frame.loc[[10, 11], "Date"] = frame.loc[[11, 10], "Date"].to_numpy()
    elif kind == "duplicate timestamps":
        frame.loc[12, "Date"] = frame.loc[11, "Date"]
    elif kind == "bad timestamp":
        frame.loc[3, "Date"] = "not a date"
    elif kind == "high below close":
        frame.loc[7, "High"] = frame.loc[7, "Close"] * 0.9
    elif kind == "negative volume":
        frame.loc[4, "Volume"] = -5
    return frame


BAD_CSVS = [
    ("missing column", r"prices\.csv: missing column 'close' .*found columns"),
    ("NaN price", r"prices\.csv: column 'Close' row 17 \(line 19\): NaN price; fill or drop"),
    ("zero price", r"prices\.csv: column 'Open' row 5 \(line 7\): price 0\.0 must be > 0"),
    ("negative price", r"prices\.csv: column 'Low' row 8 \(line 10\): price -1\.0 must be > 0"),
    ("non-numeric", r"prices\.csv: column 'High' row 9 \(line 11\): non-numeric value '12\.3\.4'"),
    (
        "unsorted dates",
        r"prices\.csv: column 'Date' row 11 \(line 13\): .* earlier than row 10 .*not sorted; sort",
    ),
    (
        "duplicate timestamps",
        r"prices\.csv: column 'Date' row 12 \(line 14\): duplicate timestamp .*same as row 11",
    ),
    ("bad timestamp", r"prices\.csv: column 'Date' row 3 \(line 5\): cannot parse timestamp 'not a date'"),
    ("high below close", r"prices\.csv: column 'High' row 7 \(line 9\): high below open or close"),
    ("negative volume", r"prices\.csv: column 'Volume' row 4 \(line 6\): volume -5\.0 must be >= 0"),
]


@pytest.mark.parametrize(("kind", "message"), BAD_CSVS, ids=[k for k, _ in BAD_CSVS])
def test_bad_csv_raises_naming_file_column_row(tmp_path, kind, message):
    path = write_csv(tmp_path / "prices.csv", _corrupt(kind, yahoo_frame(60)))
    with pytest.raises(ValueError, match=message):
        load_ohlcv(path)
    with pytest.raises(ValueError, match=message):  # the same through the environment's config path
        build_replay(TradeReplayConfig(data=str(path)))


def test_bad_dataframe_names_dataframe():
    with pytest.raises(ValueError, match=r"DataFrame: column 'Close' row 17: NaN price"):
        load_ohlcv(_corrupt("NaN price", yahoo_frame(60)))


def test_too_short_csv(tmp_path):
    path = write_csv(tmp_path / "short.csv", yahoo_frame(40))
    message = r"short\.csv: 40 rows \(last row 39\), but window=32 \+ horizon=8 \+ 1 = 41 bars are needed"
    with pytest.raises(ValueError, match=message):
        build_replay(TradeReplayConfig(data=str(path)))
    assert build_replay(TradeReplayConfig(data=str(path), window=31)).n_decisions == 1  # exactly enough


def test_unreadable_inputs(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty\.csv: cannot read as CSV"):
        load_ohlcv(empty)
    with pytest.raises(ValueError, match=r"missing\.csv: file not found"):
        load_ohlcv(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match=r"header\.csv: no data rows"):
        load_ohlcv(write_csv(tmp_path / "header.csv", yahoo_frame(5).iloc[:0]))
    with pytest.raises(ValueError, match="missing column 'date'"):
        load_ohlcv(yahoo_frame(20).drop(columns="Date"))


# --- synthetic market ----------------------------------------------------------------------------


def test_synthetic_market_is_seeded_and_valid():
    config = SyntheticMarketConfig(n_bars=3000, seed=7)
    a, b = generate_synthetic_market(config), generate_synthetic_market(config)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(
        a["close"], generate_synthetic_market(SyntheticMarketConfig(n_bars=3000, seed=8))["close"]
    )
    assert (a["high"] >= a[["open", "close"]].max(axis=1)).all()
    assert (a["low"] <= a[["open", "close"]].min(axis=1)).all()
    assert (a[["open", "high", "low", "close"]] > 0).all().all()
    load_ohlcv(a)  # passes the same validation as user data


def test_synthetic_market_uses_no_global_rng():
    # The legacy global-RNG calls below are the point: they observe the state the generator must not touch.
    np.random.seed(123)  # noqa: NPY002
    random.seed(123)
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    generate_synthetic_market(SyntheticMarketConfig(n_bars=500, seed=1))
    after = np.random.get_state()  # noqa: NPY002
    assert all(np.array_equal(x, y) for x, y in zip(np_state, after, strict=True))
    assert random.getstate() == py_state


def test_default_regimes_are_persistent_and_distinct():
    assert len(DEFAULT_REGIMES) >= 4
    frame = generate_synthetic_market()
    regime = frame["regime"].to_numpy()
    assert set(np.unique(regime)) == set(range(len(DEFAULT_REGIMES)))
    runs = np.diff(np.flatnonzero(np.diff(np.r_[-1, regime, -1]) != 0))  # lengths of constant stretches
    assert 50 <= runs.mean() <= 200
    r = np.diff(np.log(frame["close"].to_numpy()))
    vols = [r[regime[1:] == k].std() for k in range(len(DEFAULT_REGIMES))]
    for k, spec in enumerate(DEFAULT_REGIMES):  # each regime's realised volatility is its own
        assert vols[k] == pytest.approx(spec.volatility, rel=0.15), spec.name
    favours = [spec.favours for spec in DEFAULT_REGIMES]
    assert len(set(favours)) == len(favours)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_bars": 1}, "n_bars=1"),
        ({"regimes": DEFAULT_REGIMES[:1]}, "at least 2"),
        ({"start_price": 0.0}, "start_price"),
    ],
)
def test_synthetic_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticMarketConfig(**kwargs)


def test_regime_spec_validation():
    with pytest.raises(ValueError, match=r"'x': ar=\(1\.2,\) is not stationary"):
        RegimeSpec("x", drift=0.0, volatility=0.01, ar=(1.2,), mean_duration=10, volume_level=0.0)
    with pytest.raises(ValueError, match="volatility"):
        RegimeSpec("x", drift=0.0, volatility=0.0, ar=(), mean_duration=10, volume_level=0.0)


# --- the slow preset: regimes that differ only in drift and autocorrelation ------------------------------


def test_slow_regimes_share_volatility_and_volume_and_differ_in_drift_and_autocorrelation():
    assert {(r.volatility, r.volume_level) for r in SLOW_REGIMES} == {(0.01, 0.0)}
    assert len({(r.drift, r.ar) for r in SLOW_REGIMES}) == len(SLOW_REGIMES)
    assert all(r.mean_duration >= 400 for r in SLOW_REGIMES)
    frame = generate_synthetic_market(SyntheticMarketConfig(preset="slow"))
    regime = frame["regime"].to_numpy()[1:]
    r = np.diff(np.log(frame["close"].to_numpy()))
    log_volume = np.log(frame["volume"].to_numpy())[1:]
    runs = np.diff(np.flatnonzero(np.diff(np.r_[-1, regime, -1]) != 0))
    assert 400 <= runs.mean() <= 800
    for k, spec in enumerate(SLOW_REGIMES):  # realised: the same volatility and volume, each its own drift/ar
        mine = r[regime == k]
        assert mine.std() == pytest.approx(0.01, rel=0.05), spec.name
        assert log_volume[regime == k].mean() == pytest.approx(log_volume.mean(), abs=0.01), spec.name
        assert mine.mean() == pytest.approx(spec.drift, abs=0.00025), spec.name
        lag1 = np.corrcoef(mine[:-1], mine[1:])[0, 1]
        assert lag1 == pytest.approx(spec.ar[0] if spec.ar else 0.0, abs=0.05), spec.name


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_slow_regime_pays_its_favoured_strategy_best(seed):
    """The regime oracle (best mean PnL per true regime on the train split, default cost and horizon) plays
    each regime's `favours` strategy."""
    replay = build_replay(TradeReplayConfig(synthetic=SyntheticMarketConfig(preset="slow", seed=seed)))
    assert replay.regime_names == ("bull", "bear", "trend", "revert")
    means = regime_mean_pnl(replay, "train")  # (K, 8)
    assert [STRATEGIES[i] for i in np.argmax(means, axis=1)] == [r.favours for r in SLOW_REGIMES]
    ranked = np.sort(means, axis=1)
    assert np.all(ranked[:, -1] - ranked[:, -2] > 0.0003)  # by 3 bp a trade at least (measured >= 3.8)


def test_preset_chooses_the_regime_table():
    slow = SyntheticMarketConfig(preset="slow")
    assert slow.regimes == SLOW_REGIMES and slow.regime_names == ("bull", "bear", "trend", "revert")
    assert SyntheticMarketConfig().regimes == DEFAULT_REGIMES
    custom = SLOW_REGIMES[:2]
    assert SyntheticMarketConfig(regimes=custom).regimes == custom  # explicit regimes still work
    listed = SyntheticMarketConfig(preset="slow", regimes=SLOW_REGIMES)  # as a saved config lists them
    assert listed == slow and hash(listed) == hash(slow)  # the same config, the same cache key
    # A resolved table handed back (tyro's defaults, dataclasses.replace) does not outvote a new preset.
    assert dataclasses.replace(SyntheticMarketConfig(), preset="slow") == slow
    assert dataclasses.replace(slow, preset="default").regimes == DEFAULT_REGIMES
    with pytest.raises(ValueError, match="preset='slow' and explicit regimes conflict"):
        SyntheticMarketConfig(preset="slow", regimes=custom)
    with pytest.raises(ValueError, match="preset='fast'"):
        SyntheticMarketConfig(preset="fast")
    a = generate_synthetic_market(SyntheticMarketConfig(preset="slow", n_bars=500))
    b = generate_synthetic_market(SyntheticMarketConfig(regimes=SLOW_REGIMES, n_bars=500))
    pd.testing.assert_frame_equal(a, b)


def test_preset_round_trips_through_the_experiment_config_and_the_cli():
    from trm_act.config import ExperimentConfig
    from trm_act.train import parse_args

    config = ExperimentConfig(env=TradeReplayConfig(synthetic=SyntheticMarketConfig(preset="slow", seed=4)))
    saved = json.loads(json.dumps(config.to_dict()))
    assert saved["env"]["synthetic"]["preset"] == "slow"
    loaded = ExperimentConfig.from_dict(saved)
    assert loaded.env.synthetic == config.env.synthetic and loaded.to_dict() == saved
    # A file naming only the preset, and one saved with regimes listed that a flag then re-presets.
    assert (
        ExperimentConfig.from_dict({"env": {"synthetic": {"preset": "slow"}}}).env.synthetic.regimes
        == SLOW_REGIMES
    )
    assert (
        ExperimentConfig.from_dict({"env": {"synthetic": {"regimes": None}}}).env.synthetic.regimes
        == DEFAULT_REGIMES
    )
    flags = parse_args(["--env.synthetic.preset", "slow"])
    assert flags.env.synthetic.regimes == SLOW_REGIMES
    assert parse_args([]).env.synthetic.regimes == DEFAULT_REGIMES


# --- hostile CSVs: the loader's only failure is a one-line ValueError naming file, column and row ----------


def _with_value(column: str, row: int, value: str):
    def corrupt(frame: pd.DataFrame) -> pd.DataFrame:
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value
        return frame

    return corrupt


def _underflow_after_scaling(frame: pd.DataFrame) -> pd.DataFrame:
    # Every value is a normal float, but Open * (Adj Close / Close) = 100 * 1e-310 is not.
    frame.loc[3, ["High", "Close"]] = 1e10
    frame.loc[3, "Adj Close"] = 1e-300
    return frame


def _mixed_zones(frame: pd.DataFrame) -> pd.DataFrame:
    frame["Date"] = frame["Date"] + " 00:00+00:00"
    frame.loc[9, "Date"] = frame.loc[9, "Date"].replace("+00:00", "+05:00")
    return frame


def _naive_and_aware(frame: pd.DataFrame) -> pd.DataFrame:
    frame["Date"] = frame["Date"] + " 00:00+00:00"
    frame.loc[4, "Date"] = frame.loc[4, "Date"].replace(" 00:00+00:00", "")
    return frame


HOSTILE = [
    (
        "adj-close-overflow",
        _with_value("Adj Close", 5, "1.797e308"),
        r"hostile\.csv: column 'Adj Close' row 5 \(line 7\): Adj Close 1\.797e\+308 / Close .* to inf, "
        r"outside float64's normal range; fix Adj Close",
    ),
    (
        "adj-close-subnormal",
        _with_value("Adj Close", 6, "1e-320"),
        r"hostile\.csv: column 'Adj Close' row 6 \(line 8\): price 1e-320 is below 2\.225e-308",
    ),
    (
        "adj-close-underflow-after-scaling",
        _underflow_after_scaling,
        r"hostile\.csv: column 'Adj Close' row 3 \(line 5\): Adj Close 1e-300 / Close 10000000000\.0 scales "
        r"open .* to .*outside float64's normal range",
    ),
    (
        "401-digit-price",
        _with_value("Open", 7, "1" * 401),
        r"hostile\.csv: column 'Open' row 7 \(line 9\): price .* is not a finite float64",
    ),
    (
        "mixed-time-zones",
        _mixed_zones,
        r"hostile\.csv: column 'Date' row 9 \(line 11\): timestamp '.*\+05:00' has UTC\+05:00 but row 0 "
        r"\('.*\+00:00'\) has UTC\+00:00: mixed time zones; convert every timestamp to one zone",
    ),
    (
        "naive-and-aware-timestamps",
        _naive_and_aware,
        r"hostile\.csv: column 'Date' row 4 \(line 6\): timestamp '[0-9-]+' has no time zone but row 0 .* "
        r"has UTC\+00:00: mixed time zones",
    ),
    (
        "inf-price",
        _with_value("Low", 11, "inf"),
        r"hostile\.csv: column 'Low' row 11 \(line 13\): price inf is not a finite float64",
    ),
]


@pytest.mark.parametrize(("kind", "corrupt", "message"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_csv_one_line_error(tmp_path, kind, corrupt, message):
    path = write_csv(tmp_path / "hostile.csv", corrupt(yahoo_frame(60)))
    for load in (load_ohlcv, lambda p: build_replay(TradeReplayConfig(data=str(p), window=8, horizon=4))):
        with pytest.raises(ValueError, match=message) as caught:
            load(path)
        assert "\n" not in str(caught.value)


def test_401_digit_integer_price_is_not_an_overflow_error(tmp_path):
    # All-integer columns are where pandas keeps Python ints and float() raised OverflowError.
    path = tmp_path / "ints.csv"
    path.write_text("Date,Open,High,Low,Close\n2020-01-01,1,2,1,1\n2020-01-02," + "9" * 401 + ",2,1,1\n")
    with pytest.raises(
        ValueError,
        match=r"ints\.csv: column 'Open' row 1 \(line 3\): price 99999.*\(401 characters\) is not a finite",
    ) as caught:
        load_ohlcv(path)
    assert "\n" not in str(caught.value)


def test_ragged_row_names_the_row(tmp_path):
    lines = yahoo_frame(30).to_csv(index=False).splitlines()
    lines[4] += ",99"  # data row 3, file line 5
    path = tmp_path / "ragged.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        ValueError,
        match=r"^ragged\.csv: row 3 \(line 5\): 8 fields, but the header has 7 columns; remove the extra field",
    ) as caught:
        load_ohlcv(path, name="ragged.csv")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("sep", "word"), [(";", "semicolon"), ("\t", "tab")])
def test_other_separators_get_a_hint(tmp_path, sep, word):
    path = tmp_path / "prices.csv"
    yahoo_frame(30).to_csv(path, index=False, sep=sep)
    hint = rf"prices\.csv: the header .* is {word}-separated, but columns are split at commas; .*sep={sep!r}"
    with pytest.raises(ValueError, match=hint.replace("\\t", "\\\\t")) as caught:
        load_ohlcv(path)
    assert "\n" not in str(caught.value)


def test_decimal_comma_semicolon_file_also_gets_the_separator_hint(tmp_path):
    path = tmp_path / "euro.csv"
    yahoo_frame(30).to_csv(path, index=False, sep=";", decimal=",")
    with pytest.raises(ValueError, match=r"semicolon-separated.*sep=';'\) \(with decimal=','"):
        load_ohlcv(path)


@pytest.mark.parametrize("order", [["Date", "Time"], ["Time", "Date"]])
def test_date_and_time_columns_joined_in_either_order(order):
    frame = yahoo_frame(50).drop(columns="Adj Close")
    frame["Time"] = "09:30:00"
    frame = frame[[*order, "Open", "High", "Low", "Close", "Volume"]]
    index = load_ohlcv(frame).index
    assert index[0] == pd.Timestamp(frame["Date"].iloc[0] + " 09:30")
    assert index[-1] == pd.Timestamp(frame["Date"].iloc[-1] + " 09:30")


def test_bad_time_in_time_date_order_names_the_date_column():
    frame = yahoo_frame(50).drop(columns="Adj Close")
    frame.insert(0, "Time", "09:30")
    frame.loc[6, "Time"] = "25:99"
    with pytest.raises(
        ValueError, match=r"DataFrame: column 'Date' row 6: cannot parse timestamp '.* 25:99'"
    ):
        load_ohlcv(frame)


def test_foreign_errors_become_one_line_value_errors(tmp_path, monkeypatch):
    path = write_csv(tmp_path / "prices.csv", yahoo_frame(30))

    def broken(*args, **kwargs):
        raise OverflowError("line one\nline two")

    monkeypatch.setattr(pd, "to_datetime", broken)
    with pytest.raises(ValueError, match=r"prices\.csv: cannot load \(OverflowError: line one line two\)"):
        load_ohlcv(path)


def test_example_csv_is_shipped_and_current():
    path = Path(example_csv())
    assert path.is_file() and path.name == "example_ohlcv.csv"
    ohlcv = load_ohlcv(path)
    assert len(ohlcv) == 3000 and (ohlcv["volume"] > 0).all()
    shipped = pd.read_csv(path)
    pd.testing.assert_frame_equal(shipped, example_frame().astype({"Date": shipped["Date"].dtype}))
    assert build_replay(TradeReplayConfig(data=str(path))).n_decisions > 300


def test_memory_benchmark_csv_is_valid_ohlcv(tmp_path, monkeypatch):
    from trm_act.bench import memory
    from trm_act.bench.__main__ import BENCHMARKS

    assert BENCHMARKS["memory"][0] == "trm_act.bench.memory"
    monkeypatch.setattr(memory, "_CHUNK", 1000)
    path = tmp_path / "big.csv"
    assert memory.write_ohlcv_csv(path, 3001) == path.stat().st_size  # three chunks and a one-row tail
    ohlcv = load_ohlcv(path)
    assert len(ohlcv) == 3001 and ohlcv.index[1] - ohlcv.index[0] == pd.Timedelta(minutes=1)
    # Chunks join without a gap: each bar opens at the previous close (to the 6 decimals written).
    np.testing.assert_allclose(ohlcv["open"].to_numpy()[1:], ohlcv["close"].to_numpy()[:-1], atol=2e-6)
