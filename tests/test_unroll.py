"""train.unroll: each optimizer step supervises every reasoning step of a fresh batch of decisions."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers import TINY_MODEL, StopAt, tiny_config

from trm_act.supervision import deep_supervision
from trm_act.trainer import Trainer


def batch_of(trainer: Trainer) -> dict[str, torch.Tensor]:
    """The slots' current decisions as ``deep_supervision`` arguments."""
    info = trainer.info
    return {
        "obs": torch.from_numpy(trainer.obs),
        "labels": torch.from_numpy(info["label"]),
        "strategy_pnl": torch.from_numpy(info["strategy_pnl"]).float(),
        "label_pnl": torch.from_numpy(info.get("label_pnl", info["strategy_pnl"])).float(),
    }


def test_an_unrolled_step_is_deep_supervision_of_every_slots_decision(tmp_path):
    # A fresh carry: one env step per commit (a belief's slots hop train_stride decisions; test_belief.py)
    trainer = Trainer(tiny_config(model=TINY_MODEL | {"carry": "fresh"}, unroll=True, log_every=1), tmp_path)
    batch, decisions = batch_of(trainer), trainer.info["decision"].copy()
    model, generator = copy.deepcopy(trainer.model), torch.Generator().set_state(trainer.generator.get_state())
    expected = deep_supervision(model, copy.deepcopy(trainer.loss_fn), **batch, generator=generator)
    commits, step_masked = [], trainer.env.step_masked

    def recording(actions, mask):
        commits.append((actions.copy(), mask.copy()))
        return step_masked(actions, mask)

    trainer.env.step_masked = recording
    logs = trainer.train_step()

    assert float(trainer._last_loss) == pytest.approx(float(expected.loss.detach()), rel=1e-6)
    for tag, value in expected.metrics.items():  # the window holds this one step: the same tags, the same values
        assert logs.scalars[tag] == pytest.approx(value, rel=1e-6, abs=1e-9), tag
    assert logs.scalars["perf/samples_per_s"] == pytest.approx(
        logs.scalars["perf/steps_per_s"] * 3 * trainer.config.train.batch_size, rel=1e-6
    )  # max_steps reasoning steps on every slot per optimizer step
    # Every slot committed, with the answer of the step it first halted at (deep_supervision's), and moved on.
    [(actions, mask)] = commits
    assert mask.all()
    np.testing.assert_array_equal(actions, expected.task_logits.argmax(-1).numpy())
    assert np.all(trainer.info["decision"] != decisions)


def test_continual_and_unrolled_steps_see_decisions_at_different_rates(tmp_path):
    """The continual carry moves only the halted slots on; the unrolled step moves every slot on."""
    seen = {}
    for unroll in (False, True):
        trainer = Trainer(tiny_config(unroll=unroll, steps=6), tmp_path / str(unroll))
        moved = 0
        for _ in range(6):
            before = trainer.info["decision"].copy()
            trainer.train_step()
            moved += int((trainer.info["decision"] != before).sum())
        seen[unroll] = moved
    assert seen[True] == 6 * 8
    assert seen[False] < 6 * 8 * 0.75  # mean steps > 1.3 here: the carry spends steps on the same decision


def test_an_unrolled_run_resumes_exactly(tmp_path):
    config = tiny_config(unroll=True)
    full = Trainer(config, tmp_path / "full")
    full.fit()
    split = Trainer(config, tmp_path / "split", [StopAt(5)])
    assert split.fit() is None
    resumed = Trainer.from_checkpoint(tmp_path / "split")
    resumed.fit()
    assert resumed.step == full.step == config.train.steps
    for name, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_unroll_refuses_a_process_group(tmp_path, monkeypatch):
    """Under torchrun the trainer refuses before it builds anything (DDP would not synchronise the unroll)."""
    from trm_act import distributed

    two_ranks = distributed.Context(rank=0, world_size=2, local_world_size=2)
    monkeypatch.setattr(distributed.Context, "distributed", property(lambda self: True))  # an initialised group
    monkeypatch.setattr(distributed, "setup", lambda device: (two_ranks, device))
    with pytest.raises(ValueError, match=r"train.unroll .* DistributedDataParallel .* or drop --unroll"):
        Trainer(tiny_config(unroll=True), tmp_path)
    assert not any(tmp_path.iterdir())
