"""The continual-carry trainer (TRM's training loop, driven by a vector of trade-replay envs).

B slots, one per sub-env. Each iteration runs ONE reasoning step on every slot, applies TRMLoss to
that step (pnl = realized PnL of the step's argmax strategy; labels from the env's info) and takes
one optimizer step. Slots whose halt rule fires commit their argmax to their env (reward = realized
PnL), take the env's next observation and restart from a fresh carry. Every forward is a full batch.

Under torchrun (``trm_act.distributed``) the model is wrapped in DistributedDataParallel: each rank owns
its own B slots, seeded from (seed, rank) so ranks see different data, DDP averages the gradients, and the
weights stay identical. Every rank agrees on the stop step; only rank zero writes files and evaluates
(the others wait at a barrier); a checkpoint holds every rank's env cursors and ACT carry.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trm_act import distributed, rundir, runstate
from trm_act.act import ACTState, act_step
from trm_act.callbacks import Callback, CallbackList, Logs, RunInfo
from trm_act.charts import eval_images
from trm_act.compiled import compile_decision
from trm_act.config import WARN_BATCH_SIZE, ExperimentConfig
from trm_act.envs import STRATEGIES, TradeReplayVectorEnv, build_replay
from trm_act.envs.timing import EVALUATION, TRAINING, WRITING, PhaseTimes
from trm_act.evaluation import EvalReport, evaluate
from trm_act.files import write_json
from trm_act.interrupts import GracefulInterrupt
from trm_act.loss import TRMLoss, class_weights_from_labels, profit_weight
from trm_act.model import RecurrentTRM
from trm_act.report import format_summary
from trm_act.resume import config_record

# Re-exported: tests/test_faults.py and tests/test_distributed.py import them from here.
from trm_act.runstate import MAX_ABS_WEIGHT as MAX_ABS_WEIGHT
from trm_act.runstate import RANK_KEYS as RANK_KEYS
from trm_act.runstate import SIGNAL_STOP, NonFiniteLossError, RunWriteError, param_groups
from trm_act.supervision import (
    LOSS_TAGS,
    answer_of,
    deep_supervision,
    look_ahead,
    loss_tags,
    supervise_step,
    weigh_rows,
)
from trm_act.windowstats import WindowStats


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto.")
    return device


def lr_lambda(warmup_steps: int, total_steps: int):
    """Linear warm-up, then cosine decay to 10% of the peak learning rate."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


class Trainer:
    """Trains a RecurrentTRM on TradeReplayVectorEnv with TRMLoss at every reasoning step.

    Args:
        config: the resolved experiment config.
        run_dir: where checkpoints, ``config.json`` and ``metrics.json`` go.
        callbacks: hooks that receive every step's and evaluation's metrics.
        model: a model to train instead of ``RecurrentTRM(config.model)`` (same step interface).
    """

    def __init__(
        self,
        config: ExperimentConfig,
        run_dir: str | Path,
        callbacks: Iterable[Callback] = (),
        model: torch.nn.Module | None = None,
    ):
        self.config = config
        self.run_dir = Path(run_dir)
        self.callbacks = CallbackList(callbacks)
        train = config.train
        # Under torchrun: joins the process group; a CUDA device becomes this rank's GPU (LOCAL_RANK).
        self.dist, self.device = distributed.setup(resolve_device(train.device))
        if train.unroll and self.dist.distributed:
            raise ValueError(
                "train.unroll runs several forward passes before one backward, which DistributedDataParallel "
                "does not synchronise; run it in one process (python -m trm_act.train), or drop --unroll."
            )
        self.threads = distributed.resolve_threads(train.threads, self.dist.local_world_size)
        distributed.set_threads(self.threads)
        torch.manual_seed(
            train.seed
        )  # identical initial weights on every rank (DDP also broadcasts rank 0's)
        if train.batch_size < WARN_BATCH_SIZE:  # TrainConfig refuses the hopeless sizes
            warnings.warn(
                f"--batch-size {train.batch_size} is below {WARN_BATCH_SIZE}, the number of strategies: "
                "each step's gradient sees fewer labels than classes and learning is noisy; use >= 32.",
                UserWarning,
                stacklevel=2,
            )

        # Wall time per phase of this process's run: the data pipeline's phases (parse, features, labels) as the
        # envs build, then training, evaluation and writing; written to timings.json and printed by summary().
        self.timings = PhaseTimes()
        self._started = time.perf_counter()
        train_env = dataclasses.replace(config.env, split="train", stride=config.train_stride)
        # A belief is revised every train_stride bars, the cadence evaluation walks at (a fresh carry trains on
        # every bar unless --train-stride says otherwise). On a fixed grid of that stride a model would see only
        # 1 / train_stride of the training windows (and overfit them), so its env runs on the 1-bar grid and a
        # slot hops train_stride decisions per commit: every episode walks the stride from its own random phase.
        self.hop = config.train_stride
        if self.hop > 1:
            length = config.env.episode_length
            if length is None:  # whole-split episodes all start at the split's first bar: one phase only
                raise ValueError(
                    f"--env.episode-length None with a {self.hop}-bar train stride (--carry belief or "
                    "--train-stride): every episode would start at the first bar of the split, so training would "
                    "see one phase of the stride, every slot in lockstep; set --env.episode-length (the belief "
                    "recipes use 256)."
                )
            train_env = dataclasses.replace(train_env, stride=1, episode_length=(length - 1) * self.hop + 1)
        with self.timings.recording():
            self.env = TradeReplayVectorEnv(train.batch_size, config=train_env)
            self.eval_replay = build_replay(config.env)  # evaluation picks the test split itself

        self.model_config = config.model  # window / n_features / num_classes derived by ExperimentConfig
        # `model`: any module with RecurrentTRM's step interface (the learning benchmark's MLP control).
        self.model = (RecurrentTRM(self.model_config) if model is None else model).to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if train.ema_decay > 0 else None
        # What train_step calls: DDP (gradients all-reduced in backward) under torchrun; ``self.model``
        # stays the bare module, so checkpoints and evaluation see the same keys either way.
        self.forward_model: torch.nn.Module = (
            distributed.wrap(self.model, self.device) if self.dist.distributed else self.model
        )
        # The training step only: evaluation runs the EMA copy eagerly at shapes that change with the data.
        self.compiled, self.compile_reason = compile_decision(
            train.compile, train.steps, self.device, self.dist.distributed
        )
        # The look-ahead of "priced" and "gain" halting: the model's, never the DDP wrapper's (a forward without
        # gradient has nothing to all-reduce), on the bars the answer reads, compiled when the step is.
        self.answer_fn = answer_of(self.model)
        if self.compiled:
            self.forward_model = torch.compile(self.forward_model, dynamic=False)
            self.answer_fn = torch.compile(self.answer_fn, dynamic=False)

        class_weights = None
        if config.loss.class_weights:
            labels = torch.as_tensor(self.env.split_labels().copy())
            class_weights = class_weights_from_labels(labels, len(STRATEGIES))
        # The trainer builds the loss inputs itself, so TRMLoss's per-call checks (host syncs) are off.
        self.loss_fn = TRMLoss.from_config(
            config.loss, class_weights, num_classes=len(STRATEGIES), validate=False
        ).to(self.device)

        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, train.lr, train.halt_lr_scale),
            weight_decay=train.weight_decay,
            betas=(0.9, 0.95),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(train.warmup_steps, train.steps)
        )
        # Halting exploration and env starts differ by rank; rank zero's equal a single-process run's.
        self.generator = torch.Generator(device=self.device).manual_seed(train.seed + self.dist.rank)

        self.step = 0
        self.obs, self.info = self.env.reset(
            seed=distributed.rank_seed(train.seed, self.dist.rank, train.batch_size)
        )
        self.state = ACTState.initial(
            self.model,
            train.batch_size,
            device=self.device,
            exploration_prob=self.model_config.halt_exploration_prob,
            generator=self.generator,
        )
        self.window = WindowStats(self.model_config.max_steps)
        self.last_report: EvalReport | None = None
        self.checkpoint_step: int | None = None  # step of the last checkpoint written or loaded
        self.history: list[dict[str, Any]] = []  # config changes made on resume
        self.stop_signal: int | None = None  # the signal that stopped the last fit, if any
        self.status: str | None = None  # how the last fit ended: completed, stopped, interrupted, ...
        self._last_loss: torch.Tensor | None = None

    # ------------------------------------------------------------------ one iteration

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.train.bf16)

    def train_step(self) -> Logs:
        """One reasoning step on every slot, one optimizer step, then commit the halted slots.

        No device-to-host sync except the halted mask and actions the envs need, and, every
        ``log_every`` steps, the scalars that are logged (nanoGPT's rule: .item() only when logging).
        """
        if self.config.train.unroll:
            return self._unrolled_step()
        max_steps, exploration_prob = self._depth_now()
        obs, labels, strategy_pnl = self._batch()
        steps_done = self.state.steps + 1  # (B,) reasoning steps completed after this one

        self.forward_model.train()
        with self._autocast():
            out, next_state, halted = act_step(
                self.forward_model,
                obs,
                self.state,
                max_steps=max_steps,
                exploration_prob=exploration_prob,
                generator=self.generator,
            )
        if self.config.train.later_step_weight != 1:
            out = weigh_rows(out, self.state.steps > 0, self.config.train.later_step_weight)
        next_logits = None
        if self.loss_fn.looks_ahead:
            with self._autocast():
                next_logits = look_ahead(self.answer_fn, obs, out, steps_done >= max_steps)  # (B, C)
        parts, actions, chosen_pnl = supervise_step(self.loss_fn, out, labels, strategy_pnl, next_logits)
        self._last_loss = parts["total_loss"].detach()

        grad_norm = self._optimize(parts["total_loss"])
        self.state = next_state

        # The envs step on the CPU, so the halted mask and the actions cross every step: inherent sync.
        halted_np = halted.cpu().numpy()  # (B,) bool
        actions_np = actions.cpu().numpy()
        steps_np = steps_done.cpu().numpy()
        self.window.record_step(halted_np, steps_np, out.halt_logits, parts["halt_target_rate"])  # stays on device
        if halted_np.any():
            correct = actions_np[halted_np] == self.info["label"][halted_np]  # before the env moves the slots on
            rewards, truncated = self._commit(actions_np, halted_np)
            # The env's reward: realized PnL of the commit.
            self.window.record_commits(steps_np[halted_np], correct, rewards[halted_np])
            if getattr(self.model, "has_belief", False) and truncated.any():  # a new episode starts with no belief
                self._reset_beliefs(truncated)

        # Tensors, converted only when logged; the detached loss, so no autograd graph outlives the step.
        return self._logs_if_due(parts, grad_norm, chosen_pnl)

    def _depth_now(self) -> tuple[int, float]:
        """This optimizer step's cap on reasoning steps and the exploration probability of the decisions it starts:
        1 and 0 during the depth warm-up (``train.depth_warmup_steps``), the model's own after it."""
        if self.step < self.config.train.depth_warmup_steps:
            return 1, 0.0
        return self.model_config.max_steps, self.model_config.halt_exploration_prob

    def _commit(self, actions: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The slots in ``mask`` (B,) commit ``actions`` (B,) and move ``self.hop`` decisions on (a slot whose
        episode ends on the way starts its next one and stops there). Returns the rewards (B,) of the committed
        decisions (their realized PnL) and which slots started a new episode (B,)."""
        self.obs, rewards, _, truncated, self.info = self.env.step_masked(actions, mask)
        new_episode = truncated.copy()  # (B,)
        for _ in range(self.hop - 1):
            mask = mask & ~new_episode  # (B,)
            if not mask.any():
                break
            self.obs, _, _, truncated, self.info = self.env.step_masked(actions, mask)
            new_episode |= truncated
        return rewards, new_episode

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The slots' current decisions on the device: obs (B, W, F), labels (B,), supervision PnL (B, 8)."""
        obs = torch.from_numpy(self.obs).to(self.device)  # (B, W, F)
        labels = torch.from_numpy(self.info["label"]).to(self.device)  # (B,)
        # Supervision speaks about the labels' horizon: with env.label_horizon set, the profit weight and the
        # expected-PnL term use info["label_pnl"], like the labels; rewards stay the trades' realized PnL.
        supervision = self.info.get("label_pnl", self.info["strategy_pnl"])
        return obs, labels, torch.from_numpy(supervision).to(self.device, torch.float32)  # (B, 8)

    def _optimize(self, loss: torch.Tensor) -> torch.Tensor | None:
        """Backward, clip, one optimizer and scheduler step, the EMA update; returns the gradient norm (if clipped)."""
        train = self.config.train
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), train.grad_clip)
            if train.grad_clip > 0
            else None
        )
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self._update_ema(train.ema_decay)
        self.step += 1
        self.window.optimizer_steps += 1
        return grad_norm

    def _unrolled_step(self) -> Logs:
        """``train.unroll``: every reasoning step of the slots' decisions, one optimizer step, every slot commits.

        Each decision commits the answer of the step it first halted at (its last step if none did), as
        evaluation would; the iterations are recorded in the log window like the continual step's. In belief
        mode each slot walks ``train.bptt_decisions`` consecutive decisions of its episode, each starting from
        the belief the previous one left (graph included), and keeps the last belief, detached, for the next
        optimizer step.
        """
        has_belief = getattr(self.model, "has_belief", False)
        belief = self.state.carry.belief if has_belief else None  # (B, D) detached: where the last step left off
        decisions = self.config.train.bptt_decisions
        self.forward_model.train()
        total, sums, chosen = 0.0, {}, []
        for _ in range(decisions):
            obs, labels, supervision_pnl = self._batch()
            trade_pnl = torch.from_numpy(self.info["strategy_pnl"]).to(self.device, torch.float32)  # (B, 8)
            with self._autocast():
                result = deep_supervision(
                    self.forward_model,
                    self.loss_fn,
                    obs,
                    labels,
                    trade_pnl,
                    supervision_pnl,
                    generator=self.generator,
                    stats=self.window,
                    belief=belief,
                    answer_fn=self.answer_fn,
                )
            total = total + result.loss
            for name, tag in LOSS_TAGS.items():
                if tag in result.metrics:
                    sums[name] = sums.get(name, 0.0) + result.metrics[tag] / decisions
            actions = result.task_logits.argmax(dim=-1)  # (B,)
            chosen.append(supervision_pnl.gather(1, actions[:, None]).squeeze(1))  # (B,)
            _, truncated = self._commit(actions.cpu().numpy(), np.ones(len(actions), dtype=bool))
            if has_belief:
                belief = result.belief
                if truncated.any():  # a new episode starts with no belief
                    initial = self.model.init_carry(len(truncated), device=self.device).belief  # (B, D)
                    belief = torch.where(torch.from_numpy(truncated).to(self.device)[:, None], initial, belief)
        loss = total / decisions
        self._last_loss = loss.detach()
        grad_norm = self._optimize(loss)
        if has_belief:
            self.state = dataclasses.replace(self.state, carry=self.state.carry.with_belief(belief.detach()))
        return self._logs_if_due(sums, grad_norm, torch.cat(chosen))

    def _logs_if_due(
        self, parts: dict[str, Any], grad_norm: torch.Tensor | None, chosen_pnl: torch.Tensor
    ) -> Logs:
        """Keep this step's loss parts (with the detached total) for logging; the logs on a log step, else none."""
        train = self.config.train
        self._last_parts = (parts | {"total_loss": self._last_loss}, grad_norm, chosen_pnl)
        if self.step % train.log_every == 0 or self.step == train.steps:
            return self.step_logs(*self._last_parts)
        return Logs()

    def _reset_beliefs(self, new_episode: np.ndarray) -> None:
        """Slots whose env started a new episode (another instrument, or a jump in time) forget their belief."""
        mask = torch.from_numpy(new_episode).to(self.device)  # (B,)
        fresh = self.model.init_carry(len(new_episode), device=self.device)
        self.state = dataclasses.replace(self.state, carry=self.state.carry.reset(mask, fresh))

    def step_logs(
        self, parts: dict[str, Any], grad_norm: torch.Tensor | None, chosen_pnl: torch.Tensor
    ) -> Logs:
        """Scalars of this step and of the window since the last log step (the one host sync of a log step)."""
        if not torch.isfinite(parts["total_loss"]):
            raise NonFiniteLossError(f"non-finite loss ({parts['total_loss'].item()}) at step {self.step}")
        train = self.config.train
        scalars = loss_tags(parts)
        scalars["train/lr"] = self.scheduler.get_last_lr()[0]
        if grad_norm is not None:
            scalars["train/grad_norm"] = float(grad_norm)
        scalars |= self.window.scalars(train.batch_size)
        histograms = {
            "halt/steps": self.window.steps_histogram(),
            "loss/profit_weight": profit_weight(chosen_pnl, self.loss_fn.pnl_scale).cpu().numpy(),
        }
        self.window.reset()
        return Logs(scalars=scalars, histograms=histograms)

    @torch.no_grad()
    def _update_ema(self, decay: float) -> None:
        ema_params = list(self.ema.parameters())
        torch._foreach_lerp_(ema_params, list(self.model.parameters()), 1.0 - decay)
        for ema_buffer, buffer in zip(self.ema.buffers(), self.model.buffers(), strict=True):
            ema_buffer.copy_(buffer)

    # ------------------------------------------------------------------ loop

    def fit(self) -> EvalReport | None:
        """Train to ``config.train.steps``, then evaluate on the held-out split.

        Owns the run directory while it runs (``trm_act.rundir.owned``). Returns the final report, or
        None when stopped early (a stop signal, see ``stop_signal``, or a callback); a checkpoint is
        written either way. Raises NonFiniteLossError on divergence and RunWriteError when a run file
        cannot be written; both keep the last good checkpoint (``checkpoint_step``).
        """
        train = self.config.train
        status = "completed"
        interrupt = GracefulInterrupt()
        self.stop_signal = None
        with rundir.owned(self.run_dir, new_run=self.checkpoint_step is None):
            try:
                with interrupt.installed():
                    if self.checkpoint_step is None:  # a resumed run's config.json mirrors its checkpoint
                        self._write_json(
                            "config.json", config_record(self.config, self.history, self.runtime())
                        )
                    self.callbacks.on_train_start(
                        RunInfo(
                            log_dir=self.run_dir,
                            total_steps=train.steps,
                            start_step=self.step,
                            hparams=self.hparams(),
                        )
                    )
                    # Every rank must take the same steps (each one is a DDP all-reduce), so a stop seen by
                    # any rank is agreed on by all: one int all-reduce per step (DDP already syncs every step).
                    stop = runstate.agree_stop(interrupt, True, self.device)
                    while self.step < train.steps and not stop:
                        with self.timings.phase(TRAINING):
                            logs = self.train_step()
                        if interrupt.requested and not logs.scalars:  # the last step before a stop is logged
                            logs = self.step_logs(*self._last_parts)
                        with self.timings.phase(WRITING):  # TensorBoard scalars, the progress bar
                            keep_going = self.callbacks.on_step_end(self.step, logs)
                        stop = runstate.agree_stop(interrupt, keep_going, self.device)
                        if stop:
                            break
                        if self.step % train.checkpoint_every == 0 and self.step < train.steps:
                            self.save()  # the end saves below
                        every = train.eval_interval
                        if every and self.step % every == 0 and self.step < train.steps:
                            self.evaluate()
                    if stop >= SIGNAL_STOP:
                        status, self.stop_signal = "interrupted", stop - SIGNAL_STOP
                    elif self.step < train.steps:
                        status = "stopped"
                    self.save()
                    distributed.write_weights_digest(self.model, self.dist)
                if status == "completed":
                    self.last_report = self.evaluate(final=True)
                    self._write_json("timings.json", self.timing_record())
            except BaseException as exc:
                status = "diverged" if isinstance(exc, NonFiniteLossError) else "failed"
                if isinstance(exc, KeyboardInterrupt):
                    status = "interrupted"
                self.callbacks.on_exception(exc)
                raise
            finally:
                self.status = status
                self.callbacks.on_train_end(
                    {"status": status, "step": self.step, "run_dir": str(self.run_dir)}
                )
        return self.last_report if status == "completed" else None

    def evaluate(self, final: bool = False) -> EvalReport | None:
        """Held-out evaluation with adaptive halting (EMA weights when enabled); logs ``eval/*``.

        A periodic evaluation (``final=False``) scores a fixed, seeded sample of ``train.eval_sample`` held-out
        decisions (the same ones every time, and in a resumed run: see :func:`trm_act.evaluation.sample_walk`);
        the final one (``final=True``) scores them all and writes ``metrics.json``. Under torchrun it runs on
        rank zero while the other ranks wait at a barrier (they return None).
        """
        report = self._evaluate(final) if self.dist.is_zero else None
        distributed.barrier(self.dist)
        return report

    def _evaluate(self, final: bool) -> EvalReport:
        model = self.ema if self.ema is not None else self.model
        train = self.config.train
        with self.timings.phase(EVALUATION):
            report = evaluate(
                model,
                self.eval_replay,
                max_steps=self.model_config.max_steps,
                device=self.device,
                batch_size=train.eval_batch_size,
                bf16=train.bf16,
                seed=train.seed,
                burn_in=train.eval_burn_in,
                sample=None if final else train.eval_sample,
            )
        with self.timings.phase(WRITING):
            logs = Logs(scalars=report.scalars(), histograms={"eval/steps": report.steps})
            logs.images = eval_images(
                report.equity, report.steps, self.model_config.max_steps, report.steps_by_regime, self.step
            )
            if final:
                logs.curves = report.equity
                self._write_json("metrics.json", report.metrics)
            self.callbacks.on_eval_end(self.step, logs)
        return report

    def _write_json(self, name: str, data: Any) -> None:
        if not self.dist.is_zero:  # only rank zero writes the run directory
            return
        path = self.run_dir / name
        try:
            with self.timings.phase(WRITING):
                write_json(path, data)
        except OSError as exc:
            raise RunWriteError(path, exc) from None

    def summary(self) -> str:
        """The held-out results (``format_summary``) and the wall time of each phase of this process's run."""
        if self.last_report is None:
            return "no evaluation yet"
        return f"{format_summary(self.last_report.metrics)}\n{self.timings.format()}"

    def timing_record(self) -> dict[str, Any]:
        """What ``timings.json`` holds: wall seconds per phase of this process's run (see
        :mod:`trm_act.envs.timing`; a resumed run records its own process only) and ``wall_s``, the seconds
        since the trainer was created; the difference is set-up that no phase names (model, callbacks)."""
        return {"phases": self.timings.as_dict(), "wall_s": time.perf_counter() - self._started}

    def hparams(self) -> dict[str, Any]:
        flat: dict[str, Any] = {}
        for section, values in self.config.to_dict().items():
            for key, value in values.items():
                if isinstance(value, dict):
                    flat |= {f"{section}.{key}.{k}": v for k, v in value.items()}
                else:
                    flat[f"{section}.{key}"] = value
        return flat | {f"runtime.{key}": value for key, value in self.runtime().items()}

    def runtime(self) -> dict[str, int | bool]:
        """How this run is launched (recorded in ``config.json`` and the hparams; not a setting)."""
        return {"world_size": self.dist.world_size, "threads": self.threads, "compiled": self.compiled}

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, optimizer, RNGs, env cursors, ACT carry.

        Under torchrun every rank must call it (it gathers the other ranks' RANK_KEYS to rank zero, under
        "ranks"); the result is complete on rank zero only. See :mod:`trm_act.runstate`.
        """
        return runstate.state_dict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict``; raises CheckpointError when it was written by another world size."""
        runstate.load_state_dict(self, state)

    def save(self) -> Path:
        """Atomically write the checkpoint, then ``config.json``; never keep diverged weights.

        Raises NonFiniteLossError when the last loss or a weight is non-finite, or a weight is beyond
        MAX_ABS_WEIGHT (the previous checkpoint stays), RunWriteError when the disk refuses the write.
        """
        return runstate.save(self)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        callbacks: Iterable[Callback] = (),
        overrides: dict[str, Any] | None = None,
    ) -> Trainer:
        """Rebuild a trainer from a run directory or checkpoint file, ready to continue ``fit``.

        Verifies the checkpoint (content hash, keys, model shapes) and the ``config.json`` beside it;
        any problem raises CheckpointError (a ValueError) with one line. ``overrides``
        (``{"train": {"lr": ...}}``, see ``trm_act.resume.RESUMABLE``) change the optimisation and are
        recorded in the run's config history.
        """
        return runstate.from_checkpoint(cls, path, callbacks, overrides)

    @property
    def finished(self) -> bool:
        """True when the run has reached ``config.train.steps``."""
        return self.step >= self.config.train.steps
