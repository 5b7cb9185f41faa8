"""One path from a reasoning step's output to its loss and its metrics, for every loop that trains a RecurrentTRM.

TRM wraps its model in one loss head (``ACTLossHead``) so that every loop computes the same loss and the same
metrics. Here the trainer (``trm_act.trainer``) and the adapters for other trainers (``trm_act.callbacks``:
Lightning, Hugging Face) call the same pieces:

- :func:`supervise_step`: TRMLoss of one reasoning step, with ``pnl`` = the supervision PnL of the step's
  argmax answer (``info["label_pnl"]``: each strategy's PnL over the labels' horizon);
- :func:`look_ahead`: the logits of one more reasoning step (:func:`answer_of` the model), which the "priced" and
  "gain" halt targets compare with;
- :class:`SupervisionStats`: every ``halt/*`` tag and ``train/accuracy`` / ``train/pnl``, from the reasoning steps
  a window of iterations ran and the decisions it committed;
- :func:`deep_supervision`: every reasoning step of a batch of decisions within one optimizer step, built from the
  three above (the adapters' loop, and the trainer's with ``train.unroll``).

An iteration runs one reasoning step on each of B slots; a slot whose halting rule fires commits its answer
and starts its next decision from a fresh carry (``trm_act.act.act_step``). The trainer's slots take their next
decision from a vector env; in :func:`deep_supervision` each of B slots replays one decision, so the same
definitions give the same numbers on the same batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from trm_act.act import ACTState, act_step, checked_belief
from trm_act.callbacks.logger import COMPONENT_TAGS
from trm_act.loss import TRMLoss
from trm_act.model import RecurrentTRM, StepOutput, scale_gradient

__all__ = [
    "LOSS_TAGS",
    "StepSupervision",
    "Supervised",
    "SupervisionStats",
    "answer_of",
    "deep_supervision",
    "look_ahead",
    "loss_tags",
    "supervise_step",
    "weigh_rows",
]

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
    :func:`look_ahead` (``TRMLoss.looks_ahead`` only).
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


def weigh_rows(out: StepOutput, mask: torch.Tensor, weight: float) -> StepOutput:
    """``out`` with the same values, whose rows in ``mask`` (B,) pass ``weight`` times their gradient back: every
    loss term reads only the task and halt logits, so this weighs those rows' losses in the gradient alone."""
    scale = torch.where(mask, weight, 1.0)  # (B,) float32
    task_scale = scale[:, None].to(out.task_logits.dtype)  # (B, 1) against the (B, C) logits
    return out._replace(
        task_logits=scale_gradient(out.task_logits, task_scale),
        halt_logits=scale_gradient(out.halt_logits, scale.to(out.halt_logits.dtype)),
    )


def answer_of(model: torch.nn.Module) -> Callable[[Tensor, Any], Tensor]:
    """``(obs, carry) -> (B, C)`` task logits of one reasoning step: ``RecurrentTRM.answer_logits`` (only the bars
    the decision bar's answer depends on), else the logits of the model's forward (the peers)."""
    answer = getattr(model, "answer_logits", None)
    return answer if answer is not None else lambda obs, carry: model(obs, carry).task_logits


@torch.no_grad()
def look_ahead(answer_fn: Callable[[Tensor, Any], Tensor], obs: Tensor, out: StepOutput, at_cap: Tensor) -> Tensor:
    """(B, C) task logits one more reasoning step would give, without gradient (``TRMLoss.looks_ahead``).

    ``answer_fn`` is :func:`answer_of` the model (or its compiled form); a model is taken through :func:`answer_of`.
    HRM computes its continue target the same way. ``at_cap`` (B,) marks rows at the step cap: there is no next
    step, so their own logits stand in (gain 0).
    """
    if isinstance(answer_fn, torch.nn.Module):  # a model, as callers passed before answer_of existed
        answer_fn = answer_of(answer_fn)
    ahead = answer_fn(obs, out.carry)  # (B, C)
    return torch.where(at_cap[:, None], out.task_logits.detach(), ahead)  # (B, C)


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


class Supervised(NamedTuple):
    """What :func:`deep_supervision` returns."""

    loss: Tensor
    """Scalar loss with gradient: the mean of TRMLoss's total over the iterations."""
    metrics: dict[str, float]
    """Detached floats keyed by TensorBoard tag (see :func:`deep_supervision`)."""
    task_logits: Tensor
    """(B, C) detached task logits of each decision's answer: at the step it first halted (the last
    iteration's for a decision still running)."""
    belief: Tensor | None = None
    """(B, D) belief mode: the belief after each decision (the proposal of the step its answer comes from),
    with its graph, to hand to the next decision of the slot's stream; None with a fresh carry."""


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
    stats: SupervisionStats | None = None,
    belief: Tensor | None = None,
    answer_fn: Callable[[Tensor, Any], Tensor] | None = None,
) -> Supervised:
    """Every reasoning step of a batch of decisions, each supervised by TRMLoss: one loss for one optimizer step.

    What the adapters train with, and the trainer with ``train.unroll``: every decision of the batch gets
    ``iterations`` supervised reasoning steps within one optimizer step, where the trainer's continual carry
    gives each slot one step per optimizer step. The same functions as the trainer's (``act_step``,
    :func:`supervise_step`, :class:`SupervisionStats`) give the same loss and tags.

    The batch is B slots, slot i replaying decision i. Each of ``iterations`` iterations (default
    ``model.config.max_steps``) runs one reasoning step on every slot (``trm_act.act.act_step``) and applies
    TRMLoss to it through :func:`trm_act.supervision.supervise_step`, supervised with ``label_pnl`` like the
    trainer's ``info["label_pnl"]``. A slot whose halting rule fires commits its answer (reward: its
    ``strategy_pnl``) and starts its decision again from a fresh carry, with a new exploration floor
    (``exploration_prob``, default ``model.config.halt_exploration_prob`` in training mode and 0 in eval mode)
    and the belief its decision started from. The "priced" and "gain" halt targets look one step ahead
    (:func:`trm_act.supervision.look_ahead`), as the trainer does.

    ``belief`` (B, D), belief mode: what each slot believed before its decision, graph included, so that a
    trainer walking a stream backpropagates through consecutive decisions (``train.bptt_decisions``); None
    = the initial belief (a shuffled batch, as the adapters train, has no stream to carry one along).

    Shapes: obs (B, W, F), labels (B,) int, strategy_pnl (B, C) each strategy's realized PnL over the trade's
    horizon, label_pnl (B, C) over the labels' horizon (None: strategy_pnl, the labels' horizon is the trade's).

    ``answer_fn``: the look-ahead's :func:`answer_of` the model, e.g. compiled (None: ``answer_of(model)``).

    ``stats``: where the iterations are recorded (the trainer passes its log window, whose tags it logs itself);
    None records them in a fresh :class:`SupervisionStats` whose tags join ``metrics``.

    Returns:
        ``Supervised(loss, metrics, task_logits, belief)``: the mean over iterations of TRMLoss's total (with
        gradient), the means over iterations of ``loss/*`` and, without ``stats``, the tags of
        :class:`SupervisionStats` (``halt/*``, ``train/accuracy``, ``train/pnl``) over the iterations, each
        decision's answer logits and, in belief mode, the belief after it.
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
    own_stats = stats is None
    stats = SupervisionStats(config.max_steps) if stats is None else stats
    total = obs.new_zeros((), dtype=torch.float32)
    sums: dict[str, Tensor] = {}
    answer = None  # (B, C) logits of each decision's first committed answer
    start = None  # (B, D) belief mode: the belief every iteration's decision starts from
    if belief is not None:
        start = checked_belief(belief, state.carry.belief)
    elif getattr(model, "has_belief", False):
        start = state.carry.belief
    after = None  # (B, D) the belief after each decision: the proposal of its answer's step
    pending = torch.ones(batch, dtype=torch.bool, device=device)  # (B,) not committed yet
    for _ in range(iterations):
        if start is not None:  # a slot that halted replays its own decision, from the same belief
            state = dataclasses.replace(state, carry=dataclasses.replace(state.carry, belief=start))
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
        if loss_fn.looks_ahead:
            next_logits = look_ahead(answer_fn or answer_of(model), obs, out, steps >= config.max_steps)  # (B, C)
        parts, actions, _ = supervise_step(loss_fn, out, labels, supervision, next_logits)
        total = total + parts["total_loss"]
        for name in LOSS_TAGS:
            if name in parts:
                sums[name] = sums.get(name, 0.0) + parts[name].detach()
        logits = out.task_logits.detach()
        answer = logits if answer is None else torch.where(pending[:, None], logits, answer)
        if start is not None:  # in the carry's dtype, as the continual trainer carries it (not autocast's)
            proposal = out.proposal.to(start.dtype)  # (B, D)
            after = proposal if after is None else torch.where(pending[:, None], proposal, after)
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

    loss = total / iterations
    metrics = {LOSS_TAGS[name]: float(value) / iterations for name, value in sums.items()}
    metrics["loss/total"] = float(loss.detach())
    if own_stats:
        metrics |= stats.scalars()
    return Supervised(loss, metrics, answer, after)
