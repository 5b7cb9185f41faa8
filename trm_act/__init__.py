"""trm-act: a Tiny Recursive Model with adaptive computation time that picks trading strategies.

Importing this package registers the Gymnasium environment ``trm_act/TradeReplay-v0``. The names that
need torch (the loss, the model, ACT, Policy) are imported on first use, so that ``import trm_act``
stays light and ``trm_act.onnx`` runs where torch is not installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from trm_act import envs  # noqa: F401  (registers trm_act/TradeReplay-v0)
from trm_act.envs import TradeReplayEnv

if TYPE_CHECKING:
    from trm_act.act import act_predict
    from trm_act.loss import (
        LossConfig,
        TRMLoss,
        class_weights_from_labels,
        compute_halt_loss,
        compute_profit_weighted_loss,
        compute_reward_loss,
        compute_task_loss,
        compute_value_loss,
        halt_target,
        profit_weight,
        recipe_loss,
    )
    from trm_act.model import RecurrentTRM, TRMConfig
    from trm_act.policy import Policy

__version__ = "0.1.0"

# Public name -> the module that defines it, imported on first access (PEP 562).
_LAZY = {
    "LossConfig": "trm_act.loss",
    "TRMLoss": "trm_act.loss",
    "class_weights_from_labels": "trm_act.loss",
    "compute_halt_loss": "trm_act.loss",
    "compute_profit_weighted_loss": "trm_act.loss",
    "compute_reward_loss": "trm_act.loss",
    "compute_value_loss": "trm_act.loss",
    "compute_task_loss": "trm_act.loss",
    "halt_target": "trm_act.loss",
    "profit_weight": "trm_act.loss",
    "recipe_loss": "trm_act.loss",
    "RecurrentTRM": "trm_act.model",
    "TRMConfig": "trm_act.model",
    "act_predict": "trm_act.act",
    "Policy": "trm_act.policy",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trm_act' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "LossConfig",
    "Policy",
    "RecurrentTRM",
    "TRMConfig",
    "TRMLoss",
    "TradeReplayEnv",
    "__version__",
    "act_predict",
    "class_weights_from_labels",
    "compute_halt_loss",
    "compute_profit_weighted_loss",
    "compute_reward_loss",
    "compute_task_loss",
    "compute_value_loss",
    "halt_target",
    "profit_weight",
    "recipe_loss",
]
