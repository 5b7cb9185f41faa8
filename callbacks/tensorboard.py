"""TensorBoardCallback: loss components, halt statistics, evaluation and hyperparameters in one run."""

from __future__ import annotations

import os
from typing import Any

from .base import Callback, Logs, RunInfo
from .logger import LAYOUT, MetricsLogger


class TensorBoardCallback(Callback):
    """Write every step's scalars and histograms, evaluations, equity curves, charts and hparams to ``log_dir``.

    One event file per run: scalars go through one ``SummaryWriter`` (no ``add_scalars``, which makes
    a sub-run per key) and hyperparameters go through that writer's file writer (not ``add_hparams``,
    which makes a sub-run). Only rank zero writes. Flushed on exceptions; closed at the end.

    Args:
        log_dir: run directory for the event file.
        writer: an existing ``SummaryWriter`` to share instead of opening one (then it is not closed here).
    """

    def __init__(self, log_dir: str | os.PathLike, writer: Any = None):
        self.logger = MetricsLogger(log_dir, writer=writer)

    def on_train_start(self, run: RunInfo) -> None:
        if run.start_step > 0:  # resuming: its hparams and layout are already in the run
            self.logger.purge_step = run.start_step + 1
        else:
            self.logger.log_hparams(run.hparams)
            self.logger.log_layout(LAYOUT)
        self.logger.flush()

    def on_step_end(self, step: int, logs: Logs) -> None:
        self.logger.update(step, logs.scalars)
        self.logger.update(step, logs.histograms)

    def on_eval_end(self, step: int, logs: Logs) -> None:
        self.logger.update(step, logs.scalars)
        self.logger.update(step, logs.histograms)
        for tag, curve in logs.curves.items():
            self.logger.log_curve(tag, curve)
        for tag, image in logs.images.items():
            self.logger.log_image(tag, image, step)
        self.logger.flush()

    def on_exception(self, exc: BaseException) -> None:
        self.logger.flush()

    def on_train_end(self, summary: dict[str, Any]) -> None:
        self.logger.close()
