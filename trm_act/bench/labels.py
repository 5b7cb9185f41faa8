"""``python -m trm_act.bench labels``: how much a hindsight label says, and what the seed's halt target can reach.

On the synthetic market the true regime of every decision is known, so the best any policy can do with the
labels is bounded by what they say about the regime. For each label horizon this prints, over the train
split's decisions:

- ``label = regime's best``: share of decisions whose hindsight label is the strategy with the best mean
  PnL in their true regime (the regime oracle's choice). Cross-entropy on the labels pulls towards this
  strategy only where it is also the regime's most frequent label;
- ``mode = best``: regimes whose most frequent label is that strategy;
- ``label accuracy ceiling``: label accuracy of a classifier told the true regime (it predicts each
  regime's most frequent label), an upper bound for one that has to infer the regime;
- ``halt-target ceiling``: the share of decisions on which the seed's halt target ("max probability
  > threshold and argmax = label") can be 1 for that calibrated classifier: only regimes whose most
  frequent label has a share above the threshold count, weighted by that share. When it is near zero, a
  halt head trained on the target learns never to halt (halting collapses), however good the model.

``--rows N`` is a separate mode, the scale of the regime model behind ``label_source="hmm"``
(``trm_act.envs.regimes``): it generates N bars (the default synthetic market, or ``--market random-walk``:
``bench memory``'s random-walk CSV), fits the model to their ``ret`` and ``volume_z`` in a child process and
times the fit and one labelling pass, with the child's peak RSS (``ru_maxrss``). The peer, measured in the
same run, is the sequential forward-backward (``method="loop"``) against the blocked scan on the first
``--peer-rows`` bars: fit seconds, seconds per EM iteration, and whether labels and posteriors agree. It
prints this machine's one-thread fp32 matmul GFLOP/s (so the seconds can be read on another CPU), a
markdown table, and PASS or FAIL against the issue's bars: a 2,000,000-bar fit in at most 60 s and
1.5 GiB. The exit status is 1 on FAIL.
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
from typing import Any

import numpy as np

from trm_act.baselines import regime_oracle_actions
from trm_act.bench import bench_parser
from trm_act.config import ExperimentConfig
from trm_act.envs import STRATEGIES, TradeReplayConfig, build_replay
from trm_act.loss import LossConfig

HORIZONS = (8, 32, 64, 128)
"""Label horizons compared by default: the trade's 8 bars, the CLI's 32, and longer."""
BAR_FIT_S = 60.0  # issue 24 part 3: a 2,000,000-bar regime-model fit, at most this long ...
BAR_RSS_GIB = 1.5  # ... and this much peak RSS
MARKETS = ("synthetic", "random-walk")
# The fit in a child, so that its peak RSS is its own (not the generator's): a .npz of ret and volume_z in,
# a JSON line out.
_FIT_CHILD = """
import json, resource, sys, time
import numpy as np
from trm_act.envs.regimes import fit_regime_hmm, most_probable_states
with np.load(sys.argv[1]) as data:
    ret, volume = data["ret"], data["volume"]
start, cpu = time.perf_counter(), time.process_time()
hmm = fit_regime_hmm(ret, volume, int(sys.argv[2]))
fit_s, fit_cpu_s = time.perf_counter() - start, time.process_time() - cpu
start = time.perf_counter()
most_probable_states(hmm, ret, volume)
label_s = time.perf_counter() - start
peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
print(json.dumps({"fit_s": fit_s, "fit_cpu_s": fit_cpu_s, "label_s": label_s, "iterations": hmm.iterations,
                  "peak_gib": peak_gib}))
"""


def label_quality(
    label_horizon: int, threshold: float, config: ExperimentConfig | None = None
) -> dict[str, Any]:
    """Figures of the hindsight labels over ``label_horizon`` bars on the train split (synthetic data)."""
    config = ExperimentConfig() if config is None else config
    replay = build_replay(dataclasses.replace(config.env, label_horizon=label_horizon))
    if replay.regimes is None or replay.regime_names is None:
        raise ValueError("bench labels needs synthetic data: only there are the true regimes known.")
    train = replay.split_indices("train")
    labels, regimes = replay.labels[train], replay.regimes[train]  # (N,), (N,)
    best = regime_oracle_actions(replay, "train")[train]  # (N,) the regime's best strategy by mean PnL
    per_regime = {}
    ceiling_accuracy = ceiling_halt = 0.0
    for k, name in enumerate(replay.regime_names):
        mine = regimes == k
        if not mine.any():
            continue
        shares = np.bincount(labels[mine], minlength=len(STRATEGIES)) / mine.sum()  # (S,)
        mode = int(shares.argmax())
        weight = mine.mean()
        ceiling_accuracy += weight * shares[mode]
        ceiling_halt += weight * shares[mode] * (shares[mode] > threshold)
        per_regime[name] = {
            "best": STRATEGIES[int(best[mine][0])],
            "best_share": float(shares[int(best[mine][0])]),
            "mode": STRATEGIES[mode],
            "mode_share": float(shares[mode]),
        }
    return {
        "label_horizon": label_horizon,
        "decisions": int(train.size),
        "label_is_regime_best": float((labels == best).mean()),
        "regimes_mode_is_best": sum(r["mode"] == r["best"] for r in per_regime.values()),
        "regimes": len(per_regime),
        "accuracy_ceiling": float(ceiling_accuracy),
        "halt_target_ceiling": float(ceiling_halt),
        "per_regime": per_regime,
    }


def markdown(rows: list[dict[str, Any]], threshold: float) -> str:
    """The summary table over label horizons, then each regime's best strategy and most frequent label."""
    lines = [
        f"Train split of the default synthetic market ({rows[0]['decisions']} decisions); trades stay 8 bars.",
        "",
        "| label horizon | label = regime's best | mode = best | label accuracy ceiling "
        f"| halt-target ceiling (> {threshold}) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['label_horizon']} | {row['label_is_regime_best']:.0%} | "
            f"{row['regimes_mode_is_best']} of {row['regimes']} | {row['accuracy_ceiling']:.0%} | "
            f"{row['halt_target_ceiling']:.1%} |"
        )
    lines += [
        "",
        "Per regime at each horizon: its best strategy (share of labels) / its most frequent label (share):",
    ]
    names = list(rows[0]["per_regime"])
    lines += ["", "| label horizon | " + " | ".join(names) + " |", "|---:|" + ":---|" * len(names)]
    for row in rows:
        cells = [
            f"{r['best']} {r['best_share']:.0%} / {r['mode']} {r['mode_share']:.0%}"
            for r in (row["per_regime"][name] for name in names)
        ]
        lines.append(f"| {row['label_horizon']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def model_inputs(rows: int, market: str = "synthetic", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ret, volume_z), each (rows,) float64, of ``rows`` generated bars: the regime model's inputs, as
    ``label_source="hmm"`` takes them from the features (bar 0, with no return, dropped)."""
    import pandas as pd

    from trm_act.envs import SyntheticMarketConfig
    from trm_act.envs.features import FEATURE_NAMES, compute_features
    from trm_act.envs.synthetic import generate_synthetic_market

    if market == "synthetic":
        bars = generate_synthetic_market(SyntheticMarketConfig(n_bars=rows + 1, seed=seed))
        columns = [bars[c].to_numpy() for c in ("open", "high", "low", "close", "volume")]
    elif market == "random-walk":
        from trm_act.bench.memory import write_ohlcv_csv

        with tempfile.TemporaryDirectory(prefix="trm_act_labels_") as tmp:
            csv = Path(tmp) / "ohlcv.csv"
            write_ohlcv_csv(csv, rows + 1, seed)
            bars = pd.read_csv(csv)
        columns = [bars[c].to_numpy(np.float64) for c in ("Open", "High", "Low", "Close", "Volume")]
    else:
        raise ValueError(f"market={market!r}: expected one of {MARKETS}")
    features = compute_features(*columns)[1:]  # (rows, F) float32
    ret = features[:, FEATURE_NAMES.index("ret")].astype(np.float64)
    return ret, features[:, FEATURE_NAMES.index("volume_z")].astype(np.float64)


def fit_in_child(ret: np.ndarray, volume: np.ndarray, n_states: int) -> dict[str, float]:
    """Fit and label in a fresh process: seconds (fit wall and CPU, one labelling pass), EM iterations, peak
    RSS in GiB."""
    with tempfile.TemporaryDirectory(prefix="trm_act_labels_") as tmp:
        path = Path(tmp) / "inputs.npz"
        np.savez(path, ret=ret, volume=volume)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        command = [sys.executable, "-c", _FIT_CHILD, str(path), str(n_states)]
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"the fit child exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def peer(ret: np.ndarray, volume: np.ndarray, n_states: int) -> dict[str, Any]:
    """The loop (sequential forward-backward, the old implementation) and the scan on the same bars, in this
    process: fit and labelling seconds, EM iterations, whether the labels agree, and the largest posterior
    difference at the loop's fitted parameters."""
    from trm_act.envs.regimes import (
        _forward_backward,
        _forward_backward_loop,
        _log_emission,
        fit_regime_hmm,
        most_probable_states,
    )

    rows, fits = {}, {}
    for method in ("loop", "scan"):
        start = time.perf_counter()
        fits[method] = fit_regime_hmm(ret, volume, n_states, method=method)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        states = most_probable_states(fits[method], ret, volume, method=method)
        rows[method] = {
            "fit_s": fit_s,
            "label_s": time.perf_counter() - start,
            "iterations": fits[method].iterations,
            "states": states,
        }
    hmm = fits["loop"]
    params = {name: getattr(hmm, name) for name in ("intercept", "ar", "sigma", "volume_mean", "volume_std")}
    log_emission = _log_emission(ret, volume, **params)
    posterior_loop = _forward_backward_loop(log_emission, hmm.transition, hmm.initial)[0]
    posterior_scan = _forward_backward(log_emission, hmm.transition, hmm.initial)[0]
    return {
        "loop": rows["loop"],
        "scan": rows["scan"],
        "labels_equal": bool(np.array_equal(rows["loop"]["states"], rows["scan"]["states"])),
        "posterior_max_diff": float(np.abs(posterior_loop - posterior_scan).max()),
    }


def scale_report(rows: int, peer_rows: int, peers: dict[str, Any], big: dict[str, float], head: str) -> str:
    """The markdown table of ``--rows`` and its verdict lines."""

    def line(name: str, bars: int, run: dict[str, Any], peak: str = "") -> str:
        per_iteration = run["fit_s"] / run["iterations"]
        return (
            f"| {name} | {bars:,} | {run['iterations']} | {run['fit_s']:.2f} s "
            f"| {per_iteration * 1e3:,.0f} ms | {run['label_s']:.2f} s | {peak} |"
        )

    loop, scan = peers["loop"], peers["scan"]
    per_iteration = loop["fit_s"] / loop["iterations"] / (scan["fit_s"] / scan["iterations"])
    loop_per_bar = loop["fit_s"] / loop["iterations"] / peer_rows  # seconds per bar and EM iteration
    loop_big = loop_per_bar * rows * big["iterations"]  # the loop, extrapolated: linear in bars
    fit_ok, rss_ok = big["fit_s"] <= BAR_FIT_S, big["peak_gib"] <= BAR_RSS_GIB
    lines = [
        head,
        "",
        "| forward-backward | bars | EM iterations | fit | per EM iteration | labelling pass | peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|",
        line("loop (old, sequential)", peer_rows, loop),
        line("scan (blocked)", peer_rows, scan),
        line("scan (blocked)", rows, big, f"{big['peak_gib']:.2f} GiB"),
        "",
        f"On {peer_rows:,} bars the scan fits {loop['fit_s'] / scan['fit_s']:.1f}x faster than the loop "
        f"({per_iteration:.1f}x per EM iteration); "
        f"labels {'identical' if peers['labels_equal'] else 'DIFFER'}, posteriors within "
        f"{peers['posterior_max_diff']:.1e}.",
        f"The loop on {rows:,} bars, extrapolated linearly ({loop_per_bar * 1e6:.2f} us a bar and iteration "
        f"x {big['iterations']} iterations): {loop_big:,.0f} s, {loop_big / big['fit_s']:.0f}x the scan's "
        f"{big['fit_s']:.1f} s (CPU {big['fit_cpu_s']:.1f} s).",
        f"fit of {rows:,} bars: {big['fit_s']:.1f} s ({'PASS' if fit_ok else 'FAIL'}: bar {BAR_FIT_S:.0f} s);"
        f" peak RSS {big['peak_gib']:.2f} GiB ({'PASS' if rss_ok else 'FAIL'}: bar {BAR_RSS_GIB} GiB)",
    ]
    return "\n".join(lines)


def _scale(args: argparse.Namespace) -> int:
    from trm_act.bench.busy import matmul_gflops

    n_states = TradeReplayConfig().label_states if args.states is None else args.states
    start = time.perf_counter()
    ret, volume = model_inputs(args.rows, args.market, args.seed)
    print(f"generated {args.rows:,} bars ({args.market}) in {time.perf_counter() - start:.0f} s", flush=True)
    peers = peer(ret[: args.peer_rows], volume[: args.peer_rows], n_states)
    big = fit_in_child(ret, volume, n_states)
    del ret, volume
    threads = os.environ.get("OMP_NUM_THREADS", "1")
    head = (
        f"Regime-model fit (label_source='hmm', {n_states} states) on {args.market} bars, seed {args.seed}; "
        f"{threads} thread(s), {os.cpu_count()} CPUs; one-thread fp32 matmul {matmul_gflops():.0f} GFLOP/s"
    )
    print(scale_report(args.rows, args.peer_rows, peers, big, head))
    return 0 if big["fit_s"] <= BAR_FIT_S and big["peak_gib"] <= BAR_RSS_GIB else 1


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("labels", __doc__)
    default = ",".join(map(str, HORIZONS))
    parser.add_argument(
        "--horizons", default=default, help=f"comma-separated label horizons in bars (default: {default})"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=LossConfig().confidence_threshold,
        help="confidence threshold of the halt target (default: the seed's 0.7)",
    )
    scale = parser.add_argument_group("regime model at scale (--rows)")
    scale.add_argument(
        "--rows", type=int, default=None, help="time the label_source='hmm' fit on this many generated bars"
    )
    scale.add_argument("--market", choices=MARKETS, default="synthetic", help="what --rows generates")
    scale.add_argument("--peer-rows", type=int, default=20_000, help="bars of the loop-vs-scan peer")
    scale.add_argument("--states", type=int, default=None, help="hidden states (default: env label_states)")
    scale.add_argument("--seed", type=int, default=0, help="seed of the generated bars")
    args = parser.parse_args(argv)
    if args.rows is not None:
        if sys.platform != "linux":
            print("--rows reads ru_maxrss in KiB, as Linux reports it; run it on Linux")
            return 1
        if args.rows < 1 or not 1 <= args.peer_rows <= args.rows:
            parser.error(
                f"--rows {args.rows} / --peer-rows {args.peer_rows}: expected 1 <= peer-rows <= rows"
            )
        return _scale(args)
    try:
        horizons = [int(h) for h in args.horizons.split(",")]
    except ValueError:
        parser.error(f"--horizons: expected comma-separated integers, got {args.horizons!r}")
    rows = [label_quality(h, args.threshold) for h in horizons]
    print(markdown(rows, args.threshold))
    return 0
