"""What may change when a run is resumed, and how the change is recorded.

A checkpoint's config is authoritative: its weights, carry and environment cursors were built
from it. ``--resume`` may still change the optimisation (a lower ``lr`` after a divergence, more
``steps`` to extend a finished run) and the logging cadence. Each change is recorded in the run's
config history, ``[{"step": s, "changes": {"train.lr": [old, new], ...}}, ...]``, saved in the
checkpoint and in ``config.json``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from trm_act.checkpoint import CheckpointError
from trm_act.config import ExperimentConfig

# Fields --resume may change: they steer the optimizer and logging, not the shapes or data.
RESUMABLE = {
    "train": (
        "steps",
        "lr",
        "weight_decay",
        "grad_clip",
        "halt_lr_scale",
        "checkpoint_every",
        "log_every",
        "eval_every",
        "eval_batch_size",
        "progress",
        "threads",
    )
}
HISTORY_KEY = "history"
RUNTIME_KEY = "runtime"


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= _flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat


def apply_overrides(
    config: ExperimentConfig, overrides: dict[str, Any], step: int
) -> tuple[ExperimentConfig, dict[str, list[Any]]]:
    """Apply ``{section: {field: value}}`` overrides to a saved config at ``step``.

    Returns the new config and the changes as ``{"section.field": [old, new]}`` (values equal to
    the saved ones are no change). Raises ValueError naming the field when it may not change on
    resume, or when ``steps`` would end before the run's current step.
    """
    allowed = {f"{section}.{name}" for section, names in RESUMABLE.items() for name in names}
    wanted = _flatten(overrides)
    refused = sorted(set(wanted) - allowed)
    if refused:
        raise ValueError(
            f"--resume: {', '.join(refused)} cannot change when resuming (the saved weights and state "
            f"depend on it); --resume accepts {', '.join(sorted(allowed))}; start a new run for other changes."
        )
    saved = _flatten(config.to_dict())
    changes = {name: [saved[name], value] for name, value in wanted.items() if saved[name] != value}
    if not changes:
        return config, {}
    new_steps = wanted.get("train.steps", config.train.steps)
    if new_steps < step:
        raise ValueError(
            f"--steps {new_steps}: the run is already at step {step}; pass --steps > {step} to extend it."
        )
    _check_depth_warmup(config, new_steps, step)
    sections = {
        section: dataclasses.replace(
            getattr(config, section),
            **{
                name.split(".", 1)[1]: new
                for name, (_, new) in changes.items()
                if name.startswith(f"{section}.")
            },
        )
        for section in RESUMABLE
    }
    return dataclasses.replace(config, **sections), changes


def _check_depth_warmup(config: ExperimentConfig, new_steps: int, step: int) -> None:
    """Refuse a ``steps`` change that would move the depth warm-up's end (a share of ``steps``) across the run's
    current step: a run that already thinks would go back to one step, or one still warming up would stop early."""
    train = config.train
    old_end = train.depth_warmup_steps
    new_end = dataclasses.replace(train, steps=new_steps).depth_warmup_steps
    if new_end != old_end and max(old_end, new_end) > step:
        raise ValueError(
            f"--steps {new_steps}: the run's depth warm-up (train.depth_warmup={train.depth_warmup}) would end at "
            f"step {new_end} instead of {old_end}, and the run is at step {step}; start a new run, or pass --steps "
            f"with {train.depth_warmup} x steps <= {step} (the warm-up already over)."
        )


def config_record(
    config: ExperimentConfig, history: list[dict[str, Any]], runtime: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What ``config.json`` holds: the resolved config sections, the change history and, when given,
    ``runtime`` (e.g. ``{"world_size": 2, "threads": 1}``: how the run was launched, not a setting)."""
    record = config.to_dict() | {HISTORY_KEY: history}
    return record if runtime is None else record | {RUNTIME_KEY: runtime}


def _revert(config: dict[str, Any], changes: dict[str, list[Any]]) -> dict[str, Any]:
    flat = _flatten(config) | {name: old for name, (old, _) in changes.items()}
    nested: dict[str, Any] = {}
    for name, value in flat.items():
        *path, key = name.split(".")
        node = nested
        for part in path:
            node = node.setdefault(part, {})
        node[key] = value
    return nested


def _describe_differences(saved: dict[str, Any], found: dict[str, Any]) -> str:
    saved_flat, found_flat = _flatten(saved), _flatten(found)
    names = sorted(n for n in saved_flat.keys() | found_flat.keys() if saved_flat.get(n) != found_flat.get(n))
    if not names:
        return "another config history than config.json's"
    parts = [f"{n}={saved_flat.get(n)!r} but config.json says {found_flat.get(n)!r}" for n in names[:3]]
    more = f" (and {len(names) - 3} more)" if len(names) > 3 else ""
    return "; ".join(parts) + more


def verify_config_json(
    path: Path, saved_config: dict[str, Any], history: list[dict[str, Any]], checkpoint: Path
) -> None:
    """Refuse a ``config.json`` that is unreadable or disagrees with the checkpoint it sits beside.

    ``config.json`` is rewritten right after each checkpoint, so it may lag the checkpoint by the
    newest history entry only when the process died between the two writes; that is accepted.
    """
    if not path.exists():
        return  # nothing to disagree with; it is rewritten from the checkpoint at the next save
    try:
        found = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"corrupt config {path}: {exc}; restore it, or delete it to continue with the checkpoint's config."
        ) from None
    if not isinstance(found, dict):
        raise CheckpointError(f"corrupt config {path}: expected a JSON object, got {type(found).__name__}.")
    found_history = found.pop(HISTORY_KEY, [])
    found.pop(RUNTIME_KEY, None)
    try:
        found = ExperimentConfig.from_saved(found, source=str(path)).to_dict()
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"corrupt config {path}: {exc}") from None
    if found == saved_config and found_history == history:
        return
    if history and found_history == history[:-1] and found == _revert(saved_config, history[-1]["changes"]):
        return  # died between writing the checkpoint and config.json
    raise CheckpointError(
        f"checkpoint {checkpoint} was trained with {_describe_differences(saved_config, found)}; "
        f"the checkpoint decides: undo the edit (or delete config.json), and pass resumable changes "
        f"as flags (e.g. --resume {path.parent} --lr 0.0003)."
    )
