"""Hugging Face Trainer adapter: TRM loss components and halt statistics in the HF run's TensorBoard.

How the model hands its metrics to the callback: the model (``trainer.model``) has a method
``pop_trm_metrics() -> dict[str, float]`` that returns the TRM scalars, keyed by TensorBoard tag, of
the training forward passes since the last call (averaged over them, so gradient accumulation is
handled) and clears them. :class:`TRMHFModel` implements it for RecurrentTRM + TRMLoss; a model of
your own only needs the same method.

Example::

    from transformers import Trainer, TrainingArguments
    from trm_act.callbacks.hf import TRMHFCallback, TRMHFModel, replay_dataset

    args = TrainingArguments(output_dir="runs/hf", max_steps=200, report_to=["tensorboard"], use_cpu=True)
    trainer = Trainer(model=TRMHFModel(), args=args, train_dataset=replay_dataset())
    trainer.add_callback(TRMHFCallback(trainer))
    trainer.train()

Needs transformers and accelerate: ``pip install "trm-act[hf]"``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

from ._frameworks import missing_framework

try:
    from transformers import Trainer, TrainerCallback
    from transformers.integrations import TensorBoardCallback
except ImportError as exc:  # pragma: no cover - exercised by tests with the import blocked
    raise missing_framework("hf", "Hugging Face transformers") from exc

import torch
from torch import nn
from trm_act.envs import build_replay  # None: the embedded synthetic market

from trm_act.loss import LossConfig, TRMLoss, recipe_loss
from trm_act.model import RecurrentTRM, TRMConfig

from ._deep_supervision import ReplayDataset, deep_supervision, resolve_model_config
from .logger import MetricsLogger

__all__ = ["TRMHFCallback", "TRMHFModel", "replay_dataset"]


def replay_dataset(replay_config: Any = None, split: str = "train") -> ReplayDataset:
    """A torch Dataset of ``{"obs", "labels", "strategy_pnl", "label_pnl"}`` dicts over a trade replay's split.

    ``replay_config``: ``trm_act.envs.TradeReplayConfig``; default: the embedded synthetic market.
    The keys match :meth:`TRMHFModel.forward`'s arguments, so HF's default collator batches them.
    """
    return ReplayDataset(build_replay(replay_config), split)


class TRMHFModel(nn.Module):
    """RecurrentTRM + TRMLoss with deep supervision, shaped for the HF Trainer (``model(**batch)``).

    ``forward(obs, labels, strategy_pnl, label_pnl)`` trains the batch as the trainer trains its slots:
    ``config.max_steps`` iterations of one reasoning step on every decision with TRMLoss applied to it
    (supervised with ``label_pnl``), halted decisions starting again from a fresh carry (see
    :func:`trm_act.callbacks._deep_supervision.deep_supervision`). It returns ``{"loss": mean over iterations,
    "logits": each decision's answer at its first halt}``. In training mode it also accumulates the TRM
    metrics (``loss/*``, and ``halt/*``, ``train/accuracy``, ``train/pnl`` as defined in
    :class:`trm_act.supervision.SupervisionStats`) for :meth:`pop_trm_metrics`.

    Args:
        config: ``TRMConfig`` (or its dict); default: TRMConfig's defaults sized to the replay. Must match the replay's (window, n_features).
        replay_config: the ``TradeReplayConfig`` the data comes from (used to size the default config).
        loss_config: ``trm_act.loss.LossConfig``; default: ``recipe_loss()``, the CLI's loss.
    """

    def __init__(
        self,
        config: TRMConfig | Mapping[str, Any] | None = None,
        replay_config: Any = None,
        *,
        loss_config: LossConfig | None = None,
    ):
        super().__init__()
        if isinstance(config, TRMConfig) and replay_config is None:
            resolved = config  # sized by the caller: no need to build the replay just to check it
        else:
            resolved = resolve_model_config(config, build_replay(replay_config))
        self.trm = RecurrentTRM(resolved)
        self.loss_fn = TRMLoss.from_config(
            recipe_loss() if loss_config is None else loss_config, num_classes=resolved.num_classes
        )
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    @property
    def trm_config(self) -> TRMConfig:
        """The RecurrentTRM's config (not ``config``: HF treats ``model.config`` as a PretrainedConfig)."""
        return self.trm.config

    def forward(
        self,
        obs: torch.Tensor,
        labels: torch.Tensor,
        strategy_pnl: torch.Tensor,
        label_pnl: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """obs (B, W, F), labels (B,) int, strategy_pnl and label_pnl (B, C) -> ``{"loss", "logits" (B, C)}``."""
        result = deep_supervision(self.trm, self.loss_fn, obs, labels, strategy_pnl, label_pnl)
        if self.training:
            for tag, value in result.metrics.items():
                self._sums[tag] = self._sums.get(tag, 0.0) + value
                self._counts[tag] = self._counts.get(tag, 0) + 1
        return {"loss": result.loss, "logits": result.task_logits}

    def pop_trm_metrics(self) -> dict[str, float]:
        """Mean TRM metrics of the training forward passes since the last call, then cleared."""
        metrics = {tag: total / self._counts[tag] for tag, total in self._sums.items()}
        self._sums.clear()
        self._counts.clear()
        return metrics


def _unwrap(model: Any) -> Any:
    """The user's model inside DDP / DataParallel-style wrappers (``.module``)."""
    while not hasattr(model, "pop_trm_metrics") and isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


class TRMHFCallback(TrainerCallback):
    """Write the model's TRM metrics into the HF run's TensorBoard run at every optimizer step.

    Why a callback of its own: metrics added to ``logs`` in ``on_log`` do not reach TensorBoard
    (HF's TensorBoardCallback may run first), and ``on_log`` fires only every ``logging_steps``.

    Writer (one event file per run): the ``tb_writer`` of the trainer's HF ``TensorBoardCallback``
    (``report_to=["tensorboard"]``), used from the first ``on_step_end`` on: HF opens it in its
    ``on_train_begin``, which has run by then whatever the callbacks' order; HF closes it at the end.
    Without an HF TensorBoardCallback, the callback opens a writer of its own in ``log_dir`` (required
    then) and closes it at the end of training.

    Step: ``state.global_step`` in ``on_step_end``, i.e. the number of optimizer steps taken (1 for
    the first), the same step HF uses for its own ``train/*`` scalars. Main process only
    (``state.is_world_process_zero``).

    Args:
        trainer: the ``transformers.Trainer`` whose TensorBoard run to share; add the callback with
            ``trainer.add_callback(TRMHFCallback(trainer))``.
        log_dir: directory for an own writer when the trainer reports to no TensorBoard.
    """

    def __init__(self, trainer: Trainer | None = None, log_dir: str | os.PathLike | None = None):
        if trainer is None and log_dir is None:
            raise ValueError(
                "TRMHFCallback needs the trainer (to share its TensorBoard writer: "
                "trainer.add_callback(TRMHFCallback(trainer))) or a log_dir for a writer of its own."
            )
        self.trainer = trainer
        self.log_dir = log_dir
        self.logger: MetricsLogger | None = None
        self._shared_writer: Any = None  # HF's tb_writer that self.logger wraps (None: an own writer)
        self._warned = False

    def _tensorboard_callback(self) -> TensorBoardCallback | None:
        if self.trainer is None:
            return None
        for callback in self.trainer.callback_handler.callbacks:
            if isinstance(callback, TensorBoardCallback):
                return callback
        return None

    def _resolve_logger(self, args: Any) -> MetricsLogger:
        hf_callback = self._tensorboard_callback()
        if hf_callback is None:
            if self.log_dir is None:
                raise ValueError(
                    "TRMHFCallback found no TensorBoard run to write into: add report_to=['tensorboard'] to "
                    "TrainingArguments, or pass TRMHFCallback(log_dir=...)."
                )
            if self.logger is None:
                self.logger = MetricsLogger(self.log_dir, enabled=True)  # opens its writer lazily
            return self.logger
        if hf_callback.tb_writer is None:  # HF opens it in its on_train_begin, before any step ends
            raise ValueError(
                "TRMHFCallback: the Hugging Face TensorBoardCallback has no writer; is tensorboard installed? "
                "Or pass TRMHFCallback(log_dir=...) for a writer of its own."
            )
        if self.logger is None or self._shared_writer is not hf_callback.tb_writer:
            self._shared_writer = hf_callback.tb_writer
            self.logger = MetricsLogger(writer=hf_callback.tb_writer, enabled=True)
        return self.logger

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        model = _unwrap(model)
        if not hasattr(model, "pop_trm_metrics"):
            if not self._warned and state.is_world_process_zero:
                warnings.warn(
                    f"TRMHFCallback: the model ({type(model).__name__}) has no pop_trm_metrics(); nothing to log. "
                    "Use TRMHFModel or give your model that method.",
                    stacklevel=2,
                )
                self._warned = True
            return
        metrics = model.pop_trm_metrics()  # on every process, so each step's window starts empty
        if metrics and state.is_world_process_zero:
            self._resolve_logger(args).update(state.global_step, metrics)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.logger is None:
            return
        if self._shared_writer is None:
            self.logger.close()  # a writer of our own
        else:
            hf_callback = self._tensorboard_callback()
            if hf_callback is not None and hf_callback.tb_writer is self._shared_writer:
                self.logger.flush()  # HF's callback runs after this one and closes it
            # else HF's callback already flushed and closed it
        self.logger = None
        self._shared_writer = None
