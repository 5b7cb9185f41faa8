"""What the command-line tools (train, walkforward, predict) share."""

from __future__ import annotations

import os
import sys


def report_user_mistake(exc: ValueError) -> None:
    """Print a user's mistake as one ``error: ...`` line on stderr; with TRM_ACT_TRACEBACK set, raise it instead.

    The caller returns its usage exit status (2) afterwards.
    """
    if os.environ.get("TRM_ACT_TRACEBACK"):
        raise exc
    print(f"error: {exc}", file=sys.stderr)
