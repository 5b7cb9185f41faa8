"""Callback protocol: small hooks, combined in a list; a step hook returning False stops training.

The trainer hands each hook exactly what it needs (``RunInfo``, ``Logs``), never its locals.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class RunInfo:
    """What a callback learns when training starts."""

    log_dir: Path
    """Directory of this run (event files, checkpoints, metrics.json)."""
    total_steps: int
    """Optimizer steps the run will reach."""
    start_step: int = 0
    """First step of this process (> 0 when resuming)."""
    hparams: dict[str, Any] = field(default_factory=dict)
    """Flat ``{section.name: value}`` hyperparameters of the resolved config."""


@dataclass
class Logs:
    """Metrics of one training step or one evaluation."""

    scalars: dict[str, float] = field(default_factory=dict)
    """``{tag: value}``, e.g. ``loss/total``, ``halt/rate``."""
    histograms: dict[str, np.ndarray] = field(default_factory=dict)
    """``{tag: values}``, e.g. ``halt/steps``."""
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    """``{tag: values over an index}``, e.g. the held-out equity curves (final evaluation only)."""
    images: dict[str, np.ndarray] = field(default_factory=dict)
    """``{tag: (H, W, 3) uint8}``, e.g. the evaluation charts ``eval/equity_chart``, ``eval/halting_chart``."""


class Callback:
    """Base class: override the hooks you need. All hooks are no-ops by default."""

    def on_train_start(self, run: RunInfo) -> None:
        pass

    def on_step_end(self, step: int, logs: Logs) -> bool | None:
        """Called after each optimizer step (1-based ``step``). Return False to stop training."""
        return None

    def on_eval_end(self, step: int, logs: Logs) -> None:
        pass

    def on_train_end(self, summary: dict[str, Any]) -> None:
        """Called once when training ends, normally or not (``summary["status"]`` says which)."""

    def on_exception(self, exc: BaseException) -> None:
        """Called when training stops on an exception (including KeyboardInterrupt), before ``on_train_end``."""


class CallbackList(Callback):
    """Calls each callback in order; training stops if any step hook returns False."""

    def __init__(self, callbacks: Iterable[Callback] = ()):
        self.callbacks = list(callbacks)

    def on_train_start(self, run: RunInfo) -> None:
        for callback in self.callbacks:
            callback.on_train_start(run)

    def on_step_end(self, step: int, logs: Logs) -> bool:
        keep_going = True
        for callback in self.callbacks:
            keep_going = callback.on_step_end(step, logs) is not False and keep_going
        return keep_going

    def on_eval_end(self, step: int, logs: Logs) -> None:
        for callback in self.callbacks:
            callback.on_eval_end(step, logs)

    def on_train_end(self, summary: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_train_end(summary)

    def on_exception(self, exc: BaseException) -> None:
        for callback in self.callbacks:
            callback.on_exception(exc)
