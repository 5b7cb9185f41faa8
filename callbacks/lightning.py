"""PyTorch Lightning adapter: a callback that logs TRM metrics, and a ready LightningModule.

``TRMLightningCallback`` writes the TRM metrics that ``training_step`` returns into the trainer's
TensorBoard run (``trainer.logger.experiment``), so they sit next to Lightning's own curves in one
event file. ``TRMLightningModule`` wraps RecurrentTRM + TRMLoss with deep supervision over the
reasoning steps and brings its own data, so two lines train it::

    import lightning
    from trm_act.callbacks.lightning import TRMLightningModule

    lightning.Trainer(max_steps=200, accelerator="cpu").fit(TRMLightningModule())

Both work under Lightning's ``strategy="ddp"`` (CPU or GPU): the module shards its data with a
``DistributedSampler`` and the callback writes, on rank zero, the mean of every rank's metrics.

Needs the ``lightning`` package: ``pip install "trm-act[lightning]"``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

from ._frameworks import missing_framework

try:
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger
except ImportError as exc:  # pragma: no cover - exercised by tests with the import blocked
    raise missing_framework("lightning", "PyTorch Lightning") from exc

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler
from trm_act.envs import build_replay  # None: the embedded synthetic market

from trm_act.act import act_predict
from trm_act.config import TrainConfig
from trm_act.loss import LossConfig, TRMLoss, recipe_loss
from trm_act.model import RecurrentTRM, TRMConfig

from ._deep_supervision import ReplayDataset, deep_supervision, resolve_model_config
from .logger import COMPONENT_TAGS, MetricsLogger

__all__ = ["TRMLightningCallback", "TRMLightningModule", "trm_metrics"]


def trm_metrics(outputs: Any) -> dict[str, float]:
    """The TRM scalars in a ``training_step`` output, keyed by TensorBoard tag.

    Keys named like TRMLoss components (``total_loss``, ``halt_loss``, ``task_loss``,
    ``profit_weighted_task_loss``, ``reward_loss``, ``value_loss``, ``halt_target_rate``) map to their tags
    (``loss/total``, ...); keys that already are tags (contain ``/``, e.g. ``halt/rate``) pass as they
    are. Everything else (``loss``, the lambdas, non-scalars) is ignored.
    """
    if not isinstance(outputs, Mapping):
        return {}
    metrics: dict[str, float] = {}
    for key, value in outputs.items():
        tag = COMPONENT_TAGS.get(key, key if "/" in key else None)
        if tag is None:
            continue
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            metrics[tag] = float(value.detach().float().item())
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics[tag] = float(value)
    return metrics


def mean_over_ranks(metrics: Mapping[str, float], world_size: int) -> dict[str, float]:
    """Every rank's ``metrics`` averaged tag by tag (over the ranks that have the tag), on every rank.

    A collective: every rank must call it at the same point. ``all_gather_object`` rather than a tensor
    all-reduce, so ranks whose outputs carry different tags cannot hang or mismatch. Without an
    initialised process group (or with one process) the metrics come back as they are.
    """
    if world_size < 2 or not (dist.is_available() and dist.is_initialized()):
        return dict(metrics)
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, dict(metrics))
    return _mean_by_tag(gathered)


def _mean_by_tag(rows: list[Mapping[str, float]]) -> dict[str, float]:
    tags = {tag for row in rows for tag in row}
    return {
        tag: sum(row[tag] for row in rows if tag in row) / sum(tag in row for row in rows) for tag in tags
    }


class TRMLightningCallback(pl.Callback):
    """Log the TRM metrics returned by ``training_step`` to TensorBoard, on global rank zero only.

    Expected ``training_step`` output: a dict with ``"loss"`` (what Lightning optimizes) plus TRM
    metrics, either TRMLoss component names or tags (see :func:`trm_metrics`), e.g.::

        components = loss_fn(task_logits, halt_logits, labels, pnl, return_components=True)
        return {"loss": components["total_loss"], **components, "halt/rate": rate, "halt/mean_steps": steps}

    Writer: the ``SummaryWriter`` of the trainer's first ``TensorBoardLogger``
    (``trainer.logger.experiment``), so one run holds Lightning's and TRM's curves; without one, a
    writer of its own in ``log_dir`` (default ``<trainer.log_dir>/trm``), closed at the end of training.

    Step: ``trainer.global_step`` after the optimizer step, i.e. the number of optimizer steps taken
    (1 for the first). With gradient accumulation the metrics of the accumulated batches are averaged
    and written once per optimizer step, so steps strictly increase.

    Several processes (``strategy="ddp"``): with ``sync_ranks`` (the default) each value written is the
    mean over ranks of each rank's value for that step (one ``all_gather_object`` per optimizer step, on
    every rank), so halt rates and losses describe the global batch rather than rank zero's shard; with
    equal per-rank batches (a ``DistributedSampler``) that is the global batch's mean for the losses,
    accuracy and ``halt/mean_steps``. ``sync_ranks=False`` writes rank zero's own values, with no
    collective.

    Args:
        log_dir: directory for an own writer when the trainer has no TensorBoardLogger.
        flush_every: flush the writer every this many logged steps (and always at the end).
        sync_ranks: average the metrics over ranks before rank zero writes them.
    """

    def __init__(
        self, log_dir: str | os.PathLike | None = None, flush_every: int = 50, sync_ranks: bool = True
    ):
        if isinstance(flush_every, bool) or not isinstance(flush_every, int) or flush_every < 1:
            raise ValueError(f"flush_every must be an integer >= 1; got {flush_every!r}.")
        if not isinstance(sync_ranks, bool):
            raise ValueError(f"sync_ranks must be True or False; got {sync_ranks!r}.")
        self.log_dir = log_dir
        self.flush_every = flush_every
        self.sync_ranks = sync_ranks
        self.logger: MetricsLogger | None = None
        self._pending: list[dict[str, float]] = []
        self._last_step = -1
        self._written = 0

    def _make_logger(self, trainer: pl.Trainer) -> MetricsLogger:
        enabled = trainer.is_global_zero
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                # .experiment is Lightning's SummaryWriter (a dummy off rank zero); the logger owns it.
                return MetricsLogger(
                    writer=logger.experiment if enabled else None, log_dir=logger.log_dir, enabled=enabled
                )
        log_dir = self.log_dir if self.log_dir is not None else os.path.join(trainer.log_dir or ".", "trm")
        return MetricsLogger(log_dir, enabled=enabled)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.logger = self._make_logger(trainer)
        self._pending.clear()
        self._last_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.logger is None:
            return
        sync = self.sync_ranks and trainer.world_size > 1
        if not (self.logger.enabled or sync):
            return  # another rank, and nothing to contribute to rank zero's values
        metrics = trm_metrics(outputs)
        if metrics:
            self._pending.append(metrics)
        step = trainer.global_step
        if step <= self._last_step:
            return  # still accumulating gradients: write once the optimizer has stepped
        # global_step is the same on every rank, so every rank reaches the collective at the same batch,
        # whatever each one's outputs held.
        mean = _mean_by_tag(self._pending)
        if sync:
            mean = mean_over_ranks(mean, trainer.world_size)
        self._pending.clear()
        self._last_step = step
        if not (mean and self.logger.enabled):
            return
        self.logger.update(step, mean)
        self._written += 1
        if self._written % self.flush_every == 0:
            self.logger.flush()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self.logger is not None:
            self.logger.flush()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.logger is not None:
            self.logger.close()  # flushes; closes only a writer this callback opened
            self.logger = None


class TRMLightningModule(pl.LightningModule):
    """RecurrentTRM + TRMLoss with deep supervision over the reasoning steps, on trade-replay data.

    Each batch trains as the trainer trains its slots: ``model_config.max_steps`` iterations, each one
    reasoning step on every decision of the batch with TRMLoss applied to it (pnl = the supervision PnL of
    that step's argmax), halted decisions starting again from a fresh carry; the loss is the mean over
    iterations (see :func:`trm_act.callbacks._deep_supervision.deep_supervision`). ``training_step`` returns
    ``{"loss", "loss/total", "loss/halt", "loss/task", "loss/profit_weighted_task", "loss/reward",
    "halt/target_rate", "halt/rate", "halt/logit_positive_rate", "halt/hazard/step_<s>", "halt/mean_steps",
    "train/accuracy", "train/pnl"}`` (defined once, in :class:`trm_act.supervision.SupervisionStats`), which
    :class:`TRMLightningCallback` (added automatically through ``configure_callbacks``) writes to
    TensorBoard. The module provides its own ``train_dataloader`` over the replay's train split, shuffled;
    with several processes (``strategy="ddp"``) through a ``DistributedSampler`` of its own, so each rank
    trains on its own ``1 / world_size`` of every epoch (reshuffled each epoch, seeded by
    ``lightning.seed_everything`` as Lightning's own sampler is) whatever ``use_distributed_sampler`` says.

    Args:
        model_config: ``TRMConfig`` (or its dict); default: TRMConfig's defaults sized to the replay,
            with its ``max_steps``.
        replay_config: ``trm_act.envs.TradeReplayConfig``; default: the embedded synthetic market.
        loss_config: ``trm_act.loss.LossConfig``; default: ``recipe_loss()``, the CLI's loss.
        lr: AdamW's learning rate; default: the CLI's (``TrainConfig.lr``).
        weight_decay: AdamW's weight decay.
        batch_size: decision points per batch.
    """

    def __init__(
        self,
        model_config: TRMConfig | Mapping[str, Any] | None = None,
        replay_config: Any = None,
        *,
        loss_config: LossConfig | None = None,
        lr: float = TrainConfig.lr,
        weight_decay: float = 0.0,
        batch_size: int = 64,
    ):
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}.")
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"lr must be a positive float; got {lr!r}.")
        self.replay = build_replay(replay_config)
        config = resolve_model_config(model_config, self.replay)
        self.model = RecurrentTRM(config)
        loss_config = recipe_loss() if loss_config is None else loss_config
        self.loss_fn = TRMLoss.from_config(loss_config, num_classes=config.num_classes)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.batch_size = batch_size
        self._train_set: ReplayDataset | None = None  # built on first use, then shared
        # Plain values only, so TensorBoard's hparams and checkpoints (load_from_checkpoint) both take them.
        self.save_hyperparameters(
            {
                "model_config": config.to_dict(),
                "loss_config": dataclasses.asdict(loss_config),
                "lr": lr,
                "weight_decay": weight_decay,
                "batch_size": batch_size,
            }
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Strategy logits (B, C) after all ``max_steps`` reasoning steps (what TRM does at evaluation); no grad."""
        return act_predict(self.model, obs, adaptive=False).task_logits

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        result = deep_supervision(
            self.model, self.loss_fn, batch["obs"], batch["labels"], batch["strategy_pnl"], batch.get("label_pnl")
        )
        # Progress bar only: TensorBoard gets the TRM tags from TRMLightningCallback, at one step semantics.
        self.log("loss", result.loss.detach(), prog_bar=True, logger=False)
        return {"loss": result.loss, **result.metrics}

    def on_fit_start(self) -> None:
        """Give a ``max_steps``-only run a finite epoch count, so the progress bar reads "Epoch 0/4".

        Lightning turns ``max_steps=N`` with no ``max_epochs`` into ``max_epochs=-1`` (unbounded), and
        its Rich progress bar then prints ``Epoch 1/-2`` (max_epochs - 1). The epochs that ``max_steps``
        spans end training at the same step, so nothing else changes.
        """
        trainer = self.trainer
        full_epochs = trainer.limit_train_batches == 1.0  # a limit shortens epochs; then leave it alone
        if trainer.fit_loop.max_epochs == -1 and trainer.max_steps > 0 and full_epochs:
            # Per rank: counted on the whole split, a DDP run's epochs would end training early.
            batches = math.ceil(
                self._samples_per_epoch(trainer.world_size, trainer.global_rank) / self.batch_size
            )
            steps_per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
            trainer.fit_loop.max_epochs = math.ceil(trainer.max_steps / steps_per_epoch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def configure_callbacks(self) -> list[pl.Callback]:
        """A ``TRMLightningCallback`` unless the Trainer already has one (which then keeps its options)."""
        trainer = self._trainer
        if trainer is not None and any(isinstance(cb, TRMLightningCallback) for cb in trainer.callbacks):
            return []
        return [TRMLightningCallback()]

    def _dataset(self) -> ReplayDataset:
        if self._train_set is None:
            self._train_set = ReplayDataset(self.replay, "train")
        return self._train_set

    def _sampler(self, world_size: int, rank: int) -> DistributedSampler | None:
        """This rank's share of the split with several processes (a shuffling DistributedSampler); None
        for one process, which reads the whole split."""
        if world_size < 2:
            return None
        # Lightning's own sampler takes the seed seed_everything exported; the same here.
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        return DistributedSampler(
            self._dataset(), num_replicas=world_size, rank=rank, shuffle=True, seed=seed
        )

    def _samples_per_epoch(self, world_size: int, rank: int) -> int:
        sampler = self._sampler(world_size, rank)
        return len(self._dataset()) if sampler is None else len(sampler)

    def train_dataloader(self) -> DataLoader:
        trainer = self._trainer
        sampler = None if trainer is None else self._sampler(trainer.world_size, trainer.global_rank)
        # Lightning calls a sampler's set_epoch at every epoch, so each DDP epoch reshuffles too.
        return DataLoader(
            self._dataset(),
            batch_size=self.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            drop_last=False,
        )
