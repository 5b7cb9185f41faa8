"""``python -m trm_act.train --env trade-replay [options]``: train, evaluate on held-out data, log to TensorBoard.

Every flag is generated from a config dataclass field and documented by its docstring; a TOML/JSON
``--config`` file sets the same fields by section (``[env]``, ``[model]``, ``[loss]``, ``[train]``),
and flags given on the command line override it. User mistakes exit non-zero with one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import time
import typing
import warnings
from pathlib import Path
from typing import Any, NoReturn

from trm_act import interrupts
from trm_act.callbacks import CallbackList, ProgressCallback, TensorBoardCallback
from trm_act.checkpoint import existing_checkpoint
from trm_act.config import (
    NESTED,
    SECTIONS,
    ExperimentConfig,
    field_docs,
    load_config_file,
    merge,
    unwrap_optional,
)
from trm_act.rundir import check_new_run_dir, owned

ENVIRONMENTS = {"trade-replay": "trm_act/TradeReplay-v0"}

# Fields the trainer derives (model input shape from the env) or controls (the split); not flags.
DERIVED = {"env": {"split"}, "model": {"window", "n_features", "num_classes"}}
# Short flag names the design promises, for fields whose section-free name would be ambiguous.
RENAMES = {("env", "data"): "data"}

# Exit statuses: 2 user mistake, refused run directory or corrupt checkpoint; 1 divergence or a
# failed write (disk full, permission); 128 + signal number when stopped by a signal (130 Ctrl-C,
# 143 SIGTERM, 129 SIGHUP), also 130 when a callback stops the run early.
EXIT_USAGE, EXIT_DIVERGED, EXIT_IO, EXIT_INTERRUPTED = 2, 1, 1, 130


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad option prints one line (not usage + error)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _flag_type(hint: Any) -> tuple[Any, bool] | None:
    """(argparse type, optional) for simple field types; None for types only a config file can set."""
    base, optional = unwrap_optional(hint)
    if base in (bool, int, float, str):
        return base, optional
    if base is Path or (isinstance(base, type) and issubclass(base, os.PathLike)):
        return str, optional
    return None


def _optional(kind: type):
    def parse(text: str):
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _add_dataclass_flags(
    parser: argparse.ArgumentParser, defaults: Any, dest_prefix: str, flag_prefix: str, skip: set[str]
) -> None:
    """One flag per simple field of the dataclass instance ``defaults``, whose values --help shows."""
    cls = type(defaults)
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(
        f"[{dest_prefix}] {(cls.__doc__ or cls.__name__).strip().splitlines()[0]}"
    )
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if f.name in NESTED and dest_prefix == "env":
            _add_dataclass_flags(parser, getattr(defaults, f.name), f"env.{f.name}", f"{f.name}-", set())
            continue
        # The config's data field may hold a DataFrame in Python; on the command line it is a path or "synthetic".
        spec = (str, False) if (dest_prefix, f.name) in RENAMES else _flag_type(hints[f.name])
        if spec is None:
            continue
        kind, optional = spec
        name = RENAMES.get((dest_prefix, f.name), f"{flag_prefix}{f.name}").replace("_", "-")
        help_text = f"{docs.get(f.name, f.name)} (default: {getattr(defaults, f.name)})"
        help_text = help_text.replace("%", "%%")  # argparse %-formats help strings
        dest = f"{dest_prefix}.{f.name}"
        if kind is bool:
            group.add_argument(
                f"--{name}",
                dest=dest,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            parse = _optional(kind) if optional else kind
            group.add_argument(
                f"--{name}",
                dest=dest,
                type=parse,
                default=argparse.SUPPRESS,
                metavar=kind.__name__.upper(),
                help=help_text,
            )


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="python -m trm_act.train",
        description="Train a Tiny Recursive Model with adaptive computation time on a trade-replay market, "
        "evaluate it on the held-out split, and log to TensorBoard.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--env", choices=sorted(ENVIRONMENTS), default="trade-replay", help="environment to train on"
    )
    run.add_argument(
        "--config",
        type=str,
        default=None,
        help="TOML or JSON file with [env]/[model]/[loss]/[train] sections",
    )
    run.add_argument("--logdir", type=str, default="runs", help="parent directory of run directories")
    run.add_argument("--run-name", type=str, default=None, help="run directory name (default: a timestamp)")
    run.add_argument(
        "--resume", type=str, default=None, help="run directory or checkpoint.pt to continue exactly"
    )
    experiment = ExperimentConfig()  # --help shows the defaults a run really uses, not each class's own
    for section in SECTIONS:
        _add_dataclass_flags(parser, getattr(experiment, section), section, "", DERIVED.get(section, set()))
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Flags given on the command line as a nested ``{section: {field: value}}`` dict."""
    nested: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if "." not in dest:
            continue
        *path, key = dest.split(".")
        node = nested
        for part in path:
            node = node.setdefault(part, {})
        node[key] = value
    return nested


def resolve_config(args: argparse.Namespace) -> ExperimentConfig:
    """Defaults < --config file < command-line flags."""
    data = load_config_file(args.config) if args.config else {}
    data = merge(data, _overrides(args))
    return ExperimentConfig.from_dict(data, source=args.config or "command line")


def _new_run_dir(logdir: str, run_name: str | None) -> Path:
    run_dir = Path(logdir) / (run_name or time.strftime("%Y%m%d-%H%M%S"))
    check_new_run_dir(run_dir)  # early, for a quick answer; Trainer.fit checks again under the lock
    return run_dir


def _one_line_warning(message: Any, category: type, filename: str, lineno: int, line: Any = None) -> str:
    return f"warning: {message}\n"


def _last_checkpoint(trainer: Any, run_dir: Path | None) -> str:
    """What is true about the run's last good checkpoint, for error messages."""
    if trainer is None or trainer.checkpoint_step is None:
        return "no checkpoint was written"
    return f"the last good checkpoint is step {trainer.checkpoint_step} in {run_dir}"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (documented in the README under "Faults and resuming")."""
    from trm_act.trainer import NonFiniteLossError, RunWriteError, Trainer

    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.formatwarning = _one_line_warning  # library warnings as one "warning: ..." line
    run_dir: Path | None = None
    trainer = None
    fitting = False  # whether training has begun (a signal before that interrupts start-up)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(interrupts.immediate())  # a signal before training stops at once
            if args.resume:
                if args.config:
                    raise ValueError(
                        "--resume continues the saved run with its saved config; drop --config "
                        "(flags such as --lr or --steps may change the optimisation)."
                    )
                run_dir = existing_checkpoint(args.resume).parent
                stack.enter_context(owned(run_dir, new_run=False))
                trainer = Trainer.from_checkpoint(args.resume, overrides=_overrides(args))
                if trainer.finished:
                    print(
                        f"run {run_dir} is finished (step {trainer.step} of {trainer.config.train.steps}); "
                        f"to train further pass a larger --steps: python -m trm_act.train --resume {run_dir} "
                        f"--steps {2 * trainer.step}",
                        file=sys.stderr,
                    )
                    return 0
            else:
                trainer = Trainer(resolve_config(args), _new_run_dir(args.logdir, args.run_name))
            run_dir = trainer.run_dir
            trainer.callbacks = CallbackList(
                [TensorBoardCallback(run_dir), ProgressCallback(disable=not trainer.config.train.progress)]
            )
            print(f"run directory: {run_dir}  (tensorboard --logdir {run_dir.parent})", file=sys.stderr)
            fitting = True
            report = trainer.fit()
    except ValueError as exc:
        if os.environ.get("TRM_ACT_TRACEBACK"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NonFiniteLossError as exc:
        advice = (
            f"continue from it with a lower learning rate: python -m trm_act.train --resume {run_dir} "
            f"--lr {trainer.config.train.lr / 10:g}"
            if trainer.checkpoint_step is not None
            else "start again with a lower --lr"
        )
        print(
            f"error: training diverged ({exc}); {_last_checkpoint(trainer, run_dir)}; {advice}.",
            file=sys.stderr,
        )
        return EXIT_DIVERGED
    except (RunWriteError, OSError) as exc:
        print(f"error: {exc}; {_last_checkpoint(trainer, run_dir)}.", file=sys.stderr)
        return EXIT_IO
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        name = interrupts.signal_name(signum)
        if not fitting:
            print(f"interrupted by {name} during start-up; no training step was run.", file=sys.stderr)
        else:
            print(
                f"interrupted at once by {name} at step {trainer.step}; {_last_checkpoint(trainer, run_dir)}.",
                file=sys.stderr,
            )
        return interrupts.exit_code(signum)
    if report is None:
        resume = f"Continue with: python -m trm_act.train --resume {run_dir}"
        if trainer.stop_signal is None:
            print(f"stopped at step {trainer.step}; checkpoint saved. {resume}", file=sys.stderr)
            return EXIT_INTERRUPTED
        name = interrupts.signal_name(trainer.stop_signal)
        print(f"stopped by {name} at step {trainer.step}; checkpoint saved. {resume}", file=sys.stderr)
        return interrupts.exit_code(trainer.stop_signal)
    print(trainer.summary())
    print(f"\nmetrics: {run_dir / 'metrics.json'}   checkpoint: {run_dir / 'checkpoint.pt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
