"""The held-out results as text: the table ``python -m trm_act.train`` prints at the end of a run."""

from __future__ import annotations

from typing import Any

from trm_act.tables import HIT_RATE, MAX_DRAWDOWN, PNL, SHARPE, Column, score_table

SUMMARY_COLUMNS = (PNL, SHARPE, Column("accuracy", "accuracy", 8, ".3f"), MAX_DRAWDOWN, HIT_RATE)
"""The columns of :func:`format_summary`'s table, after the policy's name."""


def format_summary(metrics: dict[str, Any]) -> str:
    """A readable table of the held-out results."""
    model, baselines, split = metrics["model"], metrics["baselines"], metrics["test_split"]
    sample = model.get("fixed_depth_decisions")  # a belief's fixed depths on a fixed sample of a large split
    fixed_name = f"model (fixed {model['max_steps']} steps" + (f", {sample} sampled decisions)" if sample else ")")
    rows = [
        (f"model (adaptive, {model['mean_steps']:.2f} steps)", model),
        (fixed_name, model["fixed_max_steps"]),
    ]
    if "regime_oracle" in baselines:
        rows.append(("regime oracle", baselines["regime_oracle"]))
    if "filter_bound" in baselines:  # a filter told the true regime parameters: what a causal model can hope for
        rows.append(("filter bound", baselines["filter_bound"]))
    rows += [
        (f"best fixed ({baselines['best_fixed']['strategy']})", baselines["best_fixed"]),
        ("random", baselines["random"]),
        ("hindsight oracle", baselines["oracle"]),
    ]
    where = (
        f"{split['instruments']} instruments, calendar cutoff {split['cutoff']}"
        if "instruments" in split
        else f"bars {split['first_bar']}..{split['last_bar']}"
    )
    decisions = f"{split['decisions']} decisions"
    if "sampled_from" in split:  # a periodic evaluation's fixed sample
        decisions = f"a fixed sample of {split['decisions']} of its {split['sampled_from']} decisions"
    lines = [f"held-out test split: {decisions} ({where})", *score_table(rows, SUMMARY_COLUMNS)]
    fixed = model["fixed_max_steps"]
    if fixed.get("every_depth"):  # a belief's fixed depths were walked at once: no time of max_steps alone
        timing = (
            f"{model['wall_time_s'] * 1e3:.1f} ms adaptive; {fixed['wall_time_s'] * 1e3:.1f} ms for the fixed depths "
            f"1..{model['max_steps']} walked at once"
        )
    else:
        timing = (
            f"{model['wall_time_s'] * 1e3:.1f} ms adaptive vs {fixed['wall_time_s'] * 1e3:.1f} ms fixed "
            f"({model['time_ratio_adaptive_vs_fixed']:.2f}x)"
            + (f" on a fixed sample of {model['timed_decisions']} decisions" if "timed_decisions" in model else "")
        )
    lines.append(
        f"halting: mean {model['mean_steps']:.2f} of {model['max_steps']} steps "
        f"({model['mean_steps'] / model['max_steps']:.2f} of the fixed depth's reasoning steps); inference {timing}"
    )
    if len(model["pnl_by_fixed_steps"]) > 1:
        depths = ", ".join(f"{pnl:+.3f}" for pnl in model["pnl_by_fixed_steps"])
        where = ""
        if sample:
            adaptive = model["fixed_depth_sample_adaptive_pnl"]
            where = f" (on a fixed sample of {sample} decisions, where the adaptive answers earn {adaptive:+.3f})"
        lines.append(f"pnl when every decision runs exactly 1..{model['max_steps']} steps: {depths}{where}")
    if "regime_oracle" in baselines and baselines["regime_oracle"]["pnl"] > 0:
        lines.append(
            f"model captures {model['pnl'] / baselines['regime_oracle']['pnl']:.0%} of the regime oracle's PnL"
        )
    if model.get("by_regime"):
        regimes = model["by_regime"]
        width = max(len(name) for name in regimes)
        lines.append(
            "per true regime: model pnl / regime oracle pnl (the oracle's strategy: share of decisions on it)"
        )
        for name, row in regimes.items():
            lines.append(
                f"  {name:<{width}}  {row['pnl']:>+7.3f} / {row['regime_oracle_pnl']:>+7.3f}  "
                f"({row['regime_oracle_strategy']}: {row['picks_oracle_strategy']:.0%})"
            )
    return "\n".join(lines)
