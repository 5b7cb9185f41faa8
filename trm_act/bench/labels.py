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
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import numpy as np

from trm_act.config import ExperimentConfig
from trm_act.envs import STRATEGIES, build_replay
from trm_act.loss import LossConfig

HORIZONS = (8, 32, 64, 128)
"""Label horizons compared by default: the trade's 8 bars, the CLI's 32, and longer."""


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
    best = replay.regime_oracle_actions("train")[train]  # (N,) the regime's best strategy by mean PnL
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trm_act.bench labels", description=__doc__.splitlines()[0]
    )
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
    args = parser.parse_args(argv)
    try:
        horizons = [int(h) for h in args.horizons.split(",")]
    except ValueError:
        parser.error(f"--horizons: expected comma-separated integers, got {args.horizons!r}")
    rows = [label_quality(h, args.threshold) for h in horizons]
    print(markdown(rows, args.threshold))
    return 0
