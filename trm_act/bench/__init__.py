"""Benchmarks: ``python -m trm_act.bench <name>``. Each prints ratios against a peer measured in the same run."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the dispatcher imports this module; the config (and torch) load only where a bench needs them
    from trm_act.config import ExperimentConfig

# Issue 24's peer is commit 1d55271's default recipe, run eagerly. The recipe has changed since (one cycle per
# reasoning step and gain halting, docs/thinking.md section 11) and so has the step (its graph covers only the
# bars the answer reads, docs/model.md), so the peer sets the changed fields back; it had no belief, so its carry is
# fresh whatever the default's.
PEER_RECIPE: dict[str, dict[str, Any]] = {
    "model": {"n_cycles": 2, "graph": "window", "carry": "fresh"},
    "loss": {"halt_target": "profitable", "confidence_threshold": 0.9},
}


def peer_flags() -> list[str]:
    """PEER_RECIPE as flags of ``python -m trm_act.train``."""
    return [
        flag
        for fields in PEER_RECIPE.values()
        for name, value in fields.items()
        for flag in (f"--{name.replace('_', '-')}", str(value))
    ]


def peer_config(config: ExperimentConfig) -> ExperimentConfig:
    """An ExperimentConfig with PEER_RECIPE's fields in place of its own."""
    parts = {part: dataclasses.replace(getattr(config, part), **fields) for part, fields in PEER_RECIPE.items()}
    return dataclasses.replace(config, **parts)


class _DefaultsHelp(argparse.HelpFormatter):
    """--help lists each option's default, unless its help already speaks of one or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default is not None and action.default is not False and action.default != argparse.SUPPRESS
        if not action.option_strings or "default" in text or not shown:
            return text
        return f"{text} (default: %(default)s)"


def bench_parser(name: str, doc: str) -> argparse.ArgumentParser:
    """The argument parser of ``python -m trm_act.bench <name>``, described by the first line of its docstring."""
    return argparse.ArgumentParser(
        prog=f"python -m trm_act.bench {name}", description=doc.splitlines()[0], formatter_class=_DefaultsHelp
    )


def saved_results(path: str, parser: argparse.ArgumentParser, written_by: str) -> dict[str, Any]:
    """The JSON file ``--from-json`` names; a one-line usage error when it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        parser.error(f"--from-json {path}: {exc}; pass {written_by}")


def single_label_costs_note(runs: list[dict[str, Any]]) -> str:
    """A caption sentence naming the recipes trained on labels that charge one round trip per label horizon.

    Runs saved before ``env.label_costs`` existed carry no such key and trained on those labels too; the docs
    say so beside their tables, so only runs that record ``"single"`` are named here.
    """
    recipes = sorted({run["recipe"] for run in runs if run.get("label_costs") == "single"})
    if not recipes:
        return ""
    return (
        " Labels charge one round trip of costs per label horizon (`--env.label-costs single`) for "
        + ", ".join(recipes)
        + "."
    )


def add_throughput_options(parser: argparse.ArgumentParser) -> None:
    """The options of a vector-env throughput measurement, shared by ``bench env`` and ``bench universe``."""
    parser.add_argument("--seconds", type=float, default=1.0, help="minimum timing per measurement round")
    parser.add_argument("--rounds", type=int, default=3, help="measurement rounds; the best is kept")
    parser.add_argument("--num-envs", type=int, default=256, help="sub-envs of TradeReplayVectorEnv")
