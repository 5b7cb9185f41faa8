"""Trade-replay environment: market data, the 8 strategies, TradeReplayEnv and its vector env.

Importing this package (or ``trm_act``) registers ``trm_act/TradeReplay-v0``. Gymnasium 1.x has no
plugin entry points, so without an import use ``gymnasium.make("trm_act.envs:trm_act/TradeReplay-v0")``,
which imports this module on demand.
"""

from gymnasium.envs.registration import register, registry

from .config import SPLITS, TradeReplayConfig
from .example import example_csv
from .features import FEATURE_NAMES
from .market import load_ohlcv
from .replay import ReplayData, build_replay
from .strategies import STRATEGIES
from .synthetic import (
    DEFAULT_REGIMES,
    REGIME_PRESETS,
    SLOW_REGIMES,
    RegimeSpec,
    SyntheticMarketConfig,
    generate_synthetic_market,
)
from .trade_replay import TradeReplayEnv
from .vector import TradeReplayVectorEnv

ENV_ID = "trm_act/TradeReplay-v0"

if ENV_ID not in registry:
    register(
        id=ENV_ID,
        entry_point="trm_act.envs:TradeReplayEnv",
        vector_entry_point="trm_act.envs:TradeReplayVectorEnv",
    )

__all__ = [
    "DEFAULT_REGIMES",
    "ENV_ID",
    "FEATURE_NAMES",
    "REGIME_PRESETS",
    "SLOW_REGIMES",
    "SPLITS",
    "STRATEGIES",
    "RegimeSpec",
    "ReplayData",
    "SyntheticMarketConfig",
    "TradeReplayConfig",
    "TradeReplayEnv",
    "TradeReplayVectorEnv",
    "build_replay",
    "example_csv",
    "generate_synthetic_market",
    "load_ohlcv",
]
