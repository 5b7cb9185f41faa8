"""TradeReplayConfig: every option of the trade-replay environment, validated in one place."""

from __future__ import annotations

import dataclasses
import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import tyro

from trm_act.shapes import WINDOW

from .features import feature_columns
from .synthetic import RegimeSpec, SyntheticMarketConfig
from .universe import is_glob

SPLITS: tuple[str, ...] = ("train", "test", "all")
LABEL_SOURCES: tuple[str, ...] = ("hindsight", "hmm", "regime")
LABEL_COSTS: tuple[str, ...] = ("realized", "single")


def data_exists(data: str | Path) -> bool:
    """Whether a ``data`` path names a file, a directory or, as a glob, at least one match."""
    path = Path(data)
    return path.is_file() or path.is_dir() or (is_glob(data) and bool(glob.glob(str(data))))


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _synthetic_from(value: Any) -> SyntheticMarketConfig:
    """Accept a SyntheticMarketConfig, or a dict of its fields (as saved in a JSON/YAML run config)."""
    if isinstance(value, SyntheticMarketConfig):
        return value
    if isinstance(value, dict):
        known = {f.name for f in dataclasses.fields(SyntheticMarketConfig)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"synthetic: unknown option(s) {unknown}; valid options are {sorted(known)}")
        options = dict(value)
        if options.get("regimes") is not None:  # None (null in a file) = the preset's regimes
            options["regimes"] = tuple(
                r if isinstance(r, RegimeSpec) else RegimeSpec(**{**r, "ar": tuple(r.get("ar", ()))})
                for r in options["regimes"]
            )
        return SyntheticMarketConfig(**options)
    raise ValueError(
        f"synthetic={value!r}: expected a SyntheticMarketConfig or a dict of its fields, "
        "e.g. synthetic={'seed': 1, 'n_bars': 20000}"
    )


@dataclass
class TradeReplayConfig:
    """Options of TradeReplayEnv / TradeReplayVectorEnv / build_replay. Validated on construction."""

    # On the command line data is a path, a glob or "synthetic" (DataFrames and dicts are for Python callers).
    data: Annotated[
        str | Path | pd.DataFrame | dict[str, pd.DataFrame],
        tyro.conf.arg(name="data", prefix_name=False, constructor=str),
    ] = "synthetic"
    """"synthetic" (the embedded regime market), an OHLCV CSV path or DataFrame (one instrument), or a universe:
    a directory or glob of CSV files (one instrument each, file stem = symbol), a long CSV/Parquet file with a
    Symbol or Ticker column, or a dict {symbol: DataFrame}."""
    skip_bad_files: bool = False
    """Skip instruments whose file fails validation (each is listed in a warning and in ReplayData.skipped)
    instead of stopping at the first; only for a universe."""
    window: int = WINDOW
    """Bars per observation: the observation at decision bar t holds the features of bars t-window+1..t."""
    features: Literal["all", "bar"] = "all"
    """Which features each bar's row holds (trm_act.envs.features.FEATURE_SETS): "all" (the 10 features, some
    of them exponentially weighted summaries of many earlier bars) or "bar" (the 6 that describe the bar itself
    against long-run scales, so that a window of W bars holds W bars of evidence: a research setting for models
    that must integrate evidence themselves)."""
    horizon: int = 8
    """Bars each trade lasts: a decision at bar t trades over bars t+1..t+horizon."""
    label_horizon: int | None = 32
    """Bars over which the hindsight label is scored (info["label"], info["label_pnl"]); None = horizon.
    A longer label horizon names the strategy that suits the prevailing market state rather than the luckiest
    one over the next few bars: an 8-bar label is mostly luck within a regime, a 32-bar one names the strategy
    that suits the regime (chosen on validation markets). Rewards are always the realized PnL over `horizon`."""
    label_source: Literal["hindsight", "hmm", "regime"] = "hindsight"
    """What info["label"] names: "hindsight" (the argmax of the label PnL); "hmm" (the strategy with the best mean
    PnL, on the train split, in the decision's state of a Markov-switching AR(1) model of ret and volume_z fitted
    to the train split's bars; one instrument only; see trm_act.envs.regimes); or "regime" (synthetic data only:
    the same for the true regime, i.e. the regime oracle's choice: a research control, clean supervision that
    real data never offers). label_pnl and rewards are unchanged."""
    label_costs: Literal["realized", "single"] = "realized"
    """How the label PnL charges costs when label_horizon exceeds horizon: "realized" charges an entry and an exit
    every `horizon` bars, as a policy pays that picks the strategy at each decision of the label horizon when a
    decision comes as each trade ends (stride == horizon, the default): the label PnL is the sum of those
    back-to-back trades' PnL, a last partial trade paying its share of a round trip. "single" (the labels before
    this option) charges one entry and one exit over the whole label horizon, which undercharges a trading
    strategy's costs label_horizon / horizon times. Both have the same gross PnL; rewards are always the realized
    PnL over `horizon`. "realized" was chosen on validation data (docs/results.md)."""
    label_states: int = 16
    """Hidden states of the regime model of label_source="hmm" (chosen on validation markets; docs/results.md)."""
    stride: int | None = None
    """Bars between consecutive decisions; None = horizon (non-overlapping trades: a true backtest)."""
    cost: float = 0.0005
    """Transaction cost, as a fraction of capital per unit of position change (0.0005 = 5 bp)."""
    # The trainer picks the split (train for training, test for evaluation): not a CLI flag.
    split: Annotated[Literal["train", "test", "all"], tyro.conf.Suppress] = "train"
    """Which decisions the episodes visit: "train", "test" (the last test_fraction of bars) or "all"."""
    test_fraction: float = 0.2
    """Fraction of bars, at the end of the series, held out as the test split."""
    episode_length: int | None = 64
    """Decision points per episode (episode_length - 1 steps), from a random start; None = the whole split,
    start to end. 64-decision episodes at random starts let a vector env's sub-envs cover the whole train
    split."""
    synthetic: SyntheticMarketConfig = field(default_factory=SyntheticMarketConfig)
    """Options of the synthetic market (used when data == "synthetic"); a dict of its fields also works."""

    def __post_init__(self) -> None:
        data = self.data
        if isinstance(data, str) and data == "synthetic":
            pass
        elif isinstance(data, str | Path):
            if not data_exists(data):
                raise ValueError(
                    f"data={str(data)!r}: no such file, directory or matching files; pass 'synthetic', an OHLCV "
                    "CSV, a directory or glob of CSVs (one instrument each), a long CSV/Parquet with a Symbol "
                    "column, a DataFrame, or a dict of DataFrames"
                )
        elif isinstance(data, dict):
            if not data:
                raise ValueError("data={}: an empty dict; pass {symbol: OHLCV DataFrame, ...}")
            for symbol, frame in data.items():
                if not isinstance(symbol, str) or not symbol or not isinstance(frame, pd.DataFrame):
                    raise ValueError(
                        f"data[{symbol!r}]: expected non-empty str symbols mapped to OHLCV DataFrames, "
                        f"got a {type(frame).__name__} under {type(symbol).__name__} key {symbol!r}"
                    )
        elif not isinstance(data, pd.DataFrame):
            raise ValueError(
                f"data={type(data).__name__}: expected 'synthetic', a CSV/Parquet path, a directory or glob of "
                "CSVs, a pandas DataFrame, or a dict of DataFrames"
            )
        if not isinstance(self.skip_bad_files, bool):
            raise ValueError(f"skip_bad_files={self.skip_bad_files!r}: expected True or False")
        for name in ("window", "horizon"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name}={value!r}: expected an int >= 1 (bars)")
        if self.label_horizon is not None and (not _is_int(self.label_horizon) or self.label_horizon < 1):
            raise ValueError(
                f"label_horizon={self.label_horizon!r}: expected an int >= 1 (bars) or None (= horizon)"
            )
        feature_columns(self.features)  # a ValueError naming the sets when it is none of them
        if self.label_source not in LABEL_SOURCES:
            raise ValueError(f"label_source={self.label_source!r}: expected one of {LABEL_SOURCES}")
        if self.label_costs not in LABEL_COSTS:
            raise ValueError(
                f"label_costs={self.label_costs!r}: expected one of {LABEL_COSTS} ('realized': an entry and an exit "
                "every horizon bars, as the policy pays them)"
            )
        if not _is_int(self.label_states) or self.label_states < 2:
            raise ValueError(
                f"label_states={self.label_states!r}: expected an int >= 2 (states of the regime model)"
            )
        if self.label_source == "regime" and not (isinstance(data, str) and data == "synthetic"):
            raise ValueError(
                "label_source='regime' needs data='synthetic': only there is the true regime known; "
                "use label_source='hindsight' (the default) with real data"
            )
        if self.stride is not None and (not _is_int(self.stride) or self.stride < 1):
            raise ValueError(f"stride={self.stride!r}: expected an int >= 1 (bars) or None (= horizon)")
        if (
            isinstance(self.cost, bool)
            or not isinstance(self.cost, int | float | np.floating)
            or not (0.0 <= float(self.cost) < 1.0)
        ):
            raise ValueError(
                f"cost={self.cost!r}: expected a float in [0, 1), a fraction of capital per unit of "
                "position change (0.0005 = 5 basis points)"
            )
        if self.split not in SPLITS:
            raise ValueError(f"split={self.split!r}: expected one of {SPLITS}")
        if (
            isinstance(self.test_fraction, bool)
            or not isinstance(self.test_fraction, int | float | np.floating)
            or not 0.0 < float(self.test_fraction) < 1.0
        ):
            raise ValueError(
                f"test_fraction={self.test_fraction!r}: expected a float strictly between 0 and 1"
            )
        if self.episode_length is not None and (not _is_int(self.episode_length) or self.episode_length < 2):
            raise ValueError(
                f"episode_length={self.episode_length!r}: expected an int >= 2 (decision points per "
                "episode; an episode of L decisions has L - 1 steps) or None (the whole split)"
            )
        self.synthetic = _synthetic_from(self.synthetic)
        self.cost = float(self.cost)
        self.test_fraction = float(self.test_fraction)

    @property
    def effective_label_horizon(self) -> int:
        """The label horizon actually used: `label_horizon`, or `horizon` when it is None."""
        return int(self.horizon if self.label_horizon is None else self.label_horizon)

    @property
    def effective_stride(self) -> int:
        """The stride actually used: `stride`, or `horizon` when stride is None."""
        return int(self.horizon if self.stride is None else self.stride)


OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TradeReplayConfig))

# The value a run's saved env options stand for when they predate a field: that version's behaviour, which may
# differ from the field's default today (a resumed run must keep the labels it trained on).
ABSENT_FIELDS: dict[str, object] = {"label_costs": "single"}


def resolve_config(
    config: TradeReplayConfig | None, options: dict[str, Any], owner: str
) -> TradeReplayConfig:
    """The config of an env built with ``owner(config=..., **options)``: both envs' one constructor path.

    ``options`` are TradeReplayConfig fields given as keywords; an unknown one is an error that names it.
    A whole ``config`` excludes options (both at once would be ambiguous).
    """
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise ValueError(
            f"{owner}: unknown keyword(s) {unknown}; valid options are {list(OPTION_NAMES)} (the fields of "
            "TradeReplayConfig), plus config=TradeReplayConfig(...) and render_mode"
        )
    if config is None:
        return TradeReplayConfig(**options)
    if not isinstance(config, TradeReplayConfig):
        raise ValueError(f"config={config!r}: expected a TradeReplayConfig or None")
    if options:
        given = sorted(options)
        raise ValueError(
            f"{owner}: got config= and also {given}; pass one or the other, "
            f"e.g. config=dataclasses.replace(config, {given[0]}=...)"
        )
    return config
