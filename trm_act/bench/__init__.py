"""Benchmarks: ``python -m trm_act.bench <name>``. Each prints ratios against a peer measured in the same run."""

from __future__ import annotations

import argparse


def bench_parser(name: str, doc: str) -> argparse.ArgumentParser:
    """The argument parser of ``python -m trm_act.bench <name>``, described by the first line of its docstring."""
    return argparse.ArgumentParser(prog=f"python -m trm_act.bench {name}", description=doc.splitlines()[0])
