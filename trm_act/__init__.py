"""trm-act: a Tiny Recursive Model with adaptive computation time that picks trading strategies.

Importing this package registers the Gymnasium environment ``trm_act/TradeReplay-v0``.
"""

from trm_act import envs  # noqa: F401  (registers trm_act/TradeReplay-v0)
from trm_act.loss import (
    TRMLoss,
    class_weights_from_labels,
    compute_halt_loss,
    compute_profit_weighted_loss,
    compute_reward_loss,
    compute_task_loss,
    halt_target,
    profit_weight,
)

__version__ = "0.1.0"

__all__ = [
    "TRMLoss",
    "__version__",
    "class_weights_from_labels",
    "compute_halt_loss",
    "compute_profit_weighted_loss",
    "compute_reward_loss",
    "compute_task_loss",
    "halt_target",
    "profit_weight",
]
