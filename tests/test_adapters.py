"""What the three adapters share: install hints when a framework is missing, and the deep-supervision numbers.

(That ``import trm_act.callbacks`` loads no framework is checked in test_callbacks.py.)

The framework runs themselves live in test_adapter_lightning.py, test_adapter_sb3.py, test_adapter_hf.py.
"""

from __future__ import annotations

import importlib
import sys
import warnings

import numpy as np
import pytest
import torch
from trm_act.callbacks._deep_supervision import deep_supervision, resolve_model_config
from trm_act.envs import TradeReplayConfig, build_replay

from trm_act.act import ACTState
from trm_act.loss import TRMLoss
from trm_act.model import RecurrentTRM, TRMConfig

FRAMEWORKS = {
    "lightning": ("lightning", "lightning"),
    "sb3": ("stable_baselines3", "sb3"),
    "hf": ("transformers", "hf"),
}


@pytest.mark.parametrize("adapter", sorted(FRAMEWORKS))
def test_missing_framework_names_the_extra(adapter, monkeypatch):
    framework, extra = FRAMEWORKS[adapter]
    # None in sys.modules makes an import raise ImportError; block submodules already loaded by other tests too.
    for name in [framework, *(m for m in sys.modules if m.startswith(framework + "."))]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, f"trm_act.callbacks.{adapter}", raising=False)
    with pytest.raises(ImportError, match=rf'pip install "trm-act\[{extra}\]"'):
        importlib.import_module(f"trm_act.callbacks.{adapter}")


@pytest.fixture(scope="module")
def small_replay():
    return build_replay(TradeReplayConfig(window=8, synthetic={"n_bars": 1500, "seed": 3}))


def _batch(replay, n=16):
    idx = replay.split_indices("train")[:n]
    obs = torch.as_tensor(replay.observations(idx))
    labels = torch.as_tensor(replay.labels[idx]).long()
    strategy_pnl = torch.as_tensor(replay.strategy_pnl[idx]).float()
    return obs, labels, strategy_pnl


def test_deep_supervision_is_the_mean_of_trmloss_over_steps(small_replay):
    torch.manual_seed(0)
    config = resolve_model_config(
        {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_steps": 3, "carry": "fresh"}, small_replay
    )
    model, loss_fn = RecurrentTRM(config), TRMLoss(lambda_halt=0.5)
    obs, labels, strategy_pnl = _batch(small_replay)

    loss, metrics, logits, belief = deep_supervision(model, loss_fn, obs, labels, strategy_pnl)
    assert belief is None  # a fresh carry has no belief to hand on

    carry, totals = model.init_carry(obs.shape[0]), []
    with torch.no_grad():
        for _ in range(3):
            out = model(obs, carry)
            carry = out.carry
            pnl = strategy_pnl[torch.arange(obs.shape[0]), out.task_logits.argmax(-1)]
            totals.append(loss_fn(out.task_logits, out.halt_logits, labels, pnl))
    expected = torch.stack(totals).mean()
    assert loss.requires_grad
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["loss/total"] == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(logits, out.task_logits)
    # Halt head starts at bias -5: nobody halts early, the rule forces the stop at max_steps.
    assert metrics["halt/logit_positive_rate"] == 0.0
    assert metrics["halt/rate"] == pytest.approx(1 / 3)  # one committed halt per 3 reasoning steps
    assert metrics["halt/mean_steps"] == 3.0
    assert {
        "loss/halt",
        "loss/task",
        "loss/profit_weighted_task",
        "halt/target_rate",
        "train/accuracy",
    } <= set(metrics)


def test_deep_supervision_halt_statistics_follow_the_halt_rule(small_replay):
    config = resolve_model_config(
        {"d_model": 16, "n_layers": 1, "n_heads": 2, "halt_bias_init": 5.0}, small_replay
    )
    model = RecurrentTRM(config)
    obs, labels, strategy_pnl = _batch(small_replay)
    metrics = deep_supervision(
        model, TRMLoss(), obs, labels, strategy_pnl, iterations=2, exploration_prob=0.0
    ).metrics
    # Halt head starts at +5 with zero weights: every sample wants to halt at every step -> halts at step 1,
    # and starts its decision again at the next iteration.
    assert metrics["halt/rate"] == 1.0 and metrics["halt/logit_positive_rate"] == 1.0
    assert metrics["halt/mean_steps"] == 1.0 and metrics["halt/hazard/step_1"] == 1.0


def test_deep_supervision_explores_like_the_trainer(small_replay):
    config = resolve_model_config(
        {"d_model": 16, "n_layers": 1, "n_heads": 2, "halt_bias_init": 5.0, "max_steps": 3}, small_replay
    )
    model = RecurrentTRM(config)
    obs, labels, strategy_pnl = _batch(small_replay)
    # Every decision draws a floor in [2, 3] (act_step's exploration): none may halt at step 1, though all want to.
    metrics = deep_supervision(model, TRMLoss(), obs, labels, strategy_pnl, exploration_prob=1.0).metrics
    assert metrics["halt/hazard/step_1"] == 0.0
    assert 2.0 <= metrics["halt/mean_steps"] <= 3.0
    # Training mode takes the config's exploration (halt_exploration_prob), evaluation mode none.
    model.eval()
    metrics = deep_supervision(model, TRMLoss(), obs, labels, strategy_pnl).metrics
    assert metrics["halt/hazard/step_1"] == 1.0


def test_model_config_must_match_the_replay(small_replay):
    with pytest.raises(ValueError, match="n_features"):
        resolve_model_config(TRMConfig(window=8, n_features=small_replay.n_features + 1), small_replay)
    assert resolve_model_config(None, small_replay).window == 8
    # Shuffled decisions carry no stream: the adapters' default carry is fresh, a belief only when asked for.
    assert resolve_model_config(None, small_replay).carry == "fresh" != TRMConfig().carry
    assert resolve_model_config({"carry": "belief"}, small_replay).carry == "belief"


@pytest.mark.parametrize("target", ["priced", "gain"])
def test_deep_supervision_prices_each_step_against_the_next_steps_answer(small_replay, target):
    obs, labels, strategy_pnl = _batch(small_replay)
    torch.manual_seed(0)
    model = RecurrentTRM(TRMConfig(window=8, n_features=small_replay.n_features, d_model=16, max_steps=3))
    loss_fn = TRMLoss(halt_target=target, halt_step_cost=0.1 if target == "gain" else 0.0, lambda_profit=0.0)
    result = deep_supervision(model, loss_fn, obs, labels, strategy_pnl)
    # The same target by hand: step s halts unless step s + 1's answer is worth more (the last step: no next one);
    # "gain" asks for more than its cost, a tenth of the batch's mean absolute PnL.
    carry, values = model.init_carry(16), []
    with torch.no_grad():
        for _ in range(3):
            out = model(obs, carry)
            carry = out.carry
            values.append((torch.softmax(out.task_logits, -1) * strategy_pnl).sum(-1))  # (B,) expected PnL
    gains = [values[min(s + 1, 2)] - values[s] for s in range(3)]
    cost = 0.0 if target == "priced" else 0.1 * float(strategy_pnl.abs().mean())
    # "gain": the value of stopping is > 0 where the gain is below its cost.
    targets = [((gain < cost) if target == "gain" else (gain <= cost)).float().mean() for gain in gains]
    assert result.metrics["halt/target_rate"] == pytest.approx(float(torch.stack(targets).mean()), abs=1e-6)
    result.loss.backward()
    assert model.halt_head.weight.grad is not None


# ------------------------------------------------------------------ one meaning per tag: trainer == adapters

# = max_steps: the adapters' iterations per batch, and the trainer's iterations between two logs.
ITERATIONS = 3


@pytest.fixture(
    scope="module",
    params=[("profitable", "fresh"), ("priced", "belief"), ("gain", "fresh")],
    ids=lambda p: "-".join(p),
)
def trainer_on_a_batch(request, tmp_path_factory):
    """The trainer's halt/* and train/* tags after ITERATIONS iterations on one batch of decisions.

    The trainer's slots hold the batch from a fresh carry without exploration; a slot that halts takes its own
    decision again (what an adapter's batch does), and the learning rate is 0, so the weights stay those the
    adapters load. Returns (config, weights, batch, tags).
    """
    from trm_act.envs import SyntheticMarketConfig

    from trm_act.config import ExperimentConfig, TrainConfig
    from trm_act.loss import LossConfig
    from trm_act.trainer import Trainer

    halt_target, carry = request.param
    config = ExperimentConfig(
        # label_horizon != horizon: the supervision PnL (label_pnl) differs from the reward (strategy_pnl).
        env=TradeReplayConfig(
            window=8,
            horizon=4,
            label_horizon=8,
            episode_length=8,
            synthetic=SyntheticMarketConfig(n_bars=1500),
        ),
        model=TRMConfig(
            d_model=16, n_heads=2, n_cycles=2, max_steps=ITERATIONS, halt_exploration_prob=0.0, carry=carry
        ),  # two cycles: with this seed, every kind of halt tag takes a value strictly between 0 and 1
        # A threshold just above uniform (1/8) makes the "profitable" target vary on an untrained model.
        loss=LossConfig(lambda_reward=1.0, halt_target=halt_target, confidence_threshold=0.13),
        train=TrainConfig(steps=10, batch_size=16, log_every=ITERATIONS, progress=False, ema_decay=0.0),
    )
    trainer = Trainer(config, tmp_path_factory.mktemp("trainer"))
    torch.manual_seed(1)
    with torch.no_grad():  # halt logits spread around 0: decisions halt at different steps
        torch.nn.init.normal_(trainer.model.halt_head.weight, std=0.5)
        trainer.model.halt_head.bias.fill_(-0.5)
    for group in trainer.optimizer.param_groups:
        group["lr"] = 0.0
    trainer.scheduler.base_lrs = [0.0] * len(trainer.scheduler.base_lrs)
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    obs, info = trainer.obs.copy(), {k: v.copy() for k, v in trainer.info.items()}
    assert not np.allclose(info["label_pnl"], info["strategy_pnl"])
    batch = {
        "obs": torch.from_numpy(obs),
        "labels": torch.from_numpy(info["label"]).long(),
        "strategy_pnl": torch.from_numpy(info["strategy_pnl"]).float(),
        "label_pnl": torch.from_numpy(info["label_pnl"]).float(),
    }

    class ReplayTheBatch:
        """Each slot that halts gets its own decision again: a new episode, so a belief starts afresh too."""

        def step_masked(self, actions, mask):
            rewards = info["strategy_pnl"][np.arange(len(actions)), actions].astype(np.float32)
            return (
                obs.copy(),
                rewards,
                np.zeros_like(mask),
                mask.copy(),
                {k: v.copy() for k, v in info.items()},
            )

    trainer.env = ReplayTheBatch()
    trainer.state = ACTState.initial(trainer.model, len(obs), exploration_prob=0.0)
    for _ in range(ITERATIONS):
        logs = trainer.train_step()
    tags = {k: v for k, v in logs.scalars.items() if k.startswith(("halt/", "train/"))}
    # The optimizer's own tags: an adapter leaves them to its framework.
    del tags["train/lr"], tags["train/grad_norm"]
    assert (
        0.0 < tags["halt/hazard/step_1"] < 1.0 and 0.0 < tags["halt/target_rate"] < 1.0
    )  # not a trivial batch
    return config, weights, batch, tags


def _adapter_tags(adapter, config, weights, batch):
    if adapter == "deep_supervision":
        model = RecurrentTRM(config.model)
        model.load_state_dict(weights)
        metrics = deep_supervision(model, TRMLoss.from_config(config.loss), **batch).metrics
    elif adapter == "lightning":
        pytest.importorskip("lightning")
        from trm_act.callbacks.lightning import TRMLightningModule

        module = TRMLightningModule(config.model, config.env, loss_config=config.loss)
        module.model.load_state_dict(weights)
        module.train()
        with warnings.catch_warnings():  # self.log outside a Lightning Trainer only warns
            warnings.filterwarnings("ignore", message=".*self.log.*")
            metrics = module.training_step(batch, 0)
    else:
        pytest.importorskip("transformers")
        from trm_act.callbacks.hf import TRMHFModel

        model = TRMHFModel(config.model, loss_config=config.loss)
        model.trm.load_state_dict(weights)
        model.train()
        model(**batch)
        metrics = model.pop_trm_metrics()
    return {k: float(v) for k, v in metrics.items() if k.startswith(("halt/", "train/"))}


@pytest.mark.parametrize("adapter", ["deep_supervision", "lightning", "hf"])
def test_trainer_and_each_adapter_give_every_halt_and_train_tag_the_same_value(trainer_on_a_batch, adapter):
    config, weights, batch, expected = trainer_on_a_batch
    tags = _adapter_tags(adapter, config, weights, batch)
    assert set(tags) == set(expected)
    for tag, value in expected.items():
        assert tags[tag] == pytest.approx(value, rel=1e-6, abs=1e-9), tag
