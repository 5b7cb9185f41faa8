"""Checkpoints that survive crashes and say when they are damaged.

File format (read with ``load_checkpoint``): ``torch.save`` of ``{"format": FORMAT, "sha256": hex,
"payload": uint8 tensor}``, where ``payload`` holds the bytes of ``torch.save(payload_dict)`` and
``sha256`` is their digest. Any change to those bytes (a truncated copy, a bit flip, a hand edit)
makes the digest disagree, so a damaged file is refused instead of loaded with wrong weights.
Both layers load with ``weights_only=True``: a checkpoint can never run code.

Written atomically (temp file + rename, ``trm_act.files.atomic_write``): a kill mid-write leaves
the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

from trm_act.files import atomic_write

LATEST = "checkpoint.pt"
FORMAT = "trm_act.checkpoint/2"

# What torch.load raises on damaged bytes: a truncated zip (RuntimeError), a broken pickle
# (UnpicklingError, EOFError), or garbage that decodes into wrong structures (the others).
_LOAD_ERRORS = (
    RuntimeError,
    EOFError,
    pickle.UnpicklingError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    UnicodeDecodeError,
    struct.error,
    zipfile.BadZipFile,
    OSError,
)


class CheckpointError(ValueError):
    """A checkpoint (or the config.json beside it) that cannot be used; the message is one line."""


def corrupt(path: str | os.PathLike, reason: str) -> CheckpointError:
    return CheckpointError(f"corrupt checkpoint {path}: {_one_line(reason)}")


def _one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else type(text).__name__


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Serialize ``payload``, wrap it with its sha256, and write it atomically to ``path``."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    blob = buffer.getvalue()
    wrapped = {
        "format": FORMAT,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "payload": torch.frombuffer(bytearray(blob), dtype=torch.uint8),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda handle: torch.save(wrapped, handle))


def checkpoint_path(path: str | os.PathLike) -> Path:
    """``path`` itself, or ``path/checkpoint.pt`` for a run directory."""
    path = Path(path)
    return path / LATEST if path.is_dir() else path


def existing_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint file ``path`` names (a file or a run directory); CheckpointError when there is none."""
    file = checkpoint_path(path)
    if not file.is_file():
        raise CheckpointError(
            f"--resume: no checkpoint at {file}; pass a run directory or a checkpoint.pt file "
            "(a run stopped before its first checkpoint cannot be resumed)."
        )
    return file


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and verify a checkpoint (a file, or a run directory holding ``checkpoint.pt``).

    Raises CheckpointError (a ValueError with a one-line message) when the file is missing,
    unreadable, truncated, not a trm_act checkpoint, or its content hash disagrees.
    """
    path = existing_checkpoint(path)
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own text would advise weights_only=False: never for a foreign file
        raise corrupt(path, "not a torch file that loads safely (is it a trm_act checkpoint.pt?)") from None
    except _LOAD_ERRORS as exc:
        raise corrupt(path, f"cannot read it ({type(exc).__name__}: {_one_line(exc)})") from None
    if not isinstance(outer, dict) or outer.get("format") != FORMAT:
        raise corrupt(path, f"not a {FORMAT} file with a content hash (written by another tool or version)")
    blob, digest = outer.get("payload"), outer.get("sha256")
    if not (isinstance(blob, torch.Tensor) and blob.dtype == torch.uint8 and isinstance(digest, str)):
        raise corrupt(path, "its payload or content hash is missing")
    data = blob.numpy().tobytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise corrupt(path, "content hash mismatch (the file was damaged or edited after it was written)")
    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except _LOAD_ERRORS as exc:
        raise corrupt(path, f"cannot read its payload ({type(exc).__name__}: {_one_line(exc)})") from None
    if not isinstance(payload, dict):
        raise corrupt(path, f"its payload is a {type(payload).__name__}, not a dict")
    return payload
