"""The belief carry (TRMConfig.carry="belief"): model, ACT, the time-ordered evaluation walk, the trainer."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from helpers import StopAt
from trm_act.envs import SyntheticMarketConfig, TradeReplayConfig, build_replay

from trm_act.act import ACTState, act_predict, act_step
from trm_act.checkpoint import CheckpointError
from trm_act.config import ExperimentConfig, LossConfig, TrainConfig
from trm_act.evaluation import plan_walk, predict
from trm_act.loss import TRMLoss
from trm_act.model import RecurrentTRM, TRMConfig
from trm_act.supervision import deep_supervision
from trm_act.trainer import Trainer

CPU = torch.device("cpu")


def belief_model(seed: int = 0, **overrides) -> RecurrentTRM:
    # The MLP-mixer, post-norm, mean-pooled model these tests were written with: its random belief forgets a
    # chunk's start within the walk's 16-decision burn-in (test_chunked_walk_equals_the_sequential_walk...).
    base = dict(
        window=8, n_features=5, d_model=16, n_heads=2, n_layers=1, max_steps=3, carry="belief",
        mixer="mlp", norm="post", pool="mean",
    )  # fmt: skip
    torch.manual_seed(seed)
    return RecurrentTRM(TRMConfig(**(base | overrides)))


def obs_for(model: RecurrentTRM, batch: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.config.window, model.config.n_features, generator=gen)


def sample_dependent_halting(model: RecurrentTRM) -> None:
    with torch.no_grad():  # some rows halt at each step, so adaptive batches shrink unevenly
        model.halt_head.weight.normal_(0.0, 2.0, generator=torch.Generator().manual_seed(1))
        model.halt_head.bias.zero_()


# ----------------------------------------------------------------------------- model


def test_a_fresh_model_has_no_belief_and_its_weights_are_unchanged():
    fresh = RecurrentTRM(TRMConfig(window=8, n_features=5, d_model=16, n_heads=2, carry="fresh"))
    assert not fresh.has_belief
    assert not any("belief" in key for key in fresh.state_dict())  # old checkpoints still load
    assert fresh.init_carry(2).belief is None


def test_the_belief_is_fixed_within_a_decision_and_changes_the_answer():
    model = belief_model().eval()
    obs = obs_for(model, 4)
    carry = model.init_carry(4)
    start = torch.randn(4, 16)
    carry = carry.with_belief(start)
    with torch.no_grad():
        first = model(obs, carry)
        second = model(obs, first.carry)
        other = model(obs, model.init_carry(4))
    torch.testing.assert_close(first.carry.belief, start)  # steps read the belief; only the proposal moves
    torch.testing.assert_close(second.carry.belief, start)
    assert not torch.allclose(first.carry.proposal, second.carry.proposal)
    assert not torch.allclose(first.task_logits, other.task_logits)  # what the model believes matters


@pytest.mark.parametrize("pool", ["mean", "last"])
def test_an_evidence_belief_is_revised_the_same_whatever_step_halts(pool):
    # belief_source="evidence": the revision reads the decision's tokens, not the answer, so a decision that thinks
    # longer hands on the same belief, bit for bit, while its answer still moves.
    model = belief_model(belief_source="evidence", pool=pool, mixer="attention", attn_radius=1, max_steps=4)
    answers = belief_model(pool=pool, mixer="attention", attn_radius=1, max_steps=4)
    answers.load_state_dict(model.state_dict())  # the same weights, the revision read from the answer
    sample_dependent_halting(model)
    obs, belief = obs_for(model, 16), torch.randn(16, 16)
    with torch.no_grad():
        by_depth = [act_predict(model, obs, max_steps=k, adaptive=False, belief=belief) for k in (1, 2, 3, 4)]
        from_answers = [act_predict(answers, obs, max_steps=k, adaptive=False, belief=belief) for k in (1, 4)]
    for deeper in by_depth[1:]:
        assert torch.equal(deeper.belief, by_depth[0].belief)
    assert not torch.allclose(by_depth[3].task_logits, by_depth[0].task_logits)  # thinking still moves the answer
    assert not torch.allclose(from_answers[1].belief, from_answers[0].belief)  # the "answer" source: depth writes it
    adaptive = act_predict(model, obs, belief=belief)
    assert 1 < adaptive.steps.float().mean() < 4
    # Halted rows leave the batch, and a smaller matmul may round otherwise: equal up to float rounding.
    torch.testing.assert_close(adaptive.belief, by_depth[0].belief, rtol=1e-5, atol=1e-6)
    model.train()  # forward's answer-only graph hands on the same revision as the whole window's step
    torch.testing.assert_close(model(obs, model.init_carry(16).with_belief(belief)).carry.proposal, by_depth[0].belief)


def test_belief_mode_is_validated():
    with pytest.raises(ValueError, match="carry='dream' is not a known carry"):
        TRMConfig(carry="dream")
    with pytest.raises(ValueError, match="belief_source='tokens' is not a known belief source"):
        TRMConfig(belief_source="tokens")
    fresh = RecurrentTRM(TRMConfig(window=8, n_features=5, d_model=16, n_heads=2, carry="fresh"))
    with pytest.raises(ValueError, match="model has no belief"):
        act_predict(fresh, torch.zeros(2, 8, 5), belief=torch.zeros(2, 16))
    with pytest.raises(ValueError, match="belief must have shape"):
        act_predict(belief_model(), torch.zeros(2, 8, 5), belief=torch.zeros(3, 16))


# ----------------------------------------------------------------------------- ACT


def test_act_step_commits_the_proposal_of_halted_slots_only():
    model = belief_model()
    obs = obs_for(model, 6)
    state = ACTState.initial(model, 6)
    with torch.no_grad():
        model.halt_head.weight.zero_()
        model.halt_head.bias.copy_(torch.tensor([-9.0]))
    out, nxt, halted = act_step(model, obs, state, max_steps=2, exploration_prob=0.0)
    assert not halted.any()
    torch.testing.assert_close(nxt.carry.belief, state.carry.belief)  # still deciding: belief unchanged
    out, nxt, halted = act_step(model, obs, nxt, max_steps=2, exploration_prob=0.0)
    assert halted.all()  # the cap
    torch.testing.assert_close(nxt.carry.belief, out.carry.proposal)  # the next decision starts from it
    torch.testing.assert_close(nxt.carry.y, model.init_carry(6).y)  # ... with a fresh answer and latent


def test_act_state_round_trips_the_belief():
    model = belief_model()
    state = ACTState.initial(model, 3)
    state.carry = state.carry.with_belief(torch.randn(3, 16))
    again = ACTState.from_state_dict(state.state_dict())
    torch.testing.assert_close(again.carry.belief, state.carry.belief)
    torch.testing.assert_close(again.carry.proposal, state.carry.proposal)


def test_act_predict_carries_the_belief_of_the_halting_step_and_compaction_keeps_rows_apart():
    model = belief_model(max_steps=4)
    sample_dependent_halting(model)
    obs = obs_for(model, 16)
    belief = torch.randn(16, 16)
    batch = act_predict(model, obs, belief=belief)
    assert 1 < batch.steps.float().mean() < 4  # rows halt at different steps
    for row in range(16):
        alone = act_predict(model, obs[row : row + 1], belief=belief[row : row + 1])
        assert alone.steps.item() == batch.steps[row].item()
        torch.testing.assert_close(alone.belief[0], batch.belief[row], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(alone.task_logits[0], batch.task_logits[row], rtol=1e-5, atol=1e-6)
    # The belief out is the proposal of the step the row halted at: rerun that many fixed steps.
    row, k = 0, int(batch.steps[0])
    fixed = act_predict(model, obs[:1], max_steps=k, adaptive=False, belief=belief[:1])
    torch.testing.assert_close(fixed.belief[0], batch.belief[0], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- the evaluation walk


def test_plan_walk_scores_every_decision_once_and_keeps_chunks_within_a_stream():
    streams = np.array([0] * 50 + [1] * 7 + [0] * 3)  # a stream need not be contiguous in the input
    walk = plan_walk(streams, chunk=10, burn_in=4)
    scored = np.concatenate([walk.order[b:e] for b, e in zip(walk.begin, walk.end, strict=True)])
    assert sorted(scored.tolist()) == list(range(60))
    for b, e, burn in zip(walk.begin, walk.end, walk.burn, strict=True):
        walked = walk.order[b - burn : e]
        assert len(set(streams[walked])) == 1  # burn-in never reaches into another instrument
        assert np.all(np.diff(walked) > 0)  # time order within the stream
    assert walk.burn.tolist() == [0, 4, 4, 4, 4, 4, 0]  # streams start from the initial belief


@pytest.fixture(scope="module")
def market():
    return build_replay(
        TradeReplayConfig(window=8, horizon=4, synthetic=SyntheticMarketConfig(n_bars=6000, seed=5), split="all")
    )


def walked(model, replay, batch_size: int, burn_in: int, adaptive: bool = True) -> np.ndarray:
    indices = replay.split_indices("test")
    return predict(
        model, replay, indices, max_steps=3, adaptive=adaptive, batch_size=batch_size, device=CPU, burn_in=burn_in
    )


@pytest.mark.parametrize("adaptive", [True, False])
def test_chunked_walk_equals_the_sequential_walk_after_the_burn_in(market, adaptive):
    model = belief_model(window=8, n_features=market.n_features)
    sample_dependent_halting(model)
    sequential = walked(model, market, batch_size=1, burn_in=0, adaptive=adaptive)  # one chunk: the true walk
    chunked = walked(model, market, batch_size=64, burn_in=16, adaptive=adaptive)  # 10 chunks of 32 side by side
    assert len(sequential.actions) == len(market.split_indices("test")) == 299
    np.testing.assert_array_equal(chunked.actions, sequential.actions)
    np.testing.assert_array_equal(chunked.steps, sequential.steps)
    # Without the burn-in, chunk starts see the initial belief: the equality above is not automatic.
    cold = walked(model, market, batch_size=64, burn_in=0, adaptive=adaptive)
    assert (cold.actions != sequential.actions).any()


def test_a_fresh_model_walk_is_a_plain_batch(market):
    torch.manual_seed(0)
    model = RecurrentTRM(TRMConfig(window=8, n_features=market.n_features, d_model=16, n_heads=2, max_steps=3))
    sample_dependent_halting(model)
    indices = market.split_indices("test")
    out = predict(model, market, indices, max_steps=3, adaptive=True, batch_size=1000, device=CPU)
    direct = act_predict(model, torch.from_numpy(market.observations(indices)))
    np.testing.assert_array_equal(out.actions, direct.actions.numpy())


# ----------------------------------------------------------------------------- the trainer


def belief_config(**train) -> ExperimentConfig:
    return ExperimentConfig(
        env=TradeReplayConfig(window=16, horizon=4, episode_length=5, synthetic=SyntheticMarketConfig(n_bars=1500)),
        model=TRMConfig(d_model=16, n_heads=2, max_steps=2, carry="belief"),
        loss=LossConfig(lambda_reward=0.5, halt_target="priced"),
        train=TrainConfig(
            **({"steps": 10, "batch_size": 8, "checkpoint_every": 4, "warmup_steps": 2, "progress": False} | train)
        ),
    )


def test_a_belief_trains_at_the_evaluation_cadence():
    assert belief_config().train_stride == 4  # env.stride (= horizon)
    fresh = dataclasses.replace(belief_config(), model=TRMConfig(carry="fresh"))
    assert fresh.train_stride == 1
    assert dataclasses.replace(belief_config(), train=TrainConfig(train_stride=2)).train_stride == 2


def test_trainer_keeps_beliefs_within_an_episode_and_forgets_them_at_its_end(tmp_path):
    trainer = Trainer(belief_config(), tmp_path)
    initial = trainer.model.init_carry(8).belief
    seen_reset = seen_kept = False
    for _ in range(12):
        before = trainer.state.carry.belief.clone()
        steps_before = trainer.state.steps.clone()
        decisions_before = np.array(trainer.env.state_dict()["decision"])
        trainer.train_step()
        decisions = np.array(trainer.env.state_dict()["decision"])
        moved = decisions != decisions_before  # (B,) slots that committed a decision
        new_episode = moved & (decisions != decisions_before + trainer.hop)  # the env started a new episode
        belief = trainer.state.carry.belief
        for slot in range(8):
            if new_episode[slot]:
                torch.testing.assert_close(belief[slot], initial[slot])
                seen_reset = True
            elif moved[slot]:
                assert not torch.equal(belief[slot], before[slot])  # the halting step's proposal
                seen_kept = True
            elif trainer.state.steps[slot] == steps_before[slot] + 1:
                torch.testing.assert_close(belief[slot], before[slot])  # still deciding
    assert seen_reset and seen_kept


@pytest.mark.parametrize("carry", ["belief", "fresh"])
def test_a_model_trains_on_every_phase_of_its_stride(tmp_path, carry):
    """On the fixed 4-bar grid evaluation walks, a belief model would train on a quarter of the windows (and
    overfit them); the trainer walks the 1-bar grid, a slot hopping 4 decisions per commit from a random start.
    A fresh carry given --train-stride 4 walks the same way."""
    config = belief_config(unroll=True, batch_size=32)
    if carry == "fresh":
        train = dataclasses.replace(config.train, train_stride=4)
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, carry="fresh"), train=train)
    trainer = Trainer(config, tmp_path)
    assert trainer.hop == 4 and trainer.env.config.stride == 1
    assert trainer.env.config.episode_length == (5 - 1) * 4 + 1  # 5 decisions of 4 bars each, as configured
    starts = trainer.info["t"].copy()
    assert len(np.unique(starts % 4)) > 1  # episodes start at different phases of the stride
    new_episodes, commit = [], trainer._commit

    def recording_commit(actions, mask):
        rewards, new_episode = commit(actions, mask)
        new_episodes.append(new_episode)
        return rewards, new_episode

    trainer._commit = recording_commit
    trainer.train_step()  # unrolled: every slot commits one decision
    [new_episode] = new_episodes
    kept = ~new_episode
    assert kept.any()
    np.testing.assert_array_equal(trainer.info["t"][kept] - starts[kept], 4)  # the evaluation cadence


@pytest.mark.slow
@pytest.mark.parametrize("train", [{}, {"unroll": True, "bptt_decisions": 2}], ids=["continual", "bptt"])
def test_belief_runs_resume_exactly(tmp_path, train):
    full = Trainer(belief_config(**train), tmp_path / "full")
    full.fit()
    split = Trainer(belief_config(**train), tmp_path / "split", [StopAt(5)])
    assert split.fit() is None
    resumed = Trainer.from_checkpoint(tmp_path / "split")
    torch.testing.assert_close(resumed.state.carry.belief, split.state.carry.belief, rtol=0, atol=0)
    resumed.fit()
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert resumed.last_report.metrics["model"]["pnl"] == full.last_report.metrics["model"]["pnl"]


def test_a_belief_checkpoint_from_another_training_grid_is_refused(tmp_path):
    # Its env cursors count decisions of the grid it walked: read on another grid they point at other bars.
    trainer = Trainer(belief_config(), tmp_path)
    state = trainer.state_dict()
    assert state["hop"] == trainer.hop == 4
    del state["hop"]  # as a belief run saved before its training env walked the 1-bar grid
    with pytest.raises(CheckpointError, match=r"^checkpoint's training env moved 1 decision\(s\) per commit and this"):
        trainer.load_state_dict(state)


def test_a_belief_needs_episodes_that_start_anywhere(tmp_path):
    config = belief_config()
    config = dataclasses.replace(config, env=dataclasses.replace(config.env, episode_length=None))
    with pytest.raises(ValueError, match=r"^--env.episode-length None with a 4-bar train stride .* one phase of the"):
        Trainer(config, tmp_path)


def test_deep_supervision_checks_the_belief_it_is_given():
    fresh_config = TRMConfig(window=8, n_features=5, d_model=16, n_heads=2, max_steps=2, carry="fresh")
    model, fresh = belief_model(), RecurrentTRM(fresh_config)
    obs = obs_for(model, 4)
    labels, pnl = torch.zeros(4, dtype=torch.long), torch.zeros(4, 8)
    loss_fn = TRMLoss()
    with pytest.raises(ValueError, match=r"^belief must have shape \(4, 16\)"):
        deep_supervision(model, loss_fn, obs, labels, pnl, belief=torch.zeros(1, 16))
    with pytest.raises(ValueError, match=r"^belief was given but the model has no belief"):
        deep_supervision(fresh, loss_fn, obs, labels, pnl, belief=torch.zeros(4, 16))


def test_bptt_backpropagates_through_consecutive_decisions(tmp_path):
    """train.bptt_decisions=2: one optimizer step is two decisions of every slot's stream, the second starting
    from the belief the first left, graph included; the last belief carries on, detached."""
    trainer = Trainer(belief_config(unroll=True, bptt_decisions=2), tmp_path)
    model, loss_fn = copy.deepcopy(trainer.model), copy.deepcopy(trainer.loss_fn)
    generator = torch.Generator().set_state(trainer.generator.get_state())
    batches, new_episodes = [], []
    batch, commit = trainer._batch, trainer._commit

    def recording_batch():
        batches.append((*batch(), torch.from_numpy(trainer.info["strategy_pnl"]).float()))
        return batches[-1][:3]

    def recording_commit(actions, mask):
        new_episodes.append(torch.from_numpy(commit(actions, mask)[1]))
        return None, new_episodes[-1].numpy()

    trainer._batch, trainer._commit = recording_batch, recording_commit
    trainer.train_step()

    initial = model.init_carry(8).belief
    start = initial.clone().requires_grad_(True)  # (B, D) the belief before the first decision
    belief, losses = start, []
    for (obs, labels, label_pnl, trade_pnl), new_episode in zip(batches, new_episodes, strict=True):
        result = deep_supervision(model, loss_fn, obs, labels, trade_pnl, label_pnl, generator=generator, belief=belief)
        losses.append(result.loss)
        belief = torch.where(new_episode[:, None], initial, result.belief)  # (B, D)
    assert len(losses) == 2
    assert float(trainer._last_loss) == pytest.approx(float((losses[0] + losses[1]).detach() / 2), rel=1e-6)
    torch.testing.assert_close(trainer.state.carry.belief, belief.detach(), rtol=0, atol=0)
    assert not trainer.state.carry.belief.requires_grad
    # The second decision's loss reaches the first decision's belief, through the belief it was handed.
    (grad,) = torch.autograd.grad(losses[1], start)
    kept = ~new_episodes[0]
    assert kept.any() and grad[kept].abs().sum() > 0
    assert grad[~kept].abs().sum() == 0  # a slot that started a new episode begins from the initial belief


def test_bptt_needs_unroll_and_a_belief():
    with pytest.raises(ValueError, match=r"train.bptt_decisions=4 .* needs --unroll and --carry belief"):
        ExperimentConfig(model=TRMConfig(carry="belief"), train=TrainConfig(bptt_decisions=4))
    with pytest.raises(ValueError, match=r"train.bptt_decisions=4 .* needs --unroll and --carry belief"):
        ExperimentConfig(model=TRMConfig(carry="fresh"), train=TrainConfig(unroll=True, bptt_decisions=4))
    with pytest.raises(ValueError, match=r"train.bptt_decisions must be a positive int; got 0"):
        TrainConfig(bptt_decisions=0)
    ExperimentConfig(model=TRMConfig(carry="belief"), train=TrainConfig(unroll=True, bptt_decisions=4))
