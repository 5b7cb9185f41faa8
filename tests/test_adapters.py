"""What the three adapters share: install hints when a framework is missing, and the deep-supervision numbers.

(That ``import trm_act.callbacks`` loads no framework is checked in test_callbacks.py.)

The framework runs themselves live in test_adapter_lightning.py, test_adapter_sb3.py, test_adapter_hf.py.
"""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
from trm_act.callbacks._deep_supervision import deep_supervision, resolve_model_config
from trm_act.envs import TradeReplayConfig, build_replay

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
    config = resolve_model_config({"d_model": 16, "n_layers": 1, "n_heads": 2, "max_steps": 3}, small_replay)
    model, loss_fn = RecurrentTRM(config), TRMLoss(lambda_halt=0.5)
    obs, labels, strategy_pnl = _batch(small_replay)

    loss, metrics, logits = deep_supervision(model, loss_fn, obs, labels, strategy_pnl)

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
    _, metrics, _ = deep_supervision(model, TRMLoss(), obs, labels, strategy_pnl, n_steps=2)
    # Halt head starts at +5 with zero weights: every sample wants to halt at every step -> halts at step 1.
    assert metrics["halt/rate"] == 1.0 and metrics["halt/logit_positive_rate"] == 1.0
    assert metrics["halt/mean_steps"] == 1.0


def test_model_config_must_match_the_replay(small_replay):
    with pytest.raises(ValueError, match="n_features"):
        resolve_model_config(TRMConfig(window=8, n_features=small_replay.n_features + 1), small_replay)
    assert resolve_model_config(None, small_replay).window == 8


def test_deep_supervision_prices_each_step_against_the_next_steps_answer(small_replay):
    obs, labels, strategy_pnl = _batch(small_replay)
    torch.manual_seed(0)
    model = RecurrentTRM(TRMConfig(window=8, n_features=small_replay.n_features, d_model=16, max_steps=3))
    loss_fn = TRMLoss(halt_target="priced", lambda_profit=0.0)
    result = deep_supervision(model, loss_fn, obs, labels, strategy_pnl)
    # The same target by hand: step s halts unless step s + 1's answer is worth more (the last step: no next one).
    carry, values = model.init_carry(16), []
    with torch.no_grad():
        for _ in range(3):
            out = model(obs, carry)
            carry = out.carry
            values.append((torch.softmax(out.task_logits, -1) * strategy_pnl).sum(-1))  # (B,) expected PnL
    targets = [(values[min(s + 1, 2)] - values[s] <= 0).float().mean() for s in range(3)]
    assert result.metrics["halt/target_rate"] == pytest.approx(float(torch.stack(targets).mean()))
    result.loss.backward()
    assert model.halt_head.weight.grad is not None
