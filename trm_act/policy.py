"""``trm_act.Policy``: a trained run, ready to decide on bars it never saw.

``Policy.load(run_dir)`` restores what evaluation uses: the EMA weights (the raw weights when the run
kept no EMA), the env options the features and windows were built with, and the halting rule
(:func:`trm_act.act.halt_rule` at the model's ``max_steps``, no exploration floor). ``decide``,
``stream`` and the decision cadence are :class:`trm_act.runtime.DecisionRuntime`'s (see that module).

The halting loop is :func:`trm_act.act.halt_rows`, :func:`trm_act.act.act_predict`'s (halted rows leave the
batch after each step). A row's answer must not depend on the rows beside it, so that a stream (one row at a time)
and ``decide`` (batches that shrink as rows halt) agree bit for bit. On CPU, torch multiplies a (B, D) batch of
vectors by a matrix with a kernel that depends on B (a matrix-vector kernel for one row, and a row's sum order
that changes with the number of rows), so the layers that read one vector per row (the task and halt heads, and
a belief model's read and GRU cell) are computed as row-wise sums instead, by forward hooks
(:func:`rowwise_hooks`); the blocks multiply (B x window) rows at a time, which torch sums the same way whatever
B. Their outputs can differ from ``act_predict``'s in the last bits (a different decision only where logits tie
to that precision).

``compile=True`` runs the reasoning step through inductor's C++ kernels: a batch of several rows through
``torch.compile`` (a C++ wrapper and a batch dimension that may vary), and a lone row (a stream's decision)
through :class:`trm_act.aoti.LoneRowStep`, the same graph compiled ahead of time and called without Dynamo's
guards. On the developers' AVX-512 Xeon (one-thread fp32 matmul 211 GFLOP/s), one step of the default model
costs ~0.15 ms for one row on one thread that way, ~0.25 ms through ``torch.compile`` and ~1 ms eager, which
spends it in ~300 tiny op dispatches. The first decision of each kind pays its compile (~15-25 s on a machine, a few seconds once the disk caches hold it). A compiled step rounds
differently from the eager one (last bits, ~1e-6), so a compiled and an eager policy may differ on a decision
whose logits tie to that precision; among themselves, a compiled stream and a compiled ``decide`` agree bit for
bit (tested).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trm_act.act import halt_rows
from trm_act.aoti import LoneRowStep
from trm_act.checkpoint import CheckpointError, checkpoint_path, corrupt, load_checkpoint
from trm_act.compiled import has_cxx_compiler
from trm_act.model import RecurrentTRM, StepOutput, TRMCarry, TRMConfig
from trm_act.runtime import DecisionRuntime, Outcome

__all__ = ["Policy", "TorchEngine"]

# What Policy.load needs from a trainer checkpoint (trm_act.trainer.Trainer.state_dict).
POLICY_KEYS = ("config", "model_config", "model", "ema")


def _rowwise(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """h (B, I) times weight (O, I) transposed, plus bias (O,), as row-wise sums: no batch size changes a row."""
    out = (h[:, None, :] * weight.to(h.dtype)).sum(-1)  # (B, O)
    return out if bias is None else out + bias.to(h.dtype)


def _rowwise_linear(module: torch.nn.Linear, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
    """Forward hook: a Linear layer on (B, I) vectors, recomputed row-wise."""
    return _rowwise(inputs[0], module.weight, module.bias)  # (B, O)


def _rowwise_gru(module: torch.nn.GRUCell, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
    """Forward hook: GRUCell(x, h) recomputed row-wise, with torch's gate order and equations (r, z, n)."""
    x, h = inputs  # (B, I), (B, H)
    gi = _rowwise(x, module.weight_ih, module.bias_ih).chunk(3, dim=-1)  # 3 x (B, H)
    gh = _rowwise(h, module.weight_hh, module.bias_hh).chunk(3, dim=-1)  # 3 x (B, H)
    reset = _whole_vectors(torch.sigmoid, gi[0] + gh[0])
    update = _whole_vectors(torch.sigmoid, gi[1] + gh[1])
    new = _whole_vectors(torch.tanh, gi[2] + reset * gh[2])
    return (1 - update) * new + update * h  # (B, H)


def _whole_vectors(fn: Callable[[torch.Tensor], torch.Tensor], t: torch.Tensor) -> torch.Tensor:
    """``fn(t)`` for t (B, H), with each row padded to a multiple of 32 elements: torch's CPU loops compute
    sigmoid and tanh two vectors at a time (32 floats with AVX-512, 16 with AVX2) and the remainder with
    scalar code that rounds differently, so without the padding a row's last bits would depend on B x H."""
    pad = -t.shape[-1] % 32
    return fn(F.pad(t, (0, pad)))[..., : t.shape[-1]]  # (B, H)


def rowwise_hooks(model: RecurrentTRM) -> None:
    """Register the row-wise forward hooks on the layers of ``model`` that read one vector per row (once)."""
    for module, hook in (
        (model.task_head, _rowwise_linear),
        (model.halt_head, _rowwise_linear),
        (model.belief_read, _rowwise_linear),
        (model.belief_write, _rowwise_gru),
    ):
        if module is not None and not any(h is hook for h in module._forward_hooks.values()):
            module.register_forward_hook(hook)


def check_compile(compile: object) -> None:
    """ValueError unless ``compile`` is a bool that this machine can honour."""
    if not isinstance(compile, bool):
        raise ValueError(f"compile={compile!r}: expected True or False")
    if compile and not has_cxx_compiler():
        raise ValueError(
            "compile=True needs a C++ compiler for inductor's CPU kernels; install g++ (or set CXX), or pass "
            "compile=False"
        )


class TorchEngine:
    """A :class:`RecurrentTRM` as a :class:`trm_act.runtime.Engine`: windows in, halted answers out."""

    def __init__(self, model: RecurrentTRM, max_steps: int | None = None, *, compile: bool = False) -> None:
        if not isinstance(model, RecurrentTRM):
            raise ValueError(f"model={type(model).__name__}: expected a trm_act.model.RecurrentTRM")
        self.model = model.eval()
        rowwise_hooks(model)
        config = model.config
        self.window = config.window
        self.n_features = config.n_features
        self.has_belief = model.has_belief
        self.max_steps = config.max_steps if max_steps is None else max_steps
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"max_steps={self.max_steps!r}: expected an int >= 1 (None = the model's)")
        check_compile(compile)
        self.compiled = compile
        self._reason = self._flat_step
        self._lone_row: LoneRowStep | None = None  # built at the first one-row step (compile on the CPU)
        if compile:  # one graph for every batch size (and one for a lone row: torch specialises size 1)
            self._reason = torch.compile(
                self._flat_step, dynamic=True, fullgraph=True, options={"cpp_wrapper": True}
            )

    def initial_belief(self) -> np.ndarray | None:
        if not self.has_belief:
            return None
        return self.model.belief_init.detach().float().cpu().numpy().copy()  # (D,)

    def _flat_step(self, x: torch.Tensor, *carry: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        """``model.step`` on plain tensors (what ``torch.compile`` traces): x, y, z, belief, proposal in;
        task logits, halt logits, y, z, belief, proposal out."""
        out = self.model.step(x, TRMCarry(*carry))
        c = out.carry
        return out.task_logits, out.halt_logits, c.y, c.z, c.belief, c.proposal

    def _step(self, x: torch.Tensor, carry: TRMCarry) -> StepOutput:
        """``model.step`` (compiled or not)."""
        # contiguous: the initial carry is a broadcast view, which a compiled graph would meet as a second
        # input layout (a second graph)
        tensors = (x, carry.y, carry.z, carry.belief, carry.proposal)
        if self.compiled and x.shape[0] == 1 and x.device.type == "cpu":  # a stream's step: the AOT library
            present = tuple(t.contiguous() for t in tensors if t is not None)
            if self._lone_row is None:
                self._lone_row = LoneRowStep(self.model, self._flat_step, present)
            task, halt, *state = self._lone_row(*present)
            return StepOutput(task, halt, TRMCarry(*state))
        task, halt, *state = self._reason(*(None if t is None else t.contiguous() for t in tensors))
        return StepOutput(task, halt, TRMCarry(*state))

    @torch.no_grad()
    def run(self, obs: np.ndarray, belief: np.ndarray | None) -> Outcome:
        """Halt each of the B rows of ``obs`` (B, W, F) by :func:`halt_rule`; ``belief`` (B, D) or None."""
        model, max_steps = self.model, self.max_steps
        if self._lone_row is not None and not self._lone_row.fits():  # the model changed dtype or device
            self._lone_row = None
        x = model.encode(torch.from_numpy(obs))  # (B, W, D) encoded once: the input is the same at every step
        b = x.shape[0]
        carry = model.init_carry(b, device=x.device)
        if belief is not None:
            if not self.has_belief:
                raise ValueError("belief was given but the model has no belief (TRMConfig.carry='fresh')")
            carry = carry.with_belief(torch.from_numpy(belief).to(carry.belief))  # (B, D)
        result = halt_rows(self._step, x, carry, max_steps, model.config.num_classes)
        return Outcome(
            logits=result.task_logits.numpy(),
            steps=result.steps.numpy(),
            halt_logits=result.halt_logits.numpy(),
            belief=None if result.belief is None else result.belief.numpy(),
        )


class Policy(DecisionRuntime):
    """A trained model with its feature pipeline and halting rule.

    ``Policy.load(run_dir)`` for a run of ``python -m trm_act.train``; ``Policy(model, env)`` for a model
    in hand (``env``: the ``TradeReplayConfig``, or its dict, that built its observations). The model is
    put in eval mode and gets the row-wise forward hooks (see the module docstring); ``compile=True``
    reasons with ``torch.compile``.

    Example::

        policy = Policy.load("runs/demo")
        decisions = policy.decide("new_bars.csv")  # one row per decision bar
        stream = policy.stream()
        decision = stream.update({"timestamp": "2025-01-02", "open": 1.0, "high": 1.1, "low": 0.9,
                                  "close": 1.05, "volume": 1e6})  # a Decision, or None between decisions
    """

    def __init__(
        self, model: RecurrentTRM, env: Any, *, max_steps: int | None = None, compile: bool = False
    ) -> None:
        super().__init__(TorchEngine(model, max_steps, compile=compile), env)
        self.model = self.engine.model
        self.config: TRMConfig = model.config
        self.source: str | None = None
        """The checkpoint file the policy was loaded from (None when built from a model)."""
        self.step: int | None = None
        """The training step of that checkpoint."""
        self.weights = "model"
        """Which weights were loaded: "ema" (what evaluation uses) or "model" (the run kept no EMA)."""

    @classmethod
    def load(cls, path: str | Path, *, compile: bool = False) -> Policy:
        """Restore a run directory (``runs/NAME``) or a ``checkpoint.pt``: EMA weights when the run kept them,
        the env options, the halting rule. ``compile=True``: reason with ``torch.compile`` (see the module
        docstring). Raises CheckpointError (a ValueError, one line) when the file is missing, damaged, or of
        another format or version."""
        check_compile(compile)  # before the file: its errors would otherwise read as a damaged checkpoint
        file = checkpoint_path(path)
        if not file.is_file():
            raise CheckpointError(
                f"{path}: no checkpoint at {file}; pass a run directory of python -m trm_act.train (runs/NAME) or "
                "its checkpoint.pt"
            )
        state = load_checkpoint(file)
        missing = [key for key in POLICY_KEYS if key not in state]
        if missing:
            raise corrupt(
                file, f"missing {', '.join(missing)} (not a checkpoint of this version of trm_act.train)"
            )
        config, env = (
            state["model_config"],
            state["config"].get("env") if isinstance(state["config"], dict) else None,
        )
        if not isinstance(config, dict) or not isinstance(env, dict):
            raise corrupt(file, "its model config or env options are not tables")
        known = {f.name for f in dataclasses.fields(TRMConfig)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise corrupt(
                file, f"its model config has option(s) {unknown} this version of trm_act does not know"
            )
        try:
            model = RecurrentTRM(TRMConfig.from_dict(config))  # an older checkpoint lacks newer fields
            weights = state["ema"] if state["ema"] is not None else state["model"]
            model.load_state_dict(weights)
            policy = cls(model, env, compile=compile)
        except (RuntimeError, ValueError, TypeError, KeyError) as exc:
            raise corrupt(file, f"its model does not load ({type(exc).__name__}: {exc})") from None
        policy.source = str(file)
        policy.step = int(state["step"]) if isinstance(state.get("step"), int) else None
        policy.weights = "ema" if state["ema"] is not None else "model"
        return policy

    def _repr_fields(self) -> list[str]:
        return [f"source={self.source!r}", f"step={self.step}", f"weights={self.weights}"]
