"""Benchmarks: ``python -m trm_act.bench <name>``. Each prints ratios against a peer measured in the same run."""

from __future__ import annotations

import argparse


def bench_parser(name: str, doc: str) -> argparse.ArgumentParser:
    """The argument parser of ``python -m trm_act.bench <name>``, described by the first line of its docstring."""
    return argparse.ArgumentParser(prog=f"python -m trm_act.bench {name}", description=doc.splitlines()[0])


def add_throughput_options(parser: argparse.ArgumentParser) -> None:
    """The options of a vector-env throughput measurement, shared by ``bench env`` and ``bench universe``."""
    parser.add_argument("--seconds", type=float, default=1.0, help="minimum timing per measurement round")
    parser.add_argument("--rounds", type=int, default=3, help="measurement rounds; the best is kept")
    parser.add_argument("--num-envs", type=int, default=256, help="sub-envs of TradeReplayVectorEnv")
