"""``python -m trm_act.bench train``: training throughput of the real ``Trainer.train_step``.

One run measures, side by side, samples/s (slots x steps per second, all ranks together) of the default
experiment config for:

- the eager step of commit 1d55271's recipe (``PEER_RECIPE``: the peer) and the default's ``torch.compile``
  step (issue 24's bar: 2x the eager samples/s on 1 thread fp32), each at 1 and 2 intra-op threads, fp32 and
  bf16 autocast;
- 1 and 2 processes under torchrun (``python -m torch.distributed.run --standalone``), one thread each,
  gloo DDP, with the scaling efficiency ``samples/s(2) / (2 x samples/s(1))``.

For each it also reports the share of a step spent outside the model's forward and backward (env
stepping, loss, optimizer, host syncs; measured as 1 - the time of the same forward+backward alone over
the time of a full step), and the model FLOP/s achieved (FLOPs of one forward+backward counted with
``torch.utils.flop_counter``) against this machine's matmul peak measured in the same run (a square
matmul at the same thread count and dtype). Under torchrun it also times the one-int all-reduce each
step spends agreeing on a stop.

On a machine shared with other jobs the absolute figures move; compare rows of one run only.
``--quick`` runs a tiny config for a few steps (a smoke test, not a measurement).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch.utils.flop_counter import FlopCounterMode

from trm_act import distributed
from trm_act.bench import bench_parser, peer_config
from trm_act.config import ExperimentConfig
from trm_act.envs import SyntheticMarketConfig

RESULT_PREFIX = "RESULT "  # the worker's JSON line on stdout
SPEEDUP_BAR = 2.0  # issue 24: compiled vs commit 1d55271's eager step, 1 thread fp32


def bench_config(quick: bool, bf16: bool, threads: int, compiled: bool = False) -> ExperimentConfig:
    """The default experiment config (or a tiny one with ``quick``) with the given dtype, threads and step
    (``compiled``: torch.compile; otherwise commit 1d55271's step: its recipe, eager)."""
    config = ExperimentConfig() if compiled else peer_config(ExperimentConfig())
    train = dataclasses.replace(
        config.train, bf16=bf16, threads=threads, device="cpu", progress=False, compile="on" if compiled else "off"
    )
    if not quick:
        return dataclasses.replace(config, train=train)
    env = dataclasses.replace(
        config.env, window=16, horizon=4, episode_length=8, label_horizon=None,
        synthetic=SyntheticMarketConfig(n_bars=1500),
    )  # fmt: skip
    model = dataclasses.replace(config.model, d_model=16, n_heads=2, max_steps=3)
    return ExperimentConfig(
        env=env, model=model, loss=config.loss, train=dataclasses.replace(train, batch_size=8)
    )


def _model_only_step(trainer: Any, model: torch.nn.Module | None = None) -> None:
    """The model's forward and backward on the trainer's current batch and carry, nothing else."""
    obs = torch.from_numpy(trainer.obs).to(trainer.device)  # (B, W, F)
    with trainer._autocast():
        out = (model or trainer.forward_model)(obs, trainer.state.carry)
    (out.task_logits.sum() + out.halt_logits.sum()).backward()
    trainer.optimizer.zero_grad(set_to_none=True)


def measure(
    config: ExperimentConfig, steps: int, warmup: int, validate_loss: bool = False
) -> dict[str, float]:
    """Time ``steps`` train steps (after ``warmup``) on this rank; returns per-rank figures.

    ``validate_loss`` turns TRMLoss's per-call input checks back on (the trainer runs without them): the
    row that shows what those checks and their host syncs cost.
    """
    from trm_act.trainer import Trainer

    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(config, Path(folder) / "run")  # builds only; nothing is written before fit
    trainer.loss_fn.validate = validate_loss
    start = time.perf_counter()
    for _ in range(warmup):  # a compiled step builds (or loads) its kernels here
        trainer.train_step()
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    step_s = (time.perf_counter() - start) / steps
    distributed.barrier(trainer.dist)

    start = time.perf_counter()
    for _ in range(steps):
        _model_only_step(trainer)
    model_s = (time.perf_counter() - start) / steps

    with FlopCounterMode(display=False) as counter:  # the eager model's FLOPs: the work asked for
        _model_only_step(trainer, trainer.model)
    flops = counter.get_total_flops()

    start = time.perf_counter()
    for _ in range(steps):
        distributed.max_over_ranks(0, trainer.device)
    stop_sync_s = (time.perf_counter() - start) / steps
    return {
        "step_s": step_s,
        "model_s": model_s,
        "flops": float(flops),
        "samples_per_step": float(config.train.batch_size),
        "stop_sync_s": stop_sync_s,
        "threads": float(trainer.threads),
        "warmup_s": warmup_s,
    }


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_peak(threads: int, dtype: str, n: int, repeats: int) -> float:
    """FLOP/s of an n x n matmul (``dtype`` "fp32" or "bf16") at ``threads`` threads (best of ``repeats``)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=DTYPES[dtype]), torch.randn(n, n, dtype=DTYPES[dtype])
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


def worker(args: argparse.Namespace) -> NoReturn:
    """One torchrun rank: measure, gather to rank zero, print one JSON line there, and exit the process."""
    config = bench_config(args.quick, bf16=False, threads=1)
    result = measure(config, args.steps, args.warmup)
    ctx = distributed.context_from_env()
    gathered = distributed.gather_to_zero(result, ctx)
    distributed.teardown()
    if ctx.is_zero:
        print(RESULT_PREFIX + json.dumps(gathered), flush=True)
    # Leave without the interpreter's teardown: about one 2-process run in ten, a rank that had finished
    # (result gathered and printed) then aborted in it ("terminate called without an active exception",
    # SIGABRT), so torchrun reported the run failed. Nothing is left to flush or close here.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_processes(nproc: int, args: argparse.Namespace) -> list[dict[str, float]]:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "trm_act.bench.train", "--worker", "--steps", str(args.steps), "--warmup", str(args.warmup),
        *(["--quick"] if args.quick else []),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"torchrun with {nproc} process(es) failed:\n{result.stderr[-2000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def row(name: str, ranks: list[dict[str, float]], peak: float) -> dict[str, Any]:
    step_s = max(r["step_s"] for r in ranks)  # the slowest rank sets the pace (DDP syncs every step)
    samples = sum(r["samples_per_step"] for r in ranks)
    model_s = max(r["model_s"] for r in ranks)
    flops = sum(r["flops"] for r in ranks)
    return {
        "name": name,
        "samples_per_s": samples / step_s,
        "outside": max(0.0, 1.0 - model_s / step_s),
        "gflops": flops / model_s / 1e9,
        "peak_share": flops / model_s / (peak * len(ranks)),
        "stop_sync_us": max(r["stop_sync_s"] for r in ranks) * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("train", __doc__)
    parser.add_argument("--steps", type=int, default=100, help="timed train steps per configuration")
    parser.add_argument("--warmup", type=int, default=10, help="untimed train steps first")
    parser.add_argument("--quick", action="store_true", help="tiny config, few steps: a smoke test")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one torchrun rank
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = min(args.steps, 4), min(args.warmup, 1)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.worker:
        return worker(args)

    n = 128 if args.quick else 512
    peaks = {(t, d): matmul_peak(t, d, n, 3 if args.quick else 10) for t in (1, 2) for d in DTYPES}
    rows = []
    for bf16 in (False, True):
        for threads in (1, 2):
            # --quick compiles one row only: a compile takes tens of seconds even for the tiny config
            for compiled in (False, True) if not (args.quick and (bf16 or threads > 1)) else (False,):
                dtype = "bf16" if bf16 else "fp32"
                config = bench_config(args.quick, bf16=bf16, threads=threads, compiled=compiled)
                result = measure(config, args.steps, args.warmup)
                step = "compiled" if compiled else "eager (1d55271)"
                rows.append(row(f"{step}, {threads} thread(s), {dtype}", [result], peaks[(threads, dtype)]))
                rows[-1]["warmup_s"] = result["warmup_s"]
    checked = measure(bench_config(args.quick, bf16=False, threads=1), args.steps, args.warmup, True)
    rows.append(row("eager, 1 thread(s), fp32, TRMLoss checks on", [checked], peaks[(1, "fp32")]))
    for nproc in (1, 2):
        ranks = run_processes(nproc, args)
        rows.append(row(f"eager, {nproc} process(es) x 1 thread, fp32 (torchrun)", ranks, peaks[(1, "fp32")]))

    base = rows[0]["samples_per_s"]
    print(
        f"matmul peak ({n}x{n}): "
        + ", ".join(f"{t} thread(s) {d} {p / 1e9:.1f} GFLOP/s" for (t, d), p in peaks.items())
    )
    print()
    print("| run | samples/s | vs eager 1 thread fp32 | outside fwd/bwd | model GFLOP/s | of matmul peak |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['name']} | {r['samples_per_s']:,.0f} | {r['samples_per_s'] / base:.2f}x | "
            f"{r['outside']:.0%} | {r['gflops']:.1f} | {r['peak_share']:.0%} |"
        )
    speedup = rows[1]["samples_per_s"] / base
    print()
    print(
        f"compiled vs eager (commit 1d55271's step), 1 thread fp32: {speedup:.2f}x the samples/s "
        f"(bar {SPEEDUP_BAR:.0f}x: {'PASS' if speedup >= SPEEDUP_BAR else 'FAIL'}); compile + "
        f"{args.warmup} warm-up steps took {rows[1]['warmup_s']:.1f} s (eager: {rows[0]['warmup_s']:.1f} s; "
        "a first run on a machine compiles, later runs load inductor's cache)"
    )
    print(
        f"1 thread fp32 at {peaks[(1, 'fp32')] / 1e9:.0f} GFLOP/s matmul peak: the compiled step reaches "
        f"{rows[1]['peak_share']:.0%} of it, the eager step {rows[0]['peak_share']:.0%}"
    )
    print(
        f"TRMLoss input checks off (the trainer) vs on: {base / rows[-3]['samples_per_s']:.2f}x the samples/s "
        "(on a GPU each check is also a host sync)"
    )
    one, two = rows[-2], rows[-1]
    print()
    print(
        f"scaling efficiency, 2 processes vs 1 (torchrun): {two['samples_per_s'] / (2 * one['samples_per_s']):.0%}"
    )
    print(f"stop-flag all-reduce per step (2 processes): {two['stop_sync_us']:.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
