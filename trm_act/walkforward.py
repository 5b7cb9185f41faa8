"""``python -m trm_act.walkforward --data FILE_OR_UNIVERSE [--folds K] [options]``: walk-forward evaluation.

Each fold trains an ordinary run on the past only (``DIR/NAME/fold-k/``, purged and embargoed; see
``trm_act.folds``) and is scored on its test span; the out-of-sample decisions of all folds are stitched into
one track record and scored against long, best fixed, random and every fixed strategy, with block-bootstrap
intervals, the probabilistic and the deflated Sharpe ratio (``trm_act.stitch``, ``trm_act.stats``). Writes
``DIR/NAME/walkforward.json`` and the tear sheet ``DIR/NAME/report.html`` (``trm_act.tearsheet``).

Walk-forward flags (``--folds``, ``--scheme``, ``--fold-steps``, ``--embargo``, ``--train-bars``, ``--logdir``,
``--run-name``, ``--resume``, ``--fold``, ``--jobs``, ``--trials``, ``--sharpe-variance``, ``--stitch-only``) are read
here; every other flag, and ``--config FILE``, is a training flag of ``python -m trm_act.train`` and sets the recipe
each fold trains with. Folds run in parallel processes (``--jobs``, spawn, one torch thread each); a fold that
would leave a core idle is cut at a checkpoint and finished on another core (``trm_act.schedule``). Running the
same command again, or ``--resume DIR/NAME``, continues fold by fold: finished folds are kept, an interrupted
one resumes from its checkpoint. ``--fold k`` runs fold k alone (a cluster job array can run the folds on many
nodes against one shared directory); ``--resume DIR/NAME --stitch-only`` then stitches whatever folds exist
and names the missing ones. User mistakes exit with code 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import multiprocessing
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trm_act import interrupts
from trm_act.checkpoint import LATEST, CheckpointError, load_checkpoint
from trm_act.cli import report_user_mistake
from trm_act.config import SECTIONS, ExperimentConfig, with_absent_fields, with_absolute_data
from trm_act.files import write_json
from trm_act.foldrun import FoldJob, is_finished, load_record, run_fold
from trm_act.folds import (
    SCHEMES,
    FoldSlice,
    Market,
    check_slices,
    load_market,
    plan_folds,
    slice_fold,
    write_fold_csv,
)
from trm_act.schedule import Piece, wrap_around
from trm_act.stitch import format_table, stitch

PLAN_FILE = "plan.json"
RESULT_FILE = "walkforward.json"
PLAN_FORMAT = "trm_act.walkforward-plan/1"
EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130
# Settings that only steer the statistics: a resume or a rerun may change them.
STATS_SETTINGS = ("trials", "sharpe_variance", "resamples")
# Config fields that steer how a run is executed, not what it learns: a rerun may differ in them.
RUNTIME_FIELDS = {"train": ("progress", "threads", "device", "eval_batch_size")}


FOLD_STEPS = ("equal", "proportional")
"""How many optimizer steps each fold trains (``WalkForwardConfig.fold_steps``)."""


@dataclass
class WalkForwardConfig:
    """How the data is cut into folds and how the stitched record is scored."""

    folds: int = 5
    """Test folds K (the data is cut into K + 1 spans when train_bars is None; the first only trains)."""
    scheme: str = "expanding"
    """"expanding": each fold trains on every bar before its test span; "rolling": on the last train_bars."""
    embargo: int = 0
    """Bars right before each test fold that no training decision may read (purging already drops every
    decision whose trade or label window reaches into the test fold)."""
    train_bars: int | None = None
    """Bars of the first training span (and of every rolling one); None = bars / (folds + 1)."""
    trials: int | None = None
    """n_trials of the deflated Sharpe ratio: every recipe and seed tried; None = folds x 1 seed run."""
    sharpe_variance: float | None = None
    """Variance of the trials' annualised Sharpe ratios for the DSR; None = from the folds' Sharpe ratios."""
    resamples: int = 2000
    """Block-bootstrap resamples of the intervals."""
    fold_steps: str = "equal"
    """"equal": every fold trains train.steps optimizer steps; "proportional": fold k trains train.steps x its
    training decisions / the largest fold's, so every fold passes over its training data as often as the largest
    does (an expanding walk-forward's first fold holds a sixth of the data; at equal steps it passes over it six
    times as often)."""

    def __post_init__(self) -> None:
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 2:
            raise ValueError(
                f"--folds {self.folds}: a walk-forward needs at least 2 folds (one train/test split is what "
                "python -m trm_act.train does); use --folds 2 or more"
            )
        if self.scheme not in SCHEMES:
            raise ValueError(f"--scheme {self.scheme}: expected one of {', '.join(SCHEMES)}")
        if isinstance(self.embargo, bool) or not isinstance(self.embargo, int) or self.embargo < 0:
            raise ValueError(f"--embargo {self.embargo}: expected bars >= 0 (0 = purging only)")
        if self.train_bars is not None and (not isinstance(self.train_bars, int) or self.train_bars < 1):
            raise ValueError(f"--train-bars {self.train_bars}: expected bars >= 1, or leave it out")
        if self.trials is not None and (not isinstance(self.trials, int) or self.trials < 1):
            raise ValueError(
                f"--trials {self.trials}: expected the number of recipes and seeds tried, an int >= 1"
            )
        if self.sharpe_variance is not None and not (
            self.sharpe_variance >= 0 and np.isfinite(self.sharpe_variance)
        ):
            raise ValueError(
                f"--sharpe-variance {self.sharpe_variance}: expected a finite variance >= 0 of annualised "
                "Sharpe ratios, or leave it out to use the folds'"
            )
        if self.fold_steps not in FOLD_STEPS:
            raise ValueError(f"--fold-steps {self.fold_steps}: expected one of {', '.join(FOLD_STEPS)}")
        if not isinstance(self.resamples, int) or self.resamples < 100:
            raise ValueError(f"resamples={self.resamples!r}: expected an int >= 100")


@dataclass
class Plan:
    """A walk-forward's folds on its data, ready to run."""

    config: ExperimentConfig
    settings: WalkForwardConfig
    market: Market
    calendar: np.ndarray
    slices: list[FoldSlice]

    def to_json(self) -> dict[str, Any]:
        """``plan.json``: what a resume rebuilds the walk-forward from, and checks the data against."""
        env = self.config.env
        return {
            "format": PLAN_FORMAT,
            "data": self.market.source,
            "fingerprint": self.market.fingerprint(),
            "walkforward": dataclasses.asdict(self.settings),
            "config": self.config.to_dict(),
            "symbols": list(self.market.frames),
            "bars": len(self.calendar),
            "horizon": env.horizon,
            "label_horizon": env.effective_label_horizon,
            "stride": env.effective_stride,
            "train_stride": self.config.train_stride,
            "bars_per_year": self.market.bars_per_year,
            "periods_per_year": self.market.bars_per_year / env.effective_stride,
            "folds": [self.fold_info(s) for s in self.slices],
        }

    def fold_info(self, s: FoldSlice) -> dict[str, Any]:
        """The plan's entry for one fold: spans as ISO timestamps and the decision counts."""
        stamp, span = self.market.timestamp, s.span
        return {
            "fold": span.index,
            "train_start": stamp(s.train_start),
            "train_end": stamp(s.train_end),
            "test_start": stamp(self.calendar[span.test_start]),
            "test_end": stamp(self.calendar[span.test_stop - 1]),
            "train_decisions": s.train_decisions,
            "steps": self.fold_steps(s),
            "purged": s.purged,
            "embargoed": s.embargoed,
            "test_decisions": s.test_decisions,
            "instruments": len(s.ranges),
            "data": f"data/fold-{span.index}.csv",
        }

    def fold_steps(self, s: FoldSlice) -> int:
        """Optimizer steps of fold ``s`` (``WalkForwardConfig.fold_steps``)."""
        steps = self.config.train.steps
        if self.settings.fold_steps == "equal":
            return steps
        largest = max(other.train_decisions for other in self.slices)
        return max(1, round(steps * s.train_decisions / largest))

    def job(self, root: Path, k: int, progress: bool) -> FoldJob:
        s = self.slices[k]
        train = dataclasses.replace(self.config.train, steps=self.fold_steps(s))
        return FoldJob(
            root=str(root),
            index=k,
            config=dataclasses.replace(self.config, train=train),
            csv=str((root / "data" / f"fold-{k}.csv").resolve()),
            train_fraction=s.train_fraction,
            test_fraction=s.test_fraction,
            cut_bars=s.cut_bars,
            test_bars=s.test_bars,
            rows=dict(s.ranges),
            info={key: value for key, value in self.fold_info(s).items() if key != "data"},
            progress=progress,
        )


def make_plan(config: ExperimentConfig, settings: WalkForwardConfig) -> Plan:
    """Load the data and cut it into folds; every problem is a one-line ValueError naming the flag."""
    if config.env.label_source == "regime":
        raise ValueError(
            "--env.label-source regime: the true regimes exist only in the synthetic market's memory, not in a "
            "fold's data file; use hindsight or hmm (regime-model labels, fitted on each fold's training bars)"
        )
    market = load_market(config.env)
    if market.universe and config.env.label_source == "hmm":
        raise ValueError(
            f"--env.label-source hmm fits one regime model to one instrument's bars, but {market.source} holds "
            f"{len(market.frames)} instruments; use --env.label-source hindsight for a universe"
        )
    calendar = market.calendar
    slices = _slices(market, calendar, config, settings, settings.folds)
    try:
        check_slices(slices, config.env, settings.folds, market.source)
    except ValueError as exc:
        feasible = next(
            (k for k in range(settings.folds - 1, 1, -1) if _feasible(market, calendar, config, settings, k)),
            None,
        )
        hint = f" (at most --folds {feasible} fits here)" if feasible else ""
        raise ValueError(f"{exc}{hint}") from None
    return Plan(config, settings, market, calendar, slices)


def _slices(
    market: Market, calendar: np.ndarray, config: ExperimentConfig, settings: WalkForwardConfig, folds: int
) -> list[FoldSlice]:
    spans = plan_folds(len(calendar), folds, settings.scheme, settings.embargo, settings.train_bars)
    return [slice_fold(market, calendar, span, config.env, config.train_stride) for span in spans]


def _feasible(
    market: Market, calendar: np.ndarray, config: ExperimentConfig, settings: WalkForwardConfig, k: int
) -> bool:
    try:
        check_slices(_slices(market, calendar, config, settings, k), config.env, k, market.source)
    except ValueError:
        return False
    return True


def _without_runtime(config: dict[str, Any]) -> dict[str, Any]:
    return {
        section: {k: v for k, v in values.items() if k not in RUNTIME_FIELDS.get(section, ())}
        for section, values in config.items()
    }


def _first_difference(saved: Any, new: Any, where: str = "") -> str | None:
    if isinstance(saved, dict) and isinstance(new, dict):
        for key in sorted(saved.keys() | new.keys()):
            found = _first_difference(saved.get(key), new.get(key), f"{where}.{key}" if where else key)
            if found:
                return found
        return None
    return None if saved == new else f"{where} ({saved!r} then, {new!r} now)"


def check_same_plan(saved: dict[str, Any], new: dict[str, Any], root: Path) -> None:
    """A walk-forward directory is continued only with the data, folds and recipe it was started with."""
    if saved.get("fingerprint") != new["fingerprint"]:
        raise ValueError(
            f"{root}: the data changed since this walk-forward started ({saved.get('data')}); its folds were "
            "trained on other bars: pick another --run-name, or restore the data"
        )
    # A setting an older plan.json lacks (fold_steps, env.label_costs) had its value of then.
    settings = dataclasses.asdict(WalkForwardConfig()) | saved.get("walkforward", {})
    settings = {k: v for k, v in settings.items() if k not in STATS_SETTINGS}
    difference = _first_difference(
        {"walkforward": settings, "config": _without_runtime(with_absent_fields(saved.get("config", {})))},
        {
            "walkforward": {k: v for k, v in new["walkforward"].items() if k not in STATS_SETTINGS},
            "config": _without_runtime(new["config"]),
        },
    )
    if difference:
        raise ValueError(
            f"{root} holds a walk-forward started with other settings: {difference}; continue it with "
            f"--resume {root}, or pick another --run-name"
        )


def prepare_root(plan: Plan, root: Path) -> dict[str, Any]:
    """Create ``root`` with ``plan.json``, or check an existing one against ``plan``; returns the plan's JSON."""
    new = plan.to_json()
    path = root / PLAN_FILE
    if path.is_file():
        saved = _read_json(path)
        check_same_plan(saved, new, root)
        new["walkforward"] = saved["walkforward"] | {k: new["walkforward"][k] for k in STATS_SETTINGS}
    elif root.exists() and any(root.iterdir()):
        raise ValueError(
            f"{root} exists and holds no walk-forward ({PLAN_FILE} missing); pick another --run-name"
        )
    root.mkdir(parents=True, exist_ok=True)
    write_json(path, new)
    return new


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read ({exc}); the walk-forward directory is damaged") from None


def finished_folds(root: Path, n_folds: int) -> list[int]:
    return [k for k in range(n_folds) if is_finished(root / f"fold-{k}")]


def _trained_steps(run_dir: Path, fold: int) -> int:
    """Optimizer steps the checkpoint in ``run_dir`` holds (0 without one): where fold ``fold`` resumes."""
    if not (run_dir / LATEST).is_file():
        return 0
    try:
        return int(load_checkpoint(run_dir / LATEST)["step"])
    except CheckpointError as exc:
        raise FoldError(fold, exc) from exc


def _first_start(pieces: list[Piece], fold: int) -> int:
    return min(p.start for p in pieces if p.fold == fold)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)  # the parent reports; workers stay quiet


def run_folds(
    plan: Plan, root: Path, folds: list[int], jobs: int, log: Any = None
) -> dict[int, dict[str, Any]]:
    """Train and score ``folds`` (skipping finished ones), ``jobs`` at a time; returns their fold.json records.

    Each fold's data file is written first (by this process). With ``jobs`` > 1 the folds run in spawned
    processes with one torch thread each, cut where that keeps every core busy (``trm_act.schedule``); figures do
    not depend on ``jobs`` (each run is deterministic, and resumes from a checkpoint exactly).
    """
    log = log or (lambda message: print(message, file=sys.stderr))
    todo = [k for k in folds if not is_finished(root / f"fold-{k}")]
    for k in todo:
        path = root / "data" / f"fold-{k}.csv"
        if not path.is_file():
            write_fold_csv(plan.market, plan.slices[k], path)
    jobs = max(1, min(jobs, len(todo)))
    progress = jobs == 1 and plan.config.train.progress and sys.stderr.isatty()
    records: dict[int, dict[str, Any]] = {}
    started = time.perf_counter()

    def done(record: dict[str, Any]) -> None:
        records[record["fold"]] = record
        if record["status"] == "completed":
            log(
                f"fold {record['fold']}: done ({record['test_start']} .. {record['test_end']}, "
                f"{record['test_decisions']} test decisions; {time.perf_counter() - started:.0f} s since start)"
            )
        else:
            log(f"fold {record['fold']}: stopped at step {record['step']}; its checkpoint is kept")

    steps = {k: plan.fold_steps(plan.slices[k]) for k in todo}
    if jobs == 1:
        for k in todo:
            trained = _trained_steps(root / f"fold-{k}", k)
            if trained >= steps[k]:
                log(f"fold {k}: trained to step {trained}; scoring it")
            else:
                resumed = f", from its checkpoint at step {trained}" if trained else ""
                log(f"fold {k}: training ({steps[k]} steps{resumed})")
            done(run_fold(plan.job(root, k, progress)))
            if records[k]["status"] != "completed":  # a stop signal: start no further fold
                break
        return records
    each = (
        f"{steps[todo[0]]} steps each"
        if len(set(steps.values())) == 1
        else "steps " + ", ".join(str(steps[k]) for k in todo)
    )
    # Longest first, so that with unequal folds (--fold-steps proportional) the short ones fill the last round;
    # a fold that overflows a core is cut at a checkpoint and finished on another (trm_act.schedule).
    trained = {k: _trained_steps(root / f"fold-{k}", k) for k in todo}
    remaining = {k: steps[k] - trained[k] for k in sorted(todo, key=lambda k: trained[k] - steps[k])}
    # Folds trained to the end but not scored (a stop during their evaluation) are scored first, on their own.
    pending = [Piece(k, steps[k], steps[k], 0, 0) for k, n in remaining.items() if n <= 0] + [
        dataclasses.replace(p, start=p.start + trained[p.fold], stop=p.stop + trained[p.fold])
        for p in wrap_around({k: n for k, n in remaining.items() if n > 0}, jobs)
    ]
    interval = plan.config.train.eval_interval
    cut = sorted({p.fold for p in pending if p.start > trained[p.fold]})
    split = f"; fold {', '.join(map(str, cut))} cut at a checkpoint to keep the cores busy" if cut else ""
    log(f"training folds {', '.join(map(str, todo))} ({jobs} at a time, {each}{split})")
    # At most `jobs` pieces are handed to the pool at a time, so that after a stop signal no queued fold starts.
    # Workers receive a terminal's Ctrl-C (or a scheduler's SIGTERM to the job) themselves and save a checkpoint;
    # here any stop signal raises at once, and leaving the pool waits for the running folds to stop.
    running: dict[concurrent.futures.Future, int] = {}
    with (
        concurrent.futures.ProcessPoolExecutor(
            jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init
        ) as pool,
        interrupts.immediate(),
    ):
        while pending or running:
            busy = set(running.values())
            ready = [p for p in pending if p.fold not in busy and p.start == _first_start(pending, p.fold)]
            while ready and len(running) < jobs:
                piece = ready.pop(0)
                pending.remove(piece)
                k = piece.fold
                job = plan.job(root, k, False)
                before = records.get(k)
                if before is not None and before["status"] == "paused":  # this piece resumes from its checkpoint
                    job = dataclasses.replace(
                        job, cut_at=(*before["cut_at"], before["step"]), seconds_before=before["seconds"]
                    )
                if piece.stop < steps[k]:
                    # A pause on a periodic evaluation's step would skip it (the loop stops before evaluating)
                    pause_at = piece.stop + 1 if interval and piece.stop % interval == 0 else piece.stop
                    job = dataclasses.replace(job, pause_at=pause_at)
                running[pool.submit(run_fold, job)] = k
            finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                k = running.pop(future)
                try:
                    record = future.result()
                except Exception as exc:
                    pending.clear()
                    raise FoldError(k, exc) from exc
                if record["status"] == "paused":  # kept as the fold's record until its last piece ends
                    records[k] = record
                    log(f"fold {k}: paused at step {record['step']}; it finishes on the next free core")
                    continue
                done(record)
                if record["status"] != "completed":  # a stop signal reached the workers: start no other fold
                    pending.clear()
    return records


class WalkForwardStopped(RuntimeError):
    """A signal stopped some folds before they finished (their checkpoints are kept)."""

    def __init__(self, folds: list[int]) -> None:
        super().__init__(f"folds {', '.join(map(str, folds))} stopped before they finished")
        self.folds = folds


class FoldError(RuntimeError):
    """A fold's run failed; ``fold`` names it and ``error`` is what it raised."""

    def __init__(self, fold: int, error: BaseException) -> None:
        super().__init__(f"fold {fold}: {error}")
        self.fold, self.error = fold, error


def stitch_root(root: Path, plan_json: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """Stitch the finished folds of ``root``: write walkforward.json and report.html; returns (result, curves)."""
    from trm_act.tearsheet import write_report

    settings = plan_json["walkforward"]
    n_folds = len(plan_json["folds"])
    records = {k: load_record(root / f"fold-{k}") for k in finished_folds(root, n_folds)}
    result, curves = stitch(
        plan_json,
        records,
        trials=settings.get("trials"),
        sharpe_variance=settings.get("sharpe_variance"),
        resamples=settings.get("resamples", 2000),
    )
    write_json(root / RESULT_FILE, result)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # matplotlib missing: the report says so itself
        write_report(root, result, curves)
    return result, curves


def walk_forward(
    config: ExperimentConfig,
    settings: WalkForwardConfig,
    root: str | Path,
    *,
    jobs: int | None = None,
    fold: int | None = None,
    stitch_only: bool = False,
    log: Any = None,
) -> dict[str, Any] | None:
    """Run (or continue) a walk-forward in ``root`` and stitch it; the Python API of the CLI.

    Returns walkforward.json as a dict, or None with ``fold`` set (one fold of a job array: stitch later).
    """
    root = Path(root)
    log = log or (lambda message: print(message, file=sys.stderr))
    if fold is not None and not 0 <= fold < settings.folds:  # before anything is written
        raise ValueError(
            f"--fold {fold}: the walk-forward has folds 0..{settings.folds - 1}; pick one of them"
        )
    plan = make_plan(config, settings)
    plan_json = prepare_root(plan, root)
    log(f"walk-forward directory: {root}  (tensorboard --logdir {root})")
    if not stitch_only:
        wanted = [fold] if fold is not None else list(range(settings.folds))
        records = run_folds(plan, root, wanted, jobs or _cores(), log)
        stopped = sorted(k for k, r in records.items() if r["status"] != "completed")
        if stopped:
            raise WalkForwardStopped(stopped)
        if fold is not None:
            return None
    return stitch_root(root, plan_json)[0]


# ---------------------------------------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m trm_act.walkforward",
        description="Walk-forward evaluation: each fold trains on the past only (purged, embargoed) and is "
        "scored on its test span; the out-of-sample decisions are stitched and scored against long, best "
        "fixed and random, with block-bootstrap intervals, PSR and DSR. See docs/walkforward.md.",
        add_help=False,
        allow_abbrev=False,
    )
    parser.add_argument("--folds", type=int, default=5, help="test folds K (default 5)")
    parser.add_argument(
        "--scheme",
        choices=SCHEMES,
        default="expanding",
        help="expanding: train on all past bars; rolling: on the last --train-bars (default expanding)",
    )
    parser.add_argument(
        "--fold-steps",
        choices=FOLD_STEPS,
        default="equal",
        help="equal: every fold trains --steps; proportional: in proportion to its training decisions, the "
        "largest fold training --steps (as many passes over the data in every fold; default equal)",
    )
    parser.add_argument(
        "--embargo",
        type=int,
        default=0,
        help="bars before each test fold no training decision may read (default 0: purging only)",
    )
    parser.add_argument(
        "--train-bars",
        type=int,
        default=None,
        help="bars of the first (and every rolling) training span; default bars / (K + 1)",
    )
    parser.add_argument(
        "--logdir", default="runs", help="parent directory of the walk-forward (default runs)"
    )
    parser.add_argument("--run-name", default=None, help="its directory name (default: the start time)")
    parser.add_argument(
        "--resume",
        default=None,
        metavar="DIR/NAME",
        help="continue a walk-forward with its saved settings (finished folds are kept)",
    )
    parser.add_argument(
        "--fold", type=int, default=None, help="run fold k alone (e.g. one job of a job array)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="folds trained at once (default: min(folds, cores)); a fold that would leave a core idle is cut at "
        "a checkpoint and finished on another, with the same result",
    )
    parser.add_argument(
        "--trials",
        type=int,
        default=None,
        help="n_trials of the DSR: every recipe and seed tried (default: folds x 1 seed run)",
    )
    parser.add_argument(
        "--sharpe-variance",
        type=float,
        default=None,
        help="variance of the trials' annualised Sharpe ratios for the DSR (default: the folds')",
    )
    parser.add_argument(
        "--stitch-only",
        action="store_true",
        help="train nothing: stitch the finished folds and name the missing ones",
    )
    return parser


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, ExperimentConfig | None, dict[str, Any]]:
    """(walk-forward flags, the training config or None with --resume, the typed training overrides)."""
    from trm_act import train as train_cli

    parser = _parser()
    if "-h" in argv or "--help" in argv:
        sys.stdout.write(parser.format_help())
        sys.stdout.write(
            "\ntraining flags: every flag of python -m trm_act.train (and --config FILE) sets the recipe each fold "
            "trains with; --logdir, --run-name and --resume above are the walk-forward's. They follow:\n\n"
        )
        sys.stdout.flush()
        train_cli.parse_args(["--help"])  # prints tyro's help and exits 0
    args, rest = parser.parse_known_args(argv)
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs {args.jobs}: expected folds trained at once, an int >= 1")
    if args.resume is not None:
        if rest:
            raise ValueError(
                f"--resume continues the saved walk-forward with its saved settings; drop {rest[0]} (only --jobs, "
                "--fold, --stitch-only, --trials and --sharpe-variance may change)"
            )
        return args, None, {}
    parsed = train_cli.parse_args(rest)
    typed = train_cli.typed_overrides(parsed, rest)
    if "test_fraction" in typed.get("env", {}):
        raise ValueError(
            "--env.test-fraction: a walk-forward sets each fold's split itself; drop it and choose the folds "
            "with --folds and --train-bars"
        )
    config = ExperimentConfig(**{name: getattr(parsed, name) for name in SECTIONS})
    return args, config, typed


def _settings(args: argparse.Namespace, saved: dict[str, Any] | None = None) -> WalkForwardConfig:
    values = dict(saved or {})
    if saved is None:
        values |= {
            "folds": args.folds,
            "scheme": args.scheme,
            "embargo": args.embargo,
            "train_bars": args.train_bars,
            "fold_steps": args.fold_steps,
        }
    for name in ("trials", "sharpe_variance"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    return WalkForwardConfig(**values)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0, 2 user mistake, 1 a fold failed, 130 interrupted)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"
    root: Path | None = None
    try:
        args, config, _ = parse_args(argv)
        if args.resume is not None:
            root = Path(args.resume)
            plan_file = root / PLAN_FILE
            if not plan_file.is_file():
                raise ValueError(
                    f"--resume {root}: no walk-forward there ({PLAN_FILE} missing); start one with "
                    "python -m trm_act.walkforward --data FILE --logdir DIR --run-name NAME"
                )
            saved = _read_json(plan_file)
            config = ExperimentConfig.from_saved(saved["config"], source=str(plan_file))
            if saved["data"] in ("DataFrame",) or saved["data"].startswith("dict of "):
                raise ValueError(
                    f"--resume {root}: it was run on in-memory data ({saved['data']}); rerun it from Python"
                )
            settings = _settings(args, saved["walkforward"])
        else:
            assert config is not None
            config = with_absolute_data(config)  # a resume from another directory finds it
            settings = _settings(args)
            root = Path(args.logdir) / (args.run_name or time.strftime("%Y%m%d-%H%M%S"))
        result = walk_forward(
            config, settings, root, jobs=args.jobs, fold=args.fold, stitch_only=args.stitch_only
        )
    except ValueError as exc:
        report_user_mistake(exc)
        return EXIT_USAGE
    except FoldError as exc:
        from trm_act.trainer import NonFiniteLossError

        if isinstance(exc.error, ValueError):
            print(f"error: fold {exc.fold}: {exc.error}", file=sys.stderr)
            return EXIT_USAGE
        if isinstance(exc.error, NonFiniteLossError):
            print(
                f"error: fold {exc.fold} diverged ({exc.error}); finished folds are kept. Continue that fold with "
                f"a lower learning rate: python -m trm_act.train --resume {root}/fold-{exc.fold} --lr <lower>, "
                f"then python -m trm_act.walkforward --resume {root}",
                file=sys.stderr,
            )
            return EXIT_FAILED
        raise
    except OSError as exc:  # the file system refused: a --logdir that is a file, a full disk, no permission
        print(f"error: {exc}; finished folds and checkpoints are kept.", file=sys.stderr)
        return EXIT_FAILED
    except (KeyboardInterrupt, WalkForwardStopped) as exc:
        print(
            f"interrupted; finished folds and checkpoints are kept. Continue with: "
            f"python -m trm_act.walkforward --resume {root}",
            file=sys.stderr,
        )
        signum = getattr(exc, "signum", None)
        return interrupts.exit_code(signum) if signum else EXIT_INTERRUPTED
    if result is None:
        print(
            f"fold {args.fold} finished. When every fold has: python -m trm_act.walkforward --resume {root} "
            "--stitch-only",
            file=sys.stderr,
        )
        return 0
    print(format_table(result))
    if result["missing_folds"]:
        missing = result["missing_folds"]
        print(
            f"\nmissing folds {', '.join(map(str, missing))}: run them with python -m trm_act.walkforward "
            f"--resume {root} (or --fold k each), then --stitch-only again",
        )
    print(f"\nwalkforward.json: {root / RESULT_FILE}   tear sheet: {root / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
