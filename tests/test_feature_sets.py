"""env.features: the feature set of the observations ("all", or "bar": each bar's own shape only)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import bars as market
from trm_act.envs import TradeReplayConfig, TradeReplayEnv, build_replay
from trm_act.envs.features import FEATURE_NAMES, FEATURE_SETS

from trm_act import Policy
from trm_act.config import ExperimentConfig
from trm_act.model import RecurrentTRM, TRMConfig
from trm_act.runtime import decisions_frame
from trm_act.train import parse_args

SMALL = {"window": 16, "horizon": 4, "synthetic": {"n_bars": 3000, "seed": 3}}


def test_the_bar_set_keeps_the_bars_own_columns_and_leaves_labels_and_pnl_alone():
    full = build_replay(TradeReplayConfig(label_source="hmm", label_states=4, **SMALL))
    bar = build_replay(TradeReplayConfig(label_source="hmm", label_states=4, features="bar", **SMALL))
    kept = [FEATURE_NAMES.index(name) for name in bar.feature_names]
    assert bar.feature_names == FEATURE_SETS["bar"] and bar.n_features == 6 and full.feature_names == FEATURE_NAMES
    assert not {"momentum", "trend", "autocorr", "vol_ratio"} & set(bar.feature_names)
    np.testing.assert_array_equal(bar.features, full.features[:, kept])
    # the regime model's labels read ret and volume_z of the full set: the same labels either way
    np.testing.assert_array_equal(bar.labels, full.labels)
    np.testing.assert_array_equal(bar.strategy_pnl, full.strategy_pnl)
    env = TradeReplayEnv(features="bar", **SMALL)
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape == (16, 6)


def test_the_model_reads_the_feature_count_of_the_set_from_the_cli():
    args = parse_args(["--env.features", "bar"])
    assert args.env.features == "bar" and args.model.n_features == 6
    assert ExperimentConfig().model.n_features == len(FEATURE_NAMES)
    with pytest.raises(ValueError, match=r"features='raw': expected one of \('all', 'bar'\)"):
        TradeReplayConfig(features="raw")
    with pytest.raises(ValueError, match=r"--env.features"):
        parse_args(["--env.features", "raw"])


def bar_policy(carry: str) -> Policy:
    torch.manual_seed(0)
    model = RecurrentTRM(TRMConfig(window=16, n_features=6, d_model=16, n_heads=2, max_steps=3, carry=carry))
    return Policy(model, TradeReplayConfig(window=16, horizon=4, features="bar"))


@pytest.mark.parametrize("carry", ["fresh", "belief"])
def test_a_policy_on_the_bar_set_decides_from_those_columns_and_streams_as_it_decides(carry):
    policy = bar_policy(carry)
    frame = market(400, seed=5)
    expected = policy.decide(frame)
    assert len(expected) > 0
    stream = policy.stream()
    streamed = decisions_frame(d for _, row in frame.iterrows() if (d := stream.update(row)) is not None)
    streamed.index = streamed.index.as_unit(expected.index.unit)
    pd.testing.assert_frame_equal(streamed, expected, check_exact=True)
    # the observations are the replay's: the decision at a bar reads that bar's window of the bar set
    replay = build_replay(TradeReplayConfig(window=16, horizon=4, features="bar", data=frame, split="all"))
    t = int(replay.decision_bars[0])
    window = replay.features[t - 15 : t + 1][None].copy()  # (1, W, 6)
    outcome = policy.engine.run(window, policy.engine.initial_belief()[None] if carry == "belief" else None)
    row = expected.loc[replay.timestamps[t]]
    assert int(outcome.logits.argmax()) == row["action"] and int(outcome.steps[0]) == row["steps"]


def test_a_model_of_another_feature_count_is_refused_in_one_line():
    model = RecurrentTRM(TRMConfig(window=16, d_model=16, n_heads=2))  # 10 features
    with pytest.raises(ValueError, match=r"reads 10 features per bar but env.features='bar' has 6"):
        Policy(model, TradeReplayConfig(window=16, features="bar"))
