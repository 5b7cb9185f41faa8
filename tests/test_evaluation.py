"""Held-out evaluation on a fixed sample of decisions (the trainer's periodic evaluations), and phase timings."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from trm_act.envs import SyntheticMarketConfig, TradeReplayConfig, build_replay, generate_synthetic_market
from trm_act.envs.timing import FEATURES, LABELS, PARSE, PHASES, TRAINING, PhaseTimes, phase

from trm_act import evaluation, report
from trm_act.config import ExperimentConfig, LossConfig, TrainConfig
from trm_act.evaluation import evaluate, evaluation_walk, plan_walk, sample_walk, walk_positions
from trm_act.model import RecurrentTRM, TRMConfig
from trm_act.trainer import Trainer

CPU = torch.device("cpu")


def scored(walk) -> list[int]:
    return sorted(
        np.concatenate([walk.order[b:e] for b, e in zip(walk.begin, walk.end, strict=True)]).tolist()
    )


# ----------------------------------------------------------------------------- the walk and its sample


def loop_walk(streams: np.ndarray, chunk: int, burn_in: int) -> tuple[list[int], list[int], list[int]]:
    """plan_walk's chunks, one stream at a time (the form it had before it was vectorised)."""
    order = np.argsort(streams, kind="stable")
    begins, ends, burns = [], [], []
    for stream in np.unique(streams):
        lo = int(np.flatnonzero(streams[order] == stream)[0])
        hi = lo + int((streams == stream).sum())
        for b in range(lo, hi, chunk):
            begins.append(b)
            ends.append(min(b + chunk, hi))
            burns.append(min(b - lo, burn_in))
    return begins, ends, burns


@pytest.mark.parametrize(
    ("n_streams", "chunk", "burn_in"), [(1, 1, 0), (7, 1, 0), (7, 5, 3), (300, 4, 8), (3, 50, 2)]
)
def test_plan_walk_equals_the_loop_over_streams(n_streams, chunk, burn_in):
    streams = np.random.default_rng(n_streams).integers(0, n_streams, 200)  # (N,) interleaved streams
    walk = plan_walk(streams, chunk, burn_in)
    assert (walk.begin.tolist(), walk.end.tolist(), walk.burn.tolist()) == loop_walk(streams, chunk, burn_in)
    assert walk.order.tolist() == np.argsort(streams, kind="stable").tolist()
    assert plan_walk(streams[:0], chunk, burn_in).begin.size == 0


@pytest.mark.parametrize(("chunk", "burn_in", "size"), [(1, 0, 37), (10, 4, 37), (10, 4, 40), (10, 4, 1)])
def test_a_sample_scores_exactly_its_size_the_same_decisions_for_a_seed(chunk, burn_in, size):
    streams = np.array([0] * 50 + [1] * 27 + [2] * 23)
    walk = plan_walk(streams, chunk, burn_in)
    sample = sample_walk(walk, size, seed=3)
    positions = walk_positions(sample)
    assert len(positions) == size and positions.tolist() == scored(sample)
    assert len(set(positions.tolist())) == size
    assert walk_positions(sample_walk(walk, size, seed=3)).tolist() == positions.tolist()  # seeded
    assert walk_positions(sample_walk(walk, size, seed=4)).tolist() != positions.tolist()
    full = {int(b): (int(e), int(burn)) for b, e, burn in zip(walk.begin, walk.end, walk.burn, strict=True)}
    for b, e, burn in zip(sample.begin, sample.end, sample.burn, strict=True):
        end, full_burn = full[int(b)]  # a drawn chunk starts where the whole walk's does, with its burn-in
        assert burn == full_burn and b < e <= end
    assert (
        sum(int(e) < full[int(b)][0] for b, e in zip(sample.begin, sample.end, strict=True)) <= 1
    )  # one cut


def test_a_sample_as_large_as_the_walk_is_the_walk():
    walk = plan_walk(np.zeros(30, dtype=np.int64), 10, 4)
    assert sample_walk(walk, 30, seed=0) is walk and sample_walk(walk, 31, seed=0) is walk
    assert walk_positions(walk).tolist() == list(range(30))


@pytest.fixture(scope="module")
def replay():
    return build_replay(
        TradeReplayConfig(window=8, horizon=4, synthetic=SyntheticMarketConfig(n_bars=6000, seed=5))
    )


def halting_model(carry: str, replay) -> RecurrentTRM:
    """A model whose halt head fires on about half of the test rows at the first step, on others later."""
    torch.manual_seed(0)
    config = TRMConfig(
        window=8, n_features=replay.n_features, d_model=16, n_heads=2, n_layers=1, max_steps=3, carry=carry
    )
    model = RecurrentTRM(config).eval()
    obs = torch.from_numpy(replay.observations(replay.split_indices("test")))  # (N, W, F)
    with torch.no_grad():
        model.halt_head.weight.normal_(0.0, 2.0, generator=torch.Generator().manual_seed(1))
        model.halt_head.bias.zero_()
        first = model(obs, model.init_carry(len(obs))).halt_logits  # (N,)
        model.halt_head.bias.fill_(-float(first.median()) + 1e-3)
    return model


def figures(report) -> dict:
    """metrics.json without the wall times (the only figures that differ between two equal evaluations)."""
    metrics = json.loads(json.dumps(report.metrics))
    for part in (metrics["model"], metrics["model"]["fixed_max_steps"]):
        part.pop("wall_time_s")
    metrics["model"].pop("time_ratio_adaptive_vs_fixed")
    return metrics


def decision_pnl(report) -> np.ndarray:
    return np.diff(report.equity["equity/model"], prepend=0.0)  # (N,) the model's PnL per decision


@pytest.mark.parametrize("carry", ["fresh", "belief"])
def test_a_sampled_evaluation_scores_the_sample_as_the_whole_evaluation_does(replay, carry):
    model = halting_model(carry, replay)
    walk_args = {"max_steps": 3, "device": CPU, "batch_size": 32, "burn_in": 8, "seed": 7}
    whole = evaluate(model, replay, **walk_args)
    part = evaluate(model, replay, sample=100, **walk_args)
    n = whole.metrics["test_split"]["decisions"]
    assert 1.2 < whole.metrics["model"]["mean_steps"] < 2.8  # halting varies per row
    assert n == len(replay.split_indices("test")) == 299 and "sampled_from" not in whole.metrics["test_split"]
    assert part.metrics["test_split"]["decisions"] == 100 and part.metrics["test_split"]["sampled_from"] == n
    assert len(part.steps) == 100
    # Which 100: the seeded sample of the walk's chunks (single decisions, or runs of 16 after their burn-in).
    test_idx = replay.split_indices("test")
    kept = walk_positions(sample_walk(evaluation_walk(model, replay, test_idx, 32, 8), 100, seed=7))
    if carry == "belief":
        assert (np.diff(kept) == 1).mean() > 0.8  # contiguous runs
    # Each sampled decision gets the answer the whole evaluation gives it (the belief walk replays its burn-in).
    np.testing.assert_array_equal(part.steps, whole.steps[kept])
    np.testing.assert_allclose(decision_pnl(part), decision_pnl(whole)[kept], rtol=0, atol=1e-12)
    assert part.metrics["model"]["pnl"] == pytest.approx(decision_pnl(whole)[kept].sum(), abs=1e-9)
    assert part.metrics["model"]["mean_steps"] == pytest.approx(whole.steps[kept].mean())
    sampled = test_idx[kept]  # the baselines are over the sample too
    oracle = replay.strategy_pnl[sampled, replay.label_pnl[sampled].argmax(axis=1)].sum()
    assert part.metrics["baselines"]["oracle"]["pnl"] == pytest.approx(oracle)
    assert figures(evaluate(model, replay, sample=0, **walk_args)) == figures(whole)  # 0 = all
    assert figures(evaluate(model, replay, sample=n, **walk_args)) == figures(whole)


def test_a_large_split_runs_once_at_full_depth_with_the_same_figures(replay, monkeypatch):
    model = halting_model("fresh", replay)
    walk_args = {"max_steps": 3, "device": CPU, "batch_size": 32, "seed": 7}
    two_passes = evaluate(model, replay, **walk_args)
    assert 1.0 < two_passes.metrics["model"]["mean_steps"] < 3.0  # halting varies per row
    monkeypatch.setattr(evaluation, "TIMED_DECISIONS", 100)  # the 299 test decisions are now "many"
    calls = []
    real_predict = evaluation.predict
    monkeypatch.setattr(
        evaluation, "predict", lambda *a, **k: calls.append(k["walk"]) or real_predict(*a, **k)
    )
    once = evaluate(model, replay, **walk_args)
    assert once.metrics["model"].pop("timed_decisions") == 100
    assert figures(once) == figures(two_passes)  # every figure: adaptive, fixed depth, each depth, baselines
    np.testing.assert_array_equal(once.steps, two_passes.steps)
    # Only the timing runs the adaptive and fixed passes, on 100 decisions each.
    assert [len(walk_positions(walk)) for walk in calls] == [100, 100]
    assert "on a fixed sample of 100 decisions" in report.format_summary(
        once.metrics | {"model": once.metrics["model"] | {"timed_decisions": 100}}
    )
    with pytest.raises(ValueError, match="fresh carry"):
        evaluation.predict_full_depth(
            halting_model("belief", replay),
            replay,
            np.arange(5),
            max_steps=3,
            batch_size=4,
            device=CPU,
        )


def tiny_config(**train) -> ExperimentConfig:
    defaults = {"steps": 8, "batch_size": 8, "warmup_steps": 2, "progress": False, "eval_sample": 50}
    return ExperimentConfig(
        env=TradeReplayConfig(
            window=16, horizon=4, episode_length=8, synthetic=SyntheticMarketConfig(n_bars=1500)
        ),
        model=TRMConfig(d_model=16, n_heads=2, max_steps=3, n_latent=1, n_cycles=2),
        loss=LossConfig(lambda_reward=0.5),
        train=TrainConfig(**(defaults | train)),
    )


def test_periodic_evaluations_score_a_fixed_sample_and_the_final_one_all(tmp_path):
    trainer = Trainer(tiny_config(), tmp_path)
    first, again = trainer.evaluate(), trainer.evaluate()
    final = trainer.evaluate(final=True)
    n = len(trainer.eval_replay.split_indices("test"))
    assert n == 74
    assert first.metrics["test_split"] == again.metrics["test_split"]
    assert first.metrics["test_split"]["decisions"] == len(first.steps) == 50
    assert first.metrics["test_split"]["sampled_from"] == n
    assert figures(first) == figures(again)  # the same 50 decisions, scored the same
    assert final.metrics["test_split"]["decisions"] == len(final.steps) == n
    assert "sampled_from" not in final.metrics["test_split"]
    # The same decisions for another trainer of the same config (a resumed run): equal per-decision PnL.
    other = Trainer(tiny_config(), tmp_path / "other").evaluate()
    np.testing.assert_array_equal(decision_pnl(other), decision_pnl(first))
    # None scores all of them, periodically too.
    assert len(Trainer(tiny_config(eval_sample=None), tmp_path / "all").evaluate().steps) == n


@pytest.mark.parametrize("value", [-1, 1.5, "all"])
def test_eval_sample_must_be_a_count(value):
    with pytest.raises(ValueError, match=r"train\.eval_sample"):
        TrainConfig(eval_sample=value)


def test_the_default_run_scores_every_test_decision_periodically():
    assert TrainConfig().eval_sample >= len(build_replay(ExperimentConfig().env).split_indices("test"))


# ----------------------------------------------------------------------------- phase timings


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_phases_are_exclusive_and_count_only_while_recording():
    clock = FakeClock()
    times = PhaseTimes(clock)
    with phase(PARSE):  # nothing records yet
        clock.now += 5.0
    with times.recording():
        with phase(LABELS):
            clock.now += 1.0
            with phase(FEATURES):  # inner time counts to the inner phase only
                clock.now += 2.0
            clock.now += 0.5
            with phase(LABELS):  # re-entering the same phase adds to it once
                clock.now += 0.25
        with times.phase(TRAINING):
            clock.now += 3.0
    with phase(PARSE):
        clock.now += 7.0
    assert times.as_dict() == {
        PARSE: 0.0,
        FEATURES: 2.0,
        LABELS: 1.75,
        TRAINING: 3.0,
        "evaluation": 0.0,
        "writing": 0.0,
    }
    assert list(times.as_dict()) == list(PHASES)
    assert times.format().startswith(
        "phases: parse and validate 0.0 s, features and strategies 2.0 s, labels 1.8 s"
    )


def test_a_run_records_its_phases_in_timings_json_and_its_summary(tmp_path):
    bars = generate_synthetic_market(SyntheticMarketConfig(n_bars=1500)).drop(columns="regime")
    env = TradeReplayConfig(window=16, horizon=4, episode_length=8, data=bars)  # a DataFrame is built afresh
    trainer = Trainer(dataclasses.replace(tiny_config(), env=env), tmp_path)
    trainer.fit()
    record = json.loads((tmp_path / "timings.json").read_text())
    assert list(record["phases"]) == list(PHASES)
    assert all(record["phases"][name] > 0 for name in PHASES)
    assert sum(record["phases"].values()) <= record["wall_s"]
    assert trainer.summary().splitlines()[-1].startswith("phases: parse and validate ")
