"""``python -m trm_act.bench universe``: build time, peak memory and vector-env speed on a large universe.

Generates ``--instruments`` synthetic markets (a different seed and start date each, so date ranges
differ) of ``--bars`` daily bars, then builds the replay from the in-memory dict of DataFrames and,
with ``--csv``, from a directory of CSV files. It reports the build seconds, the process's peak RSS,
and ``TradeReplayVectorEnv(num_envs)`` transitions/s on the universe against the same vector env on one
synthetic market, measured interleaved in this run (a universe gathers observations from per-bar
features on every call instead of a per-decision window cache, so this ratio is its cost).

End to end, it then writes the universe as one long CSV (a Symbol column) and runs
``python -m trm_act.train --data <long csv> --steps 30 --no-progress`` in a subprocess (``--train-steps``; 0
skips it), reporting the run's wall time per phase (its ``timings.json``) and its peak RSS.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from trm_act.bench import add_throughput_options, bench_parser

BUILD_TARGET_S = 30.0
RSS_TARGET_GIB = 2.0
THROUGHPUT_TARGET = 1e6  # transitions/s of TradeReplayVectorEnv(256) on the universe
TRAIN_TARGET_S = 120.0  # the 30-step training run on the long CSV, end to end (issue 24)


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


def generate_universe(instruments: int, bars: int) -> dict[str, pd.DataFrame]:
    """{symbol: OHLCV frame}: synthetic markets of different seeds, starting up to ~2 years apart."""
    from trm_act.envs import SyntheticMarketConfig, generate_synthetic_market

    start = pd.Timestamp("2000-01-03")
    universe = {}
    for i in range(instruments):
        config = SyntheticMarketConfig(
            seed=1000 + i, n_bars=bars, start_date=str((start + pd.offsets.BDay(i % 500)).date())
        )
        universe[f"SYM{i:04d}"] = generate_synthetic_market(config).drop(columns="regime")
    return universe


def write_long_csv(frames: dict[str, pd.DataFrame], path: Path) -> int:
    """Write the universe as one long CSV (Date, Symbol, open, high, low, close, volume); returns its bytes."""
    with path.open("w", newline="") as handle:
        for i, (symbol, frame) in enumerate(frames.items()):
            frame.assign(Symbol=symbol)[["Symbol", *frame.columns]].to_csv(
                handle, header=i == 0, index_label="Date", float_format="%.6f"
            )
    return path.stat().st_size


def _vector_rate(envs, seconds: float, rounds: int) -> float:
    """Best-of-rounds transitions/s of random-action steps (autoreset inside step)."""
    envs.reset(seed=0)
    batches = np.random.default_rng(0).integers(0, 8, size=(64, envs.num_envs))  # (64, N)
    best = 0.0
    for _ in range(rounds):
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for actions in batches:
                envs.step(actions)
            done += len(batches) * envs.num_envs
        best = max(best, done / (time.perf_counter() - start))
    return best


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("universe", __doc__)
    add_throughput_options(parser)
    parser.add_argument("--instruments", type=int, default=500, help="instruments in the universe")
    parser.add_argument("--bars", type=int, default=5000, help="daily bars per instrument")
    parser.add_argument(
        "--csv", action="store_true", help="also write the universe as CSVs and build from them"
    )
    parser.add_argument(
        "--train-steps",
        type=int,
        default=30,
        help="steps of the end-to-end training run on the long CSV (0 = skip)",
    )
    args = parser.parse_args(argv)

    from trm_act.envs import TradeReplayConfig, TradeReplayVectorEnv, build_replay

    start = time.perf_counter()
    frames = generate_universe(args.instruments, args.bars)
    generate_s = time.perf_counter() - start
    print(
        f"universe benchmark: {args.instruments} instruments x {args.bars} daily bars "
        f"(generated in {generate_s:.1f} s)\n"
    )

    # The env builds the replay (a dict of DataFrames is not cached), so this times the build a user waits for.
    start = time.perf_counter()
    # Whole-split episodes (the env's default is the CLI's 64 decisions, more than a small universe holds).
    config = TradeReplayConfig(data=frames, split="train", episode_length=None)
    envs = TradeReplayVectorEnv(args.num_envs, config=config)
    builds = [("dict of DataFrames", time.perf_counter() - start)]
    print(f"built {envs.replay!r}")
    peer = TradeReplayVectorEnv(args.num_envs, split="train")  # one synthetic market, window cache on
    rates = dict.fromkeys(("universe", "single"), 0.0)
    for _ in range(args.rounds):  # interleaved, so that load spikes hit both sides alike
        rates["universe"] = max(rates["universe"], _vector_rate(envs, args.seconds, 1))
        rates["single"] = max(rates["single"], _vector_rate(peer, args.seconds, 1))
    rss = peak_rss_gib()  # before the CSV build, whose cached replay would add a second universe

    if args.csv:
        del envs
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            for symbol, frame in frames.items():
                frame.to_csv(Path(tmp) / f"{symbol}.csv", index_label="Date")
            write_s = time.perf_counter() - start
            start = time.perf_counter()
            build_replay(TradeReplayConfig(data=tmp))
            builds.append((f"directory of CSVs (written in {write_s:.1f} s)", time.perf_counter() - start))

    run = None
    if args.train_steps:
        from trm_act.bench.memory import phase_table, train_run

        with tempfile.TemporaryDirectory(prefix="trm_act_universe_") as tmp:
            root = Path(tmp)
            start = time.perf_counter()
            size = write_long_csv(frames, root / "universe.csv")
            print(f"wrote the long CSV ({size / 2**20:.0f} MiB) in {time.perf_counter() - start:.1f} s")
            run = train_run(str(root / "universe.csv"), root / "runs", "universe", args.train_steps)

    print("\n| measurement | value | target |")
    print("|---|---:|---:|")
    for name, seconds in builds:
        print(f"| build from {name} | {seconds:.1f} s | <= {BUILD_TARGET_S:g} s |")
    print(f"| peak RSS (generation, build and stepping) | {rss:.2f} GiB | <= {RSS_TARGET_GIB:g} GiB |")
    print(
        f"| TradeReplayVectorEnv({args.num_envs}) on the universe | {rates['universe']:,.0f} transitions/s "
        f"| >= {THROUGHPUT_TARGET:,.0f} |"
    )
    print(
        f"| TradeReplayVectorEnv({args.num_envs}) on one synthetic market | {rates['single']:,.0f} transitions/s | |"
    )
    if run is not None:
        print(
            f"| `python -m trm_act.train --data <long csv> --steps {args.train_steps}`, end to end "
            f"| {run.seconds:.1f} s | <= {TRAIN_TARGET_S:g} s |"
        )
    print(f"\nuniverse / single-market throughput: {rates['universe'] / rates['single']:.2f}x")
    verdicts = [
        all(seconds <= BUILD_TARGET_S for _, seconds in builds),
        rss <= RSS_TARGET_GIB,
        rates["universe"] >= THROUGHPUT_TARGET,
    ]
    if run is not None:
        threads = os.environ.get("OMP_NUM_THREADS", "1")
        print(
            f"\nthe training run on the long CSV ({threads} thread(s)), wall seconds per phase (its timings.json):\n"
        )
        print("\n".join(phase_table({"long CSV": run})))
        verdicts.append(run.seconds <= TRAIN_TARGET_S)
    print("meets every target" if all(verdicts) else "MISSES a target (see the table)")
    return 0
