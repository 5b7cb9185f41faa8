"""Wall time per phase of a run, so that a user sees where a long run on big data waits.

The data pipeline marks its phases with :func:`phase` (parsing and validating the bars, computing features
and strategy positions, computing trade PnL and labels); the trainer adds training, evaluation and writing.
A phase counts only while a :class:`PhaseTimes` records (``with times.recording(): ...``), so library calls
outside a run cost nothing, and a cached build costs nothing either (it is not run again).

Phases are exclusive: time spent in a phase opened inside another one counts to the inner phase only, so the
phases of one recording add up to at most its wall time.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar

PARSE = "parse and validate"
"""Reading and validating the bars (for the synthetic market: generating them)."""
FEATURES = "features and strategies"
"""Per-bar features and every strategy's positions."""
LABELS = "labels"
"""Each decision's strategy PnL over the trade horizon and the label horizon, and the labels."""
TRAINING = "training"
"""Optimizer steps (the model, the loss, the env steps)."""
EVALUATION = "evaluation"
"""Held-out evaluations (model inference and scoring), periodic and final."""
WRITING = "writing"
"""Checkpoints, JSON files, TensorBoard events and evaluation charts."""
PHASES: tuple[str, ...] = (PARSE, FEATURES, LABELS, TRAINING, EVALUATION, WRITING)
"""The phases in the order a run goes through them (the order of tables and ``timings.json``)."""

_RECORDING: ContextVar[PhaseTimes | None] = ContextVar("trm_act_phase_times", default=None)


class PhaseTimes:
    """Wall seconds per phase, accumulated over every time the phase is entered.

    ``clock`` returns seconds (``time.perf_counter`` by default; tests pass a fake one).
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.seconds: dict[str, float] = {}
        self._clock = clock
        self._open: list[tuple[str, float]] = []  # (phase, when it last resumed), innermost last

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Count the wall time of the block to ``name`` (and not to the phase around it)."""
        now = self._clock()
        if self._open:  # pause the outer phase
            outer, since = self._open[-1]
            self._add(outer, now - since)
        self._open.append((name, now))
        try:
            yield
        finally:
            now = self._clock()
            _, since = self._open.pop()
            self._add(name, now - since)
            if self._open:  # the outer phase resumes now
                self._open[-1] = (self._open[-1][0], now)

    @contextlib.contextmanager
    def recording(self) -> Iterator[PhaseTimes]:
        """Make :func:`phase` (as the data pipeline calls it) count to these times within the block."""
        token = _RECORDING.set(self)
        try:
            yield self
        finally:
            _RECORDING.reset(token)

    def _add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def as_dict(self) -> dict[str, float]:
        """``{phase: seconds}`` with every phase of :data:`PHASES` (0.0 when not entered), in that order, then
        any other phase."""
        out = {name: self.seconds.get(name, 0.0) for name in PHASES}
        return out | {name: s for name, s in self.seconds.items() if name not in out}

    def format(self) -> str:
        """One line, e.g. ``phases: parse and validate 1.2 s, features and strategies 1.6 s, ...``."""
        return "phases: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.as_dict().items())


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Count the block to ``name`` in the :class:`PhaseTimes` recording now, if any (else do nothing)."""
    times = _RECORDING.get()
    if times is None:
        yield
        return
    with times.phase(name):
        yield
