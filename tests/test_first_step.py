"""What a decision's first reasoning step learns from: train.depth_warmup (the first share of training at one step,
then the model's own) and train.later_step_weight (the later steps' share of the gradient)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import StopAt, tiny_config, weights

from trm_act.config import TrainConfig
from trm_act.model import StepOutput
from trm_act.supervision import weigh_rows
from trm_act.trainer import Trainer


def test_the_warm_up_commits_every_decision_after_one_step_then_lets_decisions_think(tmp_path):
    # A tiny learning rate keeps the halt head near its -5 bias, so after the warm-up no slot halts on its own; every
    # new decision would be forced to think (exploration 1) were the warm-up not to turn exploration off.
    config = tiny_config(steps=12, depth_warmup=0.5, lr=1e-7, halt_lr_scale=1.0, log_every=100)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, halt_exploration_prob=1.0))
    trainer = Trainer(config, tmp_path)
    for _ in range(6):  # steps 1-6: 0.5 of 12
        trainer.train_step()
        assert trainer.state.steps.eq(0).all()  # every slot committed after its one reasoning step
    assert trainer.window.committed == 6 * 8  # 8 slots, a decision each per step
    assert trainer.state.min_steps.eq(1).all()  # the decisions the warm-up started carry no exploration floor
    trainer.train_step()  # step 7: the cap is the model's 3 and the halt head does not fire
    assert trainer.state.steps.eq(1).all()


def test_the_warm_up_trains_exactly_as_a_one_step_model(tmp_path):
    warm = Trainer(tiny_config(steps=12, depth_warmup=0.5), tmp_path / "warm")
    one_step = tiny_config(steps=12)
    one_step = dataclasses.replace(one_step, model=dataclasses.replace(one_step.model, max_steps=1))
    one = Trainer(one_step, tmp_path / "one")
    for _ in range(6):
        warm.train_step()
        one.train_step()
    for key, value in weights(one).items():
        torch.testing.assert_close(weights(warm)[key], value, rtol=0, atol=0, msg=key)
    for _ in range(2):  # step 7 is every decision's first step in both; at step 8 the warm model's think on
        warm.train_step()
        one.train_step()
    assert any(not torch.equal(weights(warm)[key], value) for key, value in weights(one).items())


def test_a_run_stopped_in_its_warm_up_resumes_exactly(tmp_path):
    config = tiny_config(steps=12, depth_warmup=0.5)
    full = Trainer(config, tmp_path / "full")
    full.fit()
    Trainer(config, tmp_path / "split", [StopAt(4)]).fit()
    resumed = Trainer.from_checkpoint(tmp_path / "split")
    resumed.fit()
    for key, value in weights(full).items():
        torch.testing.assert_close(weights(resumed)[key], value, rtol=0, atol=0, msg=key)


def test_a_resume_that_would_move_the_warm_up_across_the_current_step_is_refused(tmp_path):
    Trainer(tiny_config(steps=12, depth_warmup=0.5), tmp_path).fit()  # warm-up: steps 1-6
    with pytest.raises(
        ValueError, match=r"--steps 40: the run's depth warm-up .* would end at step 20 instead of 6"
    ):
        Trainer.from_checkpoint(tmp_path, overrides={"train": {"steps": 40}})
    # 0.5 of 20 ends the warm-up at step 10, still behind the run's step 12: allowed.
    resumed = Trainer.from_checkpoint(tmp_path, overrides={"train": {"steps": 20}})
    assert resumed.config.train.depth_warmup_steps == 10 and resumed._depth_now()[0] == 3


def test_the_warm_up_rounds_to_whole_steps():
    # 0.07 * 100 is 7.000000000000001 in floats: the warm-up is 7 steps, not 8.
    assert TrainConfig(steps=100, depth_warmup=0.07).depth_warmup_steps == 7


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"depth_warmup": 1.0}, r"train\.depth_warmup must be a share of the steps in \[0, 1\).*got 1\.0"),
        ({"depth_warmup": -0.1}, r"train\.depth_warmup must be a share"),
        (
            {"depth_warmup": 0.5, "unroll": True},
            r"train\.depth_warmup=0\.5 shapes the continual trainer.*--unroll.*set depth_warmup to 0\.0",
        ),
        ({"later_step_weight": 1.5}, r"train\.later_step_weight must lie in \[0, 1\].*got 1\.5"),
        ({"depth_warmup": True}, r"train\.depth_warmup must be a share"),
        (
            {"later_step_weight": 0.5, "unroll": True},
            r"train\.later_step_weight=0\.5 shapes the continual.*--unroll.*set later_step_weight to 1\.0",
        ),
    ],
)
def test_a_bad_option_is_refused_with_the_fix(changes, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**changes)


def test_weigh_rows_keeps_the_values_and_scales_the_gradient_of_the_masked_rows():
    logits = torch.randn(4, 3, requires_grad=True)
    halts = torch.randn(4, requires_grad=True)
    out = StepOutput(logits, halts, carry=None)
    weighed = weigh_rows(out, torch.tensor([False, True, True, False]), 0.25)
    assert torch.equal(weighed.task_logits, logits) and torch.equal(weighed.halt_logits, halts)
    (weighed.task_logits.pow(2).sum() + weighed.halt_logits.sum()).backward()
    torch.testing.assert_close(logits.grad, 2 * logits.detach() * torch.tensor([1, 0.25, 0.25, 1])[:, None])
    torch.testing.assert_close(halts.grad, torch.tensor([1, 0.25, 0.25, 1]))


@pytest.mark.parametrize(
    ("weight", "later_slots", "moves"),
    [(0.0, 8, False), (1.0, 8, True), (0.0, 4, True)],
    ids=[
        "weight 0, every slot past its first step",
        "weight 1",
        "weight 0, half the slots at their first step",
    ],
)
def test_a_later_step_of_weight_zero_moves_no_weight(tmp_path, weight, later_slots, moves):
    # Weight decay off, so that a step whose gradient is zero moves no weight.
    trainer = Trainer(tiny_config(later_step_weight=weight, weight_decay=0.0), tmp_path)
    steps = (torch.arange(8) < later_slots).long()  # (B,) 1 = the slot's decision is at its second step
    trainer.state = dataclasses.replace(trainer.state, steps=steps.to(trainer.state.steps))
    before = weights(trainer)
    trainer.train_step()
    assert any(not torch.equal(weights(trainer)[key], value) for key, value in before.items()) is moves
