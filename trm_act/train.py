"""``python -m trm_act.train --env trade-replay [options]``: train, evaluate on held-out data, log to TensorBoard.

tyro builds every flag from the config dataclasses (``trm_act.config``) and their field docstrings; a
TOML/JSON ``--config`` file sets the same fields by section (``[env]``, ``[model]``, ``[loss]``,
``[train]``) and flags given on the command line override it. User mistakes exit with code 2 and one
line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from trm_act.callbacks import CallbackList, ProgressCallback, TensorBoardCallback
from trm_act.config import SECTIONS, ExperimentConfig, load_config_file

EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 1, 130


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
    """tyro's error panel (a box with the message, hints and a --help pointer) as its message only."""
    lines = panel.splitlines()
    start = next((i + 1 for i, line in enumerate(lines) if line.lstrip().startswith("╭")), 0)
    message = []
    for line in lines[start:]:
        text = line.strip().strip("│").strip()
        if not text or set(text) <= set("─╰╯") or text.startswith("For full helptext"):
            break
        message.append(text)
    return " ".join(message) or "invalid arguments (see --help)"


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


def _new_run_dir(logdir: str, run_name: str | None) -> Path:
    name = run_name or time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(logdir) / name
    if (run_dir / "checkpoint.pt").exists():
        raise ValueError(
            f"--run-name {name}: {run_dir} already holds a run; continue it with --resume {run_dir} or pick another name."
        )
    return run_dir


def main(argv: list[str] | None = None) -> int:
    from trm_act.trainer import NonFiniteLossError, Trainer

    run_dir: Path | None = None
    try:
        args = parse_args(argv)
        if args.resume:
            given = {token.split("=")[0] for token in (sys.argv[1:] if argv is None else argv)}
            if {token for token in given if token.startswith("--")} - {"--resume", "--env"}:
                raise ValueError(
                    "--resume continues the saved run with its saved config; drop the other config flags."
                )
            trainer = Trainer.from_checkpoint(args.resume)
        else:
            config = ExperimentConfig(**{name: getattr(args, name) for name in SECTIONS})
            trainer = Trainer(config, _new_run_dir(args.logdir, args.run_name))
        run_dir = trainer.run_dir
        trainer.callbacks = CallbackList(
            [TensorBoardCallback(run_dir), ProgressCallback(disable=not trainer.config.train.progress)]
        )
        print(f"run directory: {run_dir}  (tensorboard --logdir {run_dir.parent})", file=sys.stderr)
        report = trainer.fit()
    except ValueError as exc:
        if os.environ.get("TRM_ACT_TRACEBACK"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NonFiniteLossError as exc:
        print(
            f"error: training diverged ({exc}); the last good checkpoint is kept in {run_dir}. Try a lower --lr.",
            file=sys.stderr,
        )
        return EXIT_DIVERGED
    except KeyboardInterrupt:
        print(f"interrupted; logs flushed in {run_dir}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if report is None:
        print(
            f"stopped at step {trainer.step}; checkpoint saved. Continue with: python -m trm_act.train --resume {run_dir}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    print(trainer.summary())
    print(f"\nmetrics: {run_dir / 'metrics.json'}   checkpoint: {run_dir / 'checkpoint.pt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
