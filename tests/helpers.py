"""Helpers the test modules share: tiny configs and CLI flags, synthetic bars and CSVs, tiny trained runs,
child processes, and waiting for a child's training steps. Fixtures built on them are in ``conftest.py``."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from trm_act.callbacks import Callback
from trm_act.envs import SyntheticMarketConfig, TradeReplayConfig, generate_synthetic_market

from trm_act.config import ExperimentConfig, LossConfig, TrainConfig
from trm_act.model import TRMConfig

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------- tiny runs

WINDOW, HORIZON = 16, 4
TINY_MODEL = {"d_model": 16, "n_heads": 2, "max_steps": 3, "n_latent": 1, "n_cycles": 2}
TINY_TRAIN = {"steps": 12, "batch_size": 8, "log_every": 4, "checkpoint_every": 4, "warmup_steps": 2}


def tiny_config(*, n_bars: int = 1500, model: dict | None = None, **train) -> ExperimentConfig:
    """A tiny but complete experiment: ``n_bars`` synthetic bars, windows of 16, a 16-wide model of 3 steps
    (``model`` replaces TINY_MODEL), 12 steps of batch 8 (``train`` overrides TINY_TRAIN), no progress bar."""
    return ExperimentConfig(
        env=TradeReplayConfig(
            window=WINDOW, horizon=HORIZON, episode_length=8, synthetic=SyntheticMarketConfig(n_bars=n_bars)
        ),
        model=TRMConfig(**(TINY_MODEL if model is None else model)),
        loss=LossConfig(lambda_reward=0.5),
        train=TrainConfig(**(TINY_TRAIN | train | {"progress": False})),
    )


def weights(trainer) -> dict[str, torch.Tensor]:
    """A copy of a trainer's model weights (to compare two runs, or one run before and after a step)."""
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def tiny_flags(**changes: object) -> list[str]:
    """The tiny run as ``python -m trm_act.train`` flags. A keyword names a flag with ``_`` for ``-`` and ``__``
    for ``.`` (``env__synthetic__n_bars=1500`` is ``--env.synthetic.n-bars 1500``); None leaves the flag out;
    ``--no-progress`` comes last unless ``progress=True``."""
    values: dict[str, object] = {
        "env__synthetic__n_bars": 3000, "env__window": WINDOW, "env__horizon": HORIZON, "env__episode_length": 8,
        "d_model": 16, "n_heads": 2, "max_steps": 3, "n_latent": 1, "batch_size": 8, "warmup_steps": 2,
    }  # fmt: skip
    progress = bool(changes.pop("progress", False))
    flags: list[str] = []
    for name, value in (values | changes).items():
        if value is not None:
            flags += ["--" + name.replace("__", ".").replace("_", "-"), str(value)]
    return flags if progress else [*flags, "--no-progress"]


def tiny_runs(root_factory, **model) -> dict[str, Path]:
    """A tiny trained run (30 steps on 3000 bars) of each carry, "fresh" and "belief"; ``model`` adds options."""
    from trm_act.trainer import Trainer

    out = {}
    for carry in ("fresh", "belief"):
        run_dir = root_factory.mktemp(f"run_{carry}")
        Trainer(tiny_run_config(carry, **model), run_dir).fit()
        out[carry] = run_dir
    return out


def tiny_run_config(carry: str, **model) -> ExperimentConfig:
    """The config of ``tiny_runs``' run of ``carry``."""
    return tiny_config(
        n_bars=3000,
        model={"d_model": 16, "n_heads": 2, "max_steps": 3, "carry": carry, **model},
        steps=30,
        checkpoint_every=30,
        log_every=TrainConfig.log_every,
        eval_every=0,
    )


# ---------------------------------------------------------------------------------------------- bars and CSVs


def bars(n_bars: int = 2000, seed: int = 7, **synthetic: object) -> pd.DataFrame:
    """OHLCV bars of the synthetic market (``seed``, ``n_bars``, other SyntheticMarketConfig fields), without
    the true regime column: what a user's CSV holds. Indexed by ``timestamp``."""
    config = SyntheticMarketConfig(seed=seed, n_bars=n_bars, **synthetic)
    return generate_synthetic_market(config).drop(columns="regime")


def varied_halting(model, obs: torch.Tensor) -> None:
    """Give ``model`` a halt head whose decisions depend on the input: a random head, biased so that about half
    of ``obs`` (N, W, F) halts after one step and the rest later (a 30-step run has not learned to halt yet)."""
    with torch.no_grad():
        model.halt_head.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(1))
        model.halt_head.bias.zero_()
        out = model.step(model.encode(obs), model.init_carry(len(obs)))
        model.halt_head.bias.fill_(-float(out.halt_logits.median()))


def write_bars(path: Path, n_bars: int = 2000, seed: int = 7, **to_csv: object) -> Path:
    """``bars(n_bars, seed)`` written to the CSV ``path`` (its timestamps in the first column)."""
    bars(n_bars, seed).to_csv(path, **to_csv)
    return path


# ---------------------------------------------------------------------------------------------- time


class FakeClock:
    """A clock for code that takes one (``clock=``): it reads ``now``, which the test moves."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class StopAt(Callback):
    """Stops ``Trainer.fit`` after step ``step`` (a checkpoint, no final evaluation): the first half of a resume."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, step, logs):
        return step < self.step


# ---------------------------------------------------------------------------------------------- child processes


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: one OpenMP thread, unbuffered output, headless matplotlib, and no
    torchrun variables inherited from a launcher that runs the suite."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return env | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"} | extra


def python(
    *args: str, cwd: Path | None = None, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess:
    """``python <args>`` in a child process (see ``child_env``), its output captured as text."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(**env),
    )


def start(*args: str, **popen: object) -> subprocess.Popen:
    """``python <args>`` started in the background with its output piped (``popen`` adds Popen keywords)."""
    options = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": child_env()}
    return subprocess.Popen([sys.executable, *args], **(options | popen))


def wait_for_steps(process: subprocess.Popen, steps: int, total: int, timeout: float = 180) -> str:
    """Read the child's stderr until its progress bar (``n/total``) shows ``steps`` finished training steps;
    returns what was read, for the caller to put before the rest of stderr. An event to wait on, not a sleep:
    a busy machine only makes it come later."""
    fd = process.stderr.fileno()
    seen, deadline = b"", time.monotonic() + timeout
    shown = re.compile(rf"(\d+)/{total}\b".encode())
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 65536)
        if not chunk:  # the child closed stderr: it exited
            break
        seen += chunk
        if any(int(n) >= steps for n in shown.findall(seen)):
            return seen.decode(errors="replace")
    process.kill()
    raise AssertionError(
        f"no progress to step {steps} within {timeout} s:\n{seen.decode(errors='replace')[-3000:]}"
    )


def stopped_training(logdir: Path, name: str, signum: int, after_steps: int, **flags: object) -> tuple[int, str, Path]:
    """Start ``python -m trm_act.train`` for 100,000 steps of the tiny config (``flags``: its changes), send it
    ``signum`` once its progress bar shows ``after_steps`` steps, and return its exit status, its stderr and its
    run directory."""
    command = tiny_flags(progress=True, **flags)
    process = start("-m", "trm_act.train", *command, "--steps", "100000", "--logdir", str(logdir), "--run-name", name)
    seen = wait_for_steps(process, after_steps, total=100000)
    process.send_signal(signum)
    _, rest = process.communicate(timeout=60)
    return process.returncode, seen + rest, logdir / name
