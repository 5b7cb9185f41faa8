"""Deep supervision over the reasoning steps of a RecurrentTRM, shared by the Lightning and HF adapters.

Framework-free (torch only, plus trm_act's own model, loss, ACT rule and replay data), so both
``trm_act.callbacks.lightning`` and ``trm_act.callbacks.hf`` build on it without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from trm_act.act import first_halt_step
from trm_act.loss import TRMLoss
from trm_act.model import RecurrentTRM, TRMConfig

from .logger import component_scalars


class Supervised(NamedTuple):
    """What :func:`deep_supervision` returns."""

    loss: Tensor
    """Scalar loss with gradient: the mean of TRMLoss's total over the reasoning steps."""
    metrics: dict[str, float]
    """Detached floats keyed by TensorBoard tag (see :func:`deep_supervision`)."""
    task_logits: Tensor
    """(B, C) detached task logits of the last reasoning step."""


def deep_supervision(
    model: RecurrentTRM,
    loss_fn: TRMLoss,
    obs: Tensor,
    labels: Tensor,
    strategy_pnl: Tensor,
    n_steps: int | None = None,
) -> Supervised:
    """Run ``n_steps`` reasoning steps from a fresh carry and apply TRMLoss at every step.

    A model with a belief (``carry="belief"``) starts every sample from the initial belief: a shuffled
    batch of decisions has no stream to carry one along (the trainer, evaluation and ``act_predict`` do).

    Each step's loss uses ``pnl = strategy_pnl[i, argmax(task_logits_i)]``, the realized PnL of the
    answer at that step (as the trainer does); the returned loss is the mean over steps. Every sample
    runs all ``n_steps`` (deep supervision of every step); halting only decides which answer counts
    as "the" answer for the accuracy / PnL metrics.

    Shapes: obs (B, W, F), labels (B,) int, strategy_pnl (B, C) float.

    Returns:
        ``Supervised(loss, metrics, task_logits)``: the scalar loss with gradient, the last step's
        detached logits, and detached floats keyed by tag:
        ``loss/total`` (equal to ``loss``), ``loss/halt``, ``loss/task``, ``loss/profit_weighted_task``,
        ``loss/reward``, ``halt/target_rate`` (means over steps); ``halt/rate``: committed halts per
        reasoning step executed, B / sum of the first-halting steps (as the trainer's);
        ``halt/logit_positive_rate``: share of (sample, step) pairs whose halt logit is > 0; ``halt/mean_steps``: mean over samples of the
        step at which the halting rule first fires (:func:`trm_act.act.first_halt_step`) (``n_steps`` if
        never); ``train/accuracy`` and ``train/pnl``: accuracy against the label and mean realized
        PnL of the answer at that halting step.
    """
    n_steps = model.config.max_steps if n_steps is None else n_steps
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be an integer >= 1 (reasoning steps per batch); got {n_steps!r}.")
    batch = obs.shape[0]
    rows = torch.arange(batch, device=obs.device)
    strategy_pnl = strategy_pnl.float()
    carry = model.init_carry(batch, device=obs.device)

    outputs, choices, pnls = [], [], []  # per step: the output (with its graph), (B,) answers, (B,) their PnL
    for _ in range(n_steps):
        out = model(obs, carry)
        carry = out.carry  # detached by the model; the graphs live until backward, as the summed loss needs
        choice = out.task_logits.detach().argmax(dim=-1)  # (B,)
        outputs.append(out)
        choices.append(choice)
        pnls.append(strategy_pnl[rows, choice])  # (B,) realized PnL of this step's answer

    total = obs.new_zeros((), dtype=torch.float32)
    sums: dict[str, float] = {}
    for s, out in enumerate(outputs):
        # halt_target="priced" asks whether the next step paid: every step's answer is known here (the last
        # step has no next one, so its own logits stand in, as in the trainer).
        next_logits = outputs[min(s + 1, n_steps - 1)].task_logits.detach()
        components = loss_fn(
            out.task_logits,
            out.halt_logits,
            labels,
            pnls[s],
            return_components=True,
            strategy_pnl=strategy_pnl,
            next_task_logits=next_logits,
        )
        total = total + components["total_loss"]
        for tag, value in component_scalars(components).items():
            sums[tag] = sums.get(tag, 0.0) + value
    halt_logits = [out.halt_logits.detach() for out in outputs]

    halt_logits_bs = torch.stack(halt_logits, dim=1)  # (B, S)
    halt_step = first_halt_step(halt_logits_bs, n_steps)  # (B,)
    answer = torch.stack(choices, dim=1)[rows, halt_step - 1]  # (B,) the answer at the halting step

    loss = total / n_steps
    metrics = {tag: value / n_steps for tag, value in sums.items()}
    metrics["loss/total"] = float(loss.detach())
    metrics["halt/rate"] = batch / float(halt_step.sum())
    metrics["halt/logit_positive_rate"] = float((halt_logits_bs > 0).float().mean())
    metrics["halt/mean_steps"] = float(halt_step.float().mean())
    metrics["train/accuracy"] = float((answer == labels).float().mean())
    metrics["train/pnl"] = float(strategy_pnl[rows, answer].mean())
    return Supervised(loss, metrics, out.task_logits.detach())


class ReplayDataset(Dataset):
    """Decision points of one split of a trade replay as ``{"obs", "labels", "strategy_pnl"}`` dicts.

    ``obs`` (window, n_features) float32, ``labels`` int64 (the hindsight best strategy),
    ``strategy_pnl`` (8,) float32 (every strategy's realized PnL). Observations are materialized once.
    """

    def __init__(self, replay: Any, split: str = "train"):
        indices = replay.split_indices(split)
        if len(indices) == 0:
            raise ValueError(
                f"The replay's {split!r} split has no decision points; use more bars or another split."
            )
        self.obs = torch.as_tensor(replay.observations(indices), dtype=torch.float32)  # (N, W, F)
        self.labels = torch.as_tensor(replay.labels[indices], dtype=torch.long)  # (N,)
        self.strategy_pnl = torch.as_tensor(replay.strategy_pnl[indices], dtype=torch.float32)  # (N, C)

    def __len__(self) -> int:
        return self.obs.shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {
            "obs": self.obs[index],
            "labels": self.labels[index],
            "strategy_pnl": self.strategy_pnl[index],
        }


def resolve_model_config(model_config: TRMConfig | Mapping[str, Any] | None, replay: Any) -> TRMConfig:
    """``TRMConfig`` sized to the replay's observations.

    None: TRMConfig's defaults; a mapping: those defaults updated by
    its fields (``window`` / ``n_features`` default to the replay's); a TRMConfig: checked against the replay.
    """
    window, n_features = replay.window, replay.n_features
    if model_config is None or isinstance(model_config, Mapping):
        fields = {"window": window, "n_features": n_features, **(model_config or {})}
        model_config = TRMConfig(**fields)
    if not isinstance(model_config, TRMConfig):
        raise ValueError(
            f"model_config must be a TRMConfig, a dict of its fields or None; got {type(model_config).__name__}."
        )
    if (model_config.window, model_config.n_features) != (window, n_features):
        raise ValueError(
            f"model_config has window={model_config.window}, n_features={model_config.n_features} but the replay's "
            f"observations are ({window}, {n_features}); set TRMConfig(window={window}, n_features={n_features})."
        )
    return model_config
