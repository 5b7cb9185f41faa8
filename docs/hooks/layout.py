"""MkDocs hook: let mkdocstrings read the package laid out as it installs.

``trm_act.envs`` and ``trm_act.callbacks`` live in the repository's top-level ``envs/`` and ``callbacks/``
(``[tool.setuptools.package-dir]`` in pyproject.toml). Griffe, which reads the docstrings from the source
without importing it, looks for a subpackage inside its parent's folder, so it would not find them. This hook
copies the three folders into a temporary ``trm_act/`` tree for the duration of the build and points the
Python handler at it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from mkdocs.plugins import event_priority

_STAGED: list[tempfile.TemporaryDirectory] = []
_LAYOUT = {"trm_act": "trm_act", "envs": "trm_act/envs", "callbacks": "trm_act/callbacks"}


@event_priority(100)  # before mkdocstrings, which builds its Python handler from this config
def on_config(config):
    root = Path(config.config_file_path).resolve().parent
    staged = tempfile.TemporaryDirectory(prefix="trm-act-docs-")
    _STAGED.append(staged)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "data", "results")
    for source, target in _LAYOUT.items():
        shutil.copytree(root / source, Path(staged.name) / target, ignore=ignore)
    config.plugins["mkdocstrings"].config.handlers.setdefault("python", {})["paths"] = [staged.name]
    return config


def _clean(*_args, **_kwargs) -> None:
    while _STAGED:
        _STAGED.pop().cleanup()


on_post_build = _clean
on_build_error = _clean
