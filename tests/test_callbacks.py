"""Callback protocol, MetricsLogger and TensorBoardCallback: what lands in the event file."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from helpers import python
from tb_events import event_files, read_events
from torch.utils.tensorboard import SummaryWriter
from trm_act.callbacks import (
    Callback,
    CallbackList,
    Logs,
    MetricsLogger,
    RunInfo,
    TensorBoardCallback,
    component_scalars,
)
from trm_act.callbacks.logger import CURVE_POINTS


def test_importing_callbacks_imports_no_framework():
    code = (
        "import sys, trm_act.callbacks; "
        "print(sorted(m for m in ('lightning', 'pytorch_lightning', 'stable_baselines3', 'transformers') if m in sys.modules))"
    )
    result = python("-c", code)  # a fresh interpreter: what importing the callbacks alone loads
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_tensorboard_callback_writes_scalars_histograms_hparams_in_one_file(tmp_path):
    callback = TensorBoardCallback(tmp_path)
    callback.on_train_start(
        RunInfo(
            log_dir=tmp_path, total_steps=3, hparams={"train.lr": 1e-3, "env.data": "synthetic", "x": None}
        )
    )
    for step in (1, 2, 3):
        callback.on_step_end(
            step, Logs(scalars={"loss/total": 1.0 / step}, histograms={"halt/steps": np.arange(1, step + 2)})
        )
    callback.on_eval_end(
        3, Logs(scalars={"eval/pnl": 0.25}, curves={"equity/model": np.array([0.0, 0.1, 0.3])})
    )
    callback.on_train_end({"status": "completed"})

    assert len(event_files(tmp_path)) == 1  # hparams and layout did not make a sub-run
    events = read_events(tmp_path)
    assert [(e.step, e.value) for e in events.Scalars("loss/total")] == [
        (1, 1.0),
        (2, 0.5),
        (3, pytest.approx(1 / 3)),
    ]
    assert [e.value for e in events.Scalars("equity/model")] == pytest.approx([0.0, 0.1, 0.3])
    assert events.Scalars("eval/pnl")[0].value == 0.25
    assert [h.step for h in events.Histograms("halt/steps")] == [1, 2, 3]
    assert events.Histograms("halt/steps")[2].histogram_value.num == 4
    hparams = events.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams)
    assert b"train.lr" in hparams["_hparams_/session_start_info"]
    assert "custom_scalars__config__" in events.Tags()["tensors"]


def test_metrics_logger_is_silent_off_rank_zero(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    logger = MetricsLogger(tmp_path / "rank1")
    logger.update(1, {"loss/total": 1.0})
    logger.close()
    assert not (tmp_path / "rank1").exists()


def test_metrics_logger_writes_through_a_shared_writer_without_closing_it(tmp_path):
    writer = SummaryWriter(str(tmp_path))
    logger = MetricsLogger(writer=writer)
    logger.update(5, {"loss/halt": torch.tensor(0.5), "halt/steps": torch.tensor([1.0, 2.0]), "skip": None})
    logger.close()
    writer.add_scalar("after/close", 1.0, 6)  # still usable: the logger did not own it
    writer.close()
    events = read_events(tmp_path)
    assert events.Scalars("loss/halt")[0].value == 0.5
    assert events.Scalars("after/close")[0].step == 6
    assert len(event_files(tmp_path)) == 1


def test_metrics_logger_needs_a_destination():
    with pytest.raises(ValueError, match="log_dir"):
        MetricsLogger()


def test_component_scalars_maps_trmloss_components_to_tags():
    parts = {
        "total_loss": torch.tensor(1.5),
        "halt_loss": torch.tensor(0.25),
        "task_loss": torch.tensor(2.0),
        "profit_weighted_task_loss": torch.tensor(1.0),
        "halt_target_rate": torch.tensor(0.125),
        "lambda_halt": 0.01,
    }
    assert component_scalars(parts) == {
        "loss/total": 1.5,
        "loss/halt": 0.25,
        "loss/task": 2.0,
        "loss/profit_weighted_task": 1.0,
        "halt/target_rate": 0.125,
    }


class Recorder(Callback):
    def __init__(self, stop_at: int | None = None):
        self.calls: list[tuple[str, object]] = []
        self.stop_at = stop_at

    def on_train_start(self, run):
        self.calls.append(("start", run.total_steps))

    def on_step_end(self, step, logs):
        self.calls.append(("step", step))
        return step != self.stop_at

    def on_exception(self, exc):
        self.calls.append(("exception", type(exc).__name__))

    def on_train_end(self, summary):
        self.calls.append(("end", summary["status"]))


def test_callback_list_calls_every_callback_and_any_false_stops():
    first, second = Recorder(), Recorder(stop_at=2)
    callbacks = CallbackList([first, second])
    callbacks.on_train_start(RunInfo(log_dir=".", total_steps=5))
    assert callbacks.on_step_end(1, Logs()) is True
    assert callbacks.on_step_end(2, Logs()) is False
    callbacks.on_exception(RuntimeError("x"))
    callbacks.on_train_end({"status": "stopped"})
    expected = [("start", 5), ("step", 1), ("step", 2), ("exception", "RuntimeError"), ("end", "stopped")]
    assert first.calls == expected and second.calls == expected


def test_tensorboard_callback_writes_eval_images(tmp_path):
    callback = TensorBoardCallback(tmp_path)
    callback.on_train_start(RunInfo(log_dir=tmp_path, total_steps=4))
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    image[:, :10, 0] = 255
    for step in (2, 4):
        callback.on_eval_end(step, Logs(images={"eval/equity_chart": image}))
    callback.on_train_end({"status": "completed"})

    events = read_events(tmp_path)
    assert events.Tags()["images"] == ["eval/equity_chart"]
    written = events.Images("eval/equity_chart")
    assert [(e.step, e.width, e.height) for e in written] == [(2, 30, 20), (4, 30, 20)]


def test_metrics_logger_refuses_an_image_that_is_not_hwc_uint8(tmp_path):
    logger = MetricsLogger(tmp_path)
    with pytest.raises(ValueError, match=r"'eval/x' must be an \(H, W, 3\) uint8 array; got \(3, 20, 30\)"):
        logger.log_image("eval/x", np.zeros((3, 20, 30), dtype=np.uint8), 1)
    logger.close()


def test_custom_scalars_layout_gives_each_line_its_own_chart():
    from trm_act.callbacks import LAYOUT

    charts = [chart for category in LAYOUT.values() for chart in category.values()]
    tags = [tag for kind, chart_tags in charts for tag in chart_tags]
    # Custom Scalars colours by run: two tags in one chart would share a colour. Only the regex charts,
    # whose tags depend on the run (hazards and PnL per fixed step count on max_steps, per-regime steps on
    # the data), group lines.
    assert all(kind == "Multiline" for kind, _ in charts)
    assert [chart_tags for _, chart_tags in charts if len(chart_tags) != 1] == []
    for tag in ("loss/total", "loss/halt", "loss/task", "loss/profit_weighted_task", "loss/reward", "loss/value"):
        assert [tag] in [chart_tags for _, chart_tags in LAYOUT["TRM loss"].values()]
    assert len(tags) == len(set(tags))
    # Custom Scalars reads every tag of a chart as a regex and searches with it, so "eval/pnl" would also draw
    # "eval/pnl_<anything>": each one-tag chart must match its own tag only, among all tags a run logs.
    plain = [tag for tag in tags if re.fullmatch(r"[\w/]+", tag)]  # the one-tag charts (no regex syntax)
    examples = [
        "halt/hazard/step_1",
        "eval/steps_by_regime/bull",
        "eval/fixed_depth_pnl/1",
    ]  # regex charts' tags
    unplotted = [  # logged by a default run, charted only in the Scalars tab
        "equity/model", "equity/best_fixed", "equity/regime_oracle", "equity/random", "eval/fixed_steps_accuracy",
        "eval/max_drawdown", "eval/steps_after_regime_change", "eval/steps_settled_regime", "perf/samples_per_s",
        "perf/decisions_per_s", "perf/steps_per_s", "train/grad_norm", "train/lr",
    ]  # fmt: skip
    logged = plain + examples + unplotted
    for pattern in plain:
        assert [tag for tag in logged if re.search(pattern, tag)] == [pattern], pattern


def test_a_long_curve_is_written_as_evenly_spaced_points_with_its_ends(tmp_path):
    logger = MetricsLogger(tmp_path)
    curve = np.cumsum(np.random.default_rng(0).normal(size=25_000))  # (N,) an equity curve
    logger.log_curve("equity/model", curve)
    logger.log_curve("equity/short", curve[:7])
    logger.close()
    events = read_events(tmp_path)
    written = events.Scalars("equity/model")
    steps = [e.step for e in written]
    assert len(steps) == CURVE_POINTS and steps[0] == 0 and steps[-1] == 24_999
    assert set(np.diff(steps).tolist()) <= {12, 13}  # evenly spaced
    assert [e.value for e in written] == pytest.approx(curve[steps].tolist())
    assert [e.step for e in events.Scalars("equity/short")] == list(range(7))  # short curves whole
