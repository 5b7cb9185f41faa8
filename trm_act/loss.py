"""TRMLoss: deep supervision for every reasoning step of a Tiny Recursive Model.

Three terms, each a function of one reasoning step's outputs:

- task loss: cross-entropy over the 8 strategies against the hindsight label (reported, not added);
- halt loss: BCE-with-logits teaching the halt head to fire when the answer is
  "confident and correct" (max softmax probability > threshold AND argmax == label);
- profit-weighted task loss: per-sample cross-entropy x ``1 - tanh(pnl / pnl_scale)``,
  so samples whose chosen strategy lost money are pushed harder toward the label.

``total = lambda_halt * halt_loss + lambda_profit * profit_weighted_task_loss``
(``+ lambda_reward * reward_loss`` with the optional expected-PnL term, ``+ lambda_value * value_loss`` with the
optional regression of every strategy's realized PnL).

Targets and weights are computed without gradient and in float32, so the loss is the same
under bf16 autocast and on any device. This module imports only torch (and ``trm_act.shapes``, plain numbers).

Hyperparameters: ``LossConfig``'s defaults are the seed's loss (the only place they are written); the CLI's
recipe is ``recipe_loss()``, which lists what it changes and why.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trm_act.shapes import N_STRATEGIES

REDUCTIONS = ("none", "mean", "sum")


# ----------------------------------------------------------------------------- validation


def _check_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise ValueError(
            f"{name} must be a torch.Tensor; got {type(value).__name__}. Wrap it with torch.as_tensor()."
        )
    return value


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}.")


def _check_logits(
    task_logits: Tensor, num_classes: int | None = None, name: str = "task_logits"
) -> tuple[int, int]:
    _check_tensor(name, task_logits)
    if task_logits.ndim != 2:
        raise ValueError(
            f"{name} must have shape (B, num_classes); got shape {tuple(task_logits.shape)}. "
            "Pass one row of strategy logits per sample."
        )
    batch, width = task_logits.shape
    if batch == 0:
        raise ValueError(f"{name} has an empty batch (B=0); pass at least one sample.")
    if num_classes is not None and width != num_classes:
        raise ValueError(
            f"{name} width must equal num_classes={num_classes}; got shape {tuple(task_logits.shape)}. "
            "Set num_classes to the number of strategies the model scores."
        )
    if not task_logits.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor; got dtype {task_logits.dtype}.")
    if not torch.isfinite(task_logits).all():
        raise ValueError(
            f"{name} contains NaN or inf; check the model for divergence (lower the learning rate)."
        )
    return batch, width


def _check_labels(labels: Tensor, batch: int, num_classes: int) -> Tensor:
    _check_tensor("labels", labels)
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise ValueError(
            f"labels must be an integer tensor of class indices; got dtype {labels.dtype}. Use labels.long()."
        )
    if labels.shape != (batch,):
        raise ValueError(
            f"labels must have shape (B,) = ({batch},) to match task_logits; got shape {tuple(labels.shape)}."
        )
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(f"labels must lie in [0, {num_classes - 1}] (one per strategy); got a label {bad}.")
    return labels.long()


def _check_pnl(pnl: Tensor, batch: int, name: str = "pnl") -> None:
    _check_tensor(name, pnl)
    if pnl.shape != (batch,):
        raise ValueError(
            f"{name} must have shape (B,) = ({batch},), the realized PnL of each sample; got shape {tuple(pnl.shape)}."
        )
    if not pnl.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor (fraction of capital); got dtype {pnl.dtype}."
        )
    if not torch.isfinite(pnl).all():
        raise ValueError(
            f"{name} contains NaN or inf; realized PnL must be finite (check the data for bad prices)."
        )


def _check_class_weights(class_weights: Tensor | None, num_classes: int) -> Tensor | None:
    if class_weights is None:
        return None
    _check_tensor("class_weights", class_weights)
    if class_weights.shape != (num_classes,):
        raise ValueError(
            f"class_weights must have shape ({num_classes},), one weight per class; "
            f"got shape {tuple(class_weights.shape)}."
        )
    if not torch.isfinite(class_weights).all() or (class_weights < 0).any():
        raise ValueError(f"class_weights must be finite and non-negative; got {class_weights.tolist()}.")
    return class_weights


def _check_pnl_scale(pnl_scale: float) -> None:
    if not (isinstance(pnl_scale, (int, float)) and pnl_scale > 0 and pnl_scale != float("inf")):
        raise ValueError(
            f"pnl_scale must be a positive finite float (PnL at which the weight is 1 - tanh(1) ~ 0.24); "
            f"got {pnl_scale!r}. The default is {LossConfig.pnl_scale} ({LossConfig.pnl_scale:.0%} of capital)."
        )


def _check_threshold(confidence_threshold: float) -> None:
    if not (isinstance(confidence_threshold, (int, float)) and 0.0 <= confidence_threshold <= 1.0):
        raise ValueError(
            f"confidence_threshold must lie in [0, 1] (a softmax probability); got {confidence_threshold!r}."
        )


def _check_halt_target(target: str) -> None:
    if target not in HALT_TARGETS:
        raise ValueError(f"halt_target must be one of {list(HALT_TARGETS)}; got {target!r}.")


def _check_answer_value(answer_value: str) -> None:
    if answer_value not in ANSWER_VALUES:
        raise ValueError(f"answer_value must be one of {tuple(ANSWER_VALUES)}; got {answer_value!r}.")


def _check_step_cost(step_cost: float | None) -> None:
    if step_cost is not None and not (
        isinstance(step_cost, (int, float)) and math.isfinite(step_cost) and step_cost >= 0
    ):
        raise ValueError(
            f"halt_step_cost must be a finite float >= 0, or None for the halt target's own; got {step_cost!r}."
        )


def _reduce(values: Tensor, reduction: str, denominator: Tensor | None = None) -> Tensor:
    if reduction == "none":
        return values
    if reduction == "sum":
        return values.sum()
    return values.sum() / denominator if denominator is not None else values.mean()


# ----------------------------------------------------------------------------- hyperparameters


@dataclass
class LossConfig:
    """TRMLoss hyperparameters. The defaults are the seed's loss, written here only: TRMLoss(), LossConfig() and
    the loss functions' keyword defaults all read them. The CLI trains the preset recipe_loss()."""

    lambda_halt: float = 0.01
    """Weight of the halt loss (BCE toward 'confident and correct')."""
    lambda_profit: float = 1.0
    """Weight of the profit-weighted task loss, CE x (1 - tanh(pnl / pnl_scale))."""
    lambda_reward: float = 0.0
    """Weight of the expected-PnL term over all 8 strategies (0 = the seed's loss; docs/faq.md compares the two)."""
    lambda_value: float = 0.0
    """Weight of the value regression: each strategy's logit regresses that strategy's realized PnL in pnl_scale
    units (squared error), so the argmax estimates the strategy of highest expected PnL, where the argmax of
    noisy realized PnLs (a hindsight label) favours the volatile strategies (0 = off)."""
    confidence_threshold: float = 0.7
    """Halt target is 1 when max softmax probability exceeds this and the answer is good (see halt_target)."""
    halt_target: Literal["correct", "profitable", "priced", "gain"] = "correct"
    """When the halt head should fire (HALT_TARGETS): "correct" (confident and argmax == hindsight label; the
    seed's rule), "profitable" (confident and the answer's realized PnL >= 0, which noisy labels cannot make
    unreachable), "priced" (one more reasoning step would not raise the answer's expected realized PnL by more
    than halt_step_cost) or "gain" (the halt head regresses that gain net of halt_step_cost, so it halts where
    one more step is worth less than its cost on average, not in most draws)."""
    halt_step_cost: float | None = None
    """What one more reasoning step must add to the answer's expected realized PnL to be worth taking: PnL (fraction
    of capital) for halt_target="priced"; for "gain", a share of the batch's mean absolute strategy PnL, so that
    one setting means the same on an hourly FX series and on a volatile stock. None = the target's own
    (STEP_COSTS: 0 for "priced", 0.1 for "gain", the cost its recipes were measured with)."""
    answer_value: Literal["expected", "played"] = "expected"
    """How "priced" and "gain" halting value a step's answer (ANSWER_VALUES): "expected" (the realized PnL expected
    under the answer's softmax, the quantity the reward term maximises) or "played" (the realized PnL of its argmax,
    the strategy a policy plays: for logits that regress each strategy's PnL, lambda_value, whose softmax means
    nothing)."""
    pnl_scale: float = 0.05
    """PnL (fraction of capital) that sets the profit-weight and reward scale."""
    class_weights: bool = False
    """Weight the cross-entropy by inverse label frequency on the train split."""

    def __post_init__(self) -> None:
        for name in ("lambda_halt", "lambda_profit", "lambda_reward", "lambda_value"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
                raise ValueError(f"{name} must be a finite float >= 0; got {value!r}.")
        _check_threshold(self.confidence_threshold)
        _check_halt_target(self.halt_target)
        _check_answer_value(self.answer_value)
        _check_step_cost(self.halt_step_cost)
        _check_pnl_scale(self.pnl_scale)


# LossConfig's fields that are TRMLoss arguments of the same name (class_weights differs: a flag in the config,
# the weights themselves in the loss).
HYPERPARAMETERS = tuple(f.name for f in fields(LossConfig) if f.name != "class_weights")


def recipe_loss() -> LossConfig:
    """The CLI's loss (``python -m trm_act.train``) and the adapters' default: the seed's loss with these changes,
    each chosen on validation markets (docs/results.md, "How the recipe was chosen"; docs/faq.md compares the
    two). ``TRMLoss.from_config(recipe_loss())`` builds it."""
    return LossConfig(
        # Hindsight labels are noisy, so the expected-PnL term over all strategies leads ...
        lambda_reward=10.0,
        # ... and the profit-weighted label loss is a light regulariser.
        lambda_profit=0.1,
        # "Confident and correct" is almost never met against noisy labels, so the halt head learned never to halt.
        # The halt head regresses the value of stopping instead: whether one more step's mean gain in expected
        # realized PnL is worth a tenth of a typical decision's PnL (STEP_COSTS), so it stops where steps add
        # nothing ...
        halt_target="gain",
        # ... and a strong halt loss teaches it within a short run.
        lambda_halt=0.5,
        # Each strategy's logit also regresses that strategy's realized PnL: hindsight labels are argmaxes of noisy
        # PnLs and rarely name a steady strategy, and the expected-PnL term reaches a strategy the policy seldom
        # plays only through its softmax (docs/thinking.md section 19).
        lambda_value=1.0,
    )


# ----------------------------------------------------------------------------- targets and weights


def _need(value: Tensor | None, name: str, target: str, what: str) -> Tensor:
    if value is None:
        raise ValueError(f'halt_target(target="{target}") needs {name}, {what}.')
    return value.detach()


def _good_if_correct(prediction: Tensor, labels: Tensor, pnl: Tensor | None) -> Tensor:
    return prediction == labels  # (B,) the seed's rule


def _good_if_profitable(prediction: Tensor, labels: Tensor, pnl: Tensor | None) -> Tensor:
    return _need(pnl, "pnl", "profitable", "the (B,) PnL of each answer") >= 0  # (B,)


# The halt targets, by name: what makes a step's answer good enough to stop on. "correct" and "profitable"
# also ask for confidence (max probability > confidence_threshold); "priced" and "gain" (computed in halt_target,
# from a look-ahead step) ask whether one more step would earn more than it costs, which confidence does not enter.
HALT_TARGETS: dict[str, Callable[[Tensor, Tensor, Tensor | None], Tensor] | None] = {
    "correct": _good_if_correct,
    "profitable": _good_if_profitable,
    "priced": None,
    "gain": None,
}

# The targets that compare a step with the next one (the trainer runs a look-ahead step for them), and the cost
# each charges for one more step when halt_step_cost is None: "gain" prices a step at a tenth of a typical
# decision's absolute PnL (without a cost, a step whose gain is noise around zero is a toss-up).
STEP_COSTS = {"priced": 0.0, "gain": 0.1}
LOOK_AHEAD_TARGETS = tuple(STEP_COSTS)


def step_cost_of(target: str, step_cost: float | None) -> float:
    """The cost ``target`` charges for one more step: ``step_cost``, or the target's own when it is None."""
    return float(STEP_COSTS.get(target, 0.0) if step_cost is None else step_cost)

# The targets the halt head regresses (mean squared error) instead of classifying (binary cross-entropy).
REGRESSED_TARGETS = ("gain",)


@torch.no_grad()
def expected_pnl(task_logits: Tensor, strategy_pnl: Tensor) -> Tensor:
    """(B,) the answer's value: realized PnL expected under its own softmax, ``sum_k p_k strategy_pnl_k``."""
    return (torch.softmax(task_logits.detach().float(), dim=-1) * strategy_pnl.detach().float()).sum(-1)


@torch.no_grad()
def played_pnl(task_logits: Tensor, strategy_pnl: Tensor) -> Tensor:
    """(B,) the answer's value: the realized PnL of the strategy it plays, its argmax."""
    return strategy_pnl.detach().float().gather(-1, task_logits.detach().argmax(-1, keepdim=True)).squeeze(-1)


# How the look-ahead halt targets value an answer (LossConfig.answer_value).
ANSWER_VALUES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"expected": expected_pnl, "played": played_pnl}


@torch.no_grad()
def halt_target(
    task_logits: Tensor,
    labels: Tensor,
    confidence_threshold: float = LossConfig.confidence_threshold,
    *,
    target: str = LossConfig.halt_target,
    pnl: Tensor | None = None,
    strategy_pnl: Tensor | None = None,
    next_task_logits: Tensor | None = None,
    step_cost: float | None = LossConfig.halt_step_cost,
    answer_value: str = LossConfig.answer_value,
) -> Tensor:
    """The halt head's target for one reasoning step, (B,) float32, without gradient: in {0, 1} for the
    classified targets, a real number for ``"gain"``.

    - ``"correct"`` (the seed's rule): 1 where the answer is confident (max prob > threshold) and
      argmax == label.
    - ``"profitable"``: confident and the answer's realized ``pnl`` (B,) is >= 0 (did not lose money).
    - ``"priced"``: halting that prices computation. 1 where one more reasoning step would not raise the
      answer's value by more than ``step_cost``: ``value(next_task_logits) - value(task_logits) <= step_cost``,
      where value is the realized PnL expected under the answer's softmax over ``strategy_pnl`` (B, C)
      (:func:`expected_pnl`, the quantity the reward term maximises; smoother than the argmax's PnL, which
      most steps leave unchanged), or with ``answer_value="played"`` the realized PnL of its argmax
      (:func:`played_pnl`). ``next_task_logits`` (B, C) come from one look-ahead step without
      gradient, as HRM computes its Q-learning continue target; at the step cap the caller passes the
      step's own logits (no next step: gain 0). Confidence plays no part, and the value is myopic: it asks
      whether the next step pays, not whether some later one would.
    - ``"gain"``: the same gain as the value of stopping now, ``step_cost - gain / typical``, where ``typical`` is
      the batch's mean absolute ``strategy_pnl`` (so ``step_cost`` is a share of a typical decision's PnL, the
      same on any series). The halt head regresses it (:class:`TRMLoss` uses the squared error) and halts where
      its estimate is > 0. "priced" asks whether the gain beats its cost in most draws (a median test): where a
      step's gain is noise around zero that is a coin flip at every step, so halting runs ~2 steps whatever they
      buy. Regressed, the head learns the mean gain, and a step worth less than its cost on average is not taken.
    """
    _check_halt_target(target)
    _check_answer_value(answer_value)
    if target in LOOK_AHEAD_TARGETS:
        step_cost = step_cost_of(target, step_cost)
        values = _need(strategy_pnl, "strategy_pnl", target, "every strategy's (B, C) realized PnL")
        later = _need(next_task_logits, "next_task_logits", target, "the (B, C) logits of one more step")
        value = ANSWER_VALUES[answer_value]
        gain = value(later, values) - value(task_logits, values)  # (B,)
        if target == "gain":
            typical = values.abs().mean().clamp_min(1e-12)  # the batch's mean absolute PnL
            return step_cost - gain / typical  # (B,) the value of stopping, in typical PnLs
        return (gain <= step_cost).float()
    probs = torch.softmax(task_logits.detach().float(), dim=-1)  # (B, C)
    confidence, prediction = probs.max(dim=-1)  # (B,), (B,)
    good = HALT_TARGETS[target](prediction, labels, pnl)  # (B,)
    return ((confidence > confidence_threshold) & good).float()


@torch.no_grad()
def profit_weight(pnl: Tensor, pnl_scale: float = LossConfig.pnl_scale) -> Tensor:
    """``1 - tanh(pnl / pnl_scale)``, in float32 and without gradient; (B,).

    Mathematically in (0, 2): losses weigh up to 2, gains down toward 0, zero PnL gives 1.
    In float32, tanh rounds to exactly +-1 once |pnl / pnl_scale| > ~9, so the weight can
    reach the closed ends 0 and 2 for absurd PnL (e.g. +-10 = 1000% of capital).
    """
    return 1.0 - torch.tanh(pnl.detach().float() / pnl_scale)


# ----------------------------------------------------------------------------- loss functions


def compute_task_loss(
    task_logits: Tensor,
    labels: Tensor,
    class_weights: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Cross-entropy over the strategies, identical to ``F.cross_entropy``.

    With ``class_weights`` the mean is torch's weighted mean: ``sum_i w[y_i] ce_i / sum_i w[y_i]``.
    """
    _check_reduction(reduction)
    batch, width = _check_logits(task_logits)
    labels = _check_labels(labels, batch, width)
    class_weights = _check_class_weights(class_weights, width)
    return _task_loss(task_logits, labels, class_weights, reduction)


def _task_loss(task_logits: Tensor, labels: Tensor, class_weights: Tensor | None, reduction: str) -> Tensor:
    weight = None if class_weights is None else class_weights.to(task_logits.device, torch.float32)
    return F.cross_entropy(task_logits.float(), labels.long(), weight=weight, reduction=reduction)


def compute_halt_loss(
    task_logits: Tensor,
    halt_logits: Tensor,
    labels: Tensor,
    confidence_threshold: float = LossConfig.confidence_threshold,
    reduction: str = "mean",
) -> Tensor:
    """BCE-with-logits of the halt head against the seed's "confident and correct" target (no gradient).

    ``halt_logits`` may be (B,) or (B, 1). The other targets of ``HALT_TARGETS`` need more evidence (the realized
    PnL, the next step's logits): :class:`TRMLoss` takes it (``halt_target=...``), or pair :func:`halt_target`
    with ``F.binary_cross_entropy_with_logits`` in a custom loop.
    """
    _check_reduction(reduction)
    _check_threshold(confidence_threshold)
    batch, width = _check_logits(task_logits)
    labels = _check_labels(labels, batch, width)
    _check_halt_logits(halt_logits, batch)
    targets = halt_target(task_logits, labels, confidence_threshold, target="correct")  # (B,)
    return _halt_loss(halt_logits, targets, reduction)


def _halt_loss(halt_logits: Tensor, target: Tensor, reduction: str, regressed: bool = False) -> Tensor:
    """The halt head against ``target`` (B,), the float32 output of :func:`halt_target`: BCE-with-logits, or the
    squared error for a regressed target (``REGRESSED_TARGETS``)."""
    flat = halt_logits.reshape(target.shape[0]).float()  # (B,) from (B,) or (B, 1)
    if regressed:
        return F.mse_loss(flat, target, reduction=reduction)
    return F.binary_cross_entropy_with_logits(flat, target, reduction=reduction)


def _check_next_task_logits(next_task_logits: Tensor, batch: int, width: int) -> None:
    if _check_logits(next_task_logits, width, "next_task_logits")[0] != batch:
        raise ValueError(
            f"next_task_logits must have the batch of task_logits ({batch}); got {tuple(next_task_logits.shape)}."
        )


def _check_halt_logits(halt_logits: Tensor, batch: int) -> None:
    _check_tensor("halt_logits", halt_logits)
    if halt_logits.shape not in ((batch,), (batch, 1)):
        raise ValueError(
            f"halt_logits must have shape (B,) or (B, 1) with B={batch}; got shape {tuple(halt_logits.shape)}."
        )
    if not halt_logits.is_floating_point():
        raise ValueError(f"halt_logits must be a floating-point tensor; got dtype {halt_logits.dtype}.")
    if not torch.isfinite(halt_logits).all():
        raise ValueError("halt_logits contains NaN or inf; check the model for divergence.")


def compute_profit_weighted_loss(
    task_logits: Tensor,
    labels: Tensor,
    pnl: Tensor,
    pnl_scale: float = LossConfig.pnl_scale,
    class_weights: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Per-sample cross-entropy x ``1 - tanh(pnl / pnl_scale)``; the profit weight carries no gradient.

    Class and profit weights multiply: sample i contributes ``p_i * w[y_i] * ce_i``. The mean divides
    by ``sum_i w[y_i]`` (torch's weighted mean, so zero PnL gives exactly the weighted cross-entropy),
    or by B without class weights.
    """
    _check_reduction(reduction)
    _check_pnl_scale(pnl_scale)
    batch, width = _check_logits(task_logits)
    labels = _check_labels(labels, batch, width)
    _check_pnl(pnl, batch)
    class_weights = _check_class_weights(class_weights, width)
    return _profit_weighted_loss(task_logits, labels, pnl, pnl_scale, class_weights, reduction)


def _profit_weighted_loss(
    task_logits: Tensor,
    labels: Tensor,
    pnl: Tensor,
    pnl_scale: float,
    class_weights: Tensor | None,
    reduction: str,
) -> Tensor:
    weight = None if class_weights is None else class_weights.to(task_logits.device, torch.float32)
    ce = F.cross_entropy(task_logits.float(), labels, weight=weight, reduction="none")  # (B,), already x w[y]
    weighted = profit_weight(pnl, pnl_scale) * ce  # (B,)
    denominator = None if weight is None else weight[labels].sum()
    return _reduce(weighted, reduction, denominator)


def compute_reward_loss(
    task_logits: Tensor, strategy_pnl: Tensor, pnl_scale: float = LossConfig.pnl_scale
) -> Tensor:
    """Negative expected realized PnL of the policy softmax(task_logits), in units of ``pnl_scale``.

    ``-mean_i sum_k softmax(task_logits)_ik * strategy_pnl_ik / pnl_scale``: full-information bandit
    feedback, which does not depend on noisy hindsight labels.
    """
    _check_pnl_scale(pnl_scale)
    batch, width = _check_logits(task_logits)
    _check_strategy_pnl(strategy_pnl, batch, width)
    return _reward_loss(task_logits, strategy_pnl, pnl_scale)


def _check_strategy_pnl(strategy_pnl: Tensor, batch: int, width: int) -> None:
    _check_tensor("strategy_pnl", strategy_pnl)
    if strategy_pnl.shape != (batch, width):
        raise ValueError(
            f"strategy_pnl must have shape (B, num_classes) = ({batch}, {width}), each strategy's realized PnL; "
            f"got shape {tuple(strategy_pnl.shape)}."
        )
    if not strategy_pnl.is_floating_point() or not torch.isfinite(strategy_pnl).all():
        raise ValueError("strategy_pnl must be a finite floating-point tensor (fraction of capital).")


def compute_value_loss(
    task_logits: Tensor, strategy_pnl: Tensor, pnl_scale: float = LossConfig.pnl_scale
) -> Tensor:
    """Squared error of each strategy's logit against its realized PnL in units of ``pnl_scale``.

    ``mean_ik (task_logits_ik - strategy_pnl_ik / pnl_scale)^2``: its minimiser is each strategy's expected PnL
    given the observation, so the argmax of the logits is the strategy of highest expected PnL.
    """
    _check_pnl_scale(pnl_scale)
    batch, width = _check_logits(task_logits)
    _check_strategy_pnl(strategy_pnl, batch, width)
    return _value_loss(task_logits, strategy_pnl, pnl_scale)


def _value_loss(task_logits: Tensor, strategy_pnl: Tensor, pnl_scale: float) -> Tensor:
    target = strategy_pnl.detach().float() / pnl_scale  # (B, C)
    return (task_logits.float() - target).square().mean()


def _reward_loss(task_logits: Tensor, strategy_pnl: Tensor, pnl_scale: float) -> Tensor:
    probs = torch.softmax(task_logits.float(), dim=-1)  # (B, C)
    expected = (probs * strategy_pnl.detach().float()).sum(dim=-1)  # (B,)
    return -(expected / pnl_scale).mean()


def class_weights_from_labels(labels: Tensor, num_classes: int = N_STRATEGIES) -> Tensor:
    """Inverse-frequency class weights, float32 (num_classes,), with mean exactly 1.

    Seen classes get ``1 / count`` scaled so their mean is 1. A class absent from ``labels`` gets
    1.0, the neutral weight: with no frequency to invert we neither favour nor ignore it.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int; got {num_classes!r}.")
    _check_tensor("labels", labels)
    if labels.ndim != 1 or labels.numel() == 0:
        raise ValueError(f"labels must be a non-empty 1-D tensor; got shape {tuple(labels.shape)}.")
    labels = _check_labels(labels, labels.shape[0], num_classes)
    counts = torch.bincount(labels.cpu(), minlength=num_classes).float()  # (C,)
    seen = counts > 0
    weights = torch.ones(num_classes)
    inverse = 1.0 / counts[seen]
    weights[seen] = inverse / inverse.mean()
    return weights


# ----------------------------------------------------------------------------- module


class TRMLoss(nn.Module):
    """Loss for one reasoning step of a TRM: ``lambda_halt * halt + lambda_profit * profit_weighted_task``.

    Args:
        lambda_halt: weight of the halt loss.
        lambda_profit: weight of the profit-weighted task loss.
        class_weights: optional (num_classes,) weights, e.g. from ``class_weights_from_labels``.
        confidence_threshold: halt target is 1 when max softmax prob > this and the answer is good.
        pnl_scale: PnL (fraction of capital) that sets the profit-weight scale, ``1 - tanh(pnl / pnl_scale)``.
        num_classes: number of strategies (logit width).
        lambda_reward: weight of the optional expected-PnL term (needs ``strategy_pnl`` in forward); 0 = off.
        lambda_value: weight of the optional value regression of every strategy's PnL (needs ``strategy_pnl``);
            0 = off.
        answer_value: how "priced" and "gain" value an answer, "expected" (under its softmax) or "played" (its
            argmax's realized PnL: for value-regressed logits).
        halt_target: one of HALT_TARGETS: "correct" (the seed's rule: confident and argmax == label),
            "profitable" (confident and the answer's pnl >= 0), "priced" (the next step would not add more
            than ``halt_step_cost`` of expected PnL) or "gain" (the halt head regresses that gain net of its cost);
            the last two need ``strategy_pnl`` and ``next_task_logits`` in forward.
        halt_step_cost: what one more reasoning step must add to be worth taking (``halt_target="priced"``: PnL;
            ``"gain"``: a share of the batch's mean absolute PnL); None = the target's own (``STEP_COSTS``).
        validate: check every input of ``forward`` (shapes, dtypes, label range, finiteness). Each check
            of a value costs a device-to-host sync; a training loop that builds its inputs itself turns it off.

    Defaults come from ``LossConfig``; ``TRMLoss.from_config(config)`` builds one from it.
    """

    def __init__(
        self,
        lambda_halt: float = LossConfig.lambda_halt,
        lambda_profit: float = LossConfig.lambda_profit,
        class_weights: Tensor | None = None,
        confidence_threshold: float = LossConfig.confidence_threshold,
        pnl_scale: float = LossConfig.pnl_scale,
        num_classes: int = N_STRATEGIES,
        lambda_reward: float = LossConfig.lambda_reward,
        validate: bool = True,
        halt_target: str = LossConfig.halt_target,
        halt_step_cost: float | None = LossConfig.halt_step_cost,
        lambda_value: float = LossConfig.lambda_value,
        answer_value: str = LossConfig.answer_value,
    ) -> None:
        arguments = locals()
        super().__init__()
        config = LossConfig(**{name: arguments[name] for name in HYPERPARAMETERS})  # validates the ranges
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2; got {num_classes!r}.")
        if class_weights is not None:
            class_weights = _check_class_weights(
                torch.as_tensor(class_weights, dtype=torch.float32), num_classes
            )
        self.lambda_halt = float(config.lambda_halt)
        self.lambda_profit = float(config.lambda_profit)
        self.lambda_reward = float(config.lambda_reward)
        self.lambda_value = float(config.lambda_value)
        self.confidence_threshold = float(config.confidence_threshold)
        self.halt_target = config.halt_target
        self.halt_step_cost = step_cost_of(config.halt_target, config.halt_step_cost)
        self.answer_value = config.answer_value
        self.pnl_scale = float(config.pnl_scale)
        self.num_classes = num_classes
        self.validate = bool(validate)
        # A buffer follows .to(device) and lands in state_dict with the model it supervises.
        self.register_buffer("class_weights", class_weights, persistent=True)

    @classmethod
    def from_config(
        cls,
        config: LossConfig,
        class_weights: Tensor | None = None,
        num_classes: int = N_STRATEGIES,
        validate: bool = True,
    ) -> TRMLoss:
        """A TRMLoss with ``config``'s hyperparameters (``config.class_weights`` is for the caller that
        has the labels: pass the weights themselves as ``class_weights``)."""
        hyperparameters = {name: getattr(config, name) for name in HYPERPARAMETERS}
        return cls(**hyperparameters, class_weights=class_weights, num_classes=num_classes, validate=validate)

    def forward(
        self,
        task_logits: Tensor,
        halt_logits: Tensor,
        labels: Tensor,
        pnl: Tensor,
        return_components: bool = False,
        strategy_pnl: Tensor | None = None,
        next_task_logits: Tensor | None = None,
    ) -> Tensor | dict[str, Tensor | float]:
        """Total loss for one reasoning step, or a dict of its components.

        Shapes: task_logits (B, C), halt_logits (B,) or (B, 1), labels (B,) int, pnl (B,) realized PnL
        of the chosen strategy, strategy_pnl (B, C) every strategy's realized PnL (optional), next_task_logits
        (B, C) the logits of one more reasoning step, without gradient (``halt_target="priced"`` or ``"gain"``).
        """
        if self.looks_ahead and (next_task_logits is None or strategy_pnl is None):
            raise ValueError(
                f"next_task_logits and strategy_pnl are required when halt_target={self.halt_target!r}: pass the "
                "(B, C) logits of one more reasoning step (the trainer looks one step ahead) and every strategy's "
                "(B, C) PnL, or choose another halt_target."
            )
        for name in ("lambda_reward", "lambda_value"):
            if getattr(self, name) > 0 and strategy_pnl is None:
                raise ValueError(
                    f"strategy_pnl is required when {name} > 0 (got {name}={getattr(self, name)}); "
                    f"pass info['strategy_pnl'] as a (B, num_classes) tensor or set {name}=0."
                )
        if self.validate:
            batch, _ = _check_logits(task_logits, self.num_classes)
            labels = _check_labels(labels, batch, self.num_classes)
            _check_halt_logits(halt_logits, batch)
            _check_pnl(pnl, batch)
            if next_task_logits is not None:
                _check_next_task_logits(next_task_logits, batch, self.num_classes)
            if strategy_pnl is not None:
                _check_strategy_pnl(strategy_pnl, batch, self.num_classes)
        target = halt_target(
            task_logits,
            labels,
            self.confidence_threshold,
            target=self.halt_target,
            pnl=pnl,
            strategy_pnl=strategy_pnl,
            next_task_logits=next_task_logits,
            step_cost=self.halt_step_cost,
            answer_value=self.answer_value,
        )  # (B,) without gradient
        regressed = self.halt_target in REGRESSED_TARGETS
        halt_loss = _halt_loss(halt_logits, target, "mean", regressed)
        profit_loss = _profit_weighted_loss(
            task_logits, labels, pnl, self.pnl_scale, self.class_weights, "mean"
        )
        total = self.lambda_halt * halt_loss + self.lambda_profit * profit_loss
        reward_loss = value_loss = None
        if strategy_pnl is not None:
            reward_loss = _reward_loss(task_logits, strategy_pnl, self.pnl_scale)
            if self.lambda_reward > 0:
                total = total + self.lambda_reward * reward_loss
            if self.lambda_value > 0:
                value_loss = _value_loss(task_logits, strategy_pnl, self.pnl_scale)
                total = total + self.lambda_value * value_loss
        if not return_components:
            return total

        with torch.no_grad():
            task_loss = _task_loss(task_logits, labels, self.class_weights, "mean")
        components: dict[str, Tensor | float] = {
            "total_loss": total,
            "halt_loss": halt_loss.detach(),
            "task_loss": task_loss,
            "profit_weighted_task_loss": profit_loss.detach(),
            "halt_target_rate": (target > 0).float().mean() if regressed else target.mean(),
            "lambda_halt": self.lambda_halt,
            "lambda_profit": self.lambda_profit,
        }
        if reward_loss is not None:
            components["reward_loss"] = reward_loss.detach()
            components["lambda_reward"] = self.lambda_reward
        if value_loss is not None:
            components["value_loss"] = value_loss.detach()
            components["lambda_value"] = self.lambda_value
        return components

    @property
    def looks_ahead(self) -> bool:
        """Whether the halt target compares a step with the next (``LOOK_AHEAD_TARGETS``): the caller passes
        ``next_task_logits`` from :func:`trm_act.supervision.look_ahead`."""
        return self.halt_target in LOOK_AHEAD_TARGETS

    def extra_repr(self) -> str:
        weights = None if self.class_weights is None else [round(w, 4) for w in self.class_weights.tolist()]
        return (
            f"lambda_halt={self.lambda_halt}, lambda_profit={self.lambda_profit}, "
            f"lambda_reward={self.lambda_reward}, lambda_value={self.lambda_value}, confidence_threshold={self.confidence_threshold}, "
            f"halt_target={self.halt_target!r}, halt_step_cost={self.halt_step_cost}, "
            f"answer_value={self.answer_value!r}, "
            f"pnl_scale={self.pnl_scale}, num_classes={self.num_classes}, class_weights={weights}"
        )
