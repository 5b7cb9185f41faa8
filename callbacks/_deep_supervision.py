"""Deep supervision over the reasoning steps of a RecurrentTRM, shared by the Lightning and HF adapters.

It trains a batch the way the trainer trains its slots, through the same functions (``trm_act.act.act_step``,
``trm_act.supervision``), so every ``halt/*`` and ``train/*`` tag means what it means in the trainer.
Framework-free (torch only, plus trm_act's own model, loss, ACT rule and replay data), so both
``trm_act.callbacks.lightning`` and ``trm_act.callbacks.hf`` build on it without importing each other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from trm_act.act import ACTState, act_step
from trm_act.loss import TRMLoss
from trm_act.model import RecurrentTRM, TRMConfig
from trm_act.supervision import LOSS_TAGS, SupervisionStats, look_ahead, supervise_step


class Supervised(NamedTuple):
    """What :func:`deep_supervision` returns."""

    loss: Tensor
    """Scalar loss with gradient: the mean of TRMLoss's total over the iterations."""
    metrics: dict[str, float]
    """Detached floats keyed by TensorBoard tag (see :func:`deep_supervision`)."""
    task_logits: Tensor
    """(B, C) detached task logits of each decision's answer: at the step it first halted (the last
    iteration's for a decision still running)."""


def deep_supervision(
    model: RecurrentTRM,
    loss_fn: TRMLoss,
    obs: Tensor,
    labels: Tensor,
    strategy_pnl: Tensor,
    label_pnl: Tensor | None = None,
    iterations: int | None = None,
    *,
    exploration_prob: float | None = None,
    generator: torch.Generator | None = None,
) -> Supervised:
    """Train on a batch of decisions the way ``trm_act.trainer`` trains its slots, with the same loss and tags.

    The batch is B slots, slot i replaying decision i. Each of ``iterations`` iterations (default
    ``model.config.max_steps``) runs one reasoning step on every slot (``trm_act.act.act_step``) and applies
    TRMLoss to it through :func:`trm_act.supervision.supervise_step`, supervised with ``label_pnl`` like the
    trainer's ``info["label_pnl"]``. A slot whose halting rule fires commits its answer (reward: its
    ``strategy_pnl``) and starts its decision again from a fresh carry, with a new exploration floor
    (``exploration_prob``, default ``model.config.halt_exploration_prob`` in training mode and 0 in eval mode)
    and, in belief mode, the initial belief: a shuffled batch has no stream to carry a belief along. The
    "priced" halt target looks one step ahead (:func:`trm_act.supervision.look_ahead`), as the trainer does.

    Shapes: obs (B, W, F), labels (B,) int, strategy_pnl (B, C) each strategy's realized PnL over the trade's
    horizon, label_pnl (B, C) over the labels' horizon (None: strategy_pnl, the labels' horizon is the trade's).

    Returns:
        ``Supervised(loss, metrics, task_logits)``: the mean over iterations of TRMLoss's total (with gradient),
        the tags of :class:`trm_act.supervision.SupervisionStats` (``halt/*``, ``train/accuracy``,
        ``train/pnl``) over the iterations, the means over iterations of ``loss/*``, and each decision's answer
        logits.
    """
    config = model.config
    iterations = config.max_steps if iterations is None else iterations
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(
            f"iterations must be an integer >= 1 (reasoning steps run on every row); got {iterations!r}."
        )
    if exploration_prob is None:
        exploration_prob = config.halt_exploration_prob if model.training else 0.0
    batch, device = obs.shape[0], obs.device
    rows = torch.arange(batch, device=device)
    rewards = strategy_pnl.float()  # (B, C)
    supervision = rewards if label_pnl is None else label_pnl.float()  # (B, C)
    state = ACTState.initial(
        model, batch, device=device, exploration_prob=exploration_prob, generator=generator
    )
    stats = SupervisionStats(config.max_steps)
    total = obs.new_zeros((), dtype=torch.float32)
    sums: dict[str, Tensor] = {}
    answer = None  # (B, C) logits of each decision's first committed answer
    pending = torch.ones(batch, dtype=torch.bool, device=device)  # (B,) not committed yet
    for _ in range(iterations):
        steps = state.steps + 1  # (B,) the reasoning step each slot runs now
        out, state, halted = act_step(
            model,
            obs,
            state,
            max_steps=config.max_steps,
            exploration_prob=exploration_prob,
            generator=generator,
        )
        next_logits = None
        if loss_fn.halt_target == "priced":
            next_logits = look_ahead(model, obs, out, steps >= config.max_steps)  # (B, C)
        parts, actions, _ = supervise_step(loss_fn, out, labels, supervision, next_logits)
        total = total + parts["total_loss"]
        for name in LOSS_TAGS:
            if name in parts:
                sums[name] = sums.get(name, 0.0) + parts[name].detach()
        logits = out.task_logits.detach()
        answer = logits if answer is None else torch.where(pending[:, None], logits, answer)
        pending = pending & ~halted

        halted_np, steps_np = halted.cpu().numpy(), steps.cpu().numpy()  # one host sync per iteration
        stats.record_step(halted_np, steps_np, out.halt_logits, parts["halt_target_rate"])
        if halted_np.any():
            done = actions[halted]  # (H,) the committed answers
            stats.record_commits(
                steps_np[halted_np],
                (done == labels[halted]).cpu().numpy(),
                rewards[rows[halted], done].cpu().numpy(),
            )
            # The slot's next decision is its own again, not a later one of a stream: no belief carries over.
            if getattr(model, "has_belief", False):
                state = dataclasses.replace(
                    state, carry=state.carry.reset(halted, model.init_carry(batch, device=device))
                )

    loss = total / iterations
    metrics = {LOSS_TAGS[name]: float(value) / iterations for name, value in sums.items()}
    metrics["loss/total"] = float(loss.detach())
    metrics |= stats.scalars()
    return Supervised(loss, metrics, answer)


class ReplayDataset(Dataset):
    """Decision points of one split of a trade replay as ``{"obs", "labels", "strategy_pnl", "label_pnl"}`` dicts.

    ``obs`` (window, n_features) float32, ``labels`` int64 (the label of the replay's ``label_source``),
    ``strategy_pnl`` (8,) float32 (every strategy's realized PnL over the trade's horizon: the reward),
    ``label_pnl`` (8,) float32 (every strategy's PnL over the labels' horizon: what supervises, as
    ``info["label_pnl"]`` in the trainer). Observations are materialized once.
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
        self.label_pnl = torch.as_tensor(replay.label_pnl[indices], dtype=torch.float32)  # (N, C)

    def __len__(self) -> int:
        return self.obs.shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {
            "obs": self.obs[index],
            "labels": self.labels[index],
            "strategy_pnl": self.strategy_pnl[index],
            "label_pnl": self.label_pnl[index],
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
