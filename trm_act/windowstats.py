"""The trainer's log window: the supervision tags of the iterations between two log steps, and throughput.

The ``halt/*`` and ``train/*`` tags are :class:`trm_act.supervision.SupervisionStats`' (one definition for the
trainer and the adapters); the window adds ``perf/*``, the wall time since it was last reset, and the
``halt/steps`` histogram. A checkpoint keeps the window (``state_dict``), so a resumed run logs what an unbroken
one would.
"""

from __future__ import annotations

import time

import numpy as np

from trm_act.supervision import SupervisionStats


class WindowStats(SupervisionStats):
    """The supervision tags of the iterations between two log steps, plus throughput (``perf/*``)."""

    def reset(self) -> None:
        super().reset()
        self.started = time.perf_counter()
        self.optimizer_steps = 0  # the trainer counts them: with train.unroll each runs max_steps iterations

    def scalars(self, batch_size: int) -> dict[str, float]:  # type: ignore[override]
        """``perf/steps_per_s`` (optimizer steps), ``perf/samples_per_s`` (reasoning steps run on a slot) and
        ``perf/decisions_per_s`` (committed), then the supervision tags."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        out = {
            "perf/steps_per_s": self.optimizer_steps / elapsed,
            "perf/samples_per_s": self.iterations * batch_size / elapsed,
        }
        if self.rewards:
            out["perf/decisions_per_s"] = self.committed / elapsed
        return out | super().scalars()

    def steps_histogram(self) -> np.ndarray:
        """(H,) reasoning steps of every decision the window committed (the ``halt/steps`` histogram)."""
        return np.concatenate(self.halt_steps) if self.halt_steps else np.array([])
