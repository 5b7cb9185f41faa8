"""Dispatch ``python -m trm_act.bench <name> [options]`` to one benchmark module."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "env": ("trm_act.bench.env", "TradeReplayEnv / TradeReplayVectorEnv throughput vs gym-anytrading"),
    "act": ("trm_act.bench.act", "adaptive vs fixed-step ACT inference time"),
    "learn": ("trm_act.bench.learn", "what each training recipe learns, over seeds and unseen markets"),
    "labels": (
        "trm_act.bench.labels",
        "what hindsight labels say about the regime; --rows N: the regime model's fit on N bars (bar: 2M in 60 s)",
    ),
    "memory": ("trm_act.bench.memory", "phase times and peak RSS of 30 training steps on a 2,000,000-row CSV (bars: 90 s, 1.5 GiB)"),
    "train": (
        "trm_act.bench.train",
        "Trainer.train_step samples/s: threads, fp32/bf16, 1 vs 2 processes, FLOP/s",
    ),
    "busy": (
        "trm_act.bench.busy",
        "the default command's wall time alone and beside another PyTorch job (bar: 180 s)",
    ),
    "universe": (
        "trm_act.bench.universe",
        "build time, peak RSS, vector-env speed and a 30-step run on 500 x 5,000 bars (bar: 120 s)",
    ),
    "real": (
        "trm_act.bench.real",
        "walk-forward on real series (GOOGL daily, EURUSD hourly, S&P 500 daily) vs long / best fixed",
    ),
    "predict": (
        "trm_act.bench.predict",
        "streaming latency p50/p99 and decisions/s, torch vs onnxruntime, 1 and 256 instruments (bar: p99 2 ms)",
    ),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in BENCHMARKS:
        choices = "\n".join(f"  {name:8s} {doc}" for name, (_, doc) in BENCHMARKS.items())
        print(f"usage: python -m trm_act.bench <name> [options]\n\nbenchmarks:\n{choices}", file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHMARKS[argv[0]][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
