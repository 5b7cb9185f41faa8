"""Held-out halting: training decisions the answer is never fitted to, on which the halt head learns.

A halt target that compares a step with the next ("gain", "priced") asks whether one more reasoning step pays.
Measured on the decisions the model is being fitted to, it does pay: a later step fits the training data a
little better, so halting learns to think on whatever the data, most of all on a short, noisy series that
training passes over hundreds of times (an hourly FX series ran 3.3-4.0 of 4 steps). ``train.halt_holdout``
sets aside blocks of the training split whose decisions supervise the halt head only: their task and reward
losses are dropped, so the gain of a step there is the gain on decisions the answer has not seen, which is what
halting meets at test time.

Blocks, not single decisions: neighbouring decisions share all but one bar of their windows and most of their
label horizons, so a held-out decision between fitted ones would be fitted in all but name. A decision whose
observation window or trade/label horizon reaches into a block of the other kind supervises neither (purging,
as in López de Prado's purged cross-validation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trm_act.envs import TradeReplayConfig

__all__ = ["MIN_BLOCK", "HaltHoldout"]

MIN_BLOCK = 512
"""Bars per block at least; a block also spans at least 4 x (window + horizon) bars, so purging drops a small
share of its decisions."""


@dataclass(frozen=True)
class HaltHoldout:
    """Which training decisions fit the answer and which teach the halt head (:meth:`roles`).

    ``held`` (n_blocks,) marks the held-out blocks of ``block`` bars, bar t in block t // block; a decision at
    bar t reads bars t - reach_back .. t + reach_ahead (its window, then its trade and label horizons).
    """

    block: int
    reach_back: int
    reach_ahead: int
    held: np.ndarray

    @classmethod
    def build(cls, fraction: float, env: TradeReplayConfig, bars: np.ndarray, seed: int) -> HaltHoldout:
        """Hold out ``round(fraction x blocks)`` of the blocks that hold a training decision (at least one, and
        at least one left to fit), drawn with ``seed``; ``bars`` (N,) are the training decisions' bars."""
        reach_back = env.window - 1
        reach_ahead = max(env.horizon, env.effective_label_horizon)
        block = max(MIN_BLOCK, 4 * (reach_back + reach_ahead + 1))
        used = np.unique(bars // block)  # blocks holding a training decision
        if len(used) < 2:
            raise ValueError(
                f"--halt-holdout {fraction}: the training decisions lie in one block of {block} bars; held-out "
                "halting needs two (one to fit, one to hold out). Use more data or --halt-holdout 0."
            )
        count = min(max(1, round(fraction * len(used))), len(used) - 1)
        held = np.zeros(int(bars.max()) // block + 2, dtype=bool)  # one spare block: a reach past the last bar
        held[np.random.default_rng(seed).permutation(used)[:count]] = True
        return cls(block, reach_back, reach_ahead, held)

    def roles(self, bars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(fit, halt) (N,) bool for decisions at ``bars`` (N,): fit rows train the answer, halt rows the halt
        head; a row whose reach crosses into a block of the other kind is neither. A span is shorter than a
        block, so it touches at most two."""
        last = len(self.held) - 1
        first_block = np.clip((bars - self.reach_back) // self.block, 0, last)  # (N,)
        last_block = np.clip((bars + self.reach_ahead) // self.block, 0, last)  # (N,)
        held, pure = self.held[first_block], self.held[first_block] == self.held[last_block]  # (N,), (N,)
        return pure & ~held, pure & held
