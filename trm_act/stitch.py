"""Stitch the folds' out-of-sample decisions into one track record and score it: ``walkforward.json``.

Input: the walk-forward's plan and each finished fold's record (``trm_act.foldrun``). Every policy (the model,
long, best fixed, random, each fixed strategy, and the gated model) is scored per fold and on the stitched record,
the folds' test decisions one after the other in time order. ``METHODS`` states how each figure is computed; the
same text goes into ``walkforward.json`` and the tear sheet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trm_act import stats
from trm_act.envs import STRATEGIES
from trm_act.tables import PNL, SHARPE, Column, score_table

BENCHMARKS = ("long", "best_fixed", "random")
"""Benchmarks named in every fold entry and in ``stitched`` (each fixed strategy is there too)."""
COMPARED = ("long", "best_fixed")
"""The benchmarks the model and the gated model are compared with, each with a bootstrap interval."""
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0
TABLE_COLUMNS = (
    PNL,
    SHARPE,
    Column("sortino", "sortino", 7, ".2f"),
    Column("max_dd", "max_drawdown", 6, ".3f"),
    Column("turnover", "turnover", 8, ".4f"),
    Column("exposure", "exposure", 8, ".3f"),
)
"""The columns of :func:`format_table`'s stitched figures."""

METHODS: dict[str, str] = {
    "stitching": "Each fold trains on bars before its test span only and is scored on the decisions of its test "
    "span; the out-of-sample decisions of all folds, in time order, form one track record (instruments of a "
    "universe pooled in time order). Decisions do not overlap (stride = horizon by default), so the record is a "
    "true backtest of the fold models, each used only after its training data ended.",
    "pnl": "Sum of the per-decision realized log-PnL (fractions of capital, net of costs at env.cost per unit "
    "of position change).",
    "sharpe": "Annualised Sharpe ratio: mean / standard deviation (population) of the per-decision PnL, times "
    "sqrt(decisions per year), decisions per year = bars per year of the data / stride (Sharpe 1994; the "
    "sqrt-of-time scaling assumes serially uncorrelated PnL, Lo 2002).",
    "sortino": "Annualised Sortino ratio: mean per-decision PnL / downside deviation sqrt(mean(min(PnL, 0)^2)) "
    "over all decisions, times sqrt(decisions per year); target 0 (Sortino and Price 1994).",
    "max_drawdown": "Largest fractional fall of the equity curve exp(cumsum(PnL)) from its running peak "
    "(Magdon-Ismail and Atiya 2004).",
    "turnover": "Position units traded per bar: for each decision |p_0| + sum_k |p_k - p_(k-1)| + |p_(h-1)| "
    "(entry from flat, every rebalance, exit to flat: what the cost model charges), summed and divided by "
    "decisions x stride bars.",
    "exposure": "Share of bars with a non-zero position: for each decision the bars of its trade whose position "
    "is not 0, summed and divided by decisions x stride bars (positions of every strategy per bar come from "
    "trm_act.envs.strategies; the smooth rules are almost never exactly 0).",
    "switch_rate": "Model only: share of decisions whose strategy differs from the decision before.",
    "best_fixed": "In each fold, per instrument, the strategy with the best mean PnL over that fold's training "
    "decisions (purged and embargoed), held through the fold's test span.",
    "gated": "The model traded only where its own out-of-sample record says it earns its keep: fold k plays the "
    "model when the model's PnL minus best fixed's, summed over the stitched folds before k, is above 0, and best "
    "fixed otherwise (the first stitched fold, with no record, plays best fixed; with folds missing, the choices "
    "change once they finish). Each instrument's last ceil(horizon / stride) decisions of every fold are left out "
    "of the record, since their trades may still be open when the next fold starts; every decision counted has "
    "settled before fold k's first decision. Nothing is tuned: the rule has no parameter.",
    "random": "A uniformly random strategy per decision (numpy default_rng seeded with (train.seed, fold)).",
    "model_minus": "Per-decision PnL difference model (or gated) - benchmark on the same decisions. Mean with a "
    "stationary-bootstrap percentile interval (Politis and Romano 1994; mean block length ceil(N^(1/3)), Hall, "
    "Horowitz and Jing 1995; 2000 resamples, seed 0): ci_low/ci_high per decision, total_ci_low/total_ci_high "
    "for the sum over the record (N x mean). An interval above 0 means significantly better at 95%.",
    "psr": "Probabilistic Sharpe ratio against a zero benchmark: Phi((SR - 0) sqrt(N - 1) / sqrt(1 - g3 SR + "
    "(g4 - 1)/4 SR^2)), SR the per-decision Sharpe, g3 the skewness, g4 the kurtosis (3 for normal) of the "
    "stitched model PnL, N decisions (Bailey and Lopez de Prado 2012). The probability that the true Sharpe "
    "ratio is above 0.",
    "dsr": "Deflated Sharpe ratio: PSR against SR0 = sqrt(V) ((1 - gamma) Phi^-1(1 - 1/n_trials) + gamma "
    "Phi^-1(1 - 1/(n_trials e))), the Sharpe ratio the best of n_trials unskilled tries would show (gamma the "
    "Euler-Mascheroni constant; Bailey and Lopez de Prado 2014). V is the variance of the trials' per-decision "
    "Sharpe ratios: the variance over folds of the model's per-decision Sharpe, or --sharpe-variance "
    "(annualised, divided by decisions per year). n_trials should count every recipe and seed tried.",
}


@dataclass
class Curves:
    """What the tear sheet draws (stitched record)."""

    time: np.ndarray
    """(N,) int64 ns of each stitched decision."""
    pnl: dict[str, np.ndarray]
    """Policy -> (N,) per-decision PnL (model, gated, long, best_fixed, random, flat, ...)."""
    fold_starts: list[int] = field(default_factory=list)
    """Index of each fold's first decision in the stitched record."""
    folds: list[int] = field(default_factory=list)
    """The fold number of each part."""
    steps: np.ndarray | None = None
    """(N,) reasoning steps of the model."""
    max_steps: int = 1
    depth_pnl: np.ndarray | None = None
    """(max_steps, N) the model's PnL per decision when every decision runs exactly k = 1..max_steps steps."""


def policy_arrays(arrays: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Policy -> (pnl, turnover, exposed), each (N,), for one fold's record."""
    rows = np.arange(len(arrays["pnl"]))

    def pick(actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(arrays[key][rows, actions] for key in ("pnl", "turnover", "exposed"))  # type: ignore[return-value]

    out = {
        "model": pick(arrays["actions"]),
        "model_fixed_depth": pick(arrays["fixed_actions"]),
        "best_fixed": pick(arrays["best_fixed"]),
        "random": pick(arrays["random"]),
    }
    for index, name in enumerate(STRATEGIES):
        out[name] = pick(np.full(len(rows), index))
    return out


def _figures(parts: tuple[np.ndarray, np.ndarray, np.ndarray], periods: float, stride: int) -> dict[str, Any]:
    pnl, turnover, exposed = parts
    return stats.performance(pnl, periods, turnover=turnover, exposed_bars=exposed, bars=stride)


def _switch_rate(actions: np.ndarray) -> float:
    return float((actions[1:] != actions[:-1]).mean()) if len(actions) > 1 else 0.0


def settled_mask(symbols: np.ndarray, open_decisions: int) -> np.ndarray:
    """(N,) bool: False for each instrument's last ``open_decisions`` decisions of a fold (time-ordered)."""
    _, instrument = np.unique(symbols, return_inverse=True)  # (N,)
    order = np.argsort(instrument, kind="stable")  # each instrument's decisions together, in time order
    grouped = instrument[order]
    # 1 for an instrument's last decision, 2 for the one before, ...
    from_end = np.searchsorted(grouped, grouped, side="right") - np.arange(len(order))
    keep = np.empty(len(symbols), dtype=bool)
    keep[order] = from_end > open_decisions
    return keep


def gate(folds: list[tuple[np.ndarray, np.ndarray]], open_decisions: int) -> list[tuple[bool, float]]:
    """Per fold in time order: (does the gated model play the model?, the model's lead before the fold).

    ``folds`` holds each fold's (edge, symbols), both (N,): the model's PnL minus best fixed's per decision, and
    the decision's instrument. The lead is the sum of the edges of the earlier folds' decisions settled before
    this fold starts (``METHODS["gated"]``); the gated model plays the model when it is above 0.
    """
    lead, choices = 0.0, []
    for edge, symbols in folds:
        choices.append((lead > 0.0, lead))
        lead += float(edge[settled_mask(symbols, open_decisions)].sum())
    return choices


def verdict(ci: dict[str, float]) -> str:
    """The verdict of a ``bootstrap_mean_ci`` result at its level: better, worse or not different."""
    return "better" if ci["total_ci_low"] > 0 else "worse" if ci["total_ci_high"] < 0 else "not different"


def _model_extras(actions: np.ndarray, steps: np.ndarray, depth: np.ndarray, pnl: np.ndarray, max_steps: int):
    rows = np.arange(len(actions))
    return {
        "mean_steps": float(steps.mean()) if len(steps) else 0.0,
        "max_steps": max_steps,
        "steps_histogram": np.bincount(steps, minlength=max_steps + 1)[1:].tolist(),
        "pnl_by_fixed_steps": [float(pnl[rows, depth[k]].sum()) for k in range(depth.shape[0])],
        "switch_rate": _switch_rate(actions),
        "strategy_usage": np.bincount(actions, minlength=len(STRATEGIES)).tolist(),
    }


def score_fold(
    info: dict[str, Any], arrays: dict[str, np.ndarray], periods: float, stride: int
) -> dict[str, Any]:
    """One entry of ``walkforward.json``'s ``folds``: spans, counts, and every policy's figures."""
    policies = policy_arrays(arrays)
    keys = (
        "fold",
        "train_start",
        "train_end",
        "test_start",
        "test_end",
        "train_decisions",
        "purged",
        "embargoed",
        "test_decisions",
        "instruments",
        "best_fixed_strategy",
        "run_dir",
        "step",
        "seed",
        "seconds",
        "cut_at",
    )
    entry = {key: info[key] for key in keys if key in info}
    model = _figures(policies["model"], periods, stride)
    model |= _model_extras(
        arrays["actions"], arrays["steps"], arrays["depth_actions"], arrays["pnl"], int(info["max_steps"])
    )
    model["fixed_max_steps"] = _figures(policies["model_fixed_depth"], periods, stride)
    model["per_decision_sharpe"] = stats.sharpe_ratio(policies["model"][0])
    entry["model"] = model
    for name in BENCHMARKS:
        entry[name] = _figures(policies[name], periods, stride)
    entry["fixed"] = {name: _figures(policies[name], periods, stride) for name in STRATEGIES}
    return entry


def stitch(
    plan: dict[str, Any],
    records: dict[int, tuple[dict[str, Any], dict[str, np.ndarray]]],
    *,
    trials: int | None = None,
    sharpe_variance: float | None = None,
    resamples: int = 2000,
) -> tuple[dict[str, Any], Curves | None]:
    """``walkforward.json`` (as a dict) and the stitched curves, from the finished folds' records.

    Args:
        plan: the walk-forward's ``plan.json``.
        records: fold number -> (fold.json, oos arrays) of every finished fold.
        trials: n_trials of the DSR; None = folds stitched x 1 seed.
        sharpe_variance: variance of the trials' annualised Sharpe ratios for the DSR; None = from the folds.
        resamples: bootstrap resamples of the intervals.
    """
    periods = float(plan["periods_per_year"])
    stride = int(plan["stride"])
    planned = [fold["fold"] for fold in plan["folds"]]
    done = sorted(k for k in planned if k in records)
    missing = [k for k in planned if k not in records]
    result: dict[str, Any] = {
        "format": "trm_act.walkforward/1",
        "data": plan["data"],
        "scheme": plan["walkforward"]["scheme"],
        "folds_planned": len(planned),
        "embargo": plan["walkforward"]["embargo"],
        "horizon": plan["horizon"],
        "label_horizon": plan["label_horizon"],
        "stride": stride,
        "bars_per_year": plan["bars_per_year"],
        "periods_per_year": periods,
        "complete": not missing,
        "missing_folds": missing,
        "methods": METHODS,
        "folds": [score_fold(*records[k], periods, stride) for k in done],
        "config": plan["config"],
    }
    if not done:
        result["stitched"] = None
        return result, None

    arrays = [records[k][1] for k in done]
    parts = [policy_arrays(a) for a in arrays]
    edges = [(p["model"][0] - p["best_fixed"][0], a["symbol"]) for p, a in zip(parts, arrays, strict=True)]
    choices = gate(edges, math.ceil(int(plan["horizon"]) / stride))
    for part, entry, (model_played, lead) in zip(parts, result["folds"], choices, strict=True):
        part["gated"] = part["model" if model_played else "best_fixed"]
        entry["gated"] = _figures(part["gated"], periods, stride) | {
            "plays": "model" if model_played else "best_fixed",
            "model_lead_before": lead,
        }
    joined = {name: tuple(np.concatenate([p[name][i] for p in parts]) for i in range(3)) for name in parts[0]}
    actions = np.concatenate([a["actions"] for a in arrays])
    steps = np.concatenate([a["steps"] for a in arrays])
    depth = np.concatenate([a["depth_actions"] for a in arrays], axis=1)
    pnl_matrix = np.concatenate([a["pnl"] for a in arrays])
    max_steps = max(int(records[k][0]["max_steps"]) for k in done)

    stitched: dict[str, Any] = {"decisions": len(actions), "folds": done}
    model = _figures(joined["model"], periods, stride)
    model |= _model_extras(actions, steps, depth, pnl_matrix, max_steps)
    model["fixed_max_steps"] = _figures(joined["model_fixed_depth"], periods, stride)
    stitched["model"] = model
    for name in BENCHMARKS:
        stitched[name] = _figures(joined[name], periods, stride)
    for name in STRATEGIES:
        stitched[name] = _figures(joined[name], periods, stride)
    stitched["gated"] = _figures(joined["gated"], periods, stride) | {
        "model_folds": [k for k, (model_played, _) in zip(done, choices, strict=True) if model_played]
    }
    model_pnl = joined["model"][0]
    for policy in ("model", "gated"):
        for name in COMPARED:
            difference = joined[policy][0] - joined[name][0]  # (N,)
            stitched[f"{policy}_minus_{name}"] = (
                stats.bootstrap_mean_ci(
                    difference, confidence=CONFIDENCE, n_resamples=resamples, seed=BOOTSTRAP_SEED
                )
                if len(difference) >= 2
                else None
            )
    stitched["psr"] = _psr(model_pnl, periods)
    fold_sharpes = [entry["model"]["per_decision_sharpe"] for entry in result["folds"]]
    stitched["dsr"] = _dsr(model_pnl, periods, fold_sharpes, len(done), trials, sharpe_variance)
    result["stitched"] = stitched

    starts = np.cumsum([0] + [len(a["actions"]) for a in arrays[:-1]]).tolist()
    curves = Curves(
        time=np.concatenate([a["time"] for a in arrays]),
        pnl={
            name: joined[name][0] for name in ("model", "gated", "long", "best_fixed", "random", *STRATEGIES)
        },
        fold_starts=starts,
        folds=done,
        steps=steps,
        max_steps=max_steps,
        depth_pnl=pnl_matrix[np.arange(len(actions))[None, :], depth],
    )
    return result, curves


def _psr(pnl: np.ndarray, periods: float) -> dict[str, Any] | None:
    if len(pnl) < 2:
        return None
    sharpe = stats.sharpe_ratio(pnl)
    skew, kurtosis = stats.moments(pnl)
    return {
        "value": stats.probabilistic_sharpe_ratio(sharpe, len(pnl), skew, kurtosis, benchmark=0.0),
        "benchmark_sharpe": 0.0,
        "sharpe_per_decision": sharpe,
        "sharpe_annualised": sharpe * math.sqrt(periods),
        "skew": skew,
        "kurtosis": kurtosis,
        "n": len(pnl),
    }


def _dsr(
    pnl: np.ndarray,
    periods: float,
    fold_sharpes: list[float],
    n_folds: int,
    trials: int | None,
    sharpe_variance: float | None,
) -> dict[str, Any] | None:
    if len(pnl) < 2:
        return None
    if trials is None:
        n_trials = n_folds
        trials_source = (
            f"default: {n_folds} fold(s) x 1 seed actually run; pass --trials N to count every recipe and "
            "seed tried before this one"
        )
    else:
        n_trials, trials_source = int(trials), "--trials"
    if sharpe_variance is not None:
        variance = float(sharpe_variance) / periods
        variance_source = "--sharpe-variance (annualised, divided by decisions per year)"
    elif len(fold_sharpes) >= 2:
        variance = float(np.var(fold_sharpes, ddof=1))
        variance_source = (
            f"variance (ddof 1) of the model's per-decision Sharpe over {len(fold_sharpes)} folds"
        )
    else:
        return {
            "value": None,
            "n_trials": n_trials,
            "n_trials_source": trials_source,
            "reason": "needs 2 or more folds, or --sharpe-variance",
        }
    sharpe = stats.sharpe_ratio(pnl)
    skew, kurtosis = stats.moments(pnl)
    sr0 = stats.expected_max_sharpe(n_trials, variance)
    return {
        "value": stats.deflated_sharpe_ratio(sharpe, len(pnl), skew, kurtosis, n_trials, variance),
        "n_trials": n_trials,
        "n_trials_source": trials_source,
        "sharpe_variance": variance,
        "sharpe_variance_source": variance_source,
        "expected_max_sharpe": sr0,
        "expected_max_sharpe_annualised": sr0 * math.sqrt(periods),
    }


def format_table(result: dict[str, Any]) -> str:
    """A readable summary of ``walkforward.json``: the stitched figures, the intervals, PSR and DSR."""
    stitched = result["stitched"]
    if stitched is None:
        return "no finished fold to stitch"
    model = stitched["model"]
    rows = [
        (f"model (adaptive, {model['mean_steps']:.2f} of {model['max_steps']} steps)", model),
        (f"model (fixed {model['max_steps']} steps)", model["fixed_max_steps"]),
        (
            f"gated model (model in {len(stitched['gated']['model_folds'])} of {len(stitched['folds'])} folds)",
            stitched["gated"],
        ),
        ("long", stitched["long"]),
        ("best fixed (per fold, on train)", stitched["best_fixed"]),
        ("flat", stitched["flat"]),
        ("random", stitched["random"]),
    ]
    folds = ", ".join(str(k) for k in stitched["folds"])
    lines = [
        f"walk-forward ({result['scheme']}, embargo {result['embargo']}): {stitched['decisions']} out-of-sample "
        f"decisions from folds {folds} of {result['folds_planned']}",
        *score_table(rows, TABLE_COLUMNS),
    ]
    for policy in ("model", "gated"):
        for name in COMPARED:
            ci = stitched[f"{policy}_minus_{name}"]
            if ci is None:
                continue
            lines.append(
                f"{policy} - {name.replace('_', ' ')}: {ci['total']:+.3f} PnL, 95% interval "
                f"[{ci['total_ci_low']:+.3f}, {ci['total_ci_high']:+.3f}] ({verdict(ci)} at 95%, block bootstrap)"
            )
    psr, dsr = stitched["psr"], stitched["dsr"]
    if psr is not None:
        text = f"PSR (P[true Sharpe > 0]) {psr['value']:.3f}"
        if dsr is not None and dsr["value"] is not None:
            text += (
                f"; DSR {dsr['value']:.3f} over {dsr['n_trials']} trials "
                f"(Sharpe the best unskilled trial would show: {dsr['expected_max_sharpe_annualised']:.2f} a year)"
            )
        lines.append(text)
    if result["missing_folds"]:
        lines.append(f"missing folds: {', '.join(str(k) for k in result['missing_folds'])}")
    return "\n".join(lines)
