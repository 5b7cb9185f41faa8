"""Held-out evaluation: the time-ordered walk and its fixed sample (the trainer's periodic evaluations), every figure
of ``evaluate`` against its definition (the model, the baselines, per regime, the printed summary), and phase
timings."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pytest
import torch
from helpers import FakeClock
from helpers import tiny_config as tiny_trainer_config
from trm_act.envs import (
    STRATEGIES,
    SyntheticMarketConfig,
    TradeReplayConfig,
    build_replay,
    generate_synthetic_market,
)
from trm_act.envs.timing import FEATURES, LABELS, PARSE, PHASES, TRAINING, PhaseTimes, phase

from trm_act import evaluation, report
from trm_act.config import ExperimentConfig, TrainConfig
from trm_act.evaluation import evaluate, evaluation_walk, plan_walk, sample_walk, walk_positions
from trm_act.metrics import trading_metrics
from trm_act.model import RecurrentTRM, TRMConfig
from trm_act.report import format_summary
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
    """The tiny experiment, its periodic evaluations on a sample of 50 decisions."""
    return tiny_trainer_config(**({"steps": 8, "eval_sample": 50} | train))


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


# ----------------------------------------------------------------------------- the figures, by hand


def constant_model(replay, strategy: int, max_steps: int = 3) -> RecurrentTRM:
    """A model that picks ``strategy`` at every decision and halts after its first step."""
    config = TRMConfig(window=8, n_features=replay.n_features, d_model=16, n_heads=2, max_steps=max_steps)
    model = RecurrentTRM(config).eval()
    with torch.no_grad():
        model.task_head.weight.zero_()
        model.task_head.bias.copy_(10.0 * torch.nn.functional.one_hot(torch.tensor(strategy), 8))
        model.halt_head.weight.zero_()
        model.halt_head.bias.fill_(10.0)  # halt_logit > 0: stop after step 1
    return model


def by_hand(pnl: np.ndarray, actions: np.ndarray, labels: np.ndarray, periods: float) -> dict[str, float]:
    """The figures of a policy's per-decision PnL, each from its definition (log-PnL, equity exp(cumsum))."""
    equity = np.exp(np.cumsum(np.concatenate([[0.0], pnl])))  # (N+1,) growth of one unit of capital
    peak = np.maximum.accumulate(equity)
    traded = pnl[pnl != 0]
    return {
        "pnl": pnl.sum(),
        "mean_pnl": pnl.mean(),
        "sharpe": pnl.mean() / pnl.std() * np.sqrt(periods),
        "max_drawdown": ((peak - equity) / peak).max(),
        "hit_rate": (traded > 0).mean(),
        "accuracy": (actions == labels).mean(),
        "trades": len(traded),
    }


def assert_figures(got: dict, expected: dict) -> None:
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_a_constant_policy_scores_its_strategy_column(replay):
    strategy = 3
    result = evaluate(constant_model(replay, strategy), replay, max_steps=3, device=CPU, seed=7)
    metrics, test = result.metrics, replay.split_indices("test")
    n, periods = len(test), replay.bars_per_year / replay.stride
    assert metrics["test_split"] == {
        "decisions": n,
        "first_bar": int(replay.decision_bars[test[0]]),
        "last_bar": int(replay.decision_bars[test[-1]]),
        "periods_per_year": periods,
    }
    column = replay.strategy_pnl[test, strategy]  # (N,)
    expected = by_hand(column, np.full(n, strategy), replay.labels[test], periods)
    model = metrics["model"]
    assert_figures(model, expected)
    assert_figures(model["fixed_max_steps"], expected)  # three steps choose what one step chose
    assert_figures(metrics["baselines"]["fixed"][STRATEGIES[strategy]], expected)
    assert model["mean_steps"] == 1.0 and model["steps_histogram"] == [n, 0, 0]
    assert model["fixed_max_steps"]["mean_steps"] == 3.0
    assert model["pnl_by_fixed_steps"] == pytest.approx([column.sum()] * 3)
    assert model["strategy_usage"] == [n if k == strategy else 0 for k in range(len(STRATEGIES))]
    np.testing.assert_allclose(result.equity["equity/model"], np.cumsum(column), rtol=0, atol=1e-12)
    assert result.steps.tolist() == [1] * n
    # The regime table splits the same column by true regime.
    regimes = replay.regimes[test]  # (N,)
    for k, name in enumerate(replay.regime_names):
        if (regimes == k).any():
            row = model["by_regime"][name]
            assert row["decisions"] == (regimes == k).sum()
            assert row["pnl"] == pytest.approx(column[regimes == k].sum())


def test_the_baselines_are_their_definitions(replay):
    seed = 11
    metrics = evaluate(constant_model(replay, 0), replay, max_steps=3, device=CPU, seed=seed).metrics
    baselines = metrics["baselines"]
    train, test = replay.split_indices("train"), replay.split_indices("test")
    n, periods, labels = len(test), replay.bars_per_year / replay.stride, replay.labels[test]
    pnl = replay.strategy_pnl

    def figures(actions: np.ndarray) -> dict[str, float]:
        return by_hand(pnl[test, actions], actions, labels, periods)

    # random: the seeded draw of one strategy per decision
    assert_figures(baselines["random"], figures(np.random.default_rng(seed).integers(0, 8, n)))
    # best fixed: the strategy of the best mean PnL on the train split, held through the test split
    best = int(np.argmax(pnl[train].mean(axis=0)))
    assert baselines["best_fixed"]["strategy"] == STRATEGIES[best]
    assert_figures(baselines["best_fixed"], figures(np.full(n, best)))
    # the hindsight oracle: the strategy whose label PnL is the largest at each decision
    oracle = replay.label_pnl[test].argmax(axis=1)
    assert_figures(baselines["oracle"], figures(oracle))
    assert baselines["oracle"]["pnl"] >= max(row["pnl"] for row in baselines["fixed"].values())
    # the regime oracle: in each true regime, the strategy of the best mean PnL over that regime's train decisions
    regimes = replay.regimes
    per_regime = {
        k: int(np.argmax(pnl[train][regimes[train] == k].mean(axis=0))) for k in np.unique(regimes[train])
    }
    regime_oracle = np.array([per_regime.get(k, best) for k in regimes[test]])
    assert_figures(baselines["regime_oracle"], figures(regime_oracle))
    assert {name: row["pnl"] for name, row in baselines["fixed"].items()} == pytest.approx(
        {name: pnl[test, k].sum() for k, name in enumerate(STRATEGIES)}
    )


def test_the_summary_prints_the_figures_it_was_given(replay):
    metrics = evaluate(constant_model(replay, 2), replay, max_steps=3, device=CPU).metrics
    text = format_summary(metrics)
    lines = {line.split("  ")[0].strip(): line for line in text.splitlines()}
    baselines = metrics["baselines"]
    for name, figures in (
        ("model (adaptive, 1.00 steps)", metrics["model"]),
        ("model (fixed 3 steps)", metrics["model"]["fixed_max_steps"]),
        ("regime oracle", baselines["regime_oracle"]),
        (f"best fixed ({baselines['best_fixed']['strategy']})", baselines["best_fixed"]),
        ("random", baselines["random"]),
        ("hindsight oracle", baselines["oracle"]),
    ):
        cells = lines[name][len(name) :].split()
        assert cells[:2] == [f"{figures['pnl']:+.3f}", f"{figures['sharpe']:.2f}"], (name, lines[name])
    n = metrics["test_split"]["decisions"]
    assert text.startswith(f"held-out test split: {n} decisions (bars ")
    assert "halting: mean 1.00 of 3 steps" in text
    captured = metrics["model"]["pnl"] / baselines["regime_oracle"]["pnl"]
    assert (f"model captures {captured:.0%} of the regime oracle's PnL" in text) is (
        baselines["regime_oracle"]["pnl"] > 0
    )


# ----------------------------------------------------------------------------- per regime, metrics, batch size (from test_trainer)


def test_trading_metrics_numbers():
    pnl = np.array([0.1, -0.2, 0.0, 0.1])
    metrics = trading_metrics(
        pnl, actions=np.array([1, 2, 0, 1]), labels=np.array([1, 1, 0, 3]), periods_per_year=4
    )
    assert metrics["pnl"] == pytest.approx(0.0)
    assert metrics["accuracy"] == 0.5
    assert metrics["hit_rate"] == pytest.approx(2 / 3)  # the flat decision is not a trade
    assert metrics["trades"] == 3
    assert metrics["max_drawdown"] == pytest.approx(1 - math.exp(-0.2))
    assert metrics["sharpe"] == pytest.approx(0.0)
    up = trading_metrics(np.array([0.01, 0.03]), np.zeros(2, int), np.zeros(2, int), periods_per_year=100)
    assert up["sharpe"] == pytest.approx(0.02 / 0.01 * 10)


def test_steps_by_regime_are_the_mean_steps_of_each_true_regime(tmp_path):
    trainer = Trainer(tiny_trainer_config(steps=2), tmp_path)
    report = trainer.evaluate()
    test_idx = trainer.eval_replay.split_indices("test")
    regimes = trainer.eval_replay.regimes[test_idx]
    names = trainer.eval_replay.regime_names
    assert report.steps_by_regime == {
        names[k]: pytest.approx(report.steps[regimes == k].mean()) for k in np.unique(regimes)
    }


def test_by_regime_splits_the_model_and_regime_oracle_pnl_by_true_regime(tmp_path):
    trainer = Trainer(tiny_trainer_config(steps=2), tmp_path)
    metrics = trainer.evaluate().metrics
    table, oracle = metrics["model"]["by_regime"], metrics["baselines"]["regime_oracle"]
    replay = trainer.eval_replay
    test_idx = replay.split_indices("test")
    assert set(table) == {replay.regime_names[k] for k in np.unique(replay.regimes[test_idx])}
    # each column sums to the pooled figure: nothing dropped, nothing counted twice
    assert sum(row["decisions"] for row in table.values()) == len(test_idx)
    assert sum(row["pnl"] for row in table.values()) == pytest.approx(metrics["model"]["pnl"])
    assert sum(row["regime_oracle_pnl"] for row in table.values()) == pytest.approx(oracle["pnl"])
    usage = np.sum([row["strategy_usage"] for row in table.values()], axis=0)
    assert usage.tolist() == metrics["model"]["strategy_usage"]
    for row in table.values():
        assert row["regime_oracle_strategy"] in STRATEGIES and 0.0 <= row["picks_oracle_strategy"] <= 1.0
    # ... and the printed summary shows them, with the PnL at each fixed depth
    text = format_summary(metrics)
    depths = ", ".join(f"{pnl:+.3f}" for pnl in metrics["model"]["pnl_by_fixed_steps"])
    assert f"pnl when every decision runs exactly 1..3 steps: {depths}" in text
    for name, row in table.items():
        model_pnl, oracle_pnl = re.escape(f"{row['pnl']:+.3f}"), re.escape(f"{row['regime_oracle_pnl']:+.3f}")
        assert re.search(rf"^  {name} +{model_pnl} / +{oracle_pnl}  \(", text, re.M)


def test_evaluation_does_not_depend_on_its_batch_size():
    # Evaluation batches only bound memory (--eval-batch-size): every figure but the timings is the same.
    torch.manual_seed(0)
    replay = build_replay(TradeReplayConfig(window=16, synthetic=SyntheticMarketConfig(n_bars=3000, seed=3)))
    config = TRMConfig(window=16, n_features=replay.n_features, max_steps=3, d_model=16, n_cycles=2)
    model = RecurrentTRM(config).eval()
    with torch.no_grad():  # a halt head that fires on some rows only, so adaptive batches shrink unevenly
        model.halt_head.weight.normal_(0.0, 2.0)
        model.halt_head.bias.zero_()

    def figures(batch_size: int) -> dict:
        cpu = torch.device("cpu")
        metrics = evaluate(model, replay, max_steps=3, device=cpu, batch_size=batch_size).metrics
        for part in (metrics["model"], metrics["model"]["fixed_max_steps"]):
            part.pop("wall_time_s")
        metrics["model"].pop("time_ratio_adaptive_vs_fixed")
        return metrics

    whole = figures(4096)
    assert 1.0 < whole["model"]["mean_steps"] < 3.0  # adaptive halting really varies per row
    assert figures(7) == whole


# ----------------------------------------------------------------------------- phase timings


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


def test_a_belief_scores_its_fixed_depths_on_a_fixed_sample_of_a_large_split(replay, monkeypatch):
    model = halting_model("belief", replay)
    walk_args = {"max_steps": 3, "device": CPU, "batch_size": 32, "burn_in": 8, "seed": 7}
    whole = evaluate(model, replay, depth_sample=None, **walk_args)
    calls = []
    real_predict = evaluation.predict
    monkeypatch.setattr(evaluation, "predict", lambda *a, **k: calls.append(k) or real_predict(*a, **k))
    part = evaluate(model, replay, depth_sample=100, **walk_args)
    # The whole split's fixed depths came from one walk of every depth at once, whose time is not max_steps' alone.
    whole_figures = figures(whole)
    assert whole_figures["model"]["pnl_by_fixed_steps"][-1] == whole.metrics["model"]["fixed_max_steps"]["pnl"]
    assert whole_figures["model"]["fixed_max_steps"]["every_depth"] is True
    assert whole.metrics["model"]["time_ratio_adaptive_vs_fixed"] is None
    assert "ms for the fixed depths 1..3 walked at once" in report.format_summary(whole.metrics)
    # Two walks: the adaptive one of all 299 decisions, and one of every depth at once over the sample's 100.
    test_idx = replay.split_indices("test")
    sample = sample_walk(evaluation_walk(model, replay, test_idx, 32, 8), 100, seed=7)
    kept = walk_positions(sample)
    walks = [(k["adaptive"], k["every_depth"], len(walk_positions(k["walk"]))) for k in calls]
    assert walks == [(True, False, 299), (False, True, 100)]
    # The adaptive answers and the baselines still score every decision, exactly as before ...
    part_figures = figures(part)
    for name in ("fixed_max_steps", "pnl_by_fixed_steps"):
        whole_figures["model"].pop(name), part_figures["model"].pop(name)
    assert part_figures["model"].pop("fixed_depth_decisions") == 100
    sample_adaptive = part_figures["model"].pop("fixed_depth_sample_adaptive_pnl")
    assert part_figures == whole_figures
    # ... and each fixed depth scores the sample's decisions, each answered as the whole walk at that depth answers
    # it; the adaptive PnL on the same decisions is recorded beside them.
    adaptive = real_predict(
        model, replay, test_idx, max_steps=3, adaptive=True, batch_size=32, device=CPU, burn_in=8
    ).actions  # (299,)
    assert sample_adaptive == pytest.approx(replay.strategy_pnl[test_idx[kept], adaptive[kept]].sum(), abs=1e-9)
    expected = []
    for depth in (1, 2, 3):
        actions = real_predict(
            model, replay, test_idx, max_steps=depth, adaptive=False, batch_size=32, device=CPU, burn_in=8
        ).actions  # (299,) the whole walk at this depth
        expected.append(replay.strategy_pnl[test_idx[kept], actions[kept]].sum())
    model_part = part.metrics["model"]
    assert model_part["pnl_by_fixed_steps"] == pytest.approx(expected, abs=1e-9)
    assert model_part["fixed_max_steps"]["pnl"] == pytest.approx(expected[-1], abs=1e-9)
    assert model_part["fixed_max_steps"]["mean_steps"] == 3.0
    summary = report.format_summary(part.metrics)
    assert "model (fixed 3 steps, 100 sampled decisions)" in summary
    assert f"(on a fixed sample of 100 decisions, where the adaptive answers earn {sample_adaptive:+.3f})" in summary
    # A periodic evaluation's sample of 200 decisions is cut to the fixed depths' 100 the same way.
    periodic = evaluate(model, replay, sample=200, depth_sample=100, **walk_args)
    assert periodic.metrics["model"]["fixed_depth_decisions"] == 100
    assert evaluate(model, replay, sample=100, depth_sample=100, **walk_args).metrics["model"].get(
        "fixed_depth_decisions"
    ) is None  # not more than the fixed depths' sample: they score them all
