"""Streaming decisions: per-bar latency and decisions/s, torch eager, torch compiled and onnxruntime, 1 and 256
instruments.

``python -m trm_act.bench predict [--run RUN] [--bars 500] [--instruments 256] [--threads 1]``

Each engine is measured in the same process, on the same bars, one after the other (torch compiled is
``Policy(..., compile=True)``; its compile happens in a warm-up on a few bars before the measurement, and its
time is printed):

- one stream (``policy.stream()``): every bar goes through ``update``; the latency of a bar is the wall
  time of that call (validation, the exact feature recursions, the model's reasoning steps);
- a batch of instruments (``policy.stream_batch(symbols)``): one ``update({symbol: bar})`` per bar feeds
  every instrument and runs the model once for all of them; its latency is that call's time.

Latency percentiles are over the bars that decide (every bar from bar ``window`` on for a fresh-carry
model). decisions/s = decisions / total time of those calls. Without ``--run``, the model is the default
``python -m trm_act.train`` model with random weights: its halt head (bias -5) never fires, so every
decision takes all ``max_steps`` reasoning steps, the slowest case. The issue's bar: p99 of one streaming
update <= 2 ms on one thread. On a CPU shared with other jobs, the percentiles include their noise; the
load average is printed with the table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np

from trm_act.bench import bench_parser

BAR_P99_MS = 2.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser("predict", __doc__)
    parser.add_argument(
        "--run", default=None, help="run directory or checkpoint.pt (default: the default model)"
    )
    parser.add_argument(
        "--bars", type=int, default=500, help="decision bars per instrument (after the window)"
    )
    parser.add_argument("--instruments", type=int, default=256, help="instruments in the batched measurement")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of torch and onnxruntime")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the synthetic bars")
    args = parser.parse_args(argv)
    for name in ("bars", "instruments", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    return args


def default_policy(seed: int) -> Any:
    """The default run's model (``ExperimentConfig()``), untrained, on the default env options."""
    import torch

    from trm_act.config import ExperimentConfig
    from trm_act.model import RecurrentTRM
    from trm_act.policy import Policy

    config = ExperimentConfig()
    torch.manual_seed(seed)
    return Policy(RecurrentTRM(config.model), config.env)


def market_bars(n_instruments: int, n_bars: int, seed: int) -> list[list[dict[str, Any]]]:
    """``n_instruments`` synthetic markets of ``n_bars`` bars each, as lists of bar dicts."""
    from trm_act.envs import SyntheticMarketConfig, generate_synthetic_market

    out = []
    for k in range(n_instruments):
        frame = generate_synthetic_market(SyntheticMarketConfig(seed=seed + k, n_bars=n_bars))
        frame = frame.drop(columns="regime")
        out.append(
            [{"timestamp": t, **row} for t, row in zip(frame.index, frame.to_dict("records"), strict=True)]
        )
    return out


def measure(policy: Any, markets: list[list[dict[str, Any]]], batched: bool) -> dict[str, float]:
    """Feed every bar; per-bar latency (ms) over the deciding bars, decisions/s and mean steps."""
    n_bars = len(markets[0])
    symbols = [f"S{k:03d}" for k in range(len(markets))]
    times, decided, steps = [], 0, []
    if batched:
        batch = policy.stream_batch(symbols)
        for t in range(n_bars):
            bars = {s: market[t] for s, market in zip(symbols, markets, strict=True)}
            start = time.perf_counter()
            out = batch.update(bars)
            elapsed = time.perf_counter() - start
            if out:
                times.append(elapsed)
                decided += len(out)
                steps.extend(d.steps for d in out.values())
    else:
        stream = policy.stream(symbols[0])
        for bar in markets[0]:
            start = time.perf_counter()
            decision = stream.update(bar)
            elapsed = time.perf_counter() - start
            if decision is not None:
                times.append(elapsed)
                decided += 1
                steps.append(decision.steps)
    ms = np.array(times) * 1e3  # (N,)
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "decisions_per_s": decided / float(np.sum(times)),
        "mean_steps": float(np.mean(steps)),
        "decisions": decided,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from trm_act.export import export_onnx
    from trm_act.policy import Policy

    torch.set_num_threads(args.threads)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print('error: bench predict needs onnxruntime: pip install "trm-act[onnx]"', file=sys.stderr)
        return 2
    from trm_act.onnx import OnnxPolicy

    policy = Policy.load(args.run) if args.run else default_policy(args.seed)
    load_before = os.getloadavg()
    n_bars = policy.window + policy.stride * args.bars
    markets = market_bars(args.instruments, n_bars, args.seed)
    compile_s = {}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_policy = OnnxPolicy.load(export_onnx(policy, tmp), threads=args.threads)
        compiled = Policy(policy.model, policy.env, max_steps=policy.max_steps, compile=True)
        engines = {"torch eager": policy, "torch compiled": compiled, "onnxruntime": onnx_policy}
        rows = []
        for batched, instruments in ((False, 1), (True, args.instruments)):
            for name, engine in engines.items():
                start = time.perf_counter()
                measure(  # warm-up: first calls, and the compile
                    engine, [m[: policy.window + 2 * policy.stride] for m in markets[:instruments]], batched
                )
                compile_s.setdefault(name, time.perf_counter() - start)
                rows.append((name, instruments, measure(engine, markets[:instruments], batched)))
    load_after = os.getloadavg()
    config = policy.config
    print(
        f"streaming benchmark: {config.mixer} TRM, d_model={config.d_model}, n_layers={config.n_layers}, "
        f"window={config.window}, max_steps={policy.max_steps}, carry={'belief' if policy.has_belief else 'fresh'}, "
        f"{'weights of ' + str(policy.source) if args.run else 'random weights (every decision takes max_steps)'}"
    )
    print(
        f"threads={args.threads} (torch and onnxruntime), {args.bars} decision bars per instrument, "
        f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f} before / {load_after[0]:.2f} after"
    )
    print()
    print("| engine | instruments | p50 ms/bar | p99 ms/bar | decisions/s | mean steps |")
    print("|:---|---:|---:|---:|---:|---:|")
    for name, instruments, r in rows:
        print(
            f"| {name} | {instruments} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['decisions_per_s']:,.0f} | "
            f"{r['mean_steps']:.2f} |"
        )
    print()
    print(
        f"torch compiled: warm-up with the compile {compile_s['torch compiled']:.1f} s "
        f"(eager: {compile_s['torch eager']:.2f} s)"
    )
    for name, instruments, r in rows:
        if instruments == 1:
            verdict = "PASS" if r["p99_ms"] <= BAR_P99_MS else "FAIL"
            print(
                f"{name}: p99 of one streaming update {r['p99_ms']:.3f} ms (bar {BAR_P99_MS:g} ms): {verdict}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
