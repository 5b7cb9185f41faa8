"""Adaptive vs fixed-step ACT inference: does the compute saved by halting show in wall time?

``python -m trm_act.bench act [--batch 512] [--max-steps 8] [--repeats 5] ...``

TRM and HRM run every sample for all steps at evaluation; :func:`trm_act.act.act_predict` with
``adaptive=True`` drops rows as they halt. If halting is free, its time relative to the fixed run is
``mean_steps / max_steps`` (the ideal); the target is at most 1.15 x that.

The batch: a model at the default :class:`~trm_act.model.TRMConfig` (random weights) gets a halt
head that reads the direction in which what it reads (the pooled answer, and with a belief the revised
belief added to it) moves over the steps. Its halting step on each of ``--candidates`` random observations is
found with the real halting rule; the bias is set so that as many steps as possible occur, and the
benchmark batch is drawn evenly from the candidates of each halting step 1..max_steps (with
replacement). So halting depends on the input through the model's own halt head, and the halting
steps of the batch are spread over 1..max_steps. The steps reported are those act_predict returns.

On a CPU shared with other jobs, pass ``--threads 1``: with more intra-op threads than free cores,
OpenMP contention makes every small op slow and the timings meaningless.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from trm_act.act import act_predict, first_halt_step
from trm_act.bench import bench_parser
from trm_act.model import MIXERS, RecurrentTRM, TRMConfig

TARGET_FACTOR = 1.15


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser("act", __doc__)
    parser.add_argument("--batch", type=int, default=512, help="rows in the benchmark batch")
    parser.add_argument("--max-steps", type=int, default=8, help="reasoning-step cap (TRMConfig.max_steps)")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed runs of each mode; the median is reported"
    )
    parser.add_argument(
        "--candidates", type=int, default=2048, help="random observations to draw the batch from"
    )
    parser.add_argument("--mixer", choices=sorted(MIXERS), default=TRMConfig.mixer, help="token mixer")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and data")
    args = parser.parse_args(argv)
    for name in ("batch", "max_steps", "repeats", "candidates"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


@torch.no_grad()
def halt_input_trajectories(
    model: RecurrentTRM, obs: torch.Tensor, max_steps: int, chunk: int = 512
) -> torch.Tensor:
    """What the halt head reads (the pooled answer, plus the revised belief when the model carries one), for every
    row after every step of a full run: (N, S, D)."""
    seen: list[torch.Tensor] = []
    hook = model.halt_head.register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0]))
    try:
        rows = []
        for start in range(0, obs.shape[0], chunk):
            x = model.encode(obs[start : start + chunk])  # (n, W, D)
            carry = model.init_carry(x.shape[0], device=x.device)
            seen.clear()
            for _ in range(max_steps):
                carry = model.step(x, carry).carry
            rows.append(torch.stack(seen, dim=1))  # (n, S, D)
    finally:
        hook.remove()
    return torch.cat(rows).cpu()


def halting_steps(trajectories: torch.Tensor, bias: float, max_steps: int) -> torch.Tensor:
    """Step at which each row halts if the halt head's bias moves by ``bias``; trajectories (N, S) halt logits."""
    return first_halt_step(trajectories + bias, max_steps)  # (N,)


def build_benchmark(args: argparse.Namespace) -> tuple[RecurrentTRM, torch.Tensor]:
    torch.manual_seed(args.seed)
    config = TRMConfig(max_steps=args.max_steps, mixer=args.mixer)
    model = RecurrentTRM(config).to(args.device).eval()
    gen = torch.Generator().manual_seed(args.seed)
    candidates = torch.randn(args.candidates, config.window, config.n_features, generator=gen)
    halt_inputs = halt_input_trajectories(model, candidates.to(args.device), args.max_steps)  # (N, S, D)
    # The halt head reads the direction in which the answer moves while the model thinks (so its
    # logit grows with the steps taken) plus a random direction (so that where it starts depends on
    # the sample). Search their mix and the bias for the most even spread of halting steps.
    progress = (halt_inputs[:, -1] - halt_inputs[:, 0]).mean(0)  # (D,)
    noise = torch.randn(progress.shape, generator=gen)  # (D,)
    best_weight, best_bias, best_score = progress, 0.0, (-1, -1)
    for mix in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0):
        weight = progress / progress.norm() + mix * noise / noise.norm()  # (D,)
        traj = halt_inputs @ weight  # (N, S) halt logits before the bias
        for q in torch.linspace(0.02, 0.98, 49).tolist():
            bias = -torch.quantile(traj.flatten(), q).item()
            counts = torch.bincount(halting_steps(traj, bias, args.max_steps), minlength=args.max_steps + 1)[
                1:
            ]
            score = (int((counts > 0).sum()), int(counts.min()))
            if score > best_score:
                best_weight, best_bias, best_score = weight, bias, score
    with torch.no_grad():
        model.halt_head.weight.copy_(best_weight[None].to(model.halt_head.weight))
        model.halt_head.bias.fill_(best_bias)
    traj = halt_inputs @ best_weight  # (N, S)
    steps = halting_steps(traj, best_bias, args.max_steps)

    # Equal share of the batch for every halting step that occurs (drawn with replacement).
    present = [s for s in range(1, args.max_steps + 1) if (steps == s).any()]
    picks = []
    for i in range(args.batch):
        pool = (steps == present[i % len(present)]).nonzero().squeeze(1)
        picks.append(pool[torch.randint(len(pool), (1,), generator=gen)].item())
    return model, candidates[torch.tensor(picks)].to(args.device)


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model, obs = build_benchmark(args)
    adaptive = act_predict(model, obs, adaptive=True)  # warm-up, and the steps actually taken
    fixed = act_predict(model, obs, adaptive=False)
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.repeats):  # interleaved, so that machine noise hits both modes alike
        for mode in (True, False):
            times[mode].append(timed(lambda mode=mode: act_predict(model, obs, adaptive=mode), args.device))
    t_adaptive, t_fixed = statistics.median(times[True]), statistics.median(times[False])

    mean_steps = adaptive.steps.float().mean().item()
    ideal = mean_steps / args.max_steps
    ratio = t_adaptive / t_fixed
    target = TARGET_FACTOR * ideal
    histogram = torch.bincount(adaptive.steps.cpu(), minlength=args.max_steps + 1)[1:].tolist()
    agree = (adaptive.actions == fixed.actions).float().mean().item()
    config = model.config
    print(
        f"ACT inference benchmark: {config.mixer} TRM, d_model={config.d_model}, n_layers={config.n_layers}, "
        f"n_latent={config.n_latent}, n_cycles={config.n_cycles}, window={config.window}, "
        f"device={args.device}, threads={torch.get_num_threads()}, batch={args.batch}, repeats={args.repeats}"
    )
    print(f"halting steps 1..{args.max_steps}: {histogram}")
    print(f"row-steps evaluated: adaptive {adaptive.row_steps}, fixed {fixed.row_steps}")
    print(f"actions equal to the fixed run's: {agree:.1%} (fixed mode keeps thinking past the halt)")
    print()
    print(
        "| mean_steps | max_steps | fixed (ms) | adaptive (ms) | ratio | ideal | target (1.15 x ideal) | result |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|:---|")
    verdict = "PASS" if ratio <= target else "FAIL"
    print(
        f"| {mean_steps:.2f} | {args.max_steps} | {1000 * t_fixed:.1f} | {1000 * t_adaptive:.1f} | "
        f"{ratio:.3f} | {ideal:.3f} | {target:.3f} | {verdict} |"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
