"""``python -m trm_act.bench env``: TradeReplayEnv / TradeReplayVectorEnv throughput vs gym-anytrading.

Both sides run in this process, interleaved, at the same observation window (gym-anytrading's
stocks-v0 uses 30 bars of its bundled GOOGL daily data), on the raw (unwrapped) single env and on a
vector of envs, with the same pre-drawn random actions. Each measurement is repeated and the best
round is kept, which makes the ratios robust to other load on the machine.
"""

from __future__ import annotations

import platform
import time
import warnings
from collections.abc import Callable

import numpy as np

from trm_act.bench import add_throughput_options, bench_parser

SINGLE_TARGET = 1.0  # TradeReplayEnv steps/s over gym-anytrading stocks-v0 steps/s
VECTOR_TARGET = 20.0  # TradeReplayVectorEnv(256) transitions/s over SyncVectorEnv(stocks-v0 x16)


def _rate(run: Callable[[int], int], seconds: float) -> float:
    """Items per second of `run(n)` (which returns the items it produced), timed over >= `seconds`."""
    n, done, elapsed = 64, 0, 0.0
    while elapsed < seconds:
        start = time.perf_counter()
        done += run(n)
        elapsed += time.perf_counter() - start
        n *= 2
    return done / elapsed


def _single_runner(env, actions: np.ndarray) -> Callable[[int], int]:
    env.reset(seed=0)
    action_list = actions.tolist()  # Python ints, as an agent loop would pass
    m = len(action_list)

    def run(n: int) -> int:
        step, reset = env.step, env.reset
        for i in range(n):
            truncated = step(action_list[i % m])[3]
            if truncated:
                reset()
        return n

    return run


def _vector_runner(envs, actions: np.ndarray) -> Callable[[int], int]:
    envs.reset(seed=0)
    batches = [actions[i : i + envs.num_envs] for i in range(0, len(actions) - envs.num_envs, envs.num_envs)]

    def run(n: int) -> int:
        step = envs.step
        for i in range(n):
            step(batches[i % len(batches)])  # both vector envs autoreset on their own
        return n * envs.num_envs

    return run


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("env", __doc__)
    add_throughput_options(parser)
    parser.add_argument(
        "--peer-envs", type=int, default=16, help="sub-envs of the gym-anytrading SyncVectorEnv"
    )
    args = parser.parse_args(argv)

    try:
        import gym_anytrading  # noqa: F401  (registers stocks-v0)
    except ImportError:
        print('gym-anytrading is not installed; the comparison needs it: pip install "trm-act[bench]"')
        return 1
    import gymnasium as gym

    from trm_act.envs import TradeReplayEnv, TradeReplayVectorEnv

    with warnings.catch_warnings():
        # gym-anytrading returns views of its internal state; Gymnasium's passive checker warns about it.
        warnings.simplefilter("ignore")
        peer = gym.make("stocks-v0")
        window = int(peer.unwrapped.window_size)
        ours = TradeReplayEnv(window=window, split="all")
        peer_vec = gym.make_vec("stocks-v0", num_envs=args.peer_envs, vectorization_mode="sync")
        ours_vec = TradeReplayVectorEnv(args.num_envs, window=window, split="all")

        actions = np.random.default_rng(0).integers(0, 2, size=1 << 16)  # (M,) gym-anytrading: Sell/Buy
        our_actions = np.random.default_rng(0).integers(0, 8, size=1 << 16)  # (M,) our 8 strategies
        runners = {
            "peer_single": _single_runner(peer.unwrapped, actions),
            "ours_single": _single_runner(ours, our_actions),
            "peer_vector": _vector_runner(peer_vec, actions),
            "ours_vector": _vector_runner(ours_vec, our_actions),
        }
        best = dict.fromkeys(runners, 0.0)
        for _ in range(args.rounds):  # interleaved, so that load spikes hit both sides alike
            for name, run in runners.items():
                best[name] = max(best[name], _rate(run, args.seconds))

    single_ratio = best["ours_single"] / best["peer_single"]
    vector_ratio = best["ours_vector"] / best["peer_vector"]
    print(
        f"trade-replay env benchmark (window={window}, {platform.processor() or platform.machine()}, "
        f"best of {args.rounds} rounds of >= {args.seconds:g} s)\n"
    )
    print("| environment | mode | throughput |")
    print("|---|---|---:|")
    print(f"| gym-anytrading stocks-v0 | single env (unwrapped) | {best['peer_single']:,.0f} steps/s |")
    print(f"| TradeReplayEnv | single env (unwrapped) | {best['ours_single']:,.0f} steps/s |")
    print(
        f"| gym-anytrading stocks-v0 | SyncVectorEnv x{args.peer_envs} | {best['peer_vector']:,.0f} transitions/s |"
    )
    print(f"| TradeReplayVectorEnv | native x{args.num_envs} | {best['ours_vector']:,.0f} transitions/s |")
    print()
    for label, ratio, target in (
        ("single env", single_ratio, SINGLE_TARGET),
        ("vector env", vector_ratio, VECTOR_TARGET),
    ):
        verdict = "meets" if ratio >= target else "MISSES"
        print(f"{label} ratio: {ratio:.2f}x gym-anytrading ({verdict} the target of {target:g}x)")
    return 0
