"""One path from a reasoning step's output to its loss and its metrics, for every loop that trains a RecurrentTRM.

TRM wraps its model in one loss head (``ACTLossHead``) so that every loop computes the same loss and the same
metrics. Here the trainer (``trm_act.trainer``) and the adapters for other trainers (``trm_act.callbacks``:
Lightning, Hugging Face) call the same three pieces:

- :func:`supervise_step`: TRMLoss of one reasoning step, with ``pnl`` = the supervision PnL of the step's
  argmax answer (``info["label_pnl"]``: each strategy's PnL over the labels' horizon);
- :func:`look_ahead`: the logits of one more reasoning step, which the "priced" halt target compares with;
- :class:`SupervisionStats`: every ``halt/*`` tag and ``train/accuracy`` / ``train/pnl``, from the reasoning steps
  a window of iterations ran and the decisions it committed.

An iteration runs one reasoning step on each of B slots; a slot whose halting rule fires commits its answer
and starts its next decision from a fresh carry (``trm_act.act.act_step``). The trainer's slots take their next
decision from a vector env; an adapter's batch is B slots that each replay one decision
(``trm_act.callbacks._deep_supervision``), so the same definitions give the same numbers on the same batch.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from trm_act.callbacks.logger import COMPONENT_TAGS
from trm_act.loss import TRMLoss
from trm_act.model import StepOutput

__all__ = ["LOSS_TAGS", "StepSupervision", "SupervisionStats", "look_ahead", "loss_tags", "supervise_step"]

# TRMLoss component -> tag of the loss of one optimizer step. The halt target's rate is a statistic of the
# window of iterations (halt/target_rate, SupervisionStats), not a component of one step.
LOSS_TAGS = {name: tag for name, tag in COMPONENT_TAGS.items() if tag.startswith("loss/")}


class StepSupervision(NamedTuple):
    """What :func:`supervise_step` returns."""

    parts: dict[str, Any]
    """TRMLoss's components (``return_components=True``): ``total_loss`` keeps its graph, the rest are detached."""
    actions: Tensor
    """(B,) long: the step's answers, the argmax of its task logits."""
    chosen_pnl: Tensor
    """(B,) float32: the supervision PnL of each answer, the ``pnl`` the loss was given."""


def supervise_step(
    loss_fn: TRMLoss,
    out: StepOutput,
    labels: Tensor,
    supervision_pnl: Tensor,
    next_task_logits: Tensor | None = None,
) -> StepSupervision:
    """TRMLoss of one reasoning step: the answer is the argmax, its ``pnl`` the supervision PnL of that answer.

    Shapes: ``out.task_logits`` (B, C), ``out.halt_logits`` (B,), labels (B,) int, supervision_pnl (B, C) every
    strategy's PnL over the labels' horizon (also the loss's ``strategy_pnl``), next_task_logits (B, C) from
    :func:`look_ahead` (``halt_target="priced"`` only).
    """
    actions = out.task_logits.detach().argmax(dim=-1)  # (B,)
    chosen_pnl = supervision_pnl.gather(1, actions[:, None]).squeeze(1)  # (B,)
    parts = loss_fn(
        out.task_logits,
        out.halt_logits,
        labels,
        chosen_pnl,
        return_components=True,
        strategy_pnl=supervision_pnl,
        next_task_logits=next_task_logits,
    )
    return StepSupervision(parts, actions, chosen_pnl)


@torch.no_grad()
def look_ahead(model: torch.nn.Module, obs: Tensor, out: StepOutput, at_cap: Tensor) -> Tensor:
    """(B, C) task logits one more reasoning step would give, without gradient (``halt_target="priced"``).

    HRM computes its continue target the same way. ``at_cap`` (B,) marks rows at the step cap: there is no next
    step, so their own logits stand in (gain 0).
    """
    ahead = model(obs, out.carry)
    return torch.where(at_cap[:, None], out.task_logits.detach(), ahead.task_logits)  # (B, C)


def loss_tags(parts: dict[str, Any]) -> dict[str, float]:
    """``{loss/...: float}`` of TRMLoss's components (a host sync per value: call it when logging)."""
    return {tag: float(parts[name]) for name, tag in LOSS_TAGS.items() if name in parts}


class SupervisionStats:
    """The ``halt/*`` and ``train/*`` tags of a window of iterations, each defined once.

    Feed it every iteration (:meth:`record_step`) and the decisions each iteration committed
    (:meth:`record_commits`); :meth:`scalars` then gives:

    - ``halt/rate``: halts per reasoning step run (committed decisions / reasoning steps, in-flight ones included);
    - ``halt/hazard/step_<s>``: of the reasoning steps run as a decision's s-th, the share that halted;
    - ``halt/logit_positive_rate``: share of the reasoning steps run whose halt logit was > 0;
    - ``halt/target_rate``: share of the reasoning steps run whose halt target (TRMLoss) was 1;
    - ``halt/mean_steps``: mean reasoning steps of the committed decisions;
    - ``train/accuracy``: share of the committed answers equal to the label;
    - ``train/pnl``: mean realized PnL of the committed answers (the env's reward: PnL over the trade's horizon).

    The per-step rates stay on the device until :meth:`scalars`, so recording costs no host sync.
    """

    def __init__(self, max_steps: int) -> None:
        self.max_steps = max_steps
        self.reset()

    def reset(self) -> None:
        self.rewards: list[np.ndarray] = []
        self.correct: list[np.ndarray] = []
        self.halt_steps: list[np.ndarray] = []
        self.reached = np.zeros(self.max_steps + 1, dtype=np.int64)  # rows that completed step s
        self.halted = np.zeros(self.max_steps + 1, dtype=np.int64)  # ... and halted there
        self.iterations = 0
        self.logit_positive: Tensor | float = 0.0  # sum over iterations of the share of halt logits > 0
        self.target_positive: Tensor | float = 0.0  # sum over iterations of the halt target's rate

    def record_step(
        self, halted: np.ndarray, steps: np.ndarray, halt_logits: Tensor, target_rate: Tensor
    ) -> None:
        """One iteration: each slot ran one reasoning step, its ``steps`` (B,)-th; ``halted`` (B,) bool marks
        the slots that stopped there; ``halt_logits`` (B,) and the loss's ``halt_target_rate`` stay on device."""
        bins = self.max_steps + 1
        self.iterations += 1
        self.reached += np.bincount(steps, minlength=bins)[:bins]
        self.halted += np.bincount(steps[halted], minlength=bins)[:bins]
        self.logit_positive += (halt_logits.detach() > 0).float().mean()
        self.target_positive += target_rate.detach()

    def record_commits(self, steps: np.ndarray, correct: np.ndarray, rewards: np.ndarray) -> None:
        """The decisions an iteration committed: their reasoning steps, answer == label, realized PnL (each (H,))."""
        self.halt_steps.append(steps)
        self.correct.append(correct)
        self.rewards.append(rewards)

    def scalars(self) -> dict[str, float]:
        """The tags of the window so far (empty before the first iteration; train/* and halt/mean_steps once a
        decision was committed). Converts the device sums: one host sync."""
        out: dict[str, float] = {}
        if self.rewards:
            rewards, steps = np.concatenate(self.rewards), np.concatenate(self.halt_steps)
            out["train/pnl"] = float(rewards.mean())
            out["train/accuracy"] = float(np.concatenate(self.correct).mean())
            out["halt/mean_steps"] = float(steps.mean())
        if self.iterations:
            out["halt/rate"] = float(self.halted.sum() / self.reached.sum())
            out["halt/logit_positive_rate"] = float(self.logit_positive) / self.iterations
            out["halt/target_rate"] = float(self.target_positive) / self.iterations
        for s in range(1, self.max_steps + 1):
            if self.reached[s]:
                out[f"halt/hazard/step_{s}"] = float(self.halted[s] / self.reached[s])
        return out

    @property
    def committed(self) -> int:
        """Decisions committed in the window."""
        return sum(len(r) for r in self.rewards)

    def state_dict(self) -> dict[str, Any]:
        """The window so far, so that a resumed run logs what an unbroken one would."""

        def joined(parts: list[np.ndarray], dtype: Any) -> Tensor:
            return torch.from_numpy(np.concatenate(parts) if parts else np.zeros(0, dtype=dtype))

        return {
            "rewards": joined(self.rewards, np.float32),
            "correct": joined(self.correct, np.bool_),
            "halt_steps": joined(self.halt_steps, np.int64),
            "reached": torch.from_numpy(self.reached.copy()),
            "halted": torch.from_numpy(self.halted.copy()),
            "iterations": self.iterations,
            "logit_positive": float(self.logit_positive),
            "target_positive": float(self.target_positive),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset()
        for name in ("rewards", "correct", "halt_steps"):
            values = state[name].numpy()
            setattr(self, name, [values] if values.size else [])
        self.reached, self.halted = state["reached"].numpy().copy(), state["halted"].numpy().copy()
        self.iterations = int(state["iterations"])
        # Checkpoints written before these sums were kept restart them at 0.
        self.logit_positive = float(state.get("logit_positive", 0.0))
        self.target_positive = float(state.get("target_positive", 0.0))
