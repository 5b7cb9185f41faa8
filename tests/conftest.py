"""Suite-wide setup and the fixtures several test modules share (plain helpers are in ``helpers.py``)."""

from __future__ import annotations

import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import tiny_runs


def pytest_collection_modifyitems(config, items):
    """Files with more slow tests run first (each file keeps its order): under pytest-xdist's ``--dist loadfile``
    (pyproject.toml) a long file that started last would run alone at the end and set the wall time."""
    slow: dict[Path, int] = {}
    for item in items:
        slow[item.path] = slow.get(item.path, 0) + (item.get_closest_marker("slow") is not None)
    items.sort(key=lambda item: -slow[item.path])  # a stable sort


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models: one intra-op thread is faster, and 2 threads thrash when the 2 cores are shared. Set for
    every test, so that one which changes it (a benchmark, a framework) cannot slow down the tests after it."""
    torch.set_num_threads(1)


@pytest.fixture
def call_main(capsys, monkeypatch) -> Callable[..., subprocess.CompletedProcess]:
    """Run a command's ``main(argv)`` in this process, as ``python -m`` would run it: returns what
    ``subprocess.run`` returns (``returncode``, ``stdout``, ``stderr``), a SystemExit (argparse, --help) giving
    its code. ``cwd`` changes directory for the test. For tests whose subject is not the process boundary."""
    # trm_act.train.main sets a one-line warning format for the process; the test puts it back.
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)

    def call(
        main: Callable[[list[str]], int], *argv: str, cwd: Path | None = None
    ) -> subprocess.CompletedProcess:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()
        try:
            status = main(list(argv))
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        out = capsys.readouterr()
        return subprocess.CompletedProcess(list(argv), status, out.out, out.err)

    return call


@pytest.fixture
def train_cli(call_main) -> Callable[..., subprocess.CompletedProcess]:
    """``python -m trm_act.train --env trade-replay <argv>``, run in process (see ``call_main``)."""
    from trm_act.train import main

    return lambda *argv, cwd=None: call_main(main, "--env", "trade-replay", *argv, cwd=cwd)


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny trained run of each carry (30 steps), shared by the tests that only read them."""
    return tiny_runs(tmp_path_factory)
