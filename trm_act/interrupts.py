"""Stop signals: Ctrl-C (SIGINT), SIGTERM (SLURM, Kubernetes, systemd, ``docker stop``) and SIGHUP.

During training the first signal asks the loop to stop after the current step (it then writes a
checkpoint and flushes its logs); a second one interrupts at once. Outside training (start-up,
final evaluation) a signal interrupts at once. Either way the process can exit with the shell's
convention for death by a signal, ``128 + signal number`` (130 SIGINT, 143 SIGTERM, 129 SIGHUP).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


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
    """First stop signal sets ``requested`` (and ``signum``); a second one raises ``Interrupted``."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[GracefulInterrupt]:
        def handler(signum: int, frame: Any) -> None:
            if self.requested:
                raise Interrupted(signum)
            self.requested, self.signum = True, signum

        with _handlers(handler):
            yield self
