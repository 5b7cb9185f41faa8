"""End to end: the real CLI in a subprocess, its event file, a real TensorBoard server, Ctrl-C; CSVs, config
files, resume refusals, user mistakes and --help through ``main(argv)`` in process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from helpers import python, start, stopped_training, tiny_flags, write_bars
from tb_events import REQUIRED_SCALARS, read_events

from trm_act.checkpoint import load_checkpoint

# A tiny but complete run: small market, small model, a few dozen optimizer steps.
TINY = tiny_flags(env__synthetic__n_bars=1500, log_every=5, checkpoint_every=5)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """The real CLI end to end, in its own process, as a user starts it."""
    root = tmp_path_factory.mktemp("cli")
    argv = ["-m", "trm_act.train", "--env", "trade-replay", *TINY, "--steps", "20"]
    result = python(*argv, "--logdir", str(root / "runs"), "--run-name", "tiny", cwd=root, timeout=240)
    assert result.returncode == 0, result.stderr
    assert "held-out test split" in result.stdout and "regime oracle" in result.stdout
    return root / "runs" / "tiny"


def test_cli_run_writes_events_checkpoint_config_and_metrics(tiny_run):
    assert len(list(tiny_run.glob("events.out.tfevents.*"))) == 1
    events = read_events(tiny_run)
    assert REQUIRED_SCALARS <= set(events.Tags()["scalars"])
    assert "halt/steps" in events.Tags()["histograms"]
    assert [e.step for e in events.Scalars("loss/total")] == [5, 10, 15, 20]  # every --log-every 5 steps
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")

    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert set(metrics["baselines"]) >= {"random", "best_fixed", "oracle", "regime_oracle"}
    assert events.Scalars("eval/pnl")[-1].value == pytest.approx(metrics["model"]["pnl"], rel=1e-5)
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["train"]["steps"] == 20 and config["model"]["max_steps"] == 3
    assert config.pop("history") == []  # no resume changes
    assert config.pop("runtime") == {"world_size": 1, "threads": 1, "compiled": False}  # one process, one thread, eager (a short run)
    checkpoint = load_checkpoint(tiny_run)
    assert checkpoint["step"] == 20 and checkpoint["config"] == config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_tensorboard_server_serves_the_logged_scalars(tiny_run):
    port = free_port()
    server = start(
        "-m", "tensorboard.main", "--logdir", str(tiny_run.parent), "--port", str(port),
        "--host", "127.0.0.1", "--reload_interval", "1", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        tags = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                tags = get_json(f"{base}/data/plugin/scalars/tags")
                if "tiny" in tags and REQUIRED_SCALARS <= set(tags["tiny"]):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert REQUIRED_SCALARS <= set(tags.get("tiny", {})), tags
        query = urllib.parse.urlencode({"run": "tiny", "tag": "loss/total"})
        served = get_json(f"{base}/data/plugin/scalars/scalars?{query}")  # [[wall_time, step, value], ...]
        logged = read_events(tiny_run).Scalars("loss/total")
        assert [row[1] for row in served] == [e.step for e in logged]
        assert [row[2] for row in served] == pytest.approx([e.value for e in logged])
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_sigint_leaves_a_loadable_checkpoint_and_readable_events(tmp_path):
    # Every step logs: the step that a stop ends on is then logged wherever the signal lands (when it lands in a
    # step's callbacks, the trainer stops after that step without logging it unless it is a log step; a test in
    # test_faults checks the stop of a step that does not log).
    status, stderr, run_dir = stopped_training(
        tmp_path, "ctrlc", signal.SIGINT, 5, env__synthetic__n_bars=1500, log_every=1, checkpoint_every=1000
    )
    assert status == 130, stderr
    assert "Traceback" not in stderr and "--resume" in stderr

    checkpoint = load_checkpoint(run_dir)
    assert 0 < checkpoint["step"] < 100000
    steps = [e.step for e in read_events(run_dir).Scalars("loss/total")]
    assert steps and steps[-1] == checkpoint["step"]  # every step up to the interrupt was flushed


def test_resume_from_the_cli_continues_to_the_configured_steps(tmp_path, train_cli):
    first = train_cli(*TINY, "--steps", "10", "--logdir", str(tmp_path), "--run-name", "r", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = train_cli("--resume", str(tmp_path / "r"), "--max-steps", "4", cwd=tmp_path)
    assert again.returncode == 2 and "model.max_steps cannot change when resuming" in again.stderr
    taken = train_cli(*TINY, "--steps", "10", "--logdir", str(tmp_path), "--run-name", "r", cwd=tmp_path)
    assert taken.returncode == 2 and "already holds a run" in taken.stderr


def write_csv(path: Path, n_bars: int = 1500) -> Path:
    return write_bars(path, n_bars, seed=3)  # timestamps in the first column


def test_cli_trains_on_a_csv(tmp_path, train_cli):
    csv = write_csv(tmp_path / "prices.csv")
    result = train_cli(
        *TINY,
        "--steps",
        "6",
        "--data",
        str(csv),
        "--logdir",
        str(tmp_path),
        "--run-name",
        "csv",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "csv" / "metrics.json").read_text())
    assert "regime_oracle" not in metrics["baselines"]  # a CSV has no true regimes
    assert metrics["test_split"]["decisions"] > 10


def test_a_run_on_a_relative_data_path_resumes_from_another_directory(tmp_path, train_cli):
    write_csv(tmp_path / "prices.csv")
    first = train_cli(*TINY, "--steps", "4", "--data", "prices.csv", "--logdir", "runs", "--run-name", "r", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    run_dir = tmp_path / "runs" / "r"
    saved = json.loads((run_dir / "config.json").read_text())["env"]["data"]
    assert saved == str(tmp_path / "prices.csv")  # absolute: the saved config finds it from anywhere
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = train_cli("--resume", str(run_dir), "--steps", "6", cwd=elsewhere)
    assert again.returncode == 0, again.stderr
    (tmp_path / "prices.csv").rename(tmp_path / "moved.csv")
    gone = train_cli("--resume", str(run_dir), "--steps", "8", cwd=elsewhere)
    assert gone.returncode == 2 and "Traceback" not in gone.stderr
    assert gone.stderr.strip().splitlines()[-1] == (
        f"error: {run_dir / 'checkpoint.pt'}: its run trained on --data {tmp_path / 'prices.csv'}, which is not "
        "there now; put the data back at that path (a relative path is read from the directory you run in)"
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["--lr", "-1"], "--lr -1: Error parsing train: train.lr must be > 0"),
        (
            ["--max-steps", "0"],
            "--max-steps 0: Error parsing model: TRMConfig.max_steps must be an integer >= 1",
        ),
        (
            ["--mixer", "lstm"],
            "--mixer lstm: invalid choice 'lstm' for argument '--mixer'. Expected one of ('attention', 'mlp')",
        ),
        (["--steps", "ten"], "--steps ten: Error parsing --steps"),
        (["--env", "cartpole"], "invalid choice 'cartpole' for argument '--env'"),
        (
            ["--data", "missing.csv"],
            "--data missing.csv: Error parsing env: data='missing.csv': no such file",
        ),
        (["--config", "nope.toml"], "--config: file not found: nope.toml"),
        (["--window", "8"], "Unrecognized options: --window"),  # derived/nested fields have no flat flag
        (  # a misspelt flag keeps tyro's suggestion
            ["--skip-bad-files"],
            "Unrecognized options: --skip-bad-files (perhaps you meant --env.skip-bad-files, --env.no-skip-bad-files)",
        ),
    ],
)
def test_user_mistakes_exit_with_one_line(tmp_path, train_cli, args, message):
    result = train_cli(*TINY, "--steps", "2", "--logdir", str(tmp_path), *args, cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, result.stderr


def test_tyros_error_panel_becomes_its_message_on_any_terminal_encoding():
    from trm_act.train import _one_line

    message = "Error parsing train: train.lr must be > 0; got -1.0."
    boxed = (  # stdout in UTF-8
        "╭─ Value error ─────╮\n"
        f"│ {message} │\n│ ───────────────── │\n│ For full helptext, see -c --help │\n╰───────────────────╯\n"
    )
    dashed = f" Value error \n ------------- \n  {message}  \n  -------------\n  For full helptext, see -c --help \n \n"
    assert _one_line(boxed) == _one_line(dashed) == message


def test_broken_csv_names_file_column_and_row(tmp_path, train_cli):
    csv = write_csv(tmp_path / "broken.csv", n_bars=400)
    lines = csv.read_text().splitlines()
    header = lines[0].split(",")
    close = next(i for i, name in enumerate(header) if name.lower() == "close")
    row = lines[101].split(",")
    row[close] = "nan"
    lines[101] = ",".join(row)
    csv.write_text("\n".join(lines) + "\n")
    result = train_cli(*TINY, "--steps", "2", "--data", str(csv), "--logdir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "broken.csv" in result.stderr and "close" in result.stderr.lower() and "100" in result.stderr


def test_config_file_sets_fields_and_flags_override_it(tmp_path, train_cli):
    config = tmp_path / "exp.toml"
    config.write_text('[train]\nsteps = 4\nlr = 0.002\n\n[model]\nmixer = "mlp"\n')
    result = train_cli(
        *TINY,
        "--config",
        str(config),
        "--lr",
        "0.003",
        "--logdir",
        str(tmp_path),
        "--run-name",
        "cfg",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "cfg" / "config.json").read_text())
    assert saved["train"]["steps"] == 4 and saved["model"]["mixer"] == "mlp" and saved["train"]["lr"] == 0.003


@pytest.fixture
def help_text(call_main, monkeypatch):
    """``python -m trm_act.train --help`` on a terminal ``columns`` wide."""
    from trm_act.train import main

    def text(columns: int = 200) -> str:
        monkeypatch.setenv("COLUMNS", str(columns))
        result = call_main(main, "--help")
        assert result.returncode == 0, result.stderr
        return result.stdout + result.stderr

    return text


def test_help_documents_every_flag_with_choices_and_clean_docs(help_text):
    text = help_text()
    for flag in ("--data", "--steps", "--batch-size", "--max-steps", "--logdir", "--run-name", "--seed", "--device",
                 "--resume", "--config", "--lambda-halt", "--lambda-profit", "--lambda-reward", "--pnl-scale",
                 "--confidence-threshold", "--class-weights", "--mixer", "--ema-decay", "--bf16", "--no-progress",
                 "--env.window", "--env.synthetic.n-bars"):  # fmt: skip
        assert flag in text, flag
    assert "Weight of the halt loss" in text  # field docstrings reach --help
    assert "{attention,mlp}" in text and "{mean,last}" in text and "{auto,cpu,cuda,cuda:N}" in text
    assert "{trade-replay}" in text
    for derived in (
        "--model.window",
        "--n-features",
        "--num-classes",
        "--env.split",
        "--env.synthetic.regimes",
    ):
        assert derived not in text, derived
    assert ":class:" not in text and "``" not in text


def test_help_shows_the_defaults_a_run_uses(help_text):
    """The experiment's defaults: the config classes' own, except the loss, the recipe (lambda_reward 10, not 0)."""
    from trm_act.config import ExperimentConfig
    from trm_act.loss import LossConfig
    from trm_act.model import TRMConfig

    defaults = ExperimentConfig()
    # One column (tyro sets the groups side by side from 140 columns on), so that each flag's text follows it.
    text = " ".join(help_text(columns=120).split())
    assert (defaults.model.attn_radius, TRMConfig().attn_radius) == (2, 2)
    assert (defaults.loss.lambda_reward, LossConfig().lambda_reward) == (10.0, 0.0)
    assert f"(default: {defaults.model.attn_radius})" in text.split("--attn-radius INT")[1][:300]
    assert f"(default: {defaults.env.window})" in text.split("--env.window INT")[1][:200]
    assert f"(default: {defaults.model.max_steps})" in text.split("--max-steps INT")[1][:200]
    assert f"(default: {defaults.loss.lambda_reward})" in text.split("--lambda-reward FLOAT")[1][:300]
