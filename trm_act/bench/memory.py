"""``python -m trm_act.bench memory``: wall time per phase and peak memory of a short training run on a large CSV.

Writes a generated OHLCV CSV (2,000,000 one-minute bars by default) to a temporary directory and runs
``python -m trm_act.train --data <csv> --steps 30 --no-progress`` with horizon 16 in a subprocess, at the
default's training stride (the env's stride, 16 bars, for the default belief; 1 bar for a fresh carry). The peer,
measured in the same run, is the same command on the package's 3000-bar example CSV: the difference is what the data
costs. Peak RSS is the child's
``ru_maxrss`` (``resource.getrusage(RUSAGE_CHILDREN)``, the largest of the children waited for so far).

Each phase's wall time comes from the run itself: the trainer records parse and validate, features and
strategies, labels, training, evaluation and writing in ``timings.json`` in its run directory
(:mod:`trm_act.envs.timing`); "start-up and other" is the rest of the child's wall time (imports, the model).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from trm_act.bench import bench_parser

BAR_GIB = 1.5  # peak RSS bar for the default run (2,000,000 rows, horizon 16, 30 steps)
BAR_S = 90.0  # wall-time bar for the same run, end to end (issue 24)
_CHUNK = 250_000  # rows generated and written at a time, so the bench itself stays small


def write_ohlcv_csv(path: Path, rows: int, seed: int = 0) -> int:
    """A random-walk OHLCV CSV of one-minute bars (Date, Open, High, Low, Close, Volume); returns its size in bytes."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2015-01-01")
    log_close = np.log(100.0)
    with path.open("w", newline="") as handle:
        handle.write("Date,Open,High,Low,Close,Volume\n")
        for lo in range(0, rows, _CHUNK):
            n = min(_CHUNK, rows - lo)
            returns = rng.normal(0.0, 0.001, n)  # (n,)
            close = np.exp(log_close + np.cumsum(returns))  # (n,)
            open_ = np.concatenate(([np.exp(log_close)], close[:-1]))  # (n,) previous close
            log_close = float(np.log(close[-1]))
            wick = np.abs(rng.normal(0.0, 0.0005, (2, n)))  # (2, n)
            high = np.maximum(open_, close) * (1.0 + wick[0])
            low = np.minimum(open_, close) * (1.0 - wick[1])
            frame = pd.DataFrame(
                {
                    "Date": (start + pd.to_timedelta(np.arange(lo, lo + n), unit="min")).strftime(
                        "%Y-%m-%d %H:%M"
                    ),
                    "Open": open_,
                    "High": high,
                    "Low": low,
                    "Close": close,
                    "Volume": rng.integers(100, 10_000, n),
                }
            )
            frame.to_csv(handle, header=False, index=False, float_format="%.6f")
    return path.stat().st_size


class TrainRun(NamedTuple):
    """One ``python -m trm_act.train`` run in a subprocess."""

    peak_gib: float
    """Peak RSS of the children waited for so far (this run's if it is the largest so far), GiB."""
    seconds: float
    """Wall time of the child process, start-up included."""
    phases: dict[str, float]
    """Wall seconds per phase from the run's ``timings.json``, plus "start-up and other" (the rest)."""


def train_run(
    csv: str, logdir: Path, name: str, steps: int, config: Path | None = None, extra: tuple[str, ...] = ()
) -> TrainRun:
    """Run ``python -m trm_act.train --data csv --steps steps --no-progress`` (one torch thread unless
    OMP_NUM_THREADS says otherwise) and read its phases; raises RuntimeError when it fails."""
    command = [
        sys.executable,
        "-m",
        "trm_act.train",
        "--data",
        csv,
        "--steps",
        str(steps),
        "--no-progress",
        *(["--config", str(config)] if config is not None else []),
        "--logdir",
        str(logdir),
        "--run-name",
        name,
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    phases = json.loads((logdir / name / "timings.json").read_text())["phases"]
    phases[OTHER] = max(seconds - sum(phases.values()), 0.0)
    return TrainRun(peak_kib / 2**20, seconds, phases)


OTHER = "start-up and other"


def phase_table(runs: dict[str, TrainRun]) -> list[str]:
    """Markdown rows: one per phase, a column per run (seconds), then the wall time and peak RSS."""
    names = list(dict.fromkeys(name for run in runs.values() for name in run.phases))
    lines = ["| phase | " + " | ".join(runs) + " |", "|---|" + "---:|" * len(runs)]
    for name in names:
        lines.append(
            f"| {name} | " + " | ".join(f"{run.phases.get(name, 0.0):.1f} s" for run in runs.values()) + " |"
        )
    lines.append(
        "| **total (wall)** | " + " | ".join(f"**{run.seconds:.1f} s**" for run in runs.values()) + " |"
    )
    lines.append("| peak RSS | " + " | ".join(f"{run.peak_gib:.2f} GiB" for run in runs.values()) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("memory", __doc__)
    parser.add_argument("--rows", type=int, default=2_000_000, help="bars in the generated CSV")
    parser.add_argument("--horizon", type=int, default=16, help="[env] horizon of the run")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps of the run")
    args = parser.parse_args(argv)
    if sys.platform != "linux":
        print("the memory benchmark reads ru_maxrss in KiB, as Linux reports it; run it on Linux")
        return 1

    from trm_act.envs import example_csv

    with tempfile.TemporaryDirectory(prefix="trm_act_memory_") as tmp:
        root = Path(tmp)
        config = root / "memory.toml"
        config.write_text(f"[env]\nhorizon = {args.horizon}\n")
        csv = root / "ohlcv.csv"
        start = time.perf_counter()
        size = write_ohlcv_csv(csv, args.rows)
        print(f"wrote {args.rows:,} rows ({size / 2**20:.0f} MiB) in {time.perf_counter() - start:.0f} s")
        # The small run first: RUSAGE_CHILDREN keeps the maximum over the children waited for.
        peer = train_run(example_csv(), root / "runs", "example", args.steps, config)
        large = train_run(str(csv), root / "runs", "large", args.steps, config)

    from trm_act.config import ExperimentConfig
    from trm_act.envs import TradeReplayConfig

    stride = ExperimentConfig(env=TradeReplayConfig(horizon=args.horizon)).train_stride
    print(
        f"\n`python -m trm_act.train --steps {args.steps}` at horizon {args.horizon}, train stride {stride} "
        f"({os.environ.get('OMP_NUM_THREADS', '1')} thread(s)): wall seconds per phase (the run's timings.json)\n"
    )
    print(
        "\n".join(
            phase_table(
                {"example CSV (3,000 rows, peer)": peer, f"generated CSV ({args.rows:,} rows)": large}
            )
        )
    )
    print(
        f"\ndata cost: {large.peak_gib - peer.peak_gib:.2f} GiB over the peer ({large.peak_gib / peer.peak_gib:.2f}x "
        "its peak)"
    )
    slowest = max((name for name in large.phases if name != OTHER), key=large.phases.__getitem__)
    print(f"slowest phase: {slowest} ({large.phases[slowest]:.1f} s of {large.seconds:.1f} s)")
    for what, value, bar, unit in (
        ("peak RSS", large.peak_gib, BAR_GIB, "GiB"),
        ("wall", large.seconds, BAR_S, "s"),
    ):
        verdict = "meets" if value <= bar else "MISSES"
        print(f"{what} {value:.2f} {unit} ({verdict} the bar of {bar:g} {unit})")
    return 0
