"""Tiny trained runs and unseen bars, shared by the Policy and ONNX tests."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from trm_act.envs import SyntheticMarketConfig, TradeReplayConfig, generate_synthetic_market

from trm_act.config import ExperimentConfig, LossConfig, TrainConfig
from trm_act.model import TRMConfig
from trm_act.trainer import Trainer

WINDOW, HORIZON = 16, 4


def tiny_config(carry: str, **model) -> ExperimentConfig:
    return ExperimentConfig(
        env=TradeReplayConfig(
            window=WINDOW, horizon=HORIZON, episode_length=8, synthetic=SyntheticMarketConfig(n_bars=3000)
        ),
        model=TRMConfig(d_model=16, n_heads=2, max_steps=3, carry=carry, **model),
        loss=LossConfig(lambda_reward=0.5),
        train=TrainConfig(
            steps=30, batch_size=8, warmup_steps=2, progress=False, eval_every=0, checkpoint_every=30
        ),
    )


def train_runs(tmp_path_factory, **model) -> dict[str, Path]:
    """A tiny trained run (30 steps) of each carry, "fresh" and "belief"."""
    out = {}
    for carry in ("fresh", "belief"):
        run_dir = tmp_path_factory.mktemp(f"run_{carry}")
        Trainer(tiny_config(carry, **model), run_dir).fit()
        out[carry] = run_dir
    return out


def market(seed: int = 7, n_bars: int = 2000) -> pd.DataFrame:
    """Bars no run has seen (another seed of the synthetic market)."""
    return generate_synthetic_market(SyntheticMarketConfig(seed=seed, n_bars=n_bars)).drop(columns="regime")
