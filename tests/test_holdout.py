"""Held-out halting (train.halt_holdout): which training decisions teach the answer and which the halt head."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from trm_act.envs import TradeReplayConfig

from trm_act.config import ExperimentConfig, TrainConfig
from trm_act.holdout import MIN_BLOCK, HaltHoldout
from trm_act.trainer import Trainer


def test_no_decision_reads_a_bar_of_the_other_kind_of_block():
    env = TradeReplayConfig()  # window 32, horizon 8, label horizon 32
    bars = np.arange(31, 32_000)  # the training decisions of the default market, on the 1-bar grid
    holdout = HaltHoldout.build(0.25, env, bars, seed=0)
    assert holdout.block == MIN_BLOCK and holdout.reach_back == 31 and holdout.reach_ahead == 32
    fit, halt = holdout.roles(bars)  # (N,), (N,)
    assert not (fit & halt).any()
    reads = bars[:, None] + np.arange(-31, 33)[None, :]  # (N, 64) every bar a decision reads
    held_bar = holdout.held[reads // holdout.block]  # (N, 64)
    assert not held_bar[fit].any() and held_bar[halt].all()
    # A quarter of the 63 blocks is held out; purging the crossings drops a few percent of the decisions.
    assert holdout.held.sum() == round(0.25 * 63)
    assert halt.mean() == pytest.approx(0.25 * 0.9, abs=0.03) and 0.02 < 1 - fit.mean() - halt.mean() < 0.06
    # The draw follows the seed.
    again, other = HaltHoldout.build(0.25, env, bars, 0), HaltHoldout.build(0.25, env, bars, 1)
    assert np.array_equal(again.held, holdout.held) and not np.array_equal(other.held, holdout.held)


def test_blocks_grow_with_the_reach_and_one_block_is_refused():
    env = TradeReplayConfig(window=64, horizon=16, label_horizon=128)
    holdout = HaltHoldout.build(0.5, env, np.arange(63, 10_000), seed=0)
    assert holdout.block == 4 * (63 + 128 + 1)  # 768 bars: a decision's reach is a quarter of a block
    with pytest.raises(ValueError, match=r"--halt-holdout 0.2: the training decisions lie in one block of 512 bars"):
        HaltHoldout.build(0.2, TradeReplayConfig(), np.arange(31, 400), seed=0)
    with pytest.raises(ValueError, match=r"train.halt_holdout must lie in \[0, 1\)"):
        TrainConfig(halt_holdout=1.0)


def test_the_trainer_fits_the_answer_on_fit_rows_and_the_halt_head_on_held_out_rows(tmp_path):
    config = ExperimentConfig()
    config = dataclasses.replace(
        config,
        train=dataclasses.replace(config.train, halt_holdout=0.25, compile="off", batch_size=64, steps=3),
        loss=dataclasses.replace(config.loss, halt_target="gain", halt_step_cost=1e-4),
    )
    trainer = Trainer(config, tmp_path / "run")
    fit, halt = trainer._roles()  # (B,), (B,) of the slots' current decisions
    expected = trainer.holdout.roles(trainer.info["t"])
    assert torch.equal(fit, torch.from_numpy(expected[0])) and torch.equal(halt, torch.from_numpy(expected[1]))
    # Changing what a held-out decision would teach the answer (its label and PnL) leaves the task terms alone,
    # and changing a fitted decision's leaves the halt loss alone.
    obs, labels, pnl = trainer._batch()
    model, loss_fn = trainer.model, trainer.loss_fn
    carry = model.init_carry(len(labels))
    out = model(obs, carry)
    ahead = model(obs, out.carry).task_logits
    chosen = pnl.gather(1, out.task_logits.argmax(-1, keepdim=True)).squeeze(1)

    def parts(labels, pnl, chosen):
        return loss_fn(out.task_logits, out.halt_logits, labels, chosen, True, pnl, ahead, fit, halt)

    base = parts(labels, pnl, chosen)
    flip = ~fit  # rows that do not fit the answer
    other = parts(torch.where(flip, (labels + 1) % 8, labels), torch.where(flip[:, None], -pnl, pnl), chosen)
    for name in ("profit_weighted_task_loss", "reward_loss"):
        assert torch.equal(base[name], other[name])
    assert not torch.equal(base["halt_loss"], other["halt_loss"])  # the held-out rows' gains changed
    report = trainer.fit()
    assert report is not None and trainer.step == 3
