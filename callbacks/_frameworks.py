"""The error an adapter module raises when its training framework is not installed."""

from __future__ import annotations


def missing_framework(adapter: str, framework: str) -> ImportError:
    """The ImportError of ``trm_act.callbacks.<adapter>`` without ``framework``: it names the extra to install.

    Each adapter's extra bears the adapter's name (``pip install "trm-act[hf]"`` for ``trm_act.callbacks.hf``).
    """
    return ImportError(
        f'trm_act.callbacks.{adapter} needs {framework}; install it with: pip install "trm-act[{adapter}]"'
    )
