"""Stop signals: Ctrl-C (SIGINT), SIGTERM (SLURM, Kubernetes, systemd, ``docker stop``) and SIGHUP.

During training the first signal asks the loop to stop after the current step (it then writes a
checkpoint and flushes its logs); a second one interrupts at once. Outside training (start-up,
final evaluation) a signal interrupts at once. Either way the process can exit with the shell's
convention for death by a signal, ``128 + signal number`` (130 SIGINT, 143 SIGTERM, 129 SIGHUP).

Under torchrun a signal sent to the whole process group (SLURM's ``scancel``, Kubernetes, Ctrl-C in a
terminal) reaches each worker twice: directly, and a few milliseconds later from torchrun's agent, which
forwards every stop signal it receives to its workers. That second copy is no second request, so a worker
started by torchrun absorbs one repeat of the same signal within ``ECHO_WINDOW_S`` of the first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


# The copy torchrun forwards lands milliseconds after the group's own (measured: the run lost its stop
# checkpoint with 5-20 ms between them); 2 s leaves room for a loaded node and is still short for a person
# who presses Ctrl-C again because the stop takes too long.
ECHO_WINDOW_S = 2.0
# Set by torchrun's agent (torch.distributed.elastic) in every worker's environment; the agent is what
# forwards signals. RANK / WORLD_SIZE alone would also match launchers that forward nothing.
FORWARDING_LAUNCHER_ENV = "TORCHELASTIC_RUN_ID"


def launcher_forwards_signals() -> bool:
    """True in a worker started by torchrun's agent, which forwards the stop signals it receives."""
    return FORWARDING_LAUNCHER_ENV in os.environ


class Interrupted(KeyboardInterrupt):
    """Raised at once by a stop signal; a KeyboardInterrupt, so code that handles Ctrl-C handles it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(signum: int) -> int:
    """The shell's exit status for a process ended by ``signum``."""
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


@contextlib.contextmanager
def _handlers(handler: Any) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def immediate() -> Iterator[None]:
    """Within the block every stop signal raises ``Interrupted(signum)`` where the program is."""

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    with _handlers(handler):
        yield


class GracefulInterrupt:
    """First stop signal sets ``requested`` (and ``signum``); a second one raises ``Interrupted``.

    ``echo_window_s``: one repeat of the first signal within this many seconds of it is taken for the
    launcher's forwarded copy and absorbed (counted in ``echoes``); a later repeat, a third one or another
    signal still raises. None: ``ECHO_WINDOW_S`` under torchrun (see the module docstring), else 0 (every
    second signal raises). ``clock`` is for tests.
    """

    def __init__(
        self, echo_window_s: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if echo_window_s is None:
            echo_window_s = ECHO_WINDOW_S if launcher_forwards_signals() else 0.0
        if (
            isinstance(echo_window_s, bool)
            or not isinstance(echo_window_s, (int, float))
            or echo_window_s < 0
        ):
            raise ValueError(
                f"echo_window_s must be seconds >= 0 (0: no repeat is absorbed) or None; got {echo_window_s!r}."
            )
        self.echo_window_s = float(echo_window_s)
        self.clock = clock
        self.requested = False
        self.signum: int | None = None
        self.echoes = 0
        self._first_at = 0.0

    def handle(self, signum: int) -> None:
        """What the installed handler does with ``signum``: request a stop, absorb the echo, or raise."""
        if not self.requested:
            self.requested, self.signum, self._first_at = True, signum, self.clock()
        elif self._is_echo(signum):
            self.echoes += 1
        else:
            raise Interrupted(signum)

    def _is_echo(self, signum: int) -> bool:
        # The launcher forwards each signal once, so only one repeat can be its copy.
        recent = self.clock() - self._first_at <= self.echo_window_s
        return self.echo_window_s > 0 and self.echoes == 0 and signum == self.signum and recent

    @contextlib.contextmanager
    def installed(self) -> Iterator[GracefulInterrupt]:
        def handler(signum: int, frame: Any) -> None:
            self.handle(signum)

        with _handlers(handler):
            yield self
