"""Callbacks: the hook protocol, TensorBoard and progress callbacks, and adapters for other trainers.

The adapters live in submodules that import their framework only when imported themselves:
``trm_act.callbacks.lightning``, ``trm_act.callbacks.sb3``, ``trm_act.callbacks.hf``.
"""

from .base import Callback, CallbackList, Logs, RunInfo
from .logger import COMPONENT_TAGS, LAYOUT, MetricsLogger, component_scalars, is_rank_zero
from .progress import ProgressCallback
from .tensorboard import TensorBoardCallback

__all__ = [
    "COMPONENT_TAGS",
    "LAYOUT",
    "Callback",
    "CallbackList",
    "Logs",
    "MetricsLogger",
    "ProgressCallback",
    "RunInfo",
    "TensorBoardCallback",
    "component_scalars",
    "is_rank_zero",
]
