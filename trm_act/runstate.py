"""The trainer's run state: what a checkpoint holds, how a run resumes from one, and how ranks agree to stop.

:class:`trm_act.trainer.Trainer` keeps the loop; its ``state_dict``, ``load_state_dict``, ``save`` and
``from_checkpoint`` call the functions here. A checkpoint holds rank zero's slots (env cursors, ACT carry, RNGs,
the log window) at the top level and the other ranks' under ``"ranks"``, so that a resume with the same world
size continues exactly; ``config.json`` beside it mirrors its config and history.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from trm_act import distributed
from trm_act.act import ACTState
from trm_act.callbacks import Callback
from trm_act.checkpoint import (
    LATEST,
    CheckpointError,
    checkpoint_path,
    corrupt,
    load_checkpoint,
    save_checkpoint,
)
from trm_act.config import ExperimentConfig, missing_data
from trm_act.envs.timing import WRITING
from trm_act.interrupts import GracefulInterrupt
from trm_act.model import TRMConfig
from trm_act.resume import apply_overrides, config_record, verify_config_json

if TYPE_CHECKING:
    from trm_act.trainer import Trainer

# What each rank owns (its env slots and their carry); a checkpoint keeps rank zero's at the top level and
# the other ranks' under "ranks", so that a resume with the same world size continues exactly.
RANK_KEYS = ("rng", "env", "act", "obs", "info", "window")

# A checkpoint is kept only while every weight satisfies |w| <= MAX_ABS_WEIGHT. Healthy runs of this
# model stay below ~10 (LayerNorm-scaled activations, weight decay); weights that have run off past
# 1e4 mean divergence that a resumed run would inherit, even while the loss is still finite.
MAX_ABS_WEIGHT = 1e4

# Keys every checkpoint payload holds (a file missing one is refused as corrupt, not half-loaded).
CHECKPOINT_KEYS = (
    "config", "model_config", "history", "step", "model", "ema", "optimizer", "scheduler",
    "rng", "env", "act", "obs", "info", "window",
)  # fmt: skip

# Stop codes agreed by all ranks (see agree_stop): a signal outranks a callback's stop.
SIGNAL_STOP = 1000


class NonFiniteLossError(RuntimeError):
    """Training diverged (NaN/inf, or weights beyond MAX_ABS_WEIGHT); the last good checkpoint is kept."""


class RunWriteError(RuntimeError):
    """Writing a run file failed (disk full, permission); ``Trainer.checkpoint_step`` is the last good one."""

    def __init__(self, path: Path, error: OSError) -> None:
        super().__init__(f"cannot write {path}: {error.strerror or error}")
        self.path, self.error = path, error


def param_groups(model: torch.nn.Module, lr: float, halt_lr_scale: float) -> list[dict[str, Any]]:
    """The optimizer's two groups: every weight at ``lr`` but the halt head's, at ``lr * halt_lr_scale``."""
    halt = list(model.halt_head.parameters())
    halt_ids = {id(p) for p in halt}
    rest = [p for p in model.parameters() if id(p) not in halt_ids]
    return [{"params": rest, "lr": lr}, {"params": halt, "lr": lr * halt_lr_scale}]


def agree_stop(interrupt: GracefulInterrupt, keep_going: bool, device: torch.device) -> int:
    """0 to go on; 1 when a callback stopped; SIGNAL_STOP + signum on a stop signal; the same on every rank
    (the largest code of any rank: one int all-reduce)."""
    code = SIGNAL_STOP + int(interrupt.signum or 0) if interrupt.requested else int(not keep_going)
    return distributed.max_over_ranks(code, device)


def state_dict(trainer: Trainer) -> dict[str, Any]:
    """What ``Trainer.state_dict`` returns (a collective under torchrun; complete on rank zero only)."""
    own = rank_state(trainer)
    gathered = distributed.gather_to_zero(own, trainer.dist)
    return {
        "config": trainer.config.to_dict(),
        "model_config": dataclasses.asdict(trainer.model_config),
        "history": copy.deepcopy(trainer.history),
        "step": trainer.step,
        "world_size": trainer.dist.world_size,
        "model": trainer.model.state_dict(),
        "ema": None if trainer.ema is None else trainer.ema.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "hop": trainer.hop,
        **own,
        "ranks": gathered[1:] if gathered is not None else None,
    }


def rank_state(trainer: Trainer) -> dict[str, Any]:
    """This rank's slots (RANK_KEYS): RNGs, env cursors, ACT carry, current observations and the log window."""
    return {
        "rng": {"torch": torch.get_rng_state(), "generator": trainer.generator.get_state().cpu()},
        "env": trainer.env.state_dict(),
        "act": {key: value.cpu() for key, value in trainer.state.state_dict().items()},
        "obs": torch.from_numpy(trainer.obs.copy()),
        "info": {
            key: torch.from_numpy(np.asarray(value))
            for key, value in trainer.info.items()
            if _array_like(value)
        },
        "window": trainer.window.state_dict(),
    }


def load_state_dict(trainer: Trainer, state: dict[str, Any]) -> None:
    """What ``Trainer.load_state_dict`` does; raises CheckpointError when another world size wrote ``state``."""
    saved_world = int(state.get("world_size", 1))
    if saved_world != trainer.dist.world_size:
        raise CheckpointError(
            f"checkpoint was written by {saved_world} process(es) and this run has {trainer.dist.world_size}; "
            f"the env state is not re-sharded, so resume with the same world size "
            f"(torchrun --nproc_per_node={saved_world}, or plain python for 1)."
        )
    # The env cursors count decisions of the training env's grid, which Trainer.hop sets. A checkpoint without
    # the field was written before a belief's training env moved to the 1-bar grid (its cursors count strides).
    saved_hop = int(state.get("hop", 1))
    if saved_hop != trainer.hop:
        raise CheckpointError(
            f"checkpoint's training env moved {saved_hop} decision(s) per commit and this trainer moves "
            f"{trainer.hop} (a belief run saved before its training env walked the 1-bar grid): its env cursors "
            "point at other bars here; start a new run (its weights load with trm_act.Policy.load)."
        )
    if trainer.dist.rank > 0:
        state = {**state, **state["ranks"][trainer.dist.rank - 1]}
    trainer.step = int(state["step"])
    trainer.model.load_state_dict(state["model"])
    if trainer.ema is not None and state["ema"] is not None:
        trainer.ema.load_state_dict(state["ema"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    apply_optimizer_config(trainer)
    torch.set_rng_state(state["rng"]["torch"])
    trainer.generator.set_state(state["rng"]["generator"].to(trainer.generator.device))
    trainer.env.load_state_dict(state["env"])
    trainer.state = ACTState.from_state_dict(state["act"], trainer.device)
    trainer.obs = state["obs"].numpy()
    trainer.info = {key: value.numpy() for key, value in state["info"].items()}
    trainer.window.load_state_dict(state["window"])
    trainer.history = list(state["history"])
    trainer.checkpoint_step = trainer.step


def apply_optimizer_config(trainer: Trainer) -> None:
    """Make the loaded optimizer and schedule follow ``config.train`` (it may differ after --resume --lr)."""
    train = trainer.config.train
    base = [group["lr"] for group in param_groups(trainer.model, train.lr, train.halt_lr_scale)]
    trainer.scheduler.base_lrs = base
    factor = trainer.scheduler.lr_lambdas[0](trainer.scheduler.last_epoch)
    for group, lr in zip(trainer.optimizer.param_groups, base, strict=True):
        group["initial_lr"], group["lr"] = lr, lr * factor
        group["weight_decay"] = train.weight_decay


def save(trainer: Trainer) -> Path:
    """What ``Trainer.save`` does: refuse diverged weights, write the checkpoint atomically, then ``config.json``."""
    # Losses differ by rank: all ranks refuse together, or rank zero would wait in the gather below.
    loss = trainer._last_loss
    loss_bad = loss is not None and not bool(torch.isfinite(loss))
    if distributed.max_over_ranks(int(loss_bad), trainer.device):
        raise NonFiniteLossError(f"non-finite loss at step {trainer.step}; not saved")
    largest = max(float(p.detach().abs().max()) for p in trainer.model.parameters())
    if not math.isfinite(largest):
        raise NonFiniteLossError(f"non-finite weights at step {trainer.step}; not saved")
    if largest > MAX_ABS_WEIGHT:
        raise NonFiniteLossError(
            f"weights reached |w| = {largest:.3g} > {MAX_ABS_WEIGHT:g} at step {trainer.step}; not saved"
        )
    path = trainer.run_dir / LATEST
    state = state_dict(trainer)  # a collective under torchrun: every rank takes part
    try:
        if trainer.dist.is_zero:
            with trainer.timings.phase(WRITING):
                save_checkpoint(path, state)
    except OSError as exc:
        raise RunWriteError(path, exc) from None
    trainer.checkpoint_step = trainer.step
    trainer._write_json("config.json", config_record(trainer.config, trainer.history, trainer.runtime()))
    return path


def from_checkpoint(
    cls: type[Trainer],
    path: str | Path,
    callbacks: Iterable[Callback] = (),
    overrides: dict[str, Any] | None = None,
) -> Trainer:
    """What ``Trainer.from_checkpoint`` does: verify the checkpoint and its ``config.json``, build ``cls`` from
    its config (with ``overrides``) and load it; any problem raises CheckpointError with one line."""
    file = checkpoint_path(path)
    state = load_checkpoint(file)
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if missing:
        raise corrupt(file, f"missing {', '.join(missing)} (not written by this version of trm_act)")
    if not isinstance(state["config"], dict) or not isinstance(state["history"], list):
        raise corrupt(file, "its config or history is not a table")
    data = missing_data(state["config"])
    if data is not None:
        raise CheckpointError(
            f"{file}: its run trained on --data {data}, which is not there now; put the data back at that path "
            "(a relative path is read from the directory you run in)"
        )
    try:
        config = ExperimentConfig.from_saved(state["config"], source=f"checkpoint {file}")
    except (ValueError, TypeError) as exc:
        raise corrupt(file, f"its config is invalid: {exc}") from None
    run_dir = file.parent
    verify_config_json(run_dir / "config.json", config.to_dict(), state["history"], file)
    step = int(state["step"])
    config, changes = apply_overrides(config, overrides or {}, step)
    trainer = cls(config, run_dir, callbacks)

    try:  # through from_dict, so that a field added since the checkpoint was written takes its old meaning
        saved_model = TRMConfig.from_dict(state["model_config"]).to_dict()
    except (ValueError, TypeError) as exc:
        raise corrupt(file, f"its model config is invalid: {exc}") from None
    built = trainer.model_config.to_dict()
    different = sorted(k for k in built.keys() | saved_model.keys() if built.get(k) != saved_model.get(k))
    if different:
        name = different[0]
        raise CheckpointError(
            f"checkpoint {file} was trained with model.{name}={saved_model.get(name)!r} but this run "
            f"builds {built.get(name)!r} (from --data or the config); resume with the data it was trained on."
        )
    try:
        trainer.load_state_dict(state)
    except CheckpointError:
        raise
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise corrupt(file, f"its state does not fit this trainer ({type(exc).__name__}: {exc})") from None
    if changes:
        trainer.history.append({"step": step, "changes": changes})
    return trainer


def _array_like(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype != object
