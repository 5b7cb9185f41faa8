"""Writing run files so that a crash, a kill or a full disk never leaves a half-written one.

Every file is written to a temp file in the same directory, fsynced and renamed over the target
(``os.replace`` is atomic on POSIX). Temp files get the mode a plain ``open`` would give
(``0o666`` minus the umask), not ``mkstemp``'s private ``0o600``. Temp files orphaned by a kill
are named ``.<target>.<random>.tmp``; ``remove_stale_temp_files`` deletes them once a new run owns
the directory.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

# Files of a run directory written through ``atomic_write``; only their temp files are cleaned up.
RUN_FILES = ("checkpoint.pt", "config.json", "metrics.json", "timings.json")


def _file_mode() -> int:
    """Mode a new file gets from ``open``: 0o666 minus the process umask (read without changing it for long)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(handle)`` on a temp file next to ``path``, fsync it, then rename it over ``path``.

    On any failure (including KeyboardInterrupt and OSError such as a full disk) the temp file is
    removed and ``path`` keeps its previous content; the exception propagates.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), _file_mode())
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Atomically write strict JSON; a NaN or infinity raises ValueError naming where it sits."""
    bad = next(_non_finite(data, ""), None)
    if bad is not None:
        where, value = bad
        raise ValueError(
            f"{Path(path).name}: {where or 'value'} is {value!r}, which JSON cannot hold; "
            "it comes from non-finite prices or PnL upstream: check the input data."
        )
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    return atomic_write(path, lambda handle: handle.write(text.encode()))


def _non_finite(data: Any, where: str) -> Iterator[tuple[str, float]]:
    if isinstance(data, float) and not math.isfinite(data):
        yield where, data
    elif isinstance(data, dict):
        for key, value in data.items():
            yield from _non_finite(value, f"{where}.{key}" if where else str(key))
    elif isinstance(data, (list, tuple)):
        for index, value in enumerate(data):
            yield from _non_finite(value, f"{where}[{index}]")


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Delete ``.<run file>.*.tmp`` left by a killed writer; call only while owning ``directory``."""
    removed = []
    for name in RUN_FILES:
        for tmp in Path(directory).glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
