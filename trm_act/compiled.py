"""When and how the trainer compiles its training step with ``torch.compile`` (inductor).

The default model is small: a step is ~60 matmuls of a few hundred kFLOPs each and ~200 elementwise ops on
(B, W, D) tensors, so eager mode spends most of its time in kernel launches and memory passes that inductor
fuses. On the developers' 2-core Xeon (AVX-512, 211 GFLOP/s one-thread fp32 matmul) the default's compiled step
runs ~3x the samples/s of commit 1d55271's eager one (``python -m trm_act.bench train`` measures both in one run;
part of that is the default's graph over the answer's bars, ``TRMConfig.graph``).

Compiling costs ~30 s the first time on a machine; inductor caches the generated kernels on disk (its
default cache directory, under the system temp folder), so later runs of the same model shape start in a
few seconds. ``"auto"`` compiles only where that pays: runs long enough to amortise a cold compile, a single
process (DDP's bucketing and inductor's graphs are left to users who opt in with ``--compile on``), and a
backend that can build kernels (CUDA, or a C++ compiler on the CPU).
"""

from __future__ import annotations

import os
import shutil

import torch

__all__ = ["AUTO_MIN_STEPS", "compile_decision", "has_cxx_compiler"]

AUTO_MIN_STEPS = 1000
"""Shortest run "auto" compiles: a cold compile (~30 s here) is repaid by ~20 ms saved per step after
~1,500 steps, and a warm cache (~3 s) after ~150; the default run (1,500 steps) pays either way."""


def has_cxx_compiler() -> bool:
    """Inductor's CPU backend writes C++ and builds it with $CXX, else g++ / clang++ / c++ on the PATH."""
    candidates = [os.environ.get("CXX"), "g++", "clang++", "c++"]
    return any(name and shutil.which(name) for name in candidates)


def compile_decision(setting: str, steps: int, device: torch.device, distributed: bool) -> tuple[bool, str]:
    """Whether to compile the training step, and why (a phrase for the run's log)."""
    if setting == "off":
        return False, "off (--compile off)"
    if setting == "on":
        return True, "on (--compile on)"
    if distributed:
        return False, "off: auto leaves DDP runs eager (use --compile on to try)"
    if steps < AUTO_MIN_STEPS:
        return False, f"off: auto compiles runs of >= {AUTO_MIN_STEPS} steps (this one has {steps})"
    if device.type == "cpu" and not has_cxx_compiler():
        return False, "off: no C++ compiler found for inductor's CPU kernels (install g++ or set CXX)"
    if device.type not in ("cpu", "cuda"):
        return False, f"off: auto compiles on CPU and CUDA only, not {device.type}"
    return True, "on (auto)"
