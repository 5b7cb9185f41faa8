"""``python -m trm_act.bench memory``: peak memory of a short training run on a large CSV.

Writes a generated OHLCV CSV (2,000,000 one-minute bars by default) to a temporary directory and runs
``python -m trm_act.train --data <csv> --steps 50 --no-progress`` with horizon 16 in a subprocess, at
training's stride of 1 (one decision per bar). The peer, measured in the same run, is the same command
on the package's 3000-bar example CSV: the difference is what the data costs. Peak RSS is the child's
``ru_maxrss`` (``resource.getrusage(RUSAGE_CHILDREN)``, the largest of the children waited for so far).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

BAR_GIB = 1.5  # peak RSS bar for the default run (2,000,000 rows, horizon 16, 50 steps)
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


def _train(csv: str, config: Path, logdir: Path, name: str, steps: int) -> tuple[float, float, str]:
    """(peak RSS of the children so far in GiB, wall seconds, last output line) of one training run."""
    command = [
        sys.executable,
        "-m",
        "trm_act.train",
        "--data",
        csv,
        "--steps",
        str(steps),
        "--no-progress",
        "--config",
        str(config),
        "--logdir",
        str(logdir),
        "--run-name",
        name,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    lines = result.stdout.strip().splitlines()
    return peak_kib / 2**20, seconds, lines[0] if lines else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trm_act.bench memory", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rows", type=int, default=2_000_000, help="bars in the generated CSV")
    parser.add_argument("--horizon", type=int, default=16, help="[env] horizon of the run")
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps of the run")
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
        peer_gib, peer_s, _ = _train(example_csv(), config, root / "runs", "example", args.steps)
        peak_gib, peak_s, _ = _train(str(csv), config, root / "runs", "large", args.steps)

    print(
        f"\npeak RSS of `python -m trm_act.train --steps {args.steps}` at horizon {args.horizon}, "
        f"train stride 1 ({os.environ.get('OMP_NUM_THREADS', '1')} thread(s))\n"
    )
    print("| data | rows | peak RSS | wall |")
    print("|---|---:|---:|---:|")
    print(f"| example CSV (peer) | 3,000 | {peer_gib:.2f} GiB | {peer_s:.0f} s |")
    print(f"| generated CSV | {args.rows:,} | {peak_gib:.2f} GiB | {peak_s:.0f} s |")
    print(f"\ndata cost: {peak_gib - peer_gib:.2f} GiB over the peer ({peak_gib / peer_gib:.2f}x its peak)")
    verdict = "meets" if peak_gib <= BAR_GIB else "MISSES"
    print(f"peak RSS {peak_gib:.2f} GiB ({verdict} the bar of {BAR_GIB} GiB)")
    return 0
