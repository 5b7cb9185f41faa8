"""``python -m trm_act.bench real``: walk-forward on real OHLCV series that ship inside registry packages.

Series (``--series``), read from packages of the ``bench`` extra (no network):

- ``googl`` (``gym-anytrading``): ``STOCKS_GOOGL.csv``, daily Alphabet class A stock, 2009-05-22 .. 2018-08-29,
  2,335 bars (Adj Close present: prices are split-adjusted by our loader);
- ``eurusd`` (``gym-anytrading``): ``FOREX_EURUSD_1H_ASK.csv``, hourly EUR/USD ask, 2017-01-01 .. 2017-12-29,
  6,225 bars. Its ``Time`` column is day first (``01.02.2017`` is 1 February), which a generic parser reads
  month first and then finds unsorted: the adapter here parses it with its explicit format;
- ``sp500`` (``arch``): ``data/sp500/sp500.csv.gz``, the daily S&P 500 index, 1999-01-04 .. 2018-12-31, 5,031
  bars (its dates are month first, ``1/4/1999``, parsed with their explicit format);
- ``nasdaq`` (``arch``): ``data/nasdaq/nasdaq.csv.gz``, the daily NASDAQ Composite index over the same days.
  It is a validation series, not among the reported ones (``--series`` leaves it out unless named): a rule
  added for real data is checked on it before the reported series are run.

Each series is written once as a plain OHLCV CSV into ``--out/data/`` (the format ``--data`` reads), then every
recipe (``--recipes``, from ``trm_act.bench.learn``: ``default`` is the CLI default, ``fresh_priced`` the same with
the halting that prices computation, ``seed_loss_hmm`` the seed's loss on regime-model labels) is walked forward
on it with ``trm_act.walkforward``.

Budget: the defaults fit a 2-core machine in a few minutes per series and recipe: ``--folds 3`` (expanding,
the first quarter of the bars only trains), ``--steps 300`` optimizer steps per fold (the CLI default is
1500), ``--jobs 2`` folds at a time, one training seed (``--seeds N``: seeds 0..N-1, a row each and their spread).
The DSR charges for every recipe, fold and seed run on a series (``n_trials = recipes x folds x seeds``). The
figures are a reduced-budget measurement, not the default recipe's best: say so when quoting them.

``--speed`` measures the walk-forward's cost instead: on ``sp500`` (a real 5,031-bar daily CSV), one bare default
training run (``python -m trm_act.train --data sp500.csv``, 1,500 steps) and then a 5-fold walk-forward of the same
default recipe (``python -m trm_act.walkforward --data sp500.csv --folds 5``, its default ``--jobs``: one fold per
core), then the same with ``--fold-steps proportional``, each as its own process, one after the other; it prints the
wall times and each walk-forward's ratio to the single run against the bar of 2.5 (``speed.json`` in ``--out``).

Writes ``real.json`` and ``real.md`` into ``--out`` and prints the table. Walk-forward directories are kept
in ``--out/<series>-<recipe>/``; running the command again continues them (finished folds are kept).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trm_act.bench import bench_parser, saved_results, single_label_costs_note
from trm_act.config import ExperimentConfig
from trm_act.envs import load_ohlcv
from trm_act.stitch import verdict
from trm_act.walkforward import FOLD_STEPS, WalkForwardConfig, walk_forward


@dataclass(frozen=True)
class Series:
    """A real OHLCV file shipped inside a registry package."""

    package: str
    """The importable package that ships it (installed by the ``bench`` extra)."""
    file: str
    """Its path inside the package."""
    time_column: str | None = None
    """With ``time_format``: the timestamp column, parsed with that explicit format (None: the loader's own)."""
    time_format: str | None = None


SERIES: dict[str, Series] = {
    "googl": Series("gym_anytrading", "datasets/data/STOCKS_GOOGL.csv"),  # daily Alphabet stock, 2009-2018
    "eurusd": Series(
        "gym_anytrading",
        "datasets/data/FOREX_EURUSD_1H_ASK.csv",  # hourly EUR/USD (ask), 2017
        time_column="Time",
        time_format="%d.%m.%Y %H:%M:%S.%f",
    ),
    "sp500": Series(
        "arch",
        "data/sp500/sp500.csv.gz",  # the daily S&P 500 index, 1999-2018
        time_column="Date",
        time_format="%m/%d/%Y",
    ),
    "nasdaq": Series(
        "arch",
        "data/nasdaq/nasdaq.csv.gz",  # the daily NASDAQ Composite, 1999-2018: validation only
        time_column="Date",
        time_format="%m/%d/%Y",
    ),
}
REPORTED = ("googl", "eurusd", "sp500")
"""The series whose results the docs report (the default ``--series``); the others are for validation."""
SUPPORTED_RECIPES = (
    "default",
    "seed_loss",
    "seed_loss_hmm",
    "one_step",
    "short_labels",
    "realized_costs",
    "single_costs",
    "no_ema",
    "fresh_priced",
    "fresh_gain",
    "belief_gain_episode64",
    "fresh_walk8",
)
"""Recipes of ``bench learn`` that run on real data (no true regimes, the RecurrentTRM model)."""


def dataset_path(series: Series) -> Path:
    """Path of the series' file in its package; a one-line error when the package is missing."""
    try:
        module = importlib.import_module(series.package)
    except ImportError:
        pip_name = series.package.replace("_", "-")
        raise ValueError(
            f'bench real reads series shipped in {pip_name}; install it with pip install "trm-act[bench]" '
            f"(or pip install {pip_name})"
        ) from None
    path = Path(module.__file__).parent / series.file
    if not path.is_file():
        raise ValueError(f"{path}: not in this {series.package} version; pip install -U {series.package}")
    return path


def adapt(name: str) -> pd.DataFrame:
    """The series as a validated OHLCV frame (``load_ohlcv``'s columns), read without network."""
    series = SERIES[name]
    path = dataset_path(series)
    if series.time_column is None:
        return load_ohlcv(path)
    raw = pd.read_csv(path)
    stamps = pd.to_datetime(raw[series.time_column], format=series.time_format)
    return load_ohlcv(
        raw.drop(columns=series.time_column).set_index(pd.DatetimeIndex(stamps, name="timestamp")),
        name=str(path),
    )


def write_series(name: str, folder: Path) -> Path:
    """``folder/<name>.csv`` in the format ``--data`` reads (written once; checked on every run)."""
    frame = adapt(name)
    path = folder / f"{name}.csv"
    folder.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        frame.to_csv(path, float_format="%.17g")
    reread = load_ohlcv(path)
    if not (reread.index.equals(frame.index) and (reread.to_numpy() == frame.to_numpy()).all()):
        raise ValueError(
            f"{path}: differs from the {name} series shipped in {SERIES[name].package}; delete it and rerun"
        )
    return path


def recipe_config(recipe: str, data: Path, steps: int, seed: int = 0) -> ExperimentConfig:
    from trm_act.bench.learn import RECIPES

    edit, model_factory = RECIPES[recipe]
    assert model_factory is None, recipe
    config = edit(ExperimentConfig())
    env = dataclasses.replace(config.env, data=str(data.resolve()))
    train = dataclasses.replace(config.train, steps=steps, seed=seed, progress=False)
    return dataclasses.replace(config, env=env, train=train)


def summarize(
    series: str, recipe: str, result: dict[str, Any], seconds: float, seed: int = 0, label_costs: str = "realized"
) -> dict[str, Any]:
    """One row of the table: the stitched model and gated model against long, best fixed and flat."""
    stitched = result["stitched"]
    model, dsr = stitched["model"], stitched["dsr"]
    better = "long" if stitched["long"]["pnl"] >= stitched["best_fixed"]["pnl"] else "best_fixed"
    ci, gated_ci = stitched[f"model_minus_{better}"], stitched[f"gated_minus_{better}"]
    return {
        "series": series,
        "recipe": recipe,
        "seed": seed,
        "decisions": stitched["decisions"],
        "model_pnl": model["pnl"],
        "model_sharpe": model["sharpe"],
        "long_pnl": stitched["long"]["pnl"],
        "best_fixed_pnl": stitched["best_fixed"]["pnl"],
        "flat_pnl": stitched["flat"]["pnl"],
        "better_benchmark": better,
        "diff": ci["total"],
        "diff_ci_low": ci["total_ci_low"],
        "diff_ci_high": ci["total_ci_high"],
        "verdict": verdict(ci),
        "gated_pnl": stitched["gated"]["pnl"],
        "gated_model_folds": len(stitched["gated"]["model_folds"]),
        "folds": len(stitched["folds"]),
        "gated_diff": gated_ci["total"],
        "gated_diff_ci_low": gated_ci["total_ci_low"],
        "gated_diff_ci_high": gated_ci["total_ci_high"],
        "gated_verdict": verdict(gated_ci),
        "psr": stitched["psr"]["value"],
        "dsr": dsr["value"],
        "n_trials": dsr["n_trials"],
        "mean_steps": model["mean_steps"],
        "max_steps": model["max_steps"],
        "seconds": seconds,
        "label_costs": label_costs,
    }


def _interval(row: dict[str, Any], prefix: str) -> str:
    return (
        f"{row[f'{prefix}diff']:+.3f} vs {row['better_benchmark'].replace('_', ' ')} "
        f"[{row[f'{prefix}diff_ci_low']:+.3f}, {row[f'{prefix}diff_ci_high']:+.3f}] ({row[f'{prefix}verdict']})"
    )


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    gated = all("gated_pnl" in r for r in rows)  # results saved before the gated model have no such columns
    columns = [
        "series",
        "recipe",
        "decisions",
        "model PnL",
        "long",
        "best fixed",
        "flat",
        "model − better of long/best fixed [95% CI]",
        "PSR",
        "DSR",
        "mean steps",
    ]
    if gated:
        columns += ["gated PnL (model folds)", "gated − better of long/best fixed [95% CI]"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    seeded = len({r.get("seed", 0) for r in rows}) > 1
    for r in rows:
        cells = [
            r["series"],
            f"{r['recipe']} (seed {r.get('seed', 0)})" if seeded else r["recipe"],
            str(r["decisions"]),
            f"{r['model_pnl']:+.3f}",
            f"{r['long_pnl']:+.3f}",
            f"{r['best_fixed_pnl']:+.3f}",
            f"{r['flat_pnl']:+.3f}",
            _interval(r, ""),
            f"{r['psr']:.3f}",
            f"{r['dsr']:.3f} (n={r['n_trials']})",
            f"{r['mean_steps']:.2f} of {r['max_steps']}",
        ]
        if gated:
            cells += [
                f"{r['gated_pnl']:+.3f} ({r['gated_model_folds']} of {r['folds']})",
                _interval(r, "gated_"),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Walk-forward, {args.folds} expanding folds, {args.steps} optimizer steps per fold"
        + (
            " (the largest; the others in proportion to their training decisions)"
            if getattr(args, "fold_steps", "equal") == "proportional"
            else ""
        )
        + ", embargo "
        f"{args.embargo} bars; PnL is the stitched out-of-sample log-PnL (net of 5 bp costs). The interval is a "
        "stationary block bootstrap of the per-decision difference; PSR is P[true Sharpe > 0]; the DSR charges "
        f"for n trials (recipes x folds{' x seeds' if seeded else ''})."
        + (
            " The gated model plays the model in a fold only when the model's out-of-sample record in the earlier "
            "folds beats best fixed's, and best fixed otherwise (fold 0 plays best fixed)."
            if gated
            else ""
        )
        + single_label_costs_note(rows)
    )
    if seeded:
        lines += ["", *seed_summary(rows)]
    return "\n".join(lines)


def seed_summary(rows: list[dict[str, Any]]) -> list[str]:
    """Per series and recipe: the difference to the better benchmark, mean ± standard error over seeds."""
    lines = []
    for key in dict.fromkeys((r["series"], r["recipe"]) for r in rows):
        group = [r for r in rows if (r["series"], r["recipe"]) == key]
        parts = []
        for prefix, name in (("", "model"), ("gated_", "gated model")):
            if not all(f"{prefix}diff" in r for r in group):
                continue
            diffs = np.array([r[f"{prefix}diff"] for r in group])
            spread = f" ± {diffs.std(ddof=1) / np.sqrt(len(diffs)):.3f}" if len(diffs) > 1 else ""
            verdicts = [r[f"{prefix}verdict"] for r in group]
            parts.append(
                f"{name} {diffs.mean():+.3f}{spread} (worse on {verdicts.count('worse')}, better on "
                f"{verdicts.count('better')})"
            )
        better = group[0]["better_benchmark"].replace("_", " ")
        lines.append(
            f"- {key[0]} / {key[1]}, {len(group)} seeds, minus {better} (mean ± standard error over seeds; "
            f"significant seeds): {'; '.join(parts)}."
        )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser("real", __doc__)
    parser.add_argument(
        "--series",
        default=",".join(REPORTED),
        help=f"comma-separated, from {list(SERIES)} (default: the reported {', '.join(REPORTED)})",
    )
    parser.add_argument(
        "--recipes",
        default="default,seed_loss_hmm",
        help=f"comma-separated, from {list(SUPPORTED_RECIPES)} (default: default,seed_loss_hmm)",
    )
    parser.add_argument("--folds", type=int, default=3, help="walk-forward folds (default 3)")
    parser.add_argument(
        "--steps", type=int, default=300, help="optimizer steps per fold (default 300; the CLI's is 1500)"
    )
    parser.add_argument(
        "--embargo", type=int, default=0, help="bars kept out of training before each test fold"
    )
    parser.add_argument("--jobs", type=int, default=2, help="folds trained at once (default 2)")
    parser.add_argument(
        "--seeds", type=int, default=1, help="training seeds per series and recipe (0, 1, ...; default 1)"
    )
    parser.add_argument(
        "--fold-steps",
        choices=FOLD_STEPS,
        default="equal",
        help="optimizer steps per fold: equal, or in proportion to its training decisions (walkforward's flag)",
    )
    parser.add_argument(
        "--out", default="runs/bench-real", help="directory for the runs, real.json and real.md"
    )
    parser.add_argument("--from-json", default=None, help="print the table of a saved real.json again")
    parser.add_argument(
        "--speed",
        action="store_true",
        help="time one default training run and a 5-fold walk-forward of it on sp500 instead (the 2.5x bar)",
    )
    args = parser.parse_args(argv)
    args.series = [s.strip() for s in args.series.split(",") if s.strip()]
    args.recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [s for s in args.series if s not in SERIES]
    if unknown:
        parser.error(f"--series: unknown series {unknown}; choose from {list(SERIES)}")
    unknown = [r for r in args.recipes if r not in SUPPORTED_RECIPES]
    if unknown:
        parser.error(
            f"--recipes: {unknown} cannot run on real data here; choose from {list(SUPPORTED_RECIPES)}"
        )
    if args.folds < 2 or args.steps < 1 or args.jobs < 1 or args.seeds < 1 or args.embargo < 0:
        parser.error("--folds must be >= 2, --steps, --jobs and --seeds >= 1, --embargo >= 0")
    if args.from_json is not None:
        args.saved = saved_results(
            args.from_json, parser, "the real.json that python -m trm_act.bench real writes in its --out directory"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        saved = args.saved
        print(markdown(saved["rows"], argparse.Namespace(**saved["budget"])))
        return 0
    out = Path(args.out)
    if args.speed:
        return speed(out)
    rows, started = [], time.perf_counter()
    trials = len(args.recipes) * args.folds * args.seeds  # every recipe, fold and seed run on a series
    try:
        for series in args.series:
            data = write_series(series, out / "data")
            for recipe in args.recipes:
                for seed in range(args.seeds):
                    begun = time.perf_counter()
                    print(
                        f"{series} / {recipe} / seed {seed}: walk-forward ({args.folds} folds, {args.steps} steps)",
                        file=sys.stderr,
                    )
                    settings = WalkForwardConfig(
                        folds=args.folds, embargo=args.embargo, trials=trials, fold_steps=args.fold_steps
                    )
                    name = f"{series}-{recipe}" + (f"-seed{seed}" if seed else "")  # seed 0: the old name
                    if args.fold_steps != "equal":
                        name += f"-{args.fold_steps}"
                    config = recipe_config(recipe, data, args.steps, seed)
                    result = walk_forward(config, settings, out / name, jobs=args.jobs)
                    seconds = time.perf_counter() - begun
                    rows.append(summarize(series, recipe, result, seconds, seed, config.env.label_costs))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - started
    budget = {"folds": args.folds, "steps": args.steps, "embargo": args.embargo, "jobs": args.jobs}
    if args.seeds > 1:
        budget["seeds"] = args.seeds
    if args.fold_steps != "equal":
        budget["fold_steps"] = args.fold_steps
    table = markdown(rows, argparse.Namespace(**budget))
    out.mkdir(parents=True, exist_ok=True)
    (out / "real.json").write_text(
        json.dumps({"rows": rows, "budget": budget, "wall_s": wall}, indent=2) + "\n"
    )
    (out / "real.md").write_text(table + "\n")
    print(table)
    print(f"\nwall time {wall:.0f} s; tear sheets: {out}/<series>-<recipe>/report.html", file=sys.stderr)
    return 0


SPEED_BAR = 2.5
"""The walk-forward may take at most this many times one default training run (the issue's bar)."""
SPEED_FOLDS = 5


def speed(out: Path) -> int:
    """Time one default training run and a 5-fold walk-forward of it on sp500; print both and the ratio."""
    try:
        data = write_series("sp500", out / "data")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    root = out / "speed"
    shutil.rmtree(root, ignore_errors=True)  # a second measurement must not resume the first
    common = ["--data", str(data.resolve()), "--logdir", str(root), "--no-progress"]
    commands = {
        "one default training run": [
            "trm_act.train",
            "--env",
            "trade-replay",
            "--run-name",
            "single",
            *common,
        ],
        f"{SPEED_FOLDS}-fold walk-forward": [
            "trm_act.walkforward",
            "--folds",
            str(SPEED_FOLDS),
            "--run-name",
            "walkforward",
            *common,
        ],
        f"{SPEED_FOLDS}-fold walk-forward, --fold-steps proportional": [
            "trm_act.walkforward",
            "--folds",
            str(SPEED_FOLDS),
            "--fold-steps",
            "proportional",
            "--run-name",
            "walkforward-proportional",
            *common,
        ],
    }
    seconds = {}
    for name, command in commands.items():
        print(f"{name}: python -m {' '.join(command)}", file=sys.stderr)
        begun = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", *command], stdout=subprocess.DEVNULL, check=False)
        seconds[name] = time.perf_counter() - begun
        if done.returncode != 0:
            print(f"error: {name} exited with {done.returncode}", file=sys.stderr)
            return 1
    single = next(iter(seconds.values()))
    ratios = {name: value / single for name, value in list(seconds.items())[1:]}
    print(
        f"sp500: {len(load_ohlcv(data)):,} daily bars; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}"
    )
    for name, value in seconds.items():
        print(f"{name}: {value:.1f} s")
    for name, ratio in ratios.items():
        verdict = "PASS" if ratio <= SPEED_BAR else "FAIL"
        print(f"{name} / one run: {ratio:.2f}x (bar {SPEED_BAR}x): {verdict}")
    record = {"seconds": seconds, "ratios": ratios, "bar": SPEED_BAR, "cpus": os.cpu_count()}
    (out / "speed.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
