"""One live run per run directory.

A run takes an exclusive ``flock`` on ``<run_dir>/run.lock`` before it writes anything there and
holds it until it ends. The kernel drops the lock when the process dies (even on SIGKILL), so a
lock is never stale; the pid and host written into the file only name the holder in the refusal.
A new run is also refused in a directory that already holds a run's files (a checkpoint, or
events / metrics from a run that stopped before its first checkpoint): appending to them would mix
two runs in one TensorBoard curve.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from trm_act.checkpoint import LATEST
from trm_act.files import remove_stale_temp_files

LOCK_FILE = "run.lock"


class RunDirError(ValueError):
    """The run directory is in use or holds another run's files; the message is one line."""


# Locks this process holds, by resolved directory, with a nesting count: the CLI takes the lock
# before loading a checkpoint and ``Trainer.fit`` takes it again (a second flock on a new file
# descriptor of the same file would conflict with the first, even within one process).
_held: dict[Path, list] = {}


def check_new_run_dir(run_dir: str | os.PathLike) -> None:
    """Raise RunDirError when ``run_dir`` already holds files of another run."""
    run_dir = Path(run_dir)
    if (run_dir / LATEST).exists():
        raise RunDirError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir} (in Python: "
            f"Trainer.from_checkpoint({str(run_dir)!r})) or pick another --run-name (another directory)."
        )
    leftovers = sorted(
        path.name
        for pattern in ("events.out.tfevents.*", "metrics.json", "config.json")
        for path in run_dir.glob(pattern)
    )
    if leftovers:
        shown = ", ".join(leftovers[:3]) + (f" and {len(leftovers) - 3} more" if len(leftovers) > 3 else "")
        raise RunDirError(
            f"{run_dir} holds {shown} from an earlier run but no checkpoint, so it cannot be resumed; "
            "delete that directory or pick another --run-name."
        )


def _holder(lock_path: Path) -> str:
    try:
        text = lock_path.read_text().strip()
    except OSError:
        text = ""
    return text or "a process that has not written its pid yet"


@contextlib.contextmanager
def owned(run_dir: str | os.PathLike, *, new_run: bool) -> Iterator[Path]:
    """Hold ``run_dir``'s lock for the duration of the block; creates the directory if needed.

    Args:
        run_dir: the run directory.
        new_run: also refuse a directory that holds another run's files (``check_new_run_dir``).

    Raises RunDirError when another live process holds the lock. Orphaned temp files of a killed
    writer are removed once the lock is held. Re-entrant within one process.
    """
    run_dir = Path(run_dir)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank zero writes the run directory
        yield run_dir
        return
    key = run_dir.resolve()
    if key in _held:
        _held[key][1] += 1
        try:
            yield run_dir
        finally:
            _held[key][1] -= 1
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_path = run_dir / LOCK_FILE
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirError(
            f"{run_dir} is in use by another run ({_holder(lock_path)}); wait for it to end, "
            "or pick another --run-name."
        ) from None
    _held[key] = [fd, 1]
    try:
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}, since {started}\n".encode())
        if new_run:
            check_new_run_dir(run_dir)
        remove_stale_temp_files(run_dir)
        yield run_dir
    finally:
        del _held[key]
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # the file stays (unlinking it would race a waiting opener)
        os.close(fd)  # releases the flock
