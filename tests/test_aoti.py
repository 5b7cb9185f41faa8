"""trm_act.aoti.LoneRowStep: the one-row reasoning step compiled by AOTInductor (a compiled stream's steps)."""

from __future__ import annotations

import pytest
import torch

from trm_act import aoti
from trm_act.aoti import LoneRowStep
from trm_act.model import RecurrentTRM, TRMCarry, TRMConfig

pytestmark = pytest.mark.slow  # each library is a C++ build (~15 s)

CONFIG = TRMConfig(d_model=16, n_heads=2, n_cycles=1, carry="belief")


def flat(model: RecurrentTRM):
    """The step on plain tensors, as trm_act.policy.TorchEngine hands it over."""

    def step(x, y, z, belief, proposal):
        out = model.step(x, TRMCarry(y, z, belief, proposal))
        c = out.carry
        return out.task_logits, out.halt_logits, c.y, c.z, c.belief, c.proposal

    return step


def chain(step, model: RecurrentTRM, x: torch.Tensor, n: int) -> list[torch.Tensor]:
    """``n`` steps from the fresh carry, whose belief and proposal are one tensor; every output of each."""
    carry = model.init_carry(1)
    carry = (carry.y.contiguous(), carry.z.contiguous(), carry.belief, carry.proposal)
    assert carry[2] is carry[3]
    outputs = []
    for _ in range(n):
        task, halt, *carry = step(x, *carry)
        outputs += [task, halt, *carry]
    return outputs


def assert_close(got: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-5)


@torch.no_grad()
def test_a_lone_row_step_follows_the_model_through_its_steps_and_its_live_weights(monkeypatch):
    torch.manual_seed(0)
    model = RecurrentTRM(CONFIG).eval()
    x = model.encode(torch.randn(1, CONFIG.window, CONFIG.n_features))  # (1, W, D)
    carry = model.init_carry(1)
    example = (x, carry.y.contiguous(), carry.z.contiguous(), carry.belief, carry.proposal)
    lone = LoneRowStep(model, flat(model), example)
    # later steps read a proposal that is no longer the belief: a library traced with the two as one input
    # (what export makes of one tensor passed twice) would answer the first step right and the rest wrong
    assert_close(chain(lone, model, x, 3), chain(flat(model), model, x, 3))

    other = RecurrentTRM(CONFIG)
    model.load_state_dict(other.state_dict())  # copies into the tensors the library reads
    assert_close(chain(lone, model, x, 3), chain(flat(model), model, x, 3))

    lone.package.write_bytes(b"not a package")  # a damaged cache entry is built again
    assert_close(chain(LoneRowStep(model, flat(model), example), model, x, 3), chain(flat(model), model, x, 3))

    def no_build(*args):
        raise AssertionError("the cached library was rebuilt")

    monkeypatch.setattr(aoti, "_build", no_build)
    again = LoneRowStep(model, flat(model), example)
    assert again.package == lone.package and lone.package.is_file()

    assert lone.fits()
    model.double()  # in place: the same tensor objects, now float64, which the library would read as float32
    assert not lone.fits()


@torch.no_grad()
def test_the_cache_key_follows_the_graph_and_the_kernel_settings(monkeypatch):
    monkeypatch.setattr(aoti, "_build", lambda program, package: None)
    monkeypatch.setattr(aoti, "_load", lambda package: lambda args: [])

    def package(config: TRMConfig) -> str:
        model = RecurrentTRM(config).eval()
        x = torch.zeros(1, config.window, config.d_model)
        carry = model.init_carry(1)
        example = (x, carry.y.contiguous(), carry.z.contiguous(), carry.belief, carry.proposal)
        return LoneRowStep(model, flat(model), example).package.name

    first = package(CONFIG)
    assert package(CONFIG) == first  # another model of the same shape: the same library (weights are inputs)
    assert package(TRMConfig(d_model=16, n_heads=2, n_cycles=2, carry="belief")) != first  # another graph
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert package(CONFIG) != first  # other kernels
