"""The compiled training step: when it is used, and that it computes what the eager step computes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from trm_act.compiled import AUTO_MIN_STEPS, compile_decision
from trm_act.model import AttentionMixer, TRMConfig

CPU = torch.device("cpu")


@pytest.mark.parametrize("radius", [1, 2, 5, 40])
def test_banded_attention_equals_the_masked_sdpa(radius):
    torch.manual_seed(radius)
    config = TRMConfig(window=32, d_model=32, mixer="attention", n_heads=4, attn_radius=radius)
    mixer = AttentionMixer(config)
    h = torch.randn(5, 32, 32, requires_grad=True)  # (B, W, D)
    eager = mixer(h)  # SDPA with the (W, W) mask: not compiling
    banded = mixer.banded(h)
    assert torch.allclose(eager, banded, atol=1e-6)
    (grad_eager,) = torch.autograd.grad(eager.square().sum(), h)
    (grad_banded,) = torch.autograd.grad(banded.square().sum(), h)
    assert torch.allclose(grad_eager, grad_banded, atol=1e-5)


def test_banded_attention_sees_only_the_band():
    config = TRMConfig(window=16, d_model=8, mixer="attention", n_heads=2, attn_radius=2)
    mixer = AttentionMixer(config)
    h = torch.randn(1, 16, 8)
    moved = h.clone()
    moved[:, 10] += 5.0  # bar 10 changes: only bars 8..12 may notice
    changed = (mixer.banded(h) - mixer.banded(moved)).abs().amax(dim=-1)[0] > 1e-6  # (W,)
    assert changed.nonzero().flatten().tolist() == [8, 9, 10, 11, 12]


@pytest.mark.parametrize(
    ("setting", "steps", "distributed", "expected"),
    [
        ("off", 10_000, False, False),
        ("on", 5, True, True),
        ("auto", AUTO_MIN_STEPS, False, True),
        ("auto", AUTO_MIN_STEPS - 1, False, False),
        ("auto", 10_000, True, False),
    ],
)
def test_compile_decision(setting, steps, distributed, expected):
    compiled, reason = compile_decision(setting, steps, CPU, distributed)
    assert compiled is expected
    assert reason.startswith("on" if expected else "off")


def test_auto_does_not_compile_without_a_cxx_compiler(monkeypatch):
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CXX", raising=False)
    compiled, reason = compile_decision("auto", 10_000, CPU, False)
    assert not compiled and "C++ compiler" in reason


def test_compile_setting_is_validated():
    from trm_act.config import TrainConfig

    with pytest.raises(ValueError, match=r"train\.compile must be 'auto', 'on' or 'off'; got 'yes'"):
        TrainConfig(compile="yes")


@pytest.mark.slow
def test_the_compiled_training_step_follows_the_eager_one(tmp_path):
    """Same seed, same data: a few compiled steps give the eager step's losses and weights (float rounding)."""
    from trm_act.bench.train import bench_config
    from trm_act.trainer import Trainer

    losses, weights = {}, {}
    default = bench_config(quick=True, bf16=False, threads=1, compiled=True)  # the default recipe, tiny
    for compiled in (False, True):
        train = dataclasses.replace(default.train, compile="on" if compiled else "off")
        config = dataclasses.replace(default, train=train)
        trainer = Trainer(config, tmp_path / f"run-{compiled}")
        assert trainer.compiled is compiled
        losses[compiled] = []
        for _ in range(5):
            trainer.train_step()
            losses[compiled].append(float(trainer._last_loss))
        weights[compiled] = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    assert losses[True] == pytest.approx(losses[False], rel=1e-4, abs=1e-5)
    assert torch.allclose(weights[True], weights[False], atol=1e-4)
