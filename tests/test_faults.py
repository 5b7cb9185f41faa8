"""Fault injection: stop signals, a run directory held by another process, damaged checkpoints and
configs, a full disk, a failing TensorBoard writer, divergence, and resuming with changed settings.

Most cases drive the real CLI entry point (``trm_act.train.main``) in process on a tiny market; the
signal and lock cases use real subprocesses, since that is where those faults come from.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FakeClock, stopped_training, tiny_flags
from helpers import tiny_config as helpers_tiny_config
from tb_events import read_events
from trm_act.callbacks import Callback, TensorBoardCallback

from trm_act import checkpoint as checkpoint_module
from trm_act import interrupts
from trm_act.checkpoint import load_checkpoint, save_checkpoint
from trm_act.config import ExperimentConfig
from trm_act.files import write_json
from trm_act.interrupts import STOP_SIGNALS, GracefulInterrupt, Interrupted, exit_code
from trm_act.resume import apply_overrides
from trm_act.train import main
from trm_act.trainer import MAX_ABS_WEIGHT, NonFiniteLossError, Trainer

TINY = tiny_flags(log_every=2)


def tiny_config(**train) -> ExperimentConfig:
    return helpers_tiny_config(n_bars=3000, **train)


@pytest.fixture
def cli(call_main):
    """Run ``main(argv)`` in process; returns (exit status, stderr lines that are not blank)."""

    def run(*argv: str) -> tuple[int, list[str]]:
        result = call_main(main, *argv)
        return result.returncode, [line for line in result.stderr.splitlines() if line.strip()]

    return run


def errors(lines: list[str]) -> list[str]:
    assert not any("Traceback" in line for line in lines), lines
    return [line for line in lines if not line.startswith("run directory:")]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A CLI run of 4 steps (checkpoints at 2 and 4), with its event file and metrics.json."""
    root = tmp_path_factory.mktemp("finished")
    status = main(
        [*TINY, "--steps", "4", "--checkpoint-every", "2", "--logdir", str(root), "--run-name", "done"]
    )
    assert status == 0
    return root / "done"


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(finished_run, target)
    return target


# ---------------------------------------------------------------------------- stop signals


def test_sigterm_to_the_cli_checkpoints_exits_143_and_resume_continues(tmp_path, cli):
    status, stderr, run_dir = stopped_training(
        tmp_path, "term", signal.SIGTERM, 3, log_every=2, checkpoint_every=1000
    )
    assert status == 143, stderr
    assert "Traceback" not in stderr and "stopped by SIGTERM" in stderr and f"--resume {run_dir}" in stderr
    step = load_checkpoint(run_dir)["step"]
    assert 0 < step < 100000

    status, lines = cli("--resume", str(run_dir), "--steps", str(step + 3))
    assert status == 0, lines
    assert load_checkpoint(run_dir)["step"] == step + 3
    assert json.loads((run_dir / "config.json").read_text())["history"] == [
        {"step": step, "changes": {"train.steps": [100000, step + 3]}}
    ]


@pytest.mark.parametrize("signum", STOP_SIGNALS)
def test_first_signal_requests_a_stop_and_a_second_interrupts_at_once(signum):
    interrupt = GracefulInterrupt()
    with interrupt.installed():
        signal.raise_signal(signum)  # its Python handler has run when raise_signal returns
        assert interrupt.requested and interrupt.signum == signum
        with pytest.raises(Interrupted) as raised:
            signal.raise_signal(signal.SIGTERM)
    assert raised.value.signum == signal.SIGTERM
    assert exit_code(signum) == {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}[signum]
    assert signal.getsignal(signum) is not None  # the previous handler is back


@pytest.mark.parametrize(
    ("second", "after_s", "absorbed"),
    [
        (signal.SIGTERM, 0.01, True),  # torchrun's forwarded copy of a group signal
        (signal.SIGTERM, 2.5, False),  # a person asking again: interrupt at once
        (signal.SIGINT, 0.01, False),  # another signal is never an echo
    ],
)
def test_one_echo_of_the_first_signal_is_absorbed_within_the_window(second, after_s, absorbed):
    clock = FakeClock(100.0)
    interrupt = GracefulInterrupt(echo_window_s=2.0, clock=clock)
    interrupt.handle(signal.SIGTERM)
    clock.now += after_s
    if not absorbed:
        with pytest.raises(Interrupted):
            interrupt.handle(second)
        return
    interrupt.handle(second)
    assert interrupt.requested and interrupt.signum == signal.SIGTERM and interrupt.echoes == 1
    with pytest.raises(Interrupted):  # the launcher forwards once: a third copy is a real second request
        interrupt.handle(signal.SIGTERM)


def test_echo_window_is_on_under_torchrun_only(monkeypatch):
    monkeypatch.delenv(interrupts.FORWARDING_LAUNCHER_ENV, raising=False)
    plain = GracefulInterrupt(clock=FakeClock())
    plain.handle(signal.SIGTERM)
    with pytest.raises(Interrupted):  # a plain run: the second signal interrupts at once, as before
        plain.handle(signal.SIGTERM)
    monkeypatch.setenv(interrupts.FORWARDING_LAUNCHER_ENV, "job")
    assert GracefulInterrupt().echo_window_s == interrupts.ECHO_WINDOW_S
    with pytest.raises(ValueError, match=r"echo_window_s must be seconds >= 0.*got -1"):
        GracefulInterrupt(echo_window_s=-1)


def test_sighup_in_training_stops_after_the_step_with_a_checkpoint(tmp_path):
    class HangUp(Callback):
        def on_step_end(self, step, logs):
            if step == 3:
                signal.raise_signal(signal.SIGHUP)

    trainer = Trainer(tiny_config(), tmp_path, [HangUp()])
    assert trainer.fit() is None
    assert trainer.stop_signal == signal.SIGHUP and trainer.step == 3
    assert load_checkpoint(tmp_path)["step"] == 3 and trainer.checkpoint_step == 3


def test_the_step_a_signal_stops_on_is_logged_off_the_log_grid(tmp_path, monkeypatch):
    # The Ctrl-C test of test_cli logs every step; here the stop lands on a step that logs nothing by itself.
    train_step = Trainer.train_step

    def ctrl_c_during_step_3(self):
        logs = train_step(self)
        if self.step == 3:
            signal.raise_signal(signal.SIGINT)
        return logs

    monkeypatch.setattr(Trainer, "train_step", ctrl_c_during_step_3)
    trainer = Trainer(tiny_config(log_every=4), tmp_path, [TensorBoardCallback(tmp_path)])
    assert trainer.fit() is None and trainer.stop_signal == signal.SIGINT and trainer.step == 3
    assert [e.step for e in read_events(tmp_path).Scalars("loss/total")] == [3] == [load_checkpoint(tmp_path)["step"]]


def test_ctrl_c_during_start_up_prints_one_honest_line(tmp_path, cli, monkeypatch):
    import trm_act.train as train_module

    parse = train_module.parse_args

    def interrupted(argv):
        signal.raise_signal(signal.SIGINT)  # raises at once: start-up stops on the first signal
        return parse(argv)

    monkeypatch.setattr(train_module, "parse_args", interrupted)
    status, lines = cli(*TINY, "--steps", "4", "--logdir", str(tmp_path), "--run-name", "early")
    assert status == 130
    assert errors(lines) == ["interrupted by SIGINT during start-up; no training step was run."]
    assert not (tmp_path / "early").exists()


# ---------------------------------------------------------------------------- run directory ownership

HOLD_LOCK = (
    "import fcntl, os, sys, time\n"
    "os.makedirs(sys.argv[1], exist_ok=True)\n"
    "f = open(os.path.join(sys.argv[1], 'run.lock'), 'w')\n"
    "fcntl.flock(f, fcntl.LOCK_EX)\n"
    "f.write(f'pid {os.getpid()} on host elsewhere'); f.flush()\n"
    "print('locked', flush=True)\n"
    "time.sleep(120)\n"
)


@contextlib.contextmanager
def lock_held_by_another_process(run_dir: Path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs in the holder
        holder.wait()
        holder.stdout.close()


def test_a_run_directory_locked_by_another_process_is_refused(run_copy, cli, tmp_path):
    events = sorted(run_copy.glob("events.out.tfevents.*"))
    with lock_held_by_another_process(run_copy) as holder:
        status, lines = cli("--resume", str(run_copy), "--steps", "6")
        message = errors(lines)
        assert status == 2 and len(message) == 1, lines
        assert "in use by another run" in message[0] and f"pid {holder.pid} on host elsewhere" in message[0]
    assert sorted(run_copy.glob("events.out.tfevents.*")) == events and load_checkpoint(run_copy)["step"] == 4

    fresh = tmp_path / "fresh"
    with lock_held_by_another_process(fresh / "new") as holder:
        status, lines = cli(*TINY, "--steps", "4", "--logdir", str(fresh), "--run-name", "new")
        message = errors(lines)
        assert status == 2 and len(message) == 1, lines
        assert f"pid {holder.pid} on host elsewhere" in message[0]
    assert sorted(p.name for p in (fresh / "new").iterdir()) == ["run.lock"]  # nothing written

    # The kernel dropped the lock with its killed holder: the run can be continued.
    status, lines = cli("--resume", str(run_copy), "--steps", "6")
    assert status == 0, lines
    assert load_checkpoint(run_copy)["step"] == 6


def test_a_directory_with_old_events_but_no_checkpoint_is_refused(tmp_path, cli):
    old = tmp_path / "old"
    old.mkdir()
    (old / "events.out.tfevents.1.host").write_bytes(b"old")
    (old / "config.json").write_text("{}")
    status, lines = cli(*TINY, "--steps", "4", "--logdir", str(tmp_path), "--run-name", "old")
    message = errors(lines)
    assert status == 2 and len(message) == 1
    assert "events.out.tfevents.1.host" in message[0] and "no checkpoint" in message[0]
    assert sorted(p.name for p in old.iterdir()) == ["config.json", "events.out.tfevents.1.host"]

    # The same check holds for a Trainer used from Python, under the lock.
    with pytest.raises(ValueError, match="no checkpoint"):
        Trainer(tiny_config(steps=2), old).fit()


def test_stale_temp_files_are_removed_and_files_get_normal_modes(run_copy, cli):
    stale = run_copy / ".checkpoint.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    previous = os.umask(0o022)
    try:
        status, lines = cli("--resume", str(run_copy), "--steps", "6")
    finally:
        os.umask(previous)
    assert status == 0, lines
    assert not stale.exists()
    assert not list(run_copy.glob(".*.tmp"))
    for name in ("checkpoint.pt", "config.json", "metrics.json", "timings.json"):
        assert (run_copy / name).stat().st_mode & 0o777 == 0o644, name


# ---------------------------------------------------------------------------- damaged checkpoints and configs


def _flip_64_bytes(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64]) + data[middle + 64 :]


def _drop_key(path: Path, key: str) -> None:
    payload = load_checkpoint(path)
    del payload[key]
    save_checkpoint(path / "checkpoint.pt", payload)


def _edit_checkpoint_config(path: Path) -> None:
    payload = load_checkpoint(path)
    payload["config"]["model"]["d_model"] = 32
    save_checkpoint(path / "checkpoint.pt", payload)
    (path / "config.json").unlink()


def _edit_config_json(path: Path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    config["model"] |= changes
    (path / "config.json").write_text(json.dumps(config))


DAMAGE = {
    "truncated": (lambda p: (p / "checkpoint.pt").write_bytes((p / "checkpoint.pt").read_bytes()[:3000]),
                  "corrupt checkpoint"),
    "empty": (lambda p: (p / "checkpoint.pt").write_bytes(b""), "corrupt checkpoint"),
    "random bytes": (lambda p: (p / "checkpoint.pt").write_bytes(np.random.default_rng(0).bytes(50_000)),
                     "corrupt checkpoint"),
    "64-byte bit flip": (lambda p: (p / "checkpoint.pt").write_bytes(_flip_64_bytes((p / "checkpoint.pt").read_bytes())),
                         "content hash mismatch"),
    "foreign file": (lambda p: torch.save({"step": 4}, p / "checkpoint.pt"), "not a trm_act.checkpoint"),
    "missing keys": (lambda p: _drop_key(p, "optimizer"), "missing optimizer"),
    "model config differs": (_edit_checkpoint_config, "trained with model.d_model=16 but this run builds 32"),
    "config.json edited": (lambda p: _edit_config_json(p, max_steps=8),
                           "was trained with model.max_steps=3 but config.json says 8"),
    "config.json unknown key": (lambda p: _edit_config_json(p, depth=2), "corrupt config"),
    "config.json not json": (lambda p: (p / "config.json").write_text("{not json"), "corrupt config"),
}  # fmt: skip


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_or_config_gives_one_line_and_exit_2(run_copy, cli, damage):
    corrupt, expected = DAMAGE[damage]
    corrupt(run_copy)
    before = (run_copy / "checkpoint.pt").read_bytes()
    status, lines = cli("--resume", str(run_copy), "--steps", "6")
    message = errors(lines)
    assert status == 2 and len(message) == 1, lines
    assert message[0].startswith("error: ") and expected in message[0], message[0]
    assert (run_copy / "checkpoint.pt").read_bytes() == before  # nothing was overwritten


def test_checkpoint_holds_its_hash_and_model_config(finished_run):
    raw = torch.load(finished_run / "checkpoint.pt", weights_only=True)
    assert set(raw) == {"format", "sha256", "payload"} and len(raw["sha256"]) == 64
    payload = load_checkpoint(finished_run)
    assert payload["model_config"]["max_steps"] == 3 and payload["model_config"]["n_features"] > 0


# ---------------------------------------------------------------------------- full disk, failing TensorBoard


def test_a_full_disk_ends_the_run_with_one_line_naming_the_last_good_step(tmp_path, cli, monkeypatch):
    real = checkpoint_module.atomic_write
    writes = []

    def disk_fills_after_the_first_checkpoint(path, write):
        writes.append(path)
        if len(writes) == 1:
            return real(path, write)

        def fail(handle):
            handle.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        return real(path, fail)

    monkeypatch.setattr(checkpoint_module, "atomic_write", disk_fills_after_the_first_checkpoint)
    run_dir = tmp_path / "full"
    status, lines = cli(
        *TINY, "--steps", "12", "--checkpoint-every", "4", "--logdir", str(tmp_path), "--run-name", "full"
    )
    message = errors(lines)
    assert status == 1 and len(message) == 1, lines
    assert f"cannot write {run_dir / 'checkpoint.pt'}: No space left on device" in message[0]
    assert f"the last good checkpoint is step 4 in {run_dir}" in message[0]
    assert load_checkpoint(run_dir)["step"] == 4
    assert not list(run_dir.glob(".*.tmp"))


class BrokenWriter:
    """A SummaryWriter whose disk is full."""

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        return fail


@pytest.mark.parametrize("how", ["writer raises ENOSPC", "log dir is a file"])
def test_a_failing_tensorboard_writer_warns_once_and_training_finishes(tmp_path, how):
    if how == "log dir is a file":
        blocked = tmp_path / "blocked"
        blocked.write_text("not a directory")
        callback = TensorBoardCallback(blocked / "events")
    else:
        callback = TensorBoardCallback(tmp_path / "tb", writer=BrokenWriter())
    trainer = Trainer(tiny_config(steps=6), tmp_path / "run", [callback])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = trainer.fit()
    assert report is not None and trainer.step == 6
    assert (tmp_path / "run" / "metrics.json").exists()
    messages = [str(w.message) for w in caught if "TensorBoard logging" in str(w.message)]
    assert len(messages) == 1 and "training continues" in messages[0]


def test_metrics_json_refuses_non_finite_numbers(tmp_path):
    with pytest.raises(ValueError, match=r"model\.pnl is -inf"):
        write_json(tmp_path / "metrics.json", {"model": {"pnl": float("-inf"), "sharpe": 1.0}})
    assert not list(tmp_path.iterdir())
    write_json(tmp_path / "metrics.json", {"model": {"pnl": 0.5}})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"model": {"pnl": 0.5}}


# ---------------------------------------------------------------------------- divergence and resume overrides


def test_weights_beyond_the_bound_are_never_checkpointed(tmp_path):
    class Blowup(Callback):
        def on_step_end(self, step, logs):
            if step == 3:  # as if an update had sent the weights off while the loss stayed finite
                with torch.no_grad():
                    next(trainer.model.parameters()).view(-1)[0] = 5 * MAX_ABS_WEIGHT

    trainer = Trainer(tiny_config(checkpoint_every=2), tmp_path, [Blowup()])
    with pytest.raises(NonFiniteLossError, match=r"weights reached \|w\| = .* > 10000 at step 4"):
        trainer.fit()
    assert load_checkpoint(tmp_path)["step"] == 2 and trainer.checkpoint_step == 2


def test_divergence_before_any_checkpoint_says_so(tmp_path, cli):
    status, lines = cli(*TINY, "--steps", "20", "--checkpoint-every", "5", "--lr", "1e6",
                        "--logdir", str(tmp_path), "--run-name", "boom")  # fmt: skip
    message = errors(lines)
    assert status == 1 and len(message) == 1, lines
    assert "training diverged" in message[0] and "no checkpoint was written" in message[0]
    assert "kept" not in message[0]
    assert not (tmp_path / "boom" / "checkpoint.pt").exists()


def test_resume_with_a_new_lr_and_more_steps_is_recorded(run_copy, cli):
    status, lines = cli("--resume", str(run_copy), "--steps", "6", "--lr", "0.0005")
    assert status == 0, lines
    history = [{"step": 4, "changes": {"train.steps": [4, 6], "train.lr": [0.001, 0.0005]}}]
    config = json.loads((run_copy / "config.json").read_text())
    assert config["history"] == history and config["train"]["lr"] == 0.0005
    payload = load_checkpoint(run_copy)
    assert payload["step"] == 6 and payload["history"] == history
    assert payload["scheduler"]["base_lrs"][0] == 0.0005

    status, lines = cli("--resume", str(run_copy), "--max-steps", "5")
    assert status == 2 and "model.max_steps cannot change when resuming" in errors(lines)[0]


def test_resume_overrides_change_the_optimizer(tmp_path):
    trainer = Trainer(tiny_config(steps=4), tmp_path)
    trainer.fit()
    resumed = Trainer.from_checkpoint(
        tmp_path, overrides={"train": {"lr": 1e-4, "steps": 8, "weight_decay": 0.1}}
    )
    lrs = [group["lr"] for group in resumed.optimizer.param_groups]
    factor = resumed.scheduler.lr_lambdas[0](4)
    assert lrs == pytest.approx([1e-4 * factor, 1e-4 * 10.0 * factor])
    assert all(group["weight_decay"] == 0.1 for group in resumed.optimizer.param_groups)
    with pytest.raises(ValueError, match=r"--steps 3: the run is already at step 4"):
        apply_overrides(tiny_config(steps=4), {"train": {"steps": 3}}, step=4)
    assert apply_overrides(tiny_config(), {"train": {"lr": 1e-3}}, step=4)[1] == {}  # same value: no change


def test_resuming_a_finished_run_says_so_without_evaluating(run_copy, cli):
    events = sorted(run_copy.glob("events.out.tfevents.*"))
    metrics = (run_copy / "metrics.json").stat().st_mtime_ns
    status, lines = cli("--resume", str(run_copy))
    assert status == 0
    assert errors(lines) == [
        f"run {run_copy} is finished (step 4 of 4); to train further pass a larger --steps: "
        f"python -m trm_act.train --resume {run_copy} --steps 8"
    ]
    assert sorted(run_copy.glob("events.out.tfevents.*")) == events
    assert (run_copy / "metrics.json").stat().st_mtime_ns == metrics


# ---------------------------------------------------------------------------- windowed statistics


class Collect(Callback):
    def __init__(self, stop_at: int | None = None):
        self.logged: dict[int, dict[str, float]] = {}
        self.stop_at = stop_at

    def on_step_end(self, step, logs):
        if "train/accuracy" in logs.scalars or "halt/hazard/step_1" in logs.scalars:
            self.logged[step] = {k: v for k, v in logs.scalars.items() if not k.startswith("perf/")}
        return self.stop_at is None or step < self.stop_at


def test_first_log_after_a_resume_equals_the_unbroken_run(tmp_path):
    full = Collect()
    Trainer(tiny_config(), tmp_path / "full", [full]).fit()
    Trainer(tiny_config(), tmp_path / "split", [Collect(stop_at=6)]).fit()
    after = Collect()
    Trainer.from_checkpoint(tmp_path / "split", [after]).fit()
    assert min(after.logged) == 8
    assert "train/pnl" in after.logged[8] and "halt/hazard/step_1" in after.logged[8]
    assert after.logged[8] == full.logged[8]


# ---------------------------------------------------------------------------- the large-CSV benchmark


def test_bench_memory_prints_each_phase_of_the_run_from_its_timings(capsys):
    from trm_act.envs.timing import PHASES

    from trm_act.bench.memory import main as bench_memory

    assert bench_memory(["--rows", "4000", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    for name in (*PHASES, "start-up and other", "**total (wall)**", "peak RSS"):
        assert name in rows, out
    seconds = [float(cell.strip(" s*")) for cell in rows["**total (wall)**"].split("|")[2:4]]
    parts = [
        sum(float(rows[name].split("|")[column].strip(" s")) for name in (*PHASES, "start-up and other"))
        for column in (2, 3)
    ]
    # The phases and the rest add up to the wall time, up to the rounding of each printed 0.1 s cell (the total's too).
    assert parts == pytest.approx(seconds, abs=0.05 * (len(PHASES) + 2) + 1e-9)
    assert "slowest phase:" in out and "the bar of 90 s" in out and "the bar of 1.5 GiB" in out
