"""``python -m trm_act.train --env trade-replay [options]``: train, evaluate on held-out data, log to TensorBoard.

tyro builds every flag from the config dataclasses (``trm_act.config``) and their field docstrings; a
TOML/JSON ``--config`` file sets the same fields by section (``[env]``, ``[model]``, ``[loss]``,
``[train]``) and flags given on the command line override it. User mistakes exit with code 2 and one
line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import re
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from trm_act import distributed, interrupts
from trm_act.callbacks import CallbackList, ProgressCallback, TensorBoardCallback
from trm_act.checkpoint import existing_checkpoint
from trm_act.cli import report_user_mistake
from trm_act.config import SECTIONS, ExperimentConfig, load_config_file, with_absolute_data
from trm_act.rundir import check_new_run_dir, owned

# Exit statuses: 2 user mistake, refused run directory or corrupt checkpoint; 1 divergence or a
# failed write (disk full, permission); 128 + signal number when stopped by a signal (130 Ctrl-C,
# 143 SIGTERM, 129 SIGHUP), also 130 when a callback stops the run early.
EXIT_USAGE, EXIT_DIVERGED, EXIT_IO, EXIT_INTERRUPTED = 2, 1, 1, 130


@dataclass
class Args(ExperimentConfig):
    """Train a Tiny Recursive Model with adaptive computation time on a trade-replay market, evaluate it
    on the held-out split, and log to TensorBoard."""

    environment: Annotated[Literal["trade-replay"], tyro.conf.arg(name="env")] = "trade-replay"
    """Environment to train on (Gymnasium id trm_act/TradeReplay-v0)."""
    config: str | None = None
    """TOML or JSON file with [env] [model] [loss] [train] sections; flags override it."""
    logdir: str = "runs"
    """Parent directory of run directories."""
    run_name: str | None = None
    """Run directory name; None = the start time, e.g. 20250101-120000."""
    resume: str | None = None
    """Run directory or checkpoint.pt to continue exactly (with its saved config)."""


def parse_args(argv: list[str] | None) -> Args:
    """Defaults < --config file < flags. Raises ValueError with one line on a user mistake."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # --config supplies the defaults tyro parses the flags against, so it is read first.
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    config_path = pre.parse_known_args(argv)[0].config
    experiment = load_config_file(config_path) if config_path else ExperimentConfig()
    defaults = Args(**{name: getattr(experiment, name) for name in SECTIONS})
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return tyro.cli(Args, args=argv, default=defaults, prog="python -m trm_act.train")
    except SystemExit as exc:
        if exc.code == 0:  # --help
            sys.stderr.write(stderr.getvalue())
            raise
        raise ValueError(_flag_message(_one_line(stderr.getvalue()), argv)) from None


def _one_line(panel: str) -> str:
    """tyro's error panel (a box with the message, hints and a --help pointer) as its message only.

    tyro draws the box only when stdout's encoding is "utf-8" (``tyro._fmtlib``); under another one (LANG=C, a
    Windows console, pytest's capture) the title is followed by a rule of dashes and the box has no sides.
    """
    lines = [line.strip().strip("│").strip() for line in panel.splitlines()]
    start = next((i + 1 for i, text in enumerate(lines) if text.startswith("╭") or _is_rule(text)), 0)
    message = []
    for text in lines[start:]:
        if not text or _is_rule(text) or text.startswith("For full helptext"):
            break
        message.append(text)
    # A misspelt flag: tyro lists the flags it resembles under "Perhaps you meant:", the first line naming them.
    hint = next((lines[i + 1] for i, text in enumerate(lines[:-1]) if text == "Perhaps you meant:"), "")
    return " ".join(message) + (f" (perhaps you meant {hint})" if hint else "") or "invalid arguments (see --help)"


def _is_rule(text: str) -> bool:
    return bool(text) and set(text) <= set("─╰╯-")


def _flag_message(message: str, argv: list[str]) -> str:
    """Prefix the message with the flag the user typed whose field it names (``--max-steps 0``)."""
    for i in reversed(range(len(argv))):  # the last occurrence of a flag is the one that counts
        token = argv[i]
        if token.startswith("--") and not token.startswith("--env.synthetic"):
            name = token[2:].split("=")[0].split(".")[-1].replace("-", "_")
            if re.search(rf"\b{re.escape(name)}\b", message):
                value = token.split("=", 1)[1] if "=" in token else (argv[i + 1] if i + 1 < len(argv) else "")
                return f"{token.split('=')[0]} {value}".strip() + f": {message}"
    return message


def typed_overrides(args: Args, argv: list[str]) -> dict[str, dict[str, Any]]:
    """The config fields whose flags were typed on the command line, as ``{section: {field: value}}``.

    ``--resume`` applies exactly these to the saved config (defaults must not count as requests).
    """
    typed = {token[2:].split("=")[0].replace("-", "_") for token in argv if token.startswith("--")}
    out: dict[str, dict[str, Any]] = {}
    for section in SECTIONS:
        values = getattr(args, section)
        for f in dataclasses.fields(values):
            flat, nested = f.name, f"{section}.{f.name}"
            if (
                flat in typed
                or nested in typed
                or (section == "env" and f.name == "data" and "data" in typed)
            ):
                out.setdefault(section, {})[f.name] = getattr(values, f.name)
    return out


def _new_run_dir(logdir: str, run_name: str | None) -> Path:
    run_dir = Path(logdir) / (run_name or time.strftime("%Y%m%d-%H%M%S"))
    if distributed.context_from_env().is_zero:  # the others would race rank zero's first writes
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
    """Run the CLI; returns the exit status (documented in docs/faults.md, "Exit statuses").

    Under torchrun (``torchrun --nproc_per_node=N -m trm_act.train ...``) every rank runs this; the
    process group is set up by the Trainer and torn down here.
    """
    try:
        return _main(argv)
    finally:
        distributed.teardown()


def _main(argv: list[str] | None) -> int:
    from trm_act.trainer import NonFiniteLossError, RunWriteError, Trainer

    argv = sys.argv[1:] if argv is None else list(argv)
    warnings.formatwarning = _one_line_warning  # library warnings as one "warning: ..." line
    run_dir: Path | None = None
    trainer = None
    fitting = False  # whether training has begun (a signal before that interrupts start-up)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(interrupts.immediate())  # a signal before training stops at once
            args = parse_args(argv)
            if args.resume:
                if args.config:
                    raise ValueError(
                        "--resume continues the saved run with its saved config; drop --config "
                        "(flags such as --lr or --steps may change the optimisation)."
                    )
                run_dir = existing_checkpoint(args.resume).parent
                stack.enter_context(owned(run_dir, new_run=False))
                trainer = Trainer.from_checkpoint(args.resume, overrides=typed_overrides(args, argv))
                if trainer.finished:
                    print(
                        f"run {run_dir} is finished (step {trainer.step} of {trainer.config.train.steps}); "
                        f"to train further pass a larger --steps: python -m trm_act.train --resume {run_dir} "
                        f"--steps {2 * trainer.step}",
                        file=sys.stderr,
                    )
                    return 0
            else:
                config = ExperimentConfig(**{name: getattr(args, name) for name in SECTIONS})
                trainer = Trainer(with_absolute_data(config), _new_run_dir(args.logdir, args.run_name))
            run_dir = trainer.run_dir
            zero = trainer.dist.is_zero
            trainer.callbacks = CallbackList(
                [
                    TensorBoardCallback(run_dir),  # writes on rank zero only
                    ProgressCallback(disable=not (trainer.config.train.progress and zero)),
                ]
            )
            if zero:
                print(f"run directory: {run_dir}  (tensorboard --logdir {run_dir.parent})", file=sys.stderr)
                if trainer.compiled:
                    print(f"torch.compile {trainer.compile_reason}: the first steps build the kernels "
                          "(~30 s on a first run, seconds once cached)", file=sys.stderr)
            fitting = True
            report = trainer.fit()
    except ValueError as exc:
        report_user_mistake(exc)
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
    if not trainer.dist.is_zero:  # rank zero reports for the job
        if trainer.status == "completed":
            return 0
        return interrupts.exit_code(trainer.stop_signal) if trainer.stop_signal else EXIT_INTERRUPTED
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


def exit_worker(status: int) -> None:
    """End a torchrun worker without finalizing the interpreter.

    After ``destroy_process_group`` a gloo worker thread can still be releasing the last collective's
    tensors, which are Python objects; if the interpreter is finalizing meanwhile, that thread cannot take
    the GIL and the process aborts ("terminate called without an active exception", about once in 40
    two-rank runs on a busy machine). By now every file is written and closed, so leave at once.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    status = main()
    if distributed.launched_by_torchrun():
        exit_worker(status)
    sys.exit(status)
