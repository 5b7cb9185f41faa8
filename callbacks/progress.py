"""ProgressCallback: a tqdm bar with loss, halt rate and PnL."""

from __future__ import annotations

from typing import Any

from .base import Callback, Logs, RunInfo

POSTFIX = {"loss/total": "loss", "halt/rate": "halt", "halt/mean_steps": "steps", "train/pnl": "pnl"}


class ProgressCallback(Callback):
    """Progress bar over optimizer steps; postfix refreshed every ``every`` steps."""

    def __init__(self, every: int = 10, disable: bool = False):
        self.every = every
        self.disable = disable
        self.bar = None

    def on_train_start(self, run: RunInfo) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=run.total_steps,
            initial=run.start_step,
            desc="train",
            unit="step",
            disable=self.disable,
            dynamic_ncols=True,
        )

    def on_step_end(self, step: int, logs: Logs) -> None:
        if self.bar is None:
            return
        self.bar.update(step - self.bar.n)
        if step % self.every == 0:
            shown = {
                short: f"{logs.scalars[tag]:.4g}" for tag, short in POSTFIX.items() if tag in logs.scalars
            }
            self.bar.set_postfix(shown, refresh=False)

    def on_train_end(self, summary: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
