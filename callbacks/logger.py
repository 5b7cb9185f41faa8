"""The one path for writing TRM metrics to TensorBoard, shared by our trainer and every adapter.

``MetricsLogger`` takes a flat ``{tag: value}`` mapping per step: numbers become scalars, arrays
become histograms. It writes only on rank zero, can wrap a writer someone else owns (Lightning's
``trainer.logger.experiment``, Hugging Face's ``tb_writer``) so a run keeps one event file, and
closes only a writer it opened itself. It imports no training framework.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

CURVE_POINTS = 2000
"""Most points written per curve. TensorBoard's scalar dashboard shows 1,000 points of a series by default (a random
reservoir of them); 2,000 evenly spaced ones draw the same chart, and one add_scalar per point of a 25,000-decision
equity curve took 2 s per curve."""


def curve_points(n: int) -> np.ndarray:
    """(M,) sorted indices of the points of an n-point curve to write: all of them, or CURVE_POINTS evenly spaced."""
    if n <= CURVE_POINTS:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, CURVE_POINTS).round().astype(np.int64))


# TRMLoss component name -> TensorBoard tag. Lambdas are hyperparameters, not curves.
COMPONENT_TAGS = {
    "total_loss": "loss/total",
    "halt_loss": "loss/halt",
    "task_loss": "loss/task",
    "profit_weighted_task_loss": "loss/profit_weighted_task",
    "reward_loss": "loss/reward",
    "value_loss": "loss/value",
    "halt_target_rate": "halt/target_rate",
}

# Tags the hparams plugin links to each run's hyperparameters.
HPARAM_METRICS = ("eval/pnl", "eval/accuracy", "eval/mean_steps", "eval/sharpe")


# Custom Scalars dashboard. Custom Scalars colours lines by run, so every line of one run in a chart would
# share a colour: each chart therefore holds one tag. The held-out equity curves, which belong in one chart,
# are drawn with distinct colours as the eval/equity_chart image instead.
def _charts(titles: dict[str, str]) -> dict[str, list[Any]]:
    return {title: ["Multiline", [tag]] for title, tag in titles.items()}


LAYOUT = {
    "TRM loss": _charts(
        {
            "total": "loss/total",
            "halt": "loss/halt",
            "task (cross-entropy)": "loss/task",
            "profit-weighted task": "loss/profit_weighted_task",
            "reward (expected PnL)": "loss/reward",
            "value (regressed PnL)": "loss/value",
        }
    ),
    "TRM halting": _charts(
        {
            "halt rate (halts per reasoning step)": "halt/rate",
            "halt logit > 0 rate": "halt/logit_positive_rate",
            "halt target rate": "halt/target_rate",
            "mean steps (train)": "halt/mean_steps",
            "mean steps (held-out)": "eval/mean_steps",
            "row-steps ratio, adaptive / fixed (held-out)": "eval/row_steps_ratio",
            "steps after a regime change / settled (held-out)": "eval/steps_change_ratio",
        }
    )
    # Steps per run differ (max_steps), so the hazards stay one regex chart: hover to tell steps apart;
    # likewise the regimes (synthetic data), one line each.
    | {"hazard per reasoning step": ["Multiline", [r"halt/hazard/step_\d+"]]}
    | {"mean steps per true regime (held-out)": ["Multiline", [r"eval/steps_by_regime/.+"]]}
    | {"pnl at each fixed step count (held-out)": ["Multiline", [r"eval/fixed_depth_pnl/\d+"]]},
    "Trading": _charts(
        {
            "accuracy (train)": "train/accuracy",
            "accuracy (held-out)": "eval/accuracy",
            "pnl (train)": "train/pnl",
            "pnl (held-out)": "eval/pnl",
            "sharpe (held-out)": "eval/sharpe",
        }
    ),
}


def is_rank_zero() -> bool:
    """True on the process that should write logs (always, without torch.distributed / torchrun)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def component_scalars(components: Mapping[str, Any]) -> dict[str, float]:
    """TRMLoss(..., return_components=True) output -> ``{tag: float}`` for the components present."""
    return {tag: _as_float(components[name]) for name, tag in COMPONENT_TAGS.items() if name in components}


def _as_float(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().item())
    return float(value)


def _as_array(value: Any) -> np.ndarray | None:
    """A 1-D+ array for histogram values, None for scalars."""
    if isinstance(value, torch.Tensor):
        value = value.detach().float().cpu().numpy()
    if isinstance(value, (np.ndarray, list, tuple)):
        array = np.asarray(value, dtype=np.float64)
        return array if array.ndim >= 1 else None
    return None


def _tolerant(method: Callable[..., None]) -> Callable[..., None]:
    """Make a write method survive I/O errors: the first one warns and turns logging off.

    TensorBoard is a view of the run; a full disk or a lost mount there must not end training
    (checkpoints and metrics.json report their own write errors).
    """

    @functools.wraps(method)
    def wrapper(self: MetricsLogger, *args: Any, **kwargs: Any) -> None:
        if self.failed:
            return
        try:
            method(self, *args, **kwargs)
        except OSError as exc:
            self.failed = True
            warnings.warn(
                f"TensorBoard logging to {self.log_dir or 'its writer'} failed ({exc}); "
                "training continues without it.",
                RuntimeWarning,
                stacklevel=2,
            )

    return wrapper


def _hparam_value(value: Any) -> float | int | str | bool:
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class MetricsLogger:
    """Write ``{tag: number | array}`` per step to TensorBoard on rank zero only.

    Args:
        log_dir: where to open a ``SummaryWriter`` when no ``writer`` is given (opened lazily).
        writer: an existing ``torch.utils.tensorboard.SummaryWriter`` to write through (not closed here).
        enabled: force writing on/off; default: only on rank zero.
    """

    def __init__(
        self, log_dir: str | os.PathLike | None = None, *, writer: Any = None, enabled: bool | None = None
    ):
        if writer is None and log_dir is None:
            raise ValueError(
                "MetricsLogger needs log_dir (a directory for event files) or writer (a SummaryWriter)."
            )
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.enabled = is_rank_zero() if enabled is None else enabled
        self._writer = writer
        self._owns_writer = writer is None
        self.purge_step: int | None = None
        """When resuming at step k, TensorBoard drops points at steps >= k logged by the interrupted process."""
        self.failed = False
        """Set by the first write error (warned once); later writes are skipped."""

    @property
    def writer(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=self.purge_step)
        return self._writer

    @_tolerant
    def update(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Numbers -> ``add_scalar``; arrays / tensors with a dimension -> ``add_histogram``; None is skipped."""
        if not self.enabled:
            return
        for tag, value in metrics.items():
            if value is None:
                continue
            array = _as_array(value)
            if array is None:
                self.writer.add_scalar(tag, _as_float(value), step)
            elif array.size:
                self.writer.add_histogram(tag, array, step)

    @_tolerant
    def log_curve(self, tag: str, values: Any) -> None:
        """A curve over its own index (e.g. an equity curve over decision points), at most :data:`CURVE_POINTS`
        evenly spaced points of it (the first and last always), each at its own index."""
        if not self.enabled:
            return
        values = np.asarray(values, dtype=np.float64)  # (N,)
        index = curve_points(len(values))
        for i, value in zip(index.tolist(), values[index].tolist(), strict=True):
            self.writer.add_scalar(tag, value, i)

    @_tolerant
    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        """An (H, W, 3) uint8 image (e.g. an evaluation chart) in the Images tab at ``step``."""
        if not self.enabled:
            return
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"image {tag!r} must be an (H, W, 3) uint8 array; got {image.shape} {image.dtype}."
            )
        self.writer.add_image(tag, image, step, dataformats="HWC")

    @_tolerant
    def log_hparams(self, hparams: Mapping[str, Any], metric_tags: tuple[str, ...] = HPARAM_METRICS) -> None:
        """Hyperparameters into this run (not a sub-run, as ``SummaryWriter.add_hparams`` would make)."""
        if not self.enabled:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        clean = {key: _hparam_value(value) for key, value in hparams.items()}
        experiment, session_start, session_end = hparams_summary(clean, dict.fromkeys(metric_tags, 0.0))
        file_writer = self.writer._get_file_writer()
        for summary in (experiment, session_start, session_end):
            file_writer.add_summary(summary)

    @_tolerant
    def log_layout(self, layout: Mapping[str, Any] = LAYOUT) -> None:
        if self.enabled:
            self.writer.add_custom_scalars(dict(layout))

    @_tolerant
    def flush(self) -> None:
        if self.enabled and self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush; close the writer only if this logger opened it (quietly when writing already failed)."""
        if self._writer is None:
            return
        if self.failed:
            if self._owns_writer:
                with contextlib.suppress(OSError):  # already warned; just release the file
                    self._writer.close()
                self._writer = None
            return
        self._close()

    @_tolerant
    def _close(self) -> None:
        self._writer.flush()
        if self._owns_writer:
            self._writer.close()
            self._writer = None
