"""The continual-carry trainer, evaluation and checkpoints, in process on a tiny market."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pytest
import torch
from helpers import TINY_MODEL, StopAt, tiny_config, weights
from trm_act.callbacks import Callback

from trm_act.checkpoint import load_checkpoint, save_checkpoint
from trm_act.config import ExperimentConfig, LossConfig, TrainConfig
from trm_act.trainer import NonFiniteLossError, Trainer, lr_lambda


class Collect(Callback):
    def __init__(self):
        self.steps: list[tuple[int, dict]] = []
        self.evals: list[tuple[int, object]] = []
        self.end = None

    def on_step_end(self, step, logs):
        self.steps.append((step, dict(logs.scalars)))

    def on_eval_end(self, step, logs):
        self.evals.append((step, logs))

    def on_train_end(self, summary):
        self.end = summary


def test_a_run_with_the_value_regression_logs_it_as_loss_value(tmp_path):
    plain = tiny_config(steps=4)
    valued = dataclasses.replace(plain, loss=dataclasses.replace(plain.loss, lambda_value=1.0, answer_value="played"))
    logs = {}
    for name, config in (("plain", plain), ("valued", valued)):
        collect = Collect()
        Trainer(config, tmp_path / name, [collect]).fit()
        logs[name] = collect.steps[3][1]  # step 4: a log step
    assert math.isfinite(logs["valued"]["loss/value"]) and logs["valued"]["loss/value"] > 0
    assert "loss/value" not in logs["plain"]


def test_train_logs_required_tags_and_writes_metrics(tmp_path):
    collect = Collect()
    trainer = Trainer(tiny_config(), tmp_path, [collect])
    report = trainer.fit()

    assert [step for step, _ in collect.steps] == list(range(1, 13))
    # Scalars are converted (a host sync) only on log steps: every log_every=4 steps and the last.
    assert [step for step, scalars in collect.steps if scalars] == [4, 8, 12]
    first = collect.steps[3][1]
    for tag in (
        "loss/total",
        "loss/halt",
        "loss/task",
        "loss/profit_weighted_task",
        "loss/reward",
        "halt/rate",
        "halt/logit_positive_rate",
    ):
        assert math.isfinite(first[tag])
    logged = collect.steps[-1][1]  # a log step: window statistics included
    for tag in ("train/pnl", "train/accuracy", "halt/mean_steps", "halt/hazard/step_3"):
        assert tag in logged
    assert logged["halt/hazard/step_3"] == 1.0  # max_steps=3 forces every sample still running to halt
    assert collect.end["status"] == "completed"

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == report.metrics
    for name in ("random", "best_fixed", "oracle", "regime_oracle"):
        assert {"pnl", "sharpe", "accuracy"} <= set(metrics["baselines"][name])
    model = metrics["model"]
    assert {"pnl", "sharpe", "accuracy", "mean_steps", "fixed_max_steps"} <= set(model)
    assert 1.0 <= model["mean_steps"] <= 3.0
    assert sum(model["steps_histogram"]) == metrics["test_split"]["decisions"]
    assert metrics["baselines"]["oracle"]["accuracy"] == 1.0
    oracle_pnl = metrics["baselines"]["oracle"]["pnl"]
    assert all(entry["pnl"] <= oracle_pnl + 1e-12 for entry in metrics["baselines"]["fixed"].values())
    assert (tmp_path / "config.json").exists() and (tmp_path / "checkpoint.pt").exists()


def test_committed_rewards_are_the_envs_realized_pnl(tmp_path):
    """Halted slots commit their argmax; the env pays exactly the strategy_pnl the loss was shown."""
    # A fresh carry: one env step per commit (a belief's slots hop train_stride decisions; test_belief.py)
    trainer = Trainer(tiny_config(model=TINY_MODEL | {"carry": "fresh"}, log_every=1000), tmp_path)
    calls = []
    step_masked = trainer.env.step_masked

    def spy(actions, mask):
        info_shown = {k: v.copy() for k, v in trainer.info.items()}
        result = step_masked(actions, mask)
        calls.append((actions.copy(), mask.copy(), result[1].copy(), info_shown))
        return result

    trainer.env.step_masked = spy
    for _ in range(7):
        trainer.train_step()
    assert len(calls) >= 2  # max_steps=3 forces commits at iterations 3 and 6
    recorded = np.concatenate(trainer.window.rewards)
    paid = []
    for actions, mask, reward, info in calls:
        rows = np.flatnonzero(mask)
        np.testing.assert_array_equal(reward[rows], info["strategy_pnl"][rows, actions[rows]])
        assert np.all(reward[~mask] == 0.0)
        paid.append(reward[rows])
    np.testing.assert_array_equal(recorded, np.concatenate(paid))


def test_resume_continues_exactly(tmp_path):
    full = Trainer(tiny_config(), tmp_path / "full")
    full.fit()

    interrupted = Trainer(tiny_config(), tmp_path / "split", [StopAt(5)])
    assert interrupted.fit() is None  # stopped early: checkpoint, no evaluation
    assert interrupted.step == 5
    resumed = Trainer.from_checkpoint(tmp_path / "split")
    assert resumed.step == 5
    resumed.fit()

    assert resumed.step == full.step == 12
    for key, value in weights(full).items():
        torch.testing.assert_close(weights(resumed)[key], value, rtol=0, atol=0, msg=key)
    assert json.loads((tmp_path / "split" / "metrics.json").read_text())["model"]["pnl"] == pytest.approx(
        json.loads((tmp_path / "full" / "metrics.json").read_text())["model"]["pnl"]
    )


def test_a_checkpoint_from_before_a_model_field_existed_resumes(tmp_path):
    # TRMConfig.graph and halt_grad came after checkpoints were written without them: the resume check reads the
    # saved model config through from_dict (a missing field takes its old meaning) instead of refusing it.
    interrupted = Trainer(tiny_config(), tmp_path, [StopAt(5)])
    assert interrupted.fit() is None
    state = load_checkpoint(tmp_path)
    for name in ("graph", "halt_grad"):
        del state["model_config"][name]
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    resumed = Trainer.from_checkpoint(tmp_path)
    assert resumed.step == 5 and resumed.model_config.graph == "answer" and resumed.model_config.halt_grad == 1.0


def test_a_run_from_before_model_norm_and_carry_resumes_as_the_model_it_trained(tmp_path):
    # TRMConfig.norm and carry came after runs were saved without them, when every model was post-norm with a fresh
    # carry: the saved run config must read them so too, or it builds another model than its checkpoint holds.
    interrupted = Trainer(tiny_config(model=TINY_MODEL | {"norm": "post", "carry": "fresh"}), tmp_path, [StopAt(5)])
    assert interrupted.fit() is None
    state = load_checkpoint(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for model in (state["config"]["model"], state["model_config"], saved["model"]):
        del model["norm"], model["carry"]
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    (tmp_path / "config.json").write_text(json.dumps(saved))
    resumed = Trainer.from_checkpoint(tmp_path)
    assert resumed.step == 5 and (resumed.config.model.norm, resumed.config.model.carry) == ("post", "fresh")
    assert ExperimentConfig.from_dict({"model": {}}).model.norm == "pre"  # a user's config: today's default


def test_a_run_from_before_label_costs_resumes_with_the_labels_it_trained_on(tmp_path):
    # env.label_costs came after runs were saved without it, when every label charged one round trip ("single"):
    # a resume must not switch such a run to today's default labels halfway through.
    interrupted = Trainer(tiny_config(), tmp_path, [StopAt(5)])
    assert interrupted.fit() is None and interrupted.config.env.label_costs == "realized"
    state = load_checkpoint(tmp_path)
    del state["config"]["env"]["label_costs"]
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["env"]["label_costs"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    resumed = Trainer.from_checkpoint(tmp_path)
    assert resumed.step == 5 and resumed.config.env.label_costs == "single"
    assert ExperimentConfig.from_dict({"env": {}}).env.label_costs == "realized"  # a user's config: today's


def test_ema_weights_are_used_and_saved(tmp_path):
    trainer = Trainer(tiny_config(ema_decay=0.5, steps=4), tmp_path)
    trainer.fit()
    state = load_checkpoint(tmp_path)
    assert state["ema"] is not None
    differs = any(
        not torch.equal(a, b)
        for a, b in zip(trainer.ema.parameters(), trainer.model.parameters(), strict=True)
    )
    assert differs


@pytest.mark.parametrize(
    "poison_step", [3, 4]
)  # 3: caught in the next forward; 4: caught before its checkpoint
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, poison_step):
    class Poison(Callback):
        def on_step_end(self, step, logs):
            if step == poison_step:  # as if this step's update had produced NaN weights
                with torch.no_grad():
                    next(trainer.model.parameters()).fill_(float("nan"))

    trainer = Trainer(tiny_config(checkpoint_every=2), tmp_path, [Poison()])
    with pytest.raises(NonFiniteLossError, match="step 4"):
        trainer.fit()
    state = load_checkpoint(tmp_path)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_class_weights_option_builds_normalised_weights(tmp_path):
    config = dataclasses.replace(tiny_config(), loss=LossConfig(class_weights=True))
    trainer = Trainer(config, tmp_path)
    weights = trainer.loss_fn.class_weights
    assert weights is not None and weights.shape == (8,)
    assert weights.mean().item() == pytest.approx(1.0, abs=1e-6)
    labels = trainer.env.replay.labels[trainer.env.replay.split_indices("train")]
    counts = np.bincount(labels, minlength=8)
    seen = counts > 0
    assert np.argmax(np.where(seen, weights.numpy(), -1)) == np.argmin(np.where(seen, counts, np.inf))


def test_bf16_autocast_option_trains(tmp_path):
    trainer = Trainer(tiny_config(bf16=True, log_every=1), tmp_path)
    before = weights(trainer)
    logs = trainer.train_step()
    assert math.isfinite(logs.scalars["loss/total"])
    assert any(not torch.equal(before[k], v) for k, v in weights(trainer).items())


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "checkpoint.pt", {"step": 1})

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", explode)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": 2})
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left behind


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint"):
        load_checkpoint(tmp_path)


def test_lr_schedule_warms_up_then_decays_to_ten_percent():
    factor = lr_lambda(warmup_steps=10, total_steps=110)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.55)
    assert factor(110) == pytest.approx(0.1) and factor(500) == pytest.approx(0.1)


def test_config_round_trips_through_a_dict():
    config = tiny_config()
    again = ExperimentConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    with pytest.raises(ValueError, match="unknown key"):
        ExperimentConfig.from_dict({"train": {"stepz": 3}})
    with pytest.raises(ValueError, match="unknown section"):
        ExperimentConfig.from_dict({"trian": {}})
    with pytest.raises(ValueError, match=r"^--config c\.toml: \[train\] train\.steps must be a positive int"):
        ExperimentConfig.from_dict({"train": {"steps": "abc"}}, source="--config c.toml")  # names the file


def test_device_resolution():
    from trm_act.trainer import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match=r"train\.device must be"):
        TrainConfig(device="tpu")


def test_same_seed_same_weights_different_seed_different_weights(tmp_path):
    a = Trainer(tiny_config(steps=4), tmp_path / "a")
    b = Trainer(tiny_config(steps=4), tmp_path / "b")
    c = Trainer(tiny_config(steps=4, seed=1), tmp_path / "c")
    for trainer in (a, b, c):
        for _ in range(4):
            trainer.train_step()
    assert all(torch.equal(x, y) for x, y in zip(weights(a).values(), weights(b).values(), strict=True))
    assert any(not torch.equal(x, y) for x, y in zip(weights(a).values(), weights(c).values(), strict=True))


@pytest.mark.parametrize(
    ("steps", "eval_every", "eval_steps"), [(12, None, [3, 6, 9, 12]), (12, 0, [12]), (12, 5, [5, 10, 12])]
)
def test_evaluation_runs_periodically_by_default(tmp_path, steps, eval_every, eval_steps):
    collect = Collect()
    Trainer(tiny_config(steps=steps, eval_every=eval_every), tmp_path, [collect]).fit()
    assert [step for step, _ in collect.evals] == eval_steps
    assert TrainConfig().eval_interval == TrainConfig().steps // 4  # a default run evaluates 4 times


def test_evaluation_logs_charts_and_a_deterministic_row_steps_ratio(tmp_path):
    pytest.importorskip("matplotlib")
    collect = Collect()
    Trainer(tiny_config(eval_every=6), tmp_path, [collect]).fit()
    (step, logs), (_, final) = collect.evals
    assert step == 6 and set(logs.images) == {"eval/equity_chart", "eval/halting_chart"}
    for image in logs.images.values():
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert image.shape[0] >= 300 and image.shape[1] >= 600
        assert image.std() > 10  # drawn, not blank
    metrics = json.loads((tmp_path / "metrics.json").read_text())["model"]
    assert final.scalars["eval/row_steps_ratio"] == pytest.approx(metrics["mean_steps"] / 3)
    # Halting against difficulty, as scalars over training: after a regime change vs settled, per regime.
    by_age = metrics["steps_by_regime_age"]
    assert final.scalars["eval/steps_change_ratio"] == pytest.approx(by_age["ratio"])
    assert final.scalars["eval/steps_after_regime_change"] == pytest.approx(by_age["recent_change"])
    per_regime = {tag: v for tag, v in final.scalars.items() if tag.startswith("eval/steps_by_regime/")}
    assert len(per_regime) >= 2 and all(1.0 <= v <= 3.0 for v in per_regime.values())
    # Does each extra step pay? One PnL per fixed step count; the deepest is the fixed-max-steps PnL.
    by_steps = metrics["pnl_by_fixed_steps"]
    assert len(by_steps) == 3 and by_steps[-1] == pytest.approx(metrics["fixed_max_steps"]["pnl"])
    assert [final.scalars[f"eval/fixed_depth_pnl/{k}"] for k in (1, 2, 3)] == pytest.approx(by_steps)
    # Custom Scalars searches with each chart's tag as a regex: no one-tag chart may pick up another eval tag
    from trm_act.callbacks import LAYOUT

    charts = [tags for category in LAYOUT.values() for _, tags in category.values()]
    for pattern in (tag for tags in charts for tag in tags if re.fullmatch(r"[\w/]+", tag)):
        assert [tag for tag in final.scalars if re.search(pattern, tag)] in ([], [pattern]), pattern


def test_evaluation_charts_are_skipped_with_one_warning_without_matplotlib(tmp_path, monkeypatch):
    import sys

    from trm_act import charts

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import raises ModuleNotFoundError
    monkeypatch.setattr(charts, "_warned", False)
    collect = Collect()
    with pytest.warns(RuntimeWarning, match=r"trm-act\[render\]") as record:
        Trainer(tiny_config(eval_every=6), tmp_path, [collect]).fit()
    assert len([w for w in record if "matplotlib" in str(w.message)]) == 1
    assert all(logs.images == {} for _, logs in collect.evals) and len(collect.evals) == 2


@pytest.mark.parametrize("batch_size", [1, 3])
def test_hopeless_batch_size_is_refused(batch_size):
    with pytest.raises(ValueError, match=rf"--batch-size {batch_size} is too small to learn.*>= 4"):
        TrainConfig(batch_size=batch_size)


def test_small_batch_size_warns(tmp_path):
    with pytest.warns(UserWarning, match=r"--batch-size 4 is below 8"):
        Trainer(tiny_config(batch_size=4), tmp_path)
