"""TRMLoss and its parts: numbers against torch references, validation, and properties."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from trm_act.envs import STRATEGIES

from trm_act import TRMLoss, class_weights_from_labels, compute_halt_loss, compute_profit_weighted_loss
from trm_act.loss import (
    LossConfig,
    compute_reward_loss,
    compute_task_loss,
    compute_value_loss,
    expected_pnl,
    halt_target,
    played_pnl,
    profit_weight,
    recipe_loss,
)

C = 8


def make_batch(batch: int = 16, seed: int = 0, scale: float = 2.0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, C, generator=gen) * scale
    halt = torch.randn(batch, generator=gen)
    labels = torch.randint(0, C, (batch,), generator=gen)
    pnl = torch.randn(batch, generator=gen) * 0.05
    return logits, halt, labels, pnl


def confident_logits(classes: list[int], margin: float = 10.0) -> torch.Tensor:
    logits = torch.zeros(len(classes), C)
    logits[torch.arange(len(classes)), torch.tensor(classes)] = margin
    return logits


# ----------------------------------------------------------------------------- task loss


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_task_loss_equals_cross_entropy(reduction):
    logits, _, labels, _ = make_batch()
    expected = F.cross_entropy(logits, labels, reduction=reduction)
    torch.testing.assert_close(compute_task_loss(logits, labels, reduction=reduction), expected)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_task_loss_with_class_weights_equals_weighted_cross_entropy(reduction):
    logits, _, labels, _ = make_batch()
    weights = torch.linspace(0.2, 3.0, C)
    expected = F.cross_entropy(logits, labels, weight=weights, reduction=reduction)
    torch.testing.assert_close(compute_task_loss(logits, labels, weights, reduction=reduction), expected)


def test_reductions_are_consistent():
    logits, _, labels, _ = make_batch(batch=32)
    per_sample = compute_task_loss(logits, labels, reduction="none")
    assert per_sample.shape == (32,)
    torch.testing.assert_close(compute_task_loss(logits, labels, reduction="sum"), per_sample.sum())
    torch.testing.assert_close(compute_task_loss(logits, labels, reduction="mean"), per_sample.mean())


# ----------------------------------------------------------------------------- halt loss


def test_halt_target_confident_and_correct():
    logits = confident_logits([3, 5])
    assert halt_target(logits, torch.tensor([3, 5])).tolist() == [1.0, 1.0]


def test_halt_target_confident_but_wrong():
    logits = confident_logits([3, 5])
    assert halt_target(logits, torch.tensor([2, 4])).tolist() == [0.0, 0.0]


def test_halt_target_correct_but_not_confident():
    logits = torch.zeros(2, C)
    logits[:, 1] = 0.5  # argmax 1, but max prob = e^.5 / (e^.5 + 7) ~ 0.19
    assert halt_target(logits, torch.tensor([1, 1])).tolist() == [0.0, 0.0]


def test_threshold_moves_the_halt_target():
    logits = torch.zeros(1, C)
    logits[0, 2] = math.log(0.6 * 7 / 0.4)  # max prob exactly 0.6
    labels = torch.tensor([2])
    assert halt_target(logits, labels, 0.5).item() == 1.0
    assert halt_target(logits, labels, 0.7).item() == 0.0


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.7, 0.95])
def test_halt_loss_equals_bce_against_target(threshold):
    logits, halt, labels, _ = make_batch(batch=64, scale=4.0)
    probs = logits.softmax(-1)
    target = ((probs.max(-1).values > threshold) & (probs.argmax(-1) == labels)).float()
    expected = F.binary_cross_entropy_with_logits(halt, target)
    torch.testing.assert_close(compute_halt_loss(logits, halt, labels, threshold), expected)


def test_halt_logits_b_and_b1_agree():
    logits, halt, labels, _ = make_batch()
    flat = compute_halt_loss(logits, halt, labels)
    column = compute_halt_loss(logits, halt[:, None], labels)
    torch.testing.assert_close(flat, column)


# ----------------------------------------------------------------------------- profit weights


def test_profit_weight_reference_values():
    weights = profit_weight(torch.tensor([0.10, 0.05, 0.0, -0.10]), 0.05)
    torch.testing.assert_close(weights, torch.tensor([0.036, 0.238, 1.0, 1.964]), atol=5e-4, rtol=0)


def test_zero_pnl_gives_weight_one_and_plain_cross_entropy():
    logits, _, labels, _ = make_batch()
    zero = torch.zeros(len(labels))
    assert profit_weight(zero).eq(1.0).all()
    torch.testing.assert_close(
        compute_profit_weighted_loss(logits, labels, zero), F.cross_entropy(logits, labels)
    )


def test_pnl_scale_changes_weights():
    pnl = torch.tensor([0.05])
    assert profit_weight(pnl, 0.05).item() == pytest.approx(1 - math.tanh(1.0), abs=1e-6)
    assert profit_weight(pnl, 0.5).item() == pytest.approx(1 - math.tanh(0.1), abs=1e-6)
    assert profit_weight(pnl, 0.5).item() > profit_weight(pnl, 0.05).item()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_profit_weighted_loss_matches_formula(reduction):
    logits, _, labels, pnl = make_batch(batch=32)
    per_sample = F.cross_entropy(logits, labels, reduction="none") * (1 - torch.tanh(pnl / 0.05))
    expected = {"none": per_sample, "sum": per_sample.sum(), "mean": per_sample.mean()}[reduction]
    torch.testing.assert_close(
        compute_profit_weighted_loss(logits, labels, pnl, reduction=reduction), expected
    )


def test_profit_and_class_weights_combine_as_weighted_mean():
    logits, _, labels, pnl = make_batch(batch=32)
    cw = torch.linspace(0.5, 2.0, C)
    pw = 1 - torch.tanh(pnl / 0.05)
    ce = F.cross_entropy(logits, labels, reduction="none")
    expected = (pw * cw[labels] * ce).sum() / cw[labels].sum()
    torch.testing.assert_close(compute_profit_weighted_loss(logits, labels, pnl, class_weights=cw), expected)


def test_losing_trades_weigh_more_than_winning_ones():
    logits, _, labels, _ = make_batch(batch=8)
    win = compute_profit_weighted_loss(logits, labels, torch.full((8,), 0.05))
    loss = compute_profit_weighted_loss(logits, labels, torch.full((8,), -0.05))
    assert loss > 2 * win


# ----------------------------------------------------------------------------- TRMLoss


def test_trmloss_defaults_and_repr():
    loss = TRMLoss()
    assert (
        loss.lambda_halt,
        loss.lambda_profit,
        loss.confidence_threshold,
        loss.pnl_scale,
        loss.num_classes,
    ) == (
        0.01,
        1.0,
        0.7,
        0.05,
        8,
    )
    text = repr(loss)
    for part in (
        "lambda_halt=0.01",
        "lambda_profit=1.0",
        "confidence_threshold=0.7",
        "pnl_scale=0.05",
        "num_classes=8",
    ):
        assert part in text


def test_trmloss_total_and_components():
    logits, halt, labels, pnl = make_batch(batch=32)
    loss_fn = TRMLoss(lambda_halt=0.3, lambda_profit=0.7)
    parts = loss_fn(logits, halt, labels, pnl, return_components=True)
    assert set(parts) >= {
        "total_loss",
        "halt_loss",
        "task_loss",
        "profit_weighted_task_loss",
        "lambda_halt",
        "lambda_profit",
    }
    assert parts["lambda_halt"] == 0.3 and parts["lambda_profit"] == 0.7
    torch.testing.assert_close(parts["halt_loss"], compute_halt_loss(logits, halt, labels))
    torch.testing.assert_close(parts["task_loss"], compute_task_loss(logits, labels))
    torch.testing.assert_close(
        parts["profit_weighted_task_loss"], compute_profit_weighted_loss(logits, labels, pnl)
    )
    torch.testing.assert_close(
        parts["total_loss"], 0.3 * parts["halt_loss"] + 0.7 * parts["profit_weighted_task_loss"]
    )
    torch.testing.assert_close(loss_fn(logits, halt, labels, pnl), parts["total_loss"])


def test_task_loss_is_reported_not_added():
    logits, halt, labels, pnl = make_batch()
    parts = TRMLoss(lambda_halt=0.0, lambda_profit=0.0)(logits, halt, labels, pnl, return_components=True)
    assert parts["total_loss"].item() == 0.0
    assert parts["task_loss"].item() > 0.0


@pytest.mark.parametrize("lambda_halt,lambda_profit", [(0.0, 1.0), (1.0, 0.0), (2.0, 3.0)])
def test_lambdas_scale_their_terms(lambda_halt, lambda_profit):
    logits, halt, labels, pnl = make_batch()
    total = TRMLoss(lambda_halt=lambda_halt, lambda_profit=lambda_profit)(logits, halt, labels, pnl)
    expected = lambda_halt * compute_halt_loss(
        logits, halt, labels
    ) + lambda_profit * compute_profit_weighted_loss(logits, labels, pnl)
    torch.testing.assert_close(total, expected)


def test_trmloss_class_weights_reach_both_cross_entropies():
    logits, halt, labels, pnl = make_batch(batch=32)
    cw = torch.linspace(0.1, 4.0, C)
    parts = TRMLoss(class_weights=cw)(logits, halt, labels, pnl, return_components=True)
    torch.testing.assert_close(parts["task_loss"], F.cross_entropy(logits, labels, weight=cw))
    torch.testing.assert_close(
        parts["profit_weighted_task_loss"],
        compute_profit_weighted_loss(logits, labels, pnl, class_weights=cw),
    )
    assert "class_weights" in TRMLoss(class_weights=cw).state_dict()


def test_backward_gives_finite_gradients_to_both_heads():
    logits, halt, labels, pnl = make_batch()
    logits.requires_grad_(True)
    halt.requires_grad_(True)
    TRMLoss(lambda_halt=0.5)(logits, halt, labels, pnl).backward()
    for grad in (logits.grad, halt.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("batch", [1, 128])
def test_batch_sizes(batch):
    logits, halt, labels, pnl = make_batch(batch=batch)
    parts = TRMLoss()(logits, halt, labels, pnl, return_components=True)
    assert parts["total_loss"].shape == () and torch.isfinite(parts["total_loss"])


@pytest.mark.parametrize("value", [10.0, -10.0, 100.0, -100.0])
def test_extreme_pnl_stays_finite_and_bounded(value):
    logits, halt, labels, _ = make_batch(batch=4)
    logits.requires_grad_(True)
    pnl = torch.full((4,), value)
    weights = profit_weight(pnl)
    assert ((weights >= 0) & (weights <= 2)).all()
    assert weights[0].item() == pytest.approx(0.0 if value > 0 else 2.0, abs=1e-6)
    total = TRMLoss()(logits, halt, labels, pnl)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(logits.grad).all()


def test_bf16_autocast_matches_float32_targets():
    logits, halt, labels, pnl = make_batch(batch=32)
    linear = torch.nn.Linear(C, C)
    torch.nn.init.eye_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear(logits)
        assert out.dtype == torch.bfloat16
        parts = TRMLoss()(out, halt, labels, pnl, return_components=True)
    assert parts["total_loss"].dtype == torch.float32
    reference = TRMLoss()(out.float(), halt, labels, pnl, return_components=True)
    torch.testing.assert_close(parts["total_loss"], reference["total_loss"])


def test_reward_term_is_off_by_default_and_exact_when_on():
    logits, halt, labels, pnl = make_batch(batch=16)
    strategy_pnl = torch.randn(16, C) * 0.03
    base = TRMLoss()(logits, halt, labels, pnl)
    torch.testing.assert_close(TRMLoss()(logits, halt, labels, pnl, strategy_pnl=strategy_pnl), base)
    parts = TRMLoss(lambda_reward=2.0)(
        logits, halt, labels, pnl, return_components=True, strategy_pnl=strategy_pnl
    )
    expected_reward = -(logits.softmax(-1) * strategy_pnl).sum(-1).mean() / 0.05
    torch.testing.assert_close(parts["reward_loss"], expected_reward)
    torch.testing.assert_close(parts["total_loss"], base + 2.0 * expected_reward)
    assert parts["lambda_reward"] == 2.0


def test_reward_loss_gradient_moves_toward_the_best_strategy():
    logits = torch.zeros(1, C, requires_grad=True)
    strategy_pnl = torch.zeros(1, C)
    strategy_pnl[0, 6] = 0.04
    compute_reward_loss(logits, strategy_pnl).backward()
    assert logits.grad.argmin().item() == 6  # gradient descent raises logit 6


def test_value_term_is_off_by_default_and_exact_when_on():
    logits, halt, labels, pnl = make_batch(batch=16)
    strategy_pnl = torch.randn(16, C) * 0.03
    base = TRMLoss()(logits, halt, labels, pnl, strategy_pnl=strategy_pnl, return_components=True)
    assert "value_loss" not in base
    parts = TRMLoss(lambda_value=3.0)(logits, halt, labels, pnl, return_components=True, strategy_pnl=strategy_pnl)
    expected_value = ((logits - strategy_pnl / 0.05) ** 2).mean()
    torch.testing.assert_close(parts["value_loss"], expected_value)
    torch.testing.assert_close(compute_value_loss(logits, strategy_pnl), expected_value)
    torch.testing.assert_close(parts["total_loss"], base["total_loss"] + 3.0 * expected_value)
    assert parts["lambda_value"] == 3.0


def test_value_regression_learns_each_strategys_expected_pnl_where_hindsight_labels_pick_the_volatile_one():
    """Strategy 2 earns +0.01 every time; strategies 0 and 1 earn +-0.05 at random, 0 on average. The argmax of
    the realized PnLs (a hindsight label) almost never names strategy 2, but the regressed values rank it first."""
    gen = torch.Generator().manual_seed(0)
    n = 4096
    coin = torch.randint(0, 2, (n,), generator=gen).float() * 2 - 1  # (n,) +-1
    strategy_pnl = torch.zeros(n, C)
    strategy_pnl[:, 0], strategy_pnl[:, 1], strategy_pnl[:, 2] = 0.05 * coin, -0.05 * coin, 0.01
    assert (strategy_pnl.argmax(-1) == 2).float().mean() == 0.0
    values = torch.zeros(1, C, requires_grad=True)  # one observation, so one value per strategy
    optimizer = torch.optim.SGD([values], lr=0.2)
    for _ in range(200):
        optimizer.zero_grad()
        compute_value_loss(values.expand(n, C), strategy_pnl).backward()
        optimizer.step()
    expected = strategy_pnl.mean(0) / 0.05  # (C,) the conditional means, in pnl_scale units
    torch.testing.assert_close(values[0].detach(), expected, atol=1e-5, rtol=0)
    assert values.argmax().item() == 2


# ----------------------------------------------------------------------------- class weights from labels


def test_class_weights_from_labels_inverse_frequency_mean_one():
    labels = torch.tensor([0] * 6 + [1] * 3 + [2] * 1 + [3, 4, 5, 6, 7] * 2)
    weights = class_weights_from_labels(labels)
    assert weights.shape == (C,) and weights.dtype == torch.float32
    assert weights.mean().item() == pytest.approx(1.0, abs=1e-6)
    assert weights[2] / weights[0] == pytest.approx(6.0, rel=1e-5)
    assert weights[1] / weights[0] == pytest.approx(2.0, rel=1e-5)


def test_unseen_class_gets_neutral_weight():
    weights = class_weights_from_labels(torch.tensor([0, 0, 1, 2, 3, 4, 5, 6]))  # class 7 unseen
    assert weights[7].item() == 1.0
    assert weights.mean().item() == pytest.approx(1.0, abs=1e-6)
    assert weights[0].item() < weights[1].item()


# ----------------------------------------------------------------------------- validation


def good():
    logits, halt, labels, pnl = make_batch(batch=4)
    return {"task_logits": logits, "halt_logits": halt, "labels": labels, "pnl": pnl}


BAD_FORWARD_INPUTS = [
    ("task_logits", torch.zeros(4, C, 1), "task_logits must have shape"),
    ("task_logits", torch.zeros(4, 7), "num_classes=8"),
    ("task_logits", torch.full((4, C), float("nan")), "task_logits contains NaN"),
    ("task_logits", torch.zeros(4, C, dtype=torch.long), "task_logits must be a floating-point"),
    ("task_logits", torch.zeros(0, C), "empty batch"),
    ("halt_logits", torch.zeros(4, 2), "halt_logits must have shape"),
    ("halt_logits", torch.zeros(3), "halt_logits must have shape"),
    ("halt_logits", torch.tensor([0.0, float("inf"), 0.0, 0.0]), "halt_logits contains NaN or inf"),
    ("labels", torch.zeros(4), "labels must be an integer tensor"),
    ("labels", torch.tensor([0, 1, 8, 2]), "labels must lie in"),
    ("labels", torch.tensor([0, -1, 2, 2]), "labels must lie in"),
    ("labels", torch.zeros(5, dtype=torch.long), r"labels must have shape \(B,\)"),
    ("labels", [0, 1, 2, 3], "labels must be a torch.Tensor"),
    ("pnl", torch.zeros(3), "pnl must have shape"),
    ("pnl", torch.tensor([0.0, float("nan"), 0.0, 0.0]), "pnl contains NaN"),
    ("pnl", torch.zeros(4, dtype=torch.long), "pnl must be a floating-point"),
]


@pytest.mark.parametrize("name,value,message", BAD_FORWARD_INPUTS)
def test_trmloss_rejects_bad_input_naming_the_argument(name, value, message):
    inputs = good() | {name: value}
    with pytest.raises(ValueError, match=message):
        TRMLoss()(**inputs)


BAD_CONSTRUCTOR_ARGS = [
    ({"pnl_scale": 0.0}, "pnl_scale must be a positive"),
    ({"pnl_scale": -1.0}, "pnl_scale must be a positive"),
    ({"lambda_halt": -0.1}, "lambda_halt must be"),
    ({"lambda_profit": -1.0}, "lambda_profit must be"),
    ({"lambda_reward": float("nan")}, "lambda_reward must be"),
    ({"lambda_value": -1.0}, "lambda_value must be"),
    ({"confidence_threshold": 1.5}, "confidence_threshold must lie in"),
    ({"confidence_threshold": -0.1}, "confidence_threshold must lie in"),
    ({"class_weights": torch.ones(7)}, r"class_weights must have shape \(8,\)"),
    ({"class_weights": -torch.ones(8)}, "class_weights must be finite and non-negative"),
    ({"num_classes": 1}, "num_classes must be"),
]


@pytest.mark.parametrize("kwargs,message", BAD_CONSTRUCTOR_ARGS)
def test_trmloss_rejects_bad_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TRMLoss(**kwargs)


def test_functions_reject_bad_arguments():
    logits, halt, labels, pnl = make_batch(batch=4)
    with pytest.raises(ValueError, match="reduction must be one of"):
        compute_task_loss(logits, labels, reduction="avg")
    with pytest.raises(ValueError, match="pnl_scale must be a positive"):
        compute_profit_weighted_loss(logits, labels, pnl, pnl_scale=0)
    with pytest.raises(ValueError, match="confidence_threshold must lie in"):
        compute_halt_loss(logits, halt, labels, confidence_threshold=2.0)
    with pytest.raises(ValueError, match=r"class_weights must have shape \(8,\)"):
        compute_task_loss(logits, labels, class_weights=torch.ones(3))
    with pytest.raises(ValueError, match="strategy_pnl is required"):
        TRMLoss(lambda_reward=1.0)(logits, halt, labels, pnl)
    with pytest.raises(ValueError, match="strategy_pnl is required when lambda_value > 0"):
        TRMLoss(lambda_value=1.0)(logits, halt, labels, pnl)
    with pytest.raises(ValueError, match="strategy_pnl must have shape"):
        compute_value_loss(logits, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="strategy_pnl must have shape"):
        compute_reward_loss(logits, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="labels must lie in"):
        class_weights_from_labels(torch.tensor([0, 9]))


# ----------------------------------------------------------------------------- properties

finite_pnl = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=200, deadline=None)
@given(pnl=st.lists(finite_pnl, min_size=1, max_size=64), scale=st.floats(1e-3, 10.0))
def test_profit_weights_lie_in_0_2(pnl, scale):
    pnl_t = torch.tensor(pnl)
    weights = profit_weight(pnl_t, scale)
    assert ((weights >= 0) & (weights <= 2)).all()
    # Strictly inside wherever float32 tanh has not rounded to +-1.
    moderate = (pnl_t / scale).abs() < 8
    assert ((weights[moderate] > 0) & (weights[moderate] < 2)).all()


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    batch=st.integers(1, 64),
    lambda_halt=st.floats(0.0, 10.0),
    lambda_profit=st.floats(0.0, 10.0),
    threshold=st.floats(0.0, 1.0),
)
def test_total_is_the_weighted_sum_of_components(seed, batch, lambda_halt, lambda_profit, threshold):
    logits, halt, labels, pnl = make_batch(batch=batch, seed=seed)
    parts = TRMLoss(lambda_halt, lambda_profit, confidence_threshold=threshold)(
        logits, halt, labels, pnl, return_components=True
    )
    expected = lambda_halt * parts["halt_loss"] + lambda_profit * parts["profit_weighted_task_loss"]
    torch.testing.assert_close(parts["total_loss"], expected, rtol=1e-5, atol=1e-6)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.integers(1, 32))
def test_no_gradient_through_halt_target_or_profit_weight(seed, batch):
    """The gradients equal those of the formula with target and weight as constants."""
    logits, halt, labels, pnl = make_batch(batch=batch, seed=seed)
    pnl = pnl.clone().requires_grad_(True)
    logits_a = logits.clone().requires_grad_(True)
    halt_a = halt.clone().requires_grad_(True)
    TRMLoss(lambda_halt=1.0)(logits_a, halt_a, labels, pnl).backward()
    assert pnl.grad is None  # the profit weight is cut from the graph

    target = halt_target(logits, labels)
    weight = 1 - torch.tanh(pnl.detach() / 0.05)
    logits_b = logits.clone().requires_grad_(True)
    halt_b = halt.clone().requires_grad_(True)
    manual = (
        F.binary_cross_entropy_with_logits(halt_b, target)
        + (weight * F.cross_entropy(logits_b, labels, reduction="none")).mean()
    )
    manual.backward()
    torch.testing.assert_close(logits_a.grad, logits_b.grad)
    torch.testing.assert_close(halt_a.grad, halt_b.grad)


def test_the_seeds_defaults_are_written_once_in_loss_config():
    """TRMLoss() and every loss function's keyword default read LossConfig's fields: one place for each value."""
    import inspect

    seed = LossConfig()
    assert (seed.lambda_halt, seed.lambda_profit, seed.lambda_reward) == (0.01, 1.0, 0.0)
    assert (seed.confidence_threshold, seed.halt_target, seed.pnl_scale) == (0.7, "correct", 0.05)
    field_of = {
        "confidence_threshold": "confidence_threshold",
        "pnl_scale": "pnl_scale",
        "target": "halt_target",
        "step_cost": "halt_step_cost",
        "lambda_halt": "lambda_halt",
        "lambda_profit": "lambda_profit",
        "lambda_reward": "lambda_reward",
        "halt_target": "halt_target",
        "halt_step_cost": "halt_step_cost",
    }
    functions = (
        TRMLoss,
        halt_target,
        profit_weight,
        compute_halt_loss,
        compute_profit_weighted_loss,
        compute_reward_loss,
    )
    checked = 0
    for function in functions:
        for name, parameter in inspect.signature(function).parameters.items():
            if name in field_of:
                assert parameter.default == getattr(seed, field_of[name]), (function.__name__, name)
                checked += 1
    assert checked == 14  # every such keyword of the six (compute_halt_loss: the seed's target only)
    assert TRMLoss().num_classes == len(STRATEGIES) == class_weights_from_labels(torch.tensor([0])).numel()


def test_the_recipe_is_the_seeds_loss_with_the_changes_it_lists():
    seed, recipe = LossConfig(), recipe_loss()
    changed = {
        f.name: getattr(recipe, f.name)
        for f in dataclasses.fields(LossConfig)
        if getattr(recipe, f.name) != getattr(seed, f.name)
    }
    assert changed == {
        "lambda_reward": 10.0,
        "lambda_profit": 0.1,
        "halt_target": "gain",
        "lambda_halt": 0.5,
        "lambda_value": 1.0,
    }
    assert recipe_loss() is not recipe_loss()  # a fresh config each call: a caller may change its own


def test_from_config_uses_the_configs_hyperparameters_and_defaults_match_the_seed():
    from trm_act.loss import LossConfig

    assert TRMLoss().extra_repr() == TRMLoss.from_config(LossConfig()).extra_repr()
    loss_fn = TRMLoss.from_config(
        LossConfig(lambda_halt=0.3, lambda_reward=2.0, pnl_scale=0.1), num_classes=4
    )
    assert (loss_fn.lambda_halt, loss_fn.lambda_profit, loss_fn.lambda_reward) == (0.3, 1.0, 2.0)
    assert (loss_fn.pnl_scale, loss_fn.num_classes, loss_fn.validate) == (0.1, 4, True)
    with pytest.raises(ValueError, match="lambda_reward must be a finite float >= 0; got -1"):
        LossConfig(lambda_reward=-1)


def test_validate_false_skips_input_checks_but_computes_the_same_loss():
    logits, halt, labels, pnl = (
        torch.randn(4, 8),
        torch.randn(4),
        torch.tensor([0, 3, 7, 1]),
        torch.randn(4) * 0.05,
    )
    checked, unchecked = TRMLoss(lambda_halt=0.4), TRMLoss(lambda_halt=0.4, validate=False)
    torch.testing.assert_close(checked(logits, halt, labels, pnl), unchecked(logits, halt, labels, pnl))
    bad = torch.tensor([0, 3, 7, 8])  # label 8 is out of range
    with pytest.raises(ValueError, match="labels must lie in"):
        checked(logits, halt, bad, pnl)
    nan_pnl = pnl.clone()
    nan_pnl[0] = float("nan")
    assert torch.isnan(
        unchecked(logits, halt, labels, nan_pnl)
    )  # no check: the trainer detects it at log steps


# ----------------------------------------------------------------------------- halt target "profitable"


def test_profitable_halt_target_is_confident_and_not_losing():
    logits = torch.tensor([[4.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    labels = torch.tensor([1, 1, 0, 0])  # rows 0 and 1 are wrong against the label
    pnl = torch.tensor([0.02, -0.01, 0.05, 0.0])
    profitable = halt_target(logits, labels, 0.7, target="profitable", pnl=pnl)
    assert profitable.tolist() == [1.0, 0.0, 0.0, 1.0]  # row 2 is not confident; row 3 breaks even
    assert halt_target(logits, labels, 0.7).tolist() == [0.0, 0.0, 0.0, 0.0]  # the seed's rule


def test_trm_loss_profitable_halt_target_matches_bce_and_reports_its_rate():
    torch.manual_seed(0)
    logits = torch.randn(64, 8) * 3
    halt = torch.randn(64)
    labels = torch.randint(0, 8, (64,))
    pnl = torch.randn(64) * 0.02
    loss = TRMLoss(halt_target="profitable", confidence_threshold=0.6)
    parts = loss(logits, halt, labels, pnl, return_components=True)
    target = ((torch.softmax(logits, -1).max(-1).values > 0.6) & (pnl >= 0)).float()
    expected = F.binary_cross_entropy_with_logits(halt, target)
    assert torch.allclose(parts["halt_loss"], expected)
    assert float(parts["halt_target_rate"]) == pytest.approx(float(target.mean()))
    assert "halt_target='profitable'" in repr(loss)
    assert TRMLoss.from_config(LossConfig(halt_target="profitable")).halt_target == "profitable"
    assert TRMLoss().halt_target == "correct"  # the seed's default is unchanged


def test_halt_target_is_validated():
    with pytest.raises(ValueError, match="halt_target must be one of"):
        LossConfig(halt_target="lucky")
    with pytest.raises(ValueError, match="needs pnl"):
        halt_target(torch.zeros(2, 8), torch.zeros(2, dtype=torch.long), target="profitable")
    with pytest.raises(ValueError, match="pnl must have shape"):
        TRMLoss(halt_target="profitable")(
            torch.zeros(2, 8), torch.zeros(2), torch.zeros(2, dtype=torch.long), torch.zeros(3)
        )
    with pytest.raises(TypeError):  # the functional halt loss is the seed's: other targets go through TRMLoss
        compute_halt_loss(torch.zeros(2, 8), torch.zeros(2), torch.zeros(2, dtype=torch.long), target="profitable")


def test_priced_halt_target_halts_unless_the_next_step_raises_the_expected_pnl_by_more_than_its_cost():
    # Two strategies with PnL +0.02 and -0.02; the answer's value is the PnL expected under its softmax.
    strategy_pnl = torch.tensor([[0.02, -0.02] + [0.0] * 6] * 3)
    now = torch.zeros(3, 8)
    now[:, 0] = 1.0  # value_now = 0.02 * (p0 - p1), the same for every row
    ahead = now.clone()
    ahead[1, 0] = 1.1  # a little more weight on the winner
    ahead[2, 0] = 5.0  # a lot more
    gain = expected_pnl(ahead, strategy_pnl) - expected_pnl(now, strategy_pnl)  # (3,)
    assert gain[0] == 0 and 0 < gain[1] < 0.001 < gain[2]
    labels = torch.zeros(3, dtype=torch.long)
    args = {"target": "priced", "strategy_pnl": strategy_pnl, "next_task_logits": ahead}
    assert halt_target(now, labels, **args).tolist() == [1.0, 0.0, 0.0]  # a step that adds nothing: halt
    assert halt_target(now, labels, step_cost=0.001, **args).tolist() == [1.0, 1.0, 0.0]  # the small gain does not pay
    loss = TRMLoss(halt_target="priced", halt_step_cost=0.001, lambda_profit=0.0)
    halt_logits = torch.tensor([0.3, -1.0, 2.0])
    pnl = torch.zeros(3)
    parts = loss(now, halt_logits, labels, pnl, True, strategy_pnl, next_task_logits=ahead)
    expected = F.binary_cross_entropy_with_logits(halt_logits, torch.tensor([1.0, 1.0, 0.0]))
    assert float(parts["halt_loss"]) == pytest.approx(float(expected))
    assert float(parts["halt_target_rate"]) == pytest.approx(2 / 3)
    assert "halt_step_cost=0.001" in repr(loss)


def test_priced_halt_target_needs_a_look_ahead_and_a_valid_cost():
    logits, labels, pnl = torch.zeros(2, 8), torch.zeros(2, dtype=torch.long), torch.zeros(2)
    with pytest.raises(ValueError, match="next_task_logits and strategy_pnl are required"):
        TRMLoss(halt_target="priced")(logits, torch.zeros(2), labels, pnl, strategy_pnl=torch.zeros(2, 8))
    with pytest.raises(ValueError, match="needs next_task_logits"):
        halt_target(logits, labels, target="priced", strategy_pnl=torch.zeros(2, 8))
    with pytest.raises(ValueError, match=r"next_task_logits must have the batch of task_logits \(2\)"):
        TRMLoss(halt_target="priced")(
            logits, torch.zeros(2), labels, pnl, strategy_pnl=torch.zeros(2, 8), next_task_logits=torch.zeros(3, 8)
        )
    with pytest.raises(ValueError, match="halt_step_cost must be a finite float >= 0"):
        LossConfig(halt_target="priced", halt_step_cost=-0.01)
    with pytest.raises(ValueError, match=r"halt_target must be one of \['correct', 'profitable', 'priced', 'gain'\]"):
        LossConfig(halt_target="cheap")


def test_gain_halt_target_is_the_value_of_stopping_and_the_halt_head_regresses_it():
    # The priced test's batch: gains 0, ~0.0005 and ~0.019 of expected PnL from one more step.
    strategy_pnl = torch.tensor([[0.02, -0.02] + [0.0] * 6] * 3)
    now = torch.zeros(3, 8)
    now[:, 0] = 1.0
    ahead = now.clone()
    ahead[1, 0], ahead[2, 0] = 1.1, 5.0
    gain = expected_pnl(ahead, strategy_pnl) - expected_pnl(now, strategy_pnl)  # (3,)
    labels = torch.zeros(3, dtype=torch.long)
    args = {"target": "gain", "strategy_pnl": strategy_pnl, "next_task_logits": ahead}
    # Costs are shares of the batch's mean absolute PnL, 0.005 here: at 0.05 a step must add 0.00025 to be worth
    # taking (row 1's ~0.0005 is), at 0.2 it must add 0.001 (row 1's is not, row 2's ~0.015 is).
    value = halt_target(now, labels, step_cost=0.05, **args)  # (3,)
    torch.testing.assert_close(value, 0.05 - gain / 0.005)
    assert (value > 0).tolist() == [True, False, False]  # halt where the step earns less than it costs
    assert (halt_target(now, labels, step_cost=0.2, **args) > 0).tolist() == [True, True, False]
    # Without a cost each look-ahead target charges its own: 0.1 of a typical PnL for "gain", nothing for "priced".
    torch.testing.assert_close(halt_target(now, labels, **args), 0.1 - gain / 0.005)
    assert TRMLoss(halt_target="gain").halt_step_cost == 0.1 and TRMLoss(halt_target="priced").halt_step_cost == 0.0
    assert TRMLoss(halt_target="gain", halt_step_cost=0.0).halt_step_cost == 0.0  # an explicit cost wins
    loss = TRMLoss(halt_target="gain", halt_step_cost=0.2, lambda_profit=0.0)
    assert loss.looks_ahead and not TRMLoss(halt_target="profitable").looks_ahead
    halt_logits = torch.tensor([0.3, -1.0, 2.0])
    parts = loss(now, halt_logits, labels, torch.zeros(3), True, strategy_pnl, next_task_logits=ahead)
    value = halt_target(now, labels, step_cost=0.2, **args)
    assert float(parts["halt_loss"]) == pytest.approx(float(((halt_logits - value) ** 2).mean()))
    assert float(parts["halt_target_rate"]) == pytest.approx(2 / 3)  # the share where stopping is worth it
    with pytest.raises(ValueError, match="next_task_logits and strategy_pnl are required when halt_target='gain'"):
        loss(now, halt_logits, labels, torch.zeros(3), strategy_pnl=strategy_pnl)


def test_played_answers_are_valued_by_the_realized_pnl_of_their_argmax():
    """answer_value="played": a step's answer is worth what its argmax earns, so a step that changes no argmax gains
    nothing, however it moves the softmax (the look-ahead for value-regressed logits, whose softmax means nothing)."""
    strategy_pnl = torch.tensor([[0.02, -0.02, 0.01] + [0.0] * 5] * 3)
    now = torch.zeros(3, 8)
    now[:, 1] = 0.3  # every row plays strategy 1 (-0.02)
    ahead = now.clone()
    ahead[0, 1] = 5.0  # the same argmax, a sharper softmax: no gain
    ahead[1, 0] = 0.4  # now plays strategy 0: +0.04
    ahead[2, 2] = 0.4  # now plays strategy 2: +0.03
    assert played_pnl(now, strategy_pnl).tolist() == pytest.approx([-0.02] * 3)
    labels = torch.zeros(3, dtype=torch.long)
    args = {"target": "gain", "strategy_pnl": strategy_pnl, "next_task_logits": ahead, "step_cost": 0.1}
    typical = strategy_pnl.abs().mean()
    played = halt_target(now, labels, answer_value="played", **args)  # (3,)
    torch.testing.assert_close(played, 0.1 - torch.tensor([0.0, 0.04, 0.03]) / typical)
    expected = halt_target(now, labels, **args)  # a sharper softmax on a losing strategy loses expected PnL
    assert float(expected[0]) > 0.1 and float(played[0]) == pytest.approx(0.1)
    loss = TRMLoss(halt_target="gain", halt_step_cost=0.1, answer_value="played", lambda_profit=0.0)
    halt_logits = torch.zeros(3)
    parts = loss(now, halt_logits, labels, torch.zeros(3), True, strategy_pnl, next_task_logits=ahead)
    assert float(parts["halt_loss"]) == pytest.approx(float((played**2).mean()))
    with pytest.raises(ValueError, match=r"answer_value must be one of \('expected', 'played'\)"):
        LossConfig(answer_value="argmax")
    with pytest.raises(ValueError, match=r"answer_value must be one of \('expected', 'played'\); got 'argmax'"):
        halt_target(now, labels, answer_value="argmax", **args)
