"""``trm_act.Policy``: a trained run, ready to decide on bars it never saw.

``Policy.load(run_dir)`` restores what evaluation uses: the EMA weights (the raw weights when the run
kept no EMA), the env options the features and windows were built with, and the halting rule
(:func:`trm_act.act.halt_rule` at the model's ``max_steps``, no exploration floor). ``decide``,
``stream`` and the decision cadence are :class:`trm_act.runtime.DecisionRuntime`'s (see that module).

The halting loop is :func:`trm_act.act.halt_rows`, :func:`trm_act.act.act_predict`'s (halted rows leave the
batch after each step), with two differences that make a row's answer independent of the rows beside it, so that a
stream (one row at a time) and ``decide`` (batches that shrink as rows halt) agree bit for bit:

- a reasoning step never runs on a single row: on CPU, torch evaluates a (1, D) x (D, C) product (the
  task head, the belief's GRU cell) on another kernel than a (B, D) one, and the last bits differ; a lone
  row runs as two copies of itself;
- the halt head, a (D -> 1) linear layer, is computed as a row-wise sum (a forward hook on
  ``model.halt_head``): torch's matrix-vector kernel sums a row in an order that depends on how many
  rows there are. Its halt logits can differ from ``act_predict``'s in the last bits (a decision only
  when a halt logit lies within those bits of 0).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trm_act.act import halt_rows
from trm_act.checkpoint import CheckpointError, checkpoint_path, corrupt, load_checkpoint
from trm_act.model import RecurrentTRM, StepOutput, TRMCarry, TRMConfig
from trm_act.runtime import DecisionRuntime, Outcome

__all__ = ["Policy", "TorchEngine"]

# What Policy.load needs from a trainer checkpoint (trm_act.trainer.Trainer.state_dict).
POLICY_KEYS = ("config", "model_config", "model", "ema")


def _rowwise_halt(
    module: torch.nn.Linear, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
) -> torch.Tensor:
    """Forward hook: the halt head's output (B, 1) as a row-wise sum, which no batch size changes."""
    (h,) = inputs  # (B, D)
    return (h * module.weight[0].to(h.dtype)).sum(-1, keepdim=True) + module.bias.to(h.dtype)  # (B, 1)


class TorchEngine:
    """A :class:`RecurrentTRM` as a :class:`trm_act.runtime.Engine`: windows in, halted answers out."""

    def __init__(self, model: RecurrentTRM, max_steps: int | None = None) -> None:
        if not isinstance(model, RecurrentTRM):
            raise ValueError(f"model={type(model).__name__}: expected a trm_act.model.RecurrentTRM")
        self.model = model.eval()
        head = model.halt_head
        if not (isinstance(head, torch.nn.Linear) and head.out_features == 1 and head.bias is not None):
            raise ValueError(f"model.halt_head={head!r}: expected a Linear(d_model, 1) with a bias")
        if not any(hook is _rowwise_halt for hook in head._forward_hooks.values()):
            head.register_forward_hook(_rowwise_halt)
        config = model.config
        self.window = config.window
        self.n_features = config.n_features
        self.has_belief = model.has_belief
        self.max_steps = config.max_steps if max_steps is None else max_steps
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"max_steps={self.max_steps!r}: expected an int >= 1 (None = the model's)")

    def initial_belief(self) -> np.ndarray | None:
        if not self.has_belief:
            return None
        return self.model.belief_init.detach().float().cpu().numpy().copy()  # (D,)

    def _step(self, x: torch.Tensor, carry: TRMCarry) -> StepOutput:
        """``model.step``, with a lone row run as two copies of itself (see the module docstring)."""
        if x.shape[0] != 1:
            return self.model.step(x, carry)
        pair = TRMCarry(
            *(
                None if t is None else torch.cat([t, t])
                for t in (carry.y, carry.z, carry.belief, carry.proposal)
            )
        )
        out = self.model.step(torch.cat([x, x]), pair)  # (2, ...) identical rows
        return StepOutput(out.task_logits[:1], out.halt_logits[:1], out.carry.select(slice(0, 1)))

    @torch.no_grad()
    def run(self, obs: np.ndarray, belief: np.ndarray | None) -> Outcome:
        """Halt each of the B rows of ``obs`` (B, W, F) by :func:`halt_rule`; ``belief`` (B, D) or None."""
        model, max_steps = self.model, self.max_steps
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
    put in eval mode and its halt head gets the row-wise forward hook (see the module docstring).

    Example::

        policy = Policy.load("runs/demo")
        decisions = policy.decide("new_bars.csv")  # one row per decision bar
        stream = policy.stream()
        decision = stream.update({"timestamp": "2025-01-02", "open": 1.0, "high": 1.1, "low": 0.9,
                                  "close": 1.05, "volume": 1e6})  # a Decision, or None between decisions
    """

    def __init__(self, model: RecurrentTRM, env: Any, *, max_steps: int | None = None) -> None:
        super().__init__(TorchEngine(model, max_steps), env)
        self.model = self.engine.model
        self.config: TRMConfig = model.config
        self.source: str | None = None
        """The checkpoint file the policy was loaded from (None when built from a model)."""
        self.step: int | None = None
        """The training step of that checkpoint."""
        self.weights = "model"
        """Which weights were loaded: "ema" (what evaluation uses) or "model" (the run kept no EMA)."""

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Restore a run directory (``runs/NAME``) or a ``checkpoint.pt``: EMA weights when the run kept them,
        the env options, the halting rule. Raises CheckpointError (a ValueError, one line) when the file is
        missing, damaged, or of another format or version."""
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
            policy = cls(model, env)
        except (RuntimeError, ValueError, TypeError, KeyError) as exc:
            raise corrupt(file, f"its model does not load ({type(exc).__name__}: {exc})") from None
        policy.source = str(file)
        policy.step = int(state["step"]) if isinstance(state.get("step"), int) else None
        policy.weights = "ema" if state["ema"] is not None else "model"
        return policy

    def _repr_fields(self) -> list[str]:
        return [f"source={self.source!r}", f"step={self.step}", f"weights={self.weights}"]
