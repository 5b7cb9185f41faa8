"""One walk-forward fold: train it as an ordinary run, then record its out-of-sample decisions.

``run_fold`` is what each worker process runs (``trm_act.walkforward`` starts them with spawn, one torch
thread each). The fold's run directory ``DIR/NAME/fold-k/`` is a normal ``Trainer`` run directory
(``config.json``, ``checkpoint.pt``, ``metrics.json``, TensorBoard events) on the fold's data file, with the
trainer's boundary at the fold's ``train_cut``. Beside them it writes:

- ``oos.npz``: per out-of-sample decision (N of them, in time order), the PnL, turnover and exposed bars of
  every strategy (N, 8), and the actions of the model (adaptive and at every fixed depth), of best fixed
  (chosen on the fold's training decisions) and of random;
- ``fold.json``: the fold's spans, decision counts and status, written last: a fold is finished when its
  ``fold.json`` and ``oos.npz`` exist.

A fold whose run finished (``metrics.json``) but whose record is missing is scored from its checkpoint
without training again; a fold with a checkpoint but no ``metrics.json`` resumes from it
(``Trainer.from_checkpoint``); a fold directory holding files but no checkpoint (killed before the first
one) is started afresh.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trm_act import rundir
from trm_act.baselines import best_fixed_actions
from trm_act.callbacks import Callback, CallbackList, ProgressCallback, TensorBoardCallback
from trm_act.checkpoint import LATEST
from trm_act.config import ExperimentConfig
from trm_act.envs import STRATEGIES, ReplayData, build_replay
from trm_act.evaluation import predict
from trm_act.files import atomic_write, write_json
from trm_act.folds import fold_env

OOS_FILE = "oos.npz"
FOLD_FILE = "fold.json"


@dataclass(frozen=True)
class FoldJob:
    """Everything a worker needs to run fold ``index`` (small and picklable)."""

    root: str
    """The walk-forward's directory ``DIR/NAME``."""
    index: int
    config: ExperimentConfig
    """The experiment config; its ``env.data`` and ``env.test_fraction`` are replaced by the fold's."""
    csv: str
    """The fold's data file."""
    train_fraction: float
    """``env.test_fraction`` that puts the trainer's boundary at the fold's ``train_cut``."""
    test_fraction: float
    """``env.test_fraction`` that puts the scoring boundary at the fold's ``test_start``."""
    cut_bars: int
    test_bars: int
    rows: dict[str, tuple[int, int]]
    """Symbol -> [lo, hi) rows of its full series that the fold's file holds (in file order)."""
    info: dict[str, Any]
    """The plan's entry for this fold (spans as ISO timestamps, decision counts), copied into fold.json."""
    progress: bool = False
    """Draw a progress bar (only when folds run one at a time)."""
    pause_at: int | None = None
    """Stop at this optimizer step with a checkpoint (status "paused"); a later job resumes the fold from it,
    on another core (``trm_act.schedule``). None = train to the end and score."""
    cut_at: tuple[int, ...] = ()
    """Steps at which earlier jobs of this walk-forward paused the fold (``fold.json``'s ``cut_at``)."""
    seconds_before: float = 0.0
    """Training seconds those earlier jobs spent, added to ``fold.json``'s ``seconds``."""

    @property
    def run_dir(self) -> Path:
        return Path(self.root) / f"fold-{self.index}"

    def train_config(self) -> ExperimentConfig:
        env = fold_env(self.config.env, Path(self.csv), self.train_fraction)
        train = dataclasses.replace(self.config.train, progress=self.progress)
        return dataclasses.replace(self.config, env=env, train=train)


def is_finished(run_dir: Path) -> bool:
    """A fold is finished when its record (fold.json, oos.npz) exists."""
    return (run_dir / FOLD_FILE).is_file() and (run_dir / OOS_FILE).is_file()


def load_record(run_dir: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(fold.json, the arrays of oos.npz) of a finished fold."""
    info = json.loads((run_dir / FOLD_FILE).read_text())
    with np.load(run_dir / OOS_FILE, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    return info, arrays


def trade_activity(positions: np.ndarray, bars: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """(turnover, exposed) of a trade decided at each of ``bars`` (N,), for every strategy, each (N, S).

    A trade decided at t holds ``positions[t + k]`` for k = 0..horizon-1, entering from flat and exiting
    to flat (``trm_act.envs.strategies``). turnover = |p_0| + Σ_k |p_k − p_{k−1}| + |p_{h−1}|, the position
    units the cost model charges; exposed = the number of bars k with p_k ≠ 0.
    """
    prev = positions[bars]  # (N, S)
    turnover = np.abs(prev)
    exposed = (prev != 0).astype(np.int64)
    for k in range(1, horizon):
        held = positions[bars + k]  # (N, S)
        turnover += np.abs(held - prev)
        exposed += held != 0
        prev = held
    return turnover + np.abs(prev), exposed


def _check_boundary(replay: ReplayData, expected: int, what: str) -> None:
    """The replay's split boundary sits where the fold layout put it (an internal invariant)."""
    got = int((replay.boundary_bars - replay.bar_offsets[:-1]).sum())
    if got != expected:
        raise RuntimeError(
            f"{what}: the replay's boundary leaves {got} bars before it, the fold layout {expected}"
        )


def out_of_sample(
    model: torch.nn.Module,
    train_replay: ReplayData,
    job: FoldJob,
    device: torch.device,
) -> dict[str, np.ndarray]:
    """Score the fold's test decisions: the arrays of ``oos.npz`` (see the module docstring)."""
    config = job.config
    # Out-of-sample scoring reads PnL and observations only, so its replay keeps hindsight labels (a regime
    # model's labels would cost a fit and change nothing here).
    env = fold_env(config.env, Path(job.csv), job.test_fraction, label_source="hindsight")
    replay = build_replay(env)
    _check_boundary(replay, job.test_bars, f"fold {job.index} scoring")
    test_idx = replay.split_indices("test")  # (N,)
    times = replay.timestamps[replay.decision_bars[test_idx]]
    time_ns = np.asarray(times.tz_convert("UTC").tz_localize(None) if times.tz is not None else times)
    time_ns = time_ns.astype("datetime64[ns]").astype(np.int64)  # (N,)
    order = np.argsort(time_ns, kind="stable")  # instruments pooled in time order
    test_idx, time_ns = test_idx[order], time_ns[order]
    n = len(test_idx)
    bars = replay.decision_bars[test_idx]  # (N,)
    symbol = replay.symbol_index[test_idx]  # (N,)
    symbols = list(job.rows)
    lo = np.array([job.rows[s][0] for s in symbols], dtype=np.int64)  # (K,)
    turnover, exposed = trade_activity(replay.positions, bars, replay.horizon)

    max_steps = int(config.model.max_steps)
    walk = {
        "batch_size": config.train.eval_batch_size,
        "device": device,
        "bf16": config.train.bf16,
        "burn_in": config.train.eval_burn_in,
    }
    adaptive = predict(model, replay, test_idx, max_steps=max_steps, adaptive=True, **walk)
    fixed = predict(model, replay, test_idx, max_steps=max_steps, adaptive=False, **walk)
    depth = fixed.step_actions
    if depth is None:  # a belief carried at depth k differs from depth max_steps': walk each depth
        depth = np.stack(
            [
                predict(model, replay, test_idx, max_steps=k, adaptive=False, **walk).actions
                for k in range(1, max_steps)
            ]
            + [fixed.actions]
        )
    best = best_fixed_actions(train_replay, "train")  # (K,) chosen on the fold's training decisions
    rng = np.random.default_rng([config.train.seed, job.index])
    return {
        "time": time_ns,
        "symbol": np.array(symbols)[symbol],
        "row": lo[symbol] + bars - replay.bar_offsets[symbol],
        "pnl": replay.strategy_pnl[test_idx],
        "turnover": turnover,
        "exposed": exposed,
        "actions": adaptive.actions,
        "steps": adaptive.steps,
        "fixed_actions": fixed.actions,
        "depth_actions": np.asarray(depth, dtype=np.int64).reshape(max_steps, n),
        "best_fixed": best[symbol],
        "random": rng.integers(0, len(STRATEGIES), size=n),
    }


def _save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


def _clear_unstarted(run_dir: Path) -> None:
    """Remove the files of a fold run killed before its first checkpoint (it cannot be resumed)."""
    for pattern in ("events.out.tfevents.*", "config.json", "metrics.json"):
        for path in run_dir.glob(pattern):
            path.unlink()


class _PauseAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, step: int, logs: Any) -> bool:
        return step < self.step


def run_fold(job: FoldJob) -> dict[str, Any]:
    """Train (or resume, or only score) fold ``job.index``; returns its fold.json record.

    ``record["status"]`` is "completed"; "paused" when training reached ``job.pause_at`` (its checkpoint is
    where the fold's next job resumes); or "stopped" when a signal stopped training (its checkpoint is kept: run
    the walk-forward again with --resume to continue).
    """
    from trm_act.trainer import Trainer  # after the worker has started: torch threads are set by the Trainer

    run_dir = job.run_dir
    if is_finished(run_dir):
        return json.loads((run_dir / FOLD_FILE).read_text())
    started = time.perf_counter()
    with rundir.owned(run_dir, new_run=False):  # one process per fold (a cluster job array may race)
        if (run_dir / LATEST).is_file():
            trainer = Trainer.from_checkpoint(run_dir)
            resumed_from = trainer.step
        else:
            _clear_unstarted(run_dir)
            trainer = Trainer(job.train_config(), run_dir)
            resumed_from = None
        _check_boundary(trainer.eval_replay, job.cut_bars, f"fold {job.index} training")
        record = dict(job.info) | {
            "fold": job.index,
            "run_dir": run_dir.name,
            "resumed_from_step": resumed_from,
            "cut_at": list(job.cut_at),
        }
        if job.pause_at is not None and trainer.step >= job.pause_at:  # already there: nothing to train
            return record | {"status": "paused", "step": trainer.step, "seconds": job.seconds_before}
        if not (run_dir / "metrics.json").is_file():
            callbacks = [TensorBoardCallback(run_dir), ProgressCallback(disable=not job.progress)]
            if job.pause_at is not None:
                callbacks.append(_PauseAt(job.pause_at))
            trainer.callbacks = CallbackList(callbacks)
            if trainer.fit() is None:
                paused = trainer.stop_signal is None and job.pause_at is not None and trainer.step >= job.pause_at
                status = "paused" if paused else "stopped"
                seconds = job.seconds_before + time.perf_counter() - started
                return record | {"status": status, "step": trainer.step, "seconds": seconds}
        train_s = job.seconds_before + time.perf_counter() - started
        model = trainer.ema if trainer.ema is not None else trainer.model
        arrays = out_of_sample(model, trainer.eval_replay, job, trainer.device)
        best = best_fixed_actions(trainer.eval_replay, "train")
        record |= {
            "status": "completed",
            "step": trainer.step,
            "seed": trainer.config.train.seed,
            "max_steps": int(trainer.model_config.max_steps),
            "test_decisions": len(arrays["pnl"]),
            "best_fixed_strategy": {symbol: STRATEGIES[int(best[i])] for i, symbol in enumerate(job.rows)},
            "seconds": train_s,
        }
        _save_arrays(run_dir / OOS_FILE, arrays)
        write_json(run_dir / FOLD_FILE, record)  # last: marks the fold finished
    return record
